"""Checks shared by the SAE analysis modules: the SAE's hook name, k and feature ids.

A SAELens SAE records the TransformerLens hook it was trained on (`sae.cfg.metadata.hook_name`) and
its input width (`sae.cfg.d_in`); `load.check_sae` ties it to a model (the hook must be one of the
model's residual-stream sites, found by generating hook names rather than parsing them, and `d_in`
must match) and returns the typed `Site(layer, component)`. `check_k` and `check_features` turn a
bad k or feature id into a ValueError that names the valid range.
"""

from __future__ import annotations


def sae_hook_name(sae) -> str:
    """The hook name stored in the SAE's metadata (a ValueError if it has none).

    Args:
        sae (sae_lens.SAE): the SAE.

    Returns:
        The hook name, e.g. "blocks.12.hook_resid_pre".

    Raises:
        ValueError: if `sae.cfg.metadata.hook_name` is missing or empty.
    """
    meta = getattr(getattr(sae, "cfg", None), "metadata", None)
    name = getattr(meta, "hook_name", None) if meta is not None else None
    if not isinstance(name, str) or not name:
        raise ValueError(
            "This SAE records no hook name (sae.cfg.metadata.hook_name); set it to the hook the "
            "SAE was trained on, e.g. 'blocks.12.hook_resid_pre'."
        )
    return name


def d_sae(sae) -> int:
    """The SAE's number of features.

    Args:
        sae (sae_lens.SAE): the SAE.

    Returns:
        `sae.cfg.d_sae` as an int.
    """
    return int(sae.cfg.d_sae)


def check_k(k: int, sae, what: str = "k") -> int:
    """k must be an int in 1..d_sae.

    Args:
        k: the number of features asked for.
        sae (sae_lens.SAE): the SAE that bounds it.
        what: the argument's name, for the error message.

    Returns:
        k, unchanged.

    Raises:
        ValueError: naming the valid range if k is not an int in 1..d_sae.
    """
    n = d_sae(sae)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"{what} must be an int in 1..{n} (the SAE's d_sae), got {k!r}.")
    return k


def check_features(features, sae) -> list[int]:
    """Feature ids as a non-empty list of distinct ints in 0..d_sae-1.

    Args:
        features (int | Iterable[int]): one feature id or several (tensor scalars are accepted).
        sae (sae_lens.SAE): the SAE that bounds them.

    Returns:
        The ids as a list of ints.

    Raises:
        ValueError: if the list is empty, an id is out of range, or ids repeat.
    """
    n = d_sae(sae)
    ids = [features] if isinstance(features, int) and not isinstance(features, bool) else \
        list(features)
    if not ids:
        raise ValueError(f"Need at least one feature id (valid ids are 0..{n - 1}).")
    out = []
    for f in ids:
        if hasattr(f, "item"):
            f = f.item()
        if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < n:
            raise ValueError(f"Feature id {f!r} is out of range; valid ids are 0..{n - 1}.")
        out.append(int(f))
    if len(set(out)) != len(out):
        dup = sorted({f for f in out if out.count(f) > 1})
        raise ValueError(f"Feature ids must be distinct; repeated: {dup}.")
    return out
