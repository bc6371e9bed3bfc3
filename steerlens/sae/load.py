"""Loading SAEs: shipped ones, any directory in SAELens format, and SAELens pretrained releases.

Every loader returns a SAELens `SAE`, so the rest of steerlens (decomposition, feature-targeted
vectors) works the same whatever the source. `load_sae` accepts the name of an SAE shipped inside
steerlens (`list_shipped_saes()`), a path to a SAELens-format directory (`cfg.json` +
`sae_weights.safetensors`), or a pretrained release and id (`load_sae("gpt2-small-res-jb",
"blocks.8.hook_resid_pre")`), which are checked offline against SAELens' bundled directory of
releases before the Hugging Face hub is contacted; only that last case needs the hub. Files are
validated before SAELens reads them, so a truncated weights file, a broken or oversized `cfg.json`
(read with a 1 MB cap, regular files only), sizes below 1 or non-finite weights give an error that
names the file instead of an opaque torch error or all-NaN results later. A directory that
`save_sae` was replacing when its process died is read as the old or the new SAE. `check_sae` ties
an SAE to a model: its hook must be one of the model's residual-stream sites and its `d_in` must
match the model's width; it returns that `Site`, the space in which steerlens vectors at that layer
live. A TopK SAE that decodes `f / |W_dec|` (`rescale_acts_by_decoder_norm`) is returned with
the decoder norms folded into its weights: the same function with plain `f @ W_dec` semantics.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

from ..backend import Model, runtime
from ..io import read_bounded, resolve_path
from ..sites import COMPONENTS, Site

SHIPPED_ROOT = Path(__file__).resolve().parent.parent / "data" / "saes"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
_REQUIRED_CFG = ("d_in", "d_sae", "architecture")
MAX_CFG_BYTES = 1 << 20


class SAEHubUnavailable(RuntimeError):
    """A pretrained SAE release could not be fetched because the hub is unreachable."""


def list_shipped_saes() -> list[str]:
    """Names of the SAEs shipped inside steerlens (loadable offline with `load_sae(name)`).

    Returns:
        The sorted names (empty if none are shipped).
    """
    if not SHIPPED_ROOT.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_ROOT.iterdir() if (p / CFG_FILE).is_file())


def _validate_dir(path: Path) -> dict:
    if not path.is_dir():
        raise ValueError(f"SAE path {path} is not a directory; a SAELens-format SAE is a directory "
                         f"holding {CFG_FILE} and {WEIGHTS_FILE}.")
    cfg_path, w_path = path / CFG_FILE, path / WEIGHTS_FILE
    for f in (cfg_path, w_path):
        if f.exists() and not f.is_file():
            raise ValueError(f"SAE file {f} is not a regular file (a directory, device or FIFO).")
        if not f.is_file():
            raise ValueError(f"SAE directory {path} has no {f.name}; a SAELens-format SAE holds "
                             f"{CFG_FILE} and {WEIGHTS_FILE}.")
    raw = read_bounded(cfg_path, MAX_CFG_BYTES, "SAE config")
    try:
        cfg = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"SAE config {cfg_path} is not valid JSON ({e}).") from e
    if not isinstance(cfg, dict) or any(k not in cfg for k in _REQUIRED_CFG):
        raise ValueError(f"SAE config {cfg_path} lacks required keys; it needs {list(_REQUIRED_CFG)}.")
    for key in ("d_in", "d_sae"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"SAE config {cfg_path}: {key} must be an integer >= 1, got {v!r}.")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(w_path), framework="pt") as fh:
            names = list(fh.keys())  # noqa: SIM118 - safe_open is not iterable
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in names}
            for k in names:  # touch every tensor so truncation shows here, not later
                fh.get_slice(k)[:1]
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"SAE weights file {w_path} is corrupt or truncated ({e}).") from e
    if os.path.getsize(w_path) < 8:
        raise ValueError(f"SAE weights file {w_path} is empty.")
    want = {"W_enc": (cfg["d_in"], cfg["d_sae"]), "W_dec": (cfg["d_sae"], cfg["d_in"])}
    for k, shape in want.items():
        if k in shapes and shapes[k] != shape:
            raise ValueError(f"SAE weights file {w_path}: {k} has shape {shapes[k]} but {cfg_path} "
                             f"says d_in={cfg['d_in']}, d_sae={cfg['d_sae']} (expected {shape}).")
    return cfg


def load_sae_dir(path: str | Path, device: str = "cpu", dtype: str = "float32"):
    """Load a SAELens-format directory with SAELens' own loader, after validating its files.

    Args:
        path: the directory holding `cfg.json` and `sae_weights.safetensors`.
        device: where to put the SAE's weights.
        dtype: the SAE's dtype, as SAELens names it ("float32", ...).

    Returns:
        (sae_lens.SAE): The SAELens `SAE`.

    Raises:
        ValueError: naming the file if the directory, config or weights are missing, invalid
            (sizes below 1, a config over 1 MB or not a regular file), truncated, inconsistent
            or not finite, or if SAELens cannot load them.
    """
    from sae_lens import SAE

    path = resolve_path(Path(path))
    _validate_dir(path)
    try:
        sae = SAE.load_from_disk(str(path), device=device, dtype=dtype)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise ValueError(f"SAELens could not load the SAE in {path} ({type(e).__name__}: {e}).") from e
    return fold_decoder_norms(_check_finite(sae, f"SAE weights file {path / WEIGHTS_FILE}"))


def _check_finite(sae, where: str):
    import torch

    bad = [k for k, v in sae.state_dict().items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{where} holds non-finite values (NaN or inf) in {bad}; the SAE is "
                         "unusable (its training probably diverged).")
    return sae


def fold_decoder_norms(sae):
    """Fold `rescale_acts_by_decoder_norm` (TopK SAEs decoding f / |W_dec|) into the weights, in
    place: the same function with unit decoder rows, so that a feature's activation times W_dec[i]
    is what it writes, as `v @ W_enc` readings, decoder-column vectors and FeatureClamp assume.

    Args:
        sae (sae_lens.SAE): the SAE; one without the flag is returned unchanged.

    Returns:
        (sae_lens.SAE): the same SAE object.
    """
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        sae.fold_W_dec_norm()
        sae.cfg.rescale_acts_by_decoder_norm = False
    return sae


def _check_release(release: str, sae_id: str) -> None:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        close = difflib.get_close_matches(release, list(directory), n=8, cutoff=0.5)
        raise ValueError(
            f"Unknown SAELens release {release!r} (and it is neither a shipped SAE nor a "
            f"directory). Closest releases: {close}. Shipped SAEs: {list_shipped_saes()}. "
            f"There are {len(directory)} releases, e.g. {sorted(directory)[:10]}."
        )
    ids = list(directory[release].saes_map)
    if sae_id not in ids:
        close = difflib.get_close_matches(sae_id, ids, n=8, cutoff=0.5)
        shown = ids if len(ids) <= 30 else ids[:30] + [f"... ({len(ids)} in all)"]
        raise ValueError(f"ID {sae_id!r} not found in release {release!r}. Closest IDs: {close}. "
                         f"Valid IDs are {shown}.")


def load_sae(source: str | Path, sae_id: str | None = None, device: str = "cpu",
             dtype: str = "float32"):
    """Load an SAE as a SAELens `SAE`.

    `source` is a shipped SAE name, a SAELens-format directory, or (with `sae_id`) a SAELens
    pretrained release. Bad names raise ValueError listing valid options; a release that needs
    the unreachable hub raises SAEHubUnavailable.

    Args:
        source: a shipped SAE name, a SAELens-format directory, or a SAELens release name.
        sae_id: the SAE's id within a pretrained release (None for the other two cases).
        device: where to put the SAE's weights.
        dtype: the SAE's dtype, as SAELens names it.

    Returns:
        (sae_lens.SAE): The SAELens `SAE`.

    Raises:
        ValueError: for an unknown name, release or id (with the closest valid ones), an
            invalid directory, or non-finite weights.
        SAEHubUnavailable: if a valid pretrained release cannot be fetched from the hub.
    """
    if sae_id is None:
        if isinstance(source, str) and source in list_shipped_saes():
            return load_sae_dir(SHIPPED_ROOT / source, device, dtype)
        path = Path(source)
        if path.exists():
            return load_sae_dir(path, device, dtype)
        raise ValueError(
            f"{str(source)!r} is neither a shipped SAE ({list_shipped_saes()}) nor an existing "
            "SAELens-format directory. For a SAELens pretrained release pass its id too, e.g. "
            "load_sae('gpt2-small-res-jb', 'blocks.8.hook_resid_pre')."
        )
    _check_release(str(source), sae_id)
    from sae_lens import SAE

    try:
        sae = SAE.from_pretrained(str(source), sae_id, device=device, dtype=dtype)
    except Exception as e:  # noqa: BLE001 - hub/network failures come in many types
        raise SAEHubUnavailable(
            f"Could not fetch SAELens release {source!r} id {sae_id!r} from the Hugging Face hub "
            f"({type(e).__name__}: {e}). Pretrained releases need the hub to be reachable; offline, "
            f"use a shipped SAE ({list_shipped_saes()}) or a SAELens-format directory."
        ) from e
    return fold_decoder_norms(_check_finite(sae, f"SAELens release {source!r} id {sae_id!r}"))


def _valid_hooks(model: Model) -> str:
    return (f"blocks.<0..{runtime.n_layers(model) - 1}>.hook_<component> with component in "
            f"{list(COMPONENTS)}")


def check_sae(model: Model, sae) -> Site:
    """Check `sae` reads a residual-stream site of `model` of matching width; return the Site.

    Args:
        model (Model): the model.
        sae (sae_lens.SAE): the SAE.

    Returns:
        The `Site` the SAE reads, the space in which steerlens vectors at that layer live.

    Raises:
        ValueError: if the SAE names no hook, its hook is not a residual-stream site of the model,
            or its d_in differs from the model's width.
    """
    hook = sae.cfg.metadata.hook_name
    if not hook:
        raise ValueError(f"The SAE's config names no hook (metadata.hook_name); valid hook names "
                         f"for this model are {_valid_hooks(model)}.")
    site = next((Site(layer, comp) for layer in range(runtime.n_layers(model))
                 for comp in COMPONENTS if runtime.hook_name(layer, comp) == hook), None)
    if site is None:
        where = ("exists in the model but is not a residual-stream site"
                 if runtime.has_hook(model, hook) else "does not exist in the model")
        raise ValueError(f"The SAE's hook {hook!r} {where} ({runtime.model_id(model)}); valid hook "
                         f"names are {_valid_hooks(model)}.")
    d = runtime.d_model(model)
    if sae.cfg.d_in != d:
        raise ValueError(f"The SAE's d_in is {sae.cfg.d_in} but site {site} of "
                         f"{runtime.model_id(model)} has width {d}; this SAE was trained on "
                         f"another model ({sae.cfg.metadata.model_name!r}).")
    return site
