"""steerlens: activation-steering research on TransformerLens models.

`import steerlens as sl` gives the names a steering study needs, from contrast pairs to figures:
load a model (`load_model`), build a vector from a behaviour's pairs (`load_behaviour`,
`build_vector`, `random_like` for the control), steer and generate (`steer`, `schedule`, `generate`
with a `GenerationConfig`; remove a direction with `Ablation` or bake that into the weights with
`orthogonalised`), measure (`next_token_kl`, `per_token_kl`, `vector_lens`, `residual_lens`,
`bootstrap_ci`), sweep layers x strengths (`sweep`, `SweepConfig`, `load_sweep`; `RayExecutor` and
`ModelLoader` run a sweep's units on Ray workers) and read sweeps (`layer_effect`, `zones`,
`compare_random`), and score layers spectrally (`eigengaps`). Everything else stays in its
subpackage, reachable as an attribute without another import line (loaded on first use):
`sl.measures`, `sl.stats`, `sl.spectral`, `sl.sae`, `sl.figures`, `sl.backend`, `sl.config`,
`sl.interventions` (feature clamps, head edits, conditional steering), `sl.interop` (GGUF control
vectors, other libraries' vectors) and `sl.eval` (lm-evaluation-harness) (`sl.sweep` and `sl.steer`
are the functions; `import steerlens.sweep` reaches the rest of that package).
"""

import importlib

from ._version import __version__
from .backend import Model, available_models, load_model
from .config import GenerationConfig, SweepConfig
from .extract import extract, extract_prompts
from .generate import Generation, generate, generate_stream
from .interventions.ablation import Ablation
from .interventions.base import load_intervention, save_intervention
from .interventions.orthogonalise import orthogonalised
from .measures import next_token_kl, per_token_kl, residual_lens, vector_lens
from .methods import build_vector, random_like
from .pairs import ContrastPair, ContrastSet, load_behaviour
from .spectral import eigengaps
from .stats import bootstrap_ci
from .steer import Injection, schedule, steer
from .sweep import ModelLoader, RayExecutor, compare_random, layer_effect, load_sweep, sweep, zones
from .vectors import SteeringVector, SteeringVectorSet

__all__ = [
    "Ablation",
    "ContrastPair",
    "ContrastSet",
    "Generation",
    "GenerationConfig",
    "Injection",
    "Model",
    "ModelLoader",
    "RayExecutor",
    "SteeringVector",
    "SteeringVectorSet",
    "SweepConfig",
    "__version__",
    "available_models",
    "bootstrap_ci",
    "build_vector",
    "compare_random",
    "eigengaps",
    "extract",
    "extract_prompts",
    "generate",
    "generate_stream",
    "layer_effect",
    "load_behaviour",
    "load_intervention",
    "load_model",
    "load_sweep",
    "next_token_kl",
    "orthogonalised",
    "per_token_kl",
    "random_like",
    "residual_lens",
    "save_intervention",
    "schedule",
    "steer",
    "sweep",
    "vector_lens",
    "zones",
]

# `sl.sweep` and `sl.steer` are the functions; their modules stay importable by name.
_SUBPACKAGES = ("arena", "backend", "config", "eval", "figures", "interop", "interventions",
                "measures", "methods", "pairs", "sae", "spectral", "stats", "vectors")


def __getattr__(name: str):
    """Load a subpackage on first attribute access (`sl.figures`, `sl.sae`, ...)."""
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'steerlens' has no attribute {name!r}; public names are "
                         f"{__all__} and subpackages {list(_SUBPACKAGES)}.")
