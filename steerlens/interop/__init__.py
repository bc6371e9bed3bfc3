"""Bridges between steerlens and the rest of the steering ecosystem.

`interop.gguf` writes and reads llama.cpp control vectors (GGUF files with architecture
`controlvector`, one `direction.N` tensor per steered block), with llama.cpp's layer-index
convention worked out from its source and checked against the real llama.cpp
(`analyses/llama_cpp_agreement.py`): `direction.N` is added to the output of block N, which is
steerlens' `resid_post` of layer N (= `resid_pre` of layer N + 1). `SteeringVector.to_gguf` /
`SteeringVector.from_gguf` delegate here. `interop.recipes` converts vectors from other Python
libraries (steering-vectors, repeng) through `SteeringVector.from_tensors`. Submodules load on
first attribute access, so `import steerlens.interop` costs nothing.
"""

import importlib

_SUBMODULES = ("gguf", "recipes")
_EXPORTS = {
    "read_gguf": "gguf",
    "write_gguf": "gguf",
    "read_control_vector": "gguf",
    "gguf_index": "gguf",
    "control_vector_buffer": "gguf",
    "ControlVectorFile": "gguf",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Load a submodule (or one of the names it exports) on first access."""
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'steerlens.interop' has no attribute {name!r}; names are "
                         f"{__all__} and submodules {list(_SUBMODULES)}.")
