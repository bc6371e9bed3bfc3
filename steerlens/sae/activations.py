"""Activation caching: run the model over a corpus up to one site and store the activations.

SAE training reads each activation several times, so we compute them once. Documents are
shuffled with a seed, tokenized without special tokens, joined with EOS into one stream and cut
into windows of `context_size - 1` tokens, each prefixed with BOS (the SAELens convention). The
model runs only up to the site (`runtime.forward(..., stop_at_layer=...)`; for `resid_pre` the
returned residual is the site itself, other components are caught with a hook on the last block
needed). Position 0 is never kept: in SmolLM2 the first position carries a "massive activation"
(norm ~25,000 at layer 12 against a median ~140, with or without BOS), which would dominate the
MSE. Any other token whose norm exceeds `outlier_factor` x the batch median is also dropped and
counted, as is a token with an entry beyond float16's range (|x| > 65504, which would be stored as
inf); a NaN or inf in the model's own activations raises `NonFiniteError` instead of being
cached. Activations are stored as fp16 safetensors shards of `seqs_per_shard` windows in a
directory keyed by a hash of everything that determines them; each shard is written atomically,
so an interrupted run resumes by skipping the shards already on disk.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import Tensor

from ..backend import Model, runtime
from ..backend.loading import cache_root
from ..checks import NonFiniteError
from ..io import atomic_path, atomic_write_text
from ..progress import progress
from ..sites import Site


@dataclass(frozen=True)
class ActivationSpec:
    """Everything that determines a cache's contents (its directory is keyed by this).

    Attributes:
        model: the model's id.
        layer: the site's layer.
        component: the site's component.
        hook_name: the site's hook name.
        d_model: the activation width.
        context_size: tokens per window, BOS included.
        n_tokens: activations asked for.
        seqs_per_shard: windows per shard file.
        seed: the document-shuffling seed.
        corpus_digest: a hash of the corpus texts.
        outlier_factor: tokens whose norm exceeds this x the batch median are dropped.
        autocast_bf16: whether the model ran under bfloat16 autocast.
    """

    model: str
    layer: int
    component: str
    hook_name: str
    d_model: int
    context_size: int
    n_tokens: int
    seqs_per_shard: int
    seed: int
    corpus_digest: str
    outlier_factor: float
    autocast_bf16: bool = False

    def key(self) -> str:
        """A short hash of the spec, used as the cache's directory name.

        Returns:
            12 hex characters.
        """
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@dataclass(frozen=True)
class ActivationCache:
    """A directory of activation shards; `n_tokens` counts stored activations.

    Attributes:
        path: the cache directory.
        spec: what the cache holds.
        shard_sizes: activations per shard.
        n_outliers: tokens dropped as norm outliers.
        seconds: time spent computing shards in this call (0 for an opened cache).
    """

    path: Path
    spec: ActivationSpec
    shard_sizes: tuple[int, ...]
    n_outliers: int
    seconds: float

    @property
    def n_shards(self) -> int:
        """Number of shards."""
        return len(self.shard_sizes)

    @property
    def n_tokens(self) -> int:
        """Number of stored activations over all shards."""
        return sum(self.shard_sizes)

    def shard_path(self, i: int) -> Path:
        """The file of shard `i`.

        Args:
            i: the shard index.

        Returns:
            The shard's safetensors path.
        """
        return self.path / f"shard_{i:05d}.safetensors"

    def load_shard(self, i: int) -> Float[Tensor, "tokens d_model"]:
        """Shard `i`'s activations (fp16, as stored).

        Args:
            i: the shard index.

        Returns:
            The activations, [tokens, d_model].

        Raises:
            ValueError: if the shard is corrupt or unreadable (as `read_shard`).
        """
        return read_shard(self.shard_path(i))["acts"]


def read_shard(path: Path) -> dict[str, Tensor]:
    """Read a shard file into memory (not memory-mapped).

    Args:
        path: the shard's safetensors file.

    Returns:
        The shard's tensors: "acts" [tokens, d_model] and "n_outliers".

    Raises:
        ValueError: if the file is corrupt or unreadable; the message says to delete and recompute
            it.
    """
    try:  # read into memory (not mmap), so a later rewrite of the file cannot touch these tensors
        return load_bytes(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"Activation shard {path} is corrupt or unreadable ({e}); delete it "
                         "and re-run to recompute it.") from e


def corpus_digest(texts: Sequence[str]) -> str:
    """A short order-sensitive hash of a list of texts (part of a cache's key).

    Args:
        texts: the corpus texts.

    Returns:
        16 hex characters.
    """
    h = hashlib.sha256()
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    return h.hexdigest()[:16]


def token_windows(model: Model, texts: Sequence[str], context_size: int, n_windows: int | None,
                  seed: int) -> list[list[int]]:
    """BOS + (context_size - 1) tokens of the EOS-joined, seed-shuffled document stream.

    Args:
        model (Model): its tokenizer encodes the texts.
        texts: the documents; blank ones are skipped.
        context_size: tokens per window, BOS included (>= 2).
        n_windows: stop after this many windows (None: as many as the texts give).
        seed: the document-shuffling seed.

    Returns:
        The windows as lists of token ids (the tail that does not fill a window is dropped).

    Raises:
        ValueError: if no text is non-blank or context_size < 2.
    """
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("The corpus is empty: no non-blank texts to cache activations from.")
    if context_size < 2:
        raise ValueError(f"context_size must be >= 2, got {context_size}.")
    tok = runtime.tokenizer(model)
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    eos = tok.eos_token_id if tok.eos_token_id is not None else bos
    width = context_size - 1
    windows: list[list[int]] = []
    stream: list[int] = []
    for start in range(0, len(order), 256):
        chunk = [texts[i] for i in order[start:start + 256]]
        for ids in tok(chunk, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
        while len(stream) >= width:
            windows.append([bos] + stream[:width])
            stream = stream[width:]
            if n_windows is not None and len(windows) >= n_windows:
                return windows
    return windows


def site_activations(model: Model, tokens: Tensor, site: Site,
                     autocast_bf16: bool = False) -> Float[Tensor, "batch pos d_model"]:
    """Activations at `site` for full (unpadded) token rows, running only the needed layers.

    With `autocast_bf16` the matmuls run in bfloat16 (torch.autocast; several times faster on
    CPUs with AMX), the residual stream stays fp32.

    Args:
        model (Model): the model.
        tokens: token ids, [batch, pos], no padding.
        site: the site to read.
        autocast_bf16: run the forward under bfloat16 autocast.

    Returns:
        The activations, [batch, pos, d_model].
    """
    if autocast_bf16:
        dev = runtime.model_device(model).type
        with torch.autocast(dev, dtype=torch.bfloat16):
            return site_activations(model, tokens, site).float()
    batch = runtime.TokenBatch(tokens, torch.ones_like(tokens),
                               torch.zeros(len(tokens), dtype=torch.long),
                               torch.full((len(tokens),), tokens.shape[1], dtype=torch.long))
    if site.component == "resid_pre":
        return runtime.forward(model, batch, stop_at_layer=site.layer, return_type=None)
    got: list[Tensor] = []

    def grab(act, hook):
        got.append(act.detach())

    last = site.layer + 1 >= runtime.n_layers(model)
    with runtime.attached(model, [(site.hook_name(model), grab)]):
        if last:  # a full forward; the logits are discarded
            runtime.forward(model, batch)
        else:
            runtime.forward(model, batch, stop_at_layer=site.layer + 1, return_type=None)
    return got[0]


def default_cache_dir() -> Path:
    """The default root for activation caches (under the steerlens cache root).

    Returns:
        The directory path (not created).
    """
    return cache_root() / "sae" / "activations"


def cache_activations(
    model: Model,
    texts: Sequence[str],
    site: Site,
    *,
    n_tokens: int,
    context_size: int = 128,
    batch_size: int = 16,
    seqs_per_shard: int = 64,
    seed: int = 0,
    outlier_factor: float = 10.0,
    root: str | Path | None = None,
    show_progress: bool = True,
    autocast_bf16: bool = False,
    max_shards: int | None = None,
) -> ActivationCache:
    """Cache about `n_tokens` activations of `site` (resumable; returns the finished cache).

    Shards already on disk are reused, and a corrupt one is recomputed, so re-running the same call
    after an interruption finishes the cache.

    Args:
        model (Model): the model.
        texts: the corpus documents.
        site: where to read activations.
        n_tokens: how many activations to cache (before outlier removal).
        context_size: tokens per window, BOS included.
        batch_size: windows per forward.
        seqs_per_shard: windows per shard file.
        seed: the document-shuffling seed.
        outlier_factor: drop tokens whose norm exceeds this x the batch median.
        root: the cache root (None: `default_cache_dir()`); the cache is a subdirectory keyed by
            its spec.
        show_progress: show a progress bar.
        autocast_bf16: run the model under bfloat16 autocast.
        max_shards: compute (and return) only the first this many shards; the cache's spec and
            directory stay those of the full `n_tokens`, so a later call completes it.

    Returns:
        The finished `ActivationCache` (its first `max_shards` shards when that is given).

    Raises:
        ValueError: if the site is invalid, n_tokens < 1, or the corpus is empty or too small.
    """
    site.validate(model)
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}.")
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("The corpus is empty: no non-blank texts to cache activations from.")
    spec = ActivationSpec(
        model=runtime.model_id(model), layer=site.layer, component=site.component,
        hook_name=site.hook_name(model), d_model=runtime.d_model(model),
        context_size=context_size, n_tokens=n_tokens, seqs_per_shard=seqs_per_shard, seed=seed,
        corpus_digest=corpus_digest(texts), outlier_factor=outlier_factor,
        autocast_bf16=autocast_bf16,
    )
    path = Path(root) if root is not None else default_cache_dir()
    path = path / spec.key()
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / "spec.json", json.dumps(asdict(spec), indent=1))
    n_windows = -(-n_tokens // (context_size - 1))
    windows = token_windows(model, texts, context_size, n_windows, seed)
    if len(windows) < n_windows:
        raise ValueError(f"The corpus yields {len(windows) * (context_size - 1)} tokens in "
                         f"windows of {context_size}, fewer than n_tokens={n_tokens}.")
    n_shards = -(-len(windows) // seqs_per_shard)
    if max_shards is not None:
        n_shards = min(n_shards, max_shards)
    cache = ActivationCache(path, spec, (), 0, 0.0)
    t0 = time.perf_counter()
    sizes: list[int] = []
    outliers = 0
    for i in progress(range(n_shards), desc="caching activations", enabled=show_progress):
        shard = cache.shard_path(i)
        if shard.exists():
            try:
                d = read_shard(shard)
                sizes.append(int(d["acts"].shape[0]))
                outliers += int(d["n_outliers"].item())
                continue
            except ValueError:
                shard.unlink()
        rows = windows[i * seqs_per_shard:(i + 1) * seqs_per_shard]
        acts, n_out = _shard_acts(model, rows, site, batch_size, outlier_factor, autocast_bf16)
        with atomic_path(shard) as tmp:  # bytes, not save_file: that makes files 0600
            tmp.write_bytes(save_bytes({"acts": acts, "n_outliers": torch.tensor([n_out])}))
        sizes.append(int(acts.shape[0]))
        outliers += n_out
    done = ActivationCache(path, spec, tuple(sizes), outliers, time.perf_counter() - t0)
    if max_shards is not None:
        return done
    atomic_write_text(path / "manifest.json", json.dumps(
        {"shard_sizes": sizes, "n_outliers": outliers, "n_tokens": done.n_tokens}, indent=1))
    return done


def _shard_acts(model: Model, rows, site, batch_size, outlier_factor,
                autocast_bf16) -> tuple[Tensor, int]:
    dev = runtime.model_device(model)
    parts: list[Tensor] = []
    n_out = 0
    for b in range(0, len(rows), batch_size):
        toks = torch.tensor(rows[b:b + batch_size], dtype=torch.long, device=dev)
        acts = site_activations(model, toks, site, autocast_bf16)[:, 1:]
        acts = acts.reshape(-1, runtime.d_model(model))
        if not bool(torch.isfinite(acts).all()):
            raise NonFiniteError(
                f"The model's activations at {site} contain NaN or inf (batch of windows "
                f"{b}..{b + len(rows[b:b + batch_size]) - 1} of this shard); they cannot be "
                "cached. Check the model's dtype and weights.")
        norms = acts.float().norm(dim=-1)
        fits_fp16 = (acts.float().abs() <= torch.finfo(torch.float16).max).all(dim=-1)
        keep = (norms <= outlier_factor * norms.median()) & fits_fp16
        n_out += int((~keep).sum())
        parts.append(acts[keep].to(torch.float16).cpu())
    return torch.cat(parts).contiguous(), n_out


def iter_batches(cache: ActivationCache | MixedCache, shards: Sequence[int], batch_size: int, seed: int,
                 start_batch: int = 0, group: int = 8) -> Iterator[Tensor]:
    """Shuffled fp32 batches over `shards`, looping over epochs; deterministic in `seed`.

    Shards are visited in a seeded order in groups of `group`; each group's rows are permuted
    with a generator seeded by (seed, epoch, group) and cut into full batches (the remainder is
    dropped). `start_batch` skips that many batches without loading skipped groups, which is
    how training resumes at the exact data position.

    Args:
        cache: the activation cache (or a `MixedCache`).
        shards: the shard indices to draw from.
        batch_size: rows per batch.
        seed: the shuffling seed.
        start_batch: number of batches to skip.
        group: shards shuffled together.

    Yields:
        Batches of activations, [batch_size, d_model], in float32; the iterator never ends.

    Raises:
        ValueError: if there are no shards or fewer rows than one batch.
    """
    if not shards:
        raise ValueError("No activation shards to train on.")
    sizes = [cache.shard_sizes[s] for s in shards]
    if sum(sizes) < batch_size:
        raise ValueError(f"The activation cache holds {sum(sizes)} training tokens, fewer than "
                         f"one batch of {batch_size}.")
    skip = start_batch
    epoch = 0
    while True:
        order = list(shards)
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        for g in range(0, len(order), group):
            members = order[g:g + group]
            n_batches = sum(cache.shard_sizes[s] for s in members) // batch_size
            if skip >= n_batches:
                skip -= n_batches
                continue
            rows = torch.cat([cache.load_shard(s) for s in members])
            gen = torch.Generator().manual_seed(seed * 7919 + epoch * 104_729 + g)
            perm = torch.randperm(rows.shape[0], generator=gen)
            for b in range(skip, n_batches):
                yield rows[perm[b * batch_size:(b + 1) * batch_size]].float()
            skip = 0
        epoch += 1


def open_cache(path: str | Path, max_shards: int | None = None) -> ActivationCache:
    """Open a cache directory as it stands: its spec and the complete shards 0, 1, ... on disk.

    A cache whose `cache_activations` call was stopped early is usable this way: shards are
    computed in stream order, so the shards present are a prefix of the full cache.

    Args:
        path: the cache directory (holding spec.json).
        max_shards: use at most this many shards (None: all consecutive ones present).

    Returns:
        The `ActivationCache` (seconds = 0).

    Raises:
        ValueError: if spec.json is missing or corrupt, or no shard is present.
    """
    path = Path(path)
    try:
        spec = ActivationSpec(**json.loads((path / "spec.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{path} is not an activation cache (spec.json unreadable: {e}).") from e
    probe = ActivationCache(path, spec, (), 0, 0.0)
    sizes: list[int] = []
    outliers = 0
    while max_shards is None or len(sizes) < max_shards:
        shard = probe.shard_path(len(sizes))
        if not shard.exists():
            break
        d = read_shard(shard)
        sizes.append(int(d["acts"].shape[0]))
        outliers += int(d["n_outliers"].item())
    if not sizes:
        raise ValueError(f"The activation cache {path} has no shards yet.")
    return ActivationCache(path, spec, tuple(sizes), outliers, 0.0)


@dataclass(frozen=True)
class MixedCache:
    """Several activation caches of one site read as one: shard i of the mix is a shard of one of
    them, interleaved in proportion to their shard counts (deterministic), so training batches
    drawn by `iter_batches` mix the domains.

    Attributes:
        caches: the caches (same hook and width).
        names: a label per cache (e.g. "docs", "chat").
        order: (cache index, shard index) per mixed shard.
    """

    caches: tuple[ActivationCache, ...]
    names: tuple[str, ...]
    order: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, caches: Sequence[ActivationCache], names: Sequence[str]) -> MixedCache:
        """Mix caches; their shards are interleaved by fractional position.

        Args:
            caches: the caches (same hook name and width).
            names: one label per cache.

        Returns:
            The `MixedCache`.

        Raises:
            ValueError: for no caches, mismatched names, or caches of different sites or widths.
        """
        if not caches or len(caches) != len(names):
            raise ValueError(f"Need one name per cache and at least one cache; got "
                             f"{len(caches)} caches and {len(names)} names.")
        sites = {(c.spec.hook_name, c.spec.d_model) for c in caches}
        if len(sites) != 1:
            raise ValueError(f"Caches to mix must be of one hook and width; got {sorted(sites)}.")
        keyed = [((j + 0.5) / c.n_shards, k, j) for k, c in enumerate(caches)
                 for j in range(c.n_shards)]
        order = tuple((k, j) for _, k, j in sorted(keyed))
        return cls(tuple(caches), tuple(names), order)

    @property
    def spec(self) -> ActivationSpec:
        """The first cache's spec (hook name and width are shared)."""
        return self.caches[0].spec

    @property
    def shard_sizes(self) -> tuple[int, ...]:
        """Activations per mixed shard."""
        return tuple(self.caches[k].shard_sizes[j] for k, j in self.order)

    @property
    def n_shards(self) -> int:
        """Number of shards in all."""
        return len(self.order)

    @property
    def n_tokens(self) -> int:
        """Activations in all."""
        return sum(self.shard_sizes)

    def tokens_by_name(self) -> dict[str, int]:
        """Activations per mixed cache.

        Returns:
            name -> number of activations.
        """
        return {n: c.n_tokens for n, c in zip(self.names, self.caches)}

    def load_shard(self, i: int) -> Float[Tensor, "tokens d_model"]:
        """Mixed shard `i`'s activations (fp16, as stored).

        Args:
            i: the mixed shard index.

        Returns:
            The activations, [tokens, d_model].
        """
        k, j = self.order[i]
        return self.caches[k].load_shard(j)
