"""Figures: one function per result type, each returning a plotly Figure.

This is the only package that imports plotly (and circuitsvis). Figure functions take result
dataclasses, never a model, so drawing is kept apart from computing. `save_html` writes a
self-contained file (plotly.js inlined, no CDN), so figures open offline. Every figure function is
importable from here (`sl.figures.kl_per_token(...)`); the submodules group them by result type.
"""

from ._html import save_html
from .breakdown import breakdown_curves
from .composition import segment_shift_bars, shift_bars
from .controls import grouped_ci_bars, real_vs_random, strength_band_curve, transition_matrices
from .demo import demo_figure
from .diversity import diversity_bars
from .eval import accuracy_vs_strength
from .geometry import cosine_heatmaps, pair_scatter
from .heads import head_gap_response
from .interop import llama_cpp_agreement_figure
from .interventions import orthogonalisation_equivalence_figure
from .kl import kl_by_layer, kl_per_token
from .logit_lens import residual_lens_heatmap, vector_lens_table
from .refusal import gate_histogram, layer_sweep_plot, refusal_rate_bars
from .sae import (
    condition_curves,
    decomposition_bar,
    diffusion_bar,
    feature_view,
    overlap_heatmap,
    sparsity_tradeoff,
)
from .spectral import (
    alpha_curves,
    eigengap_profile,
    gap_vs_effect,
    krr_r2_heatmap,
    spectrum_before_after,
)
from .stats import ci_forest, random_control_plot, transition_bars, transition_sankey
from .sweep import kl_by_layer_at_strength, strength_curves, zone_heatmap
from .tokens import save_token_view, token_kl_view

__all__ = [
    "accuracy_vs_strength",
    "alpha_curves",
    "breakdown_curves",
    "ci_forest",
    "condition_curves",
    "cosine_heatmaps",
    "decomposition_bar",
    "demo_figure",
    "diffusion_bar",
    "diversity_bars",
    "eigengap_profile",
    "feature_view",
    "gap_vs_effect",
    "gate_histogram",
    "grouped_ci_bars",
    "head_gap_response",
    "kl_by_layer",
    "kl_by_layer_at_strength",
    "kl_per_token",
    "krr_r2_heatmap",
    "layer_sweep_plot",
    "llama_cpp_agreement_figure",
    "orthogonalisation_equivalence_figure",
    "overlap_heatmap",
    "pair_scatter",
    "random_control_plot",
    "real_vs_random",
    "refusal_rate_bars",
    "residual_lens_heatmap",
    "save_html",
    "save_token_view",
    "segment_shift_bars",
    "shift_bars",
    "sparsity_tradeoff",
    "spectrum_before_after",
    "strength_band_curve",
    "strength_curves",
    "token_kl_view",
    "transition_bars",
    "transition_matrices",
    "transition_sankey",
    "vector_lens_table",
    "zone_heatmap",
]
