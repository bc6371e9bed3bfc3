"""Spectral analyses of attention keys and MLP weights.

- `eigengap`: key-Gram eigengaps per head and layer (weakest link), pattern gaps, gated layer
  ranking; one batched eigvalsh call.
- `krr`: how well kernel ridge regression over the keys reproduces each head's output (R² over λ).
- `predict`: correlating layer gaps with a measured per-layer steering effect, under the stated
  and the inverse reading, and testing quantile gates against random layer sets.
- `weights`: spectral weight steering, rescaling W_out's singular values inside a context manager
  that restores the weights bit-exactly.
- `evaluate`: measuring weight edits (held-out perplexity, KL, behaviour scores) over layer x α.

Figures for these results live in `steerlens.figures.spectral`.
"""

from .eigengap import (
    DEFAULT_THRESHOLD,
    GATING_READINGS,
    EigengapResult,
    GapTable,
    eigengaps,
    gated_layers,
    gram_gaps,
    gram_top2,
)
from .evaluate import (
    SpectralPoint,
    SpectralSweepResult,
    evaluate_configs,
    grid_configs,
    load_heldout,
    spectral_sweep,
)
from .krr import DEFAULT_LAMBDAS, KRRResult, krr_fit, krr_predict
from .predict import (
    DEFAULT_QUANTILES,
    GapPrediction,
    GatingTest,
    SplitGating,
    choose_quantile,
    gating_test,
    predict_steering,
    quantile_gate,
    reading_verdicts,
    split_gating,
)
from .weights import (
    BANDS,
    HYBRID,
    LayerEditReport,
    LayerSVD,
    SpectralConfig,
    SpectralEdit,
    SpectralEditResult,
    effective_rank,
    mlp_out_svd,
    plan_edit,
    rescale_spectrum,
    spectral_steering,
)

__all__ = [
    "BANDS",
    "DEFAULT_LAMBDAS",
    "DEFAULT_QUANTILES",
    "DEFAULT_THRESHOLD",
    "GATING_READINGS",
    "HYBRID",
    "EigengapResult",
    "GapPrediction",
    "GapTable",
    "GatingTest",
    "KRRResult",
    "LayerEditReport",
    "LayerSVD",
    "SpectralConfig",
    "SpectralEdit",
    "SpectralEditResult",
    "SpectralPoint",
    "SpectralSweepResult",
    "SplitGating",
    "effective_rank",
    "choose_quantile",
    "eigengaps",
    "evaluate_configs",
    "gated_layers",
    "gating_test",
    "gram_gaps",
    "gram_top2",
    "grid_configs",
    "krr_fit",
    "krr_predict",
    "load_heldout",
    "mlp_out_svd",
    "plan_edit",
    "predict_steering",
    "quantile_gate",
    "reading_verdicts",
    "rescale_spectrum",
    "spectral_steering",
    "spectral_sweep",
    "split_gating",
]
