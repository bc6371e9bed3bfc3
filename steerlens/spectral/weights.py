"""Spectral weight steering: reshape the singular values of a layer's MLP output matrix.

No gradients and no activations: take the SVD of a layer's MLP output matrix W = U S Vᵀ (W_out,
Hugging Face `mlp.down_proj`; W_out is down_proj transposed, so the two share their singular
values: TransformerLens' layer-norm folding only touches matrices that read from the residual
stream, and steerlens loads without centring writing weights) and rescale each singular value by
a factor 1 + α·z(s), where z is the singular value's z-score within the spectrum (population SD).
With this formula α > 0 grows the singular values above the mean and shrinks those below it (a
more peaked spectrum, lower effective rank), while α < 0 pulls the spectrum towards its mean
(flatter, higher effective rank). Some write-ups call α < 0 "sharpening" and α > 0 "smoothing";
because the words are ambiguous, each result reports the effective rank before and after, so the
direction of a change is measured rather than named. A band restricts the rescaling to the top-k
or the tail (bottom-k) singular values; z-scores are always taken over the whole spectrum. A
factor that would be <= 0 (or below `min_factor`) is clamped to `min_factor`, a small positive
fraction of the original value, and the result says so. An edit is applied inside a context
manager that restores the original weights bit-exactly on every exit path (through the weight-edit
registry `steerlens.backend.weights`, so it refuses to run while another weight edit, such as
`orthogonalised`, is active), and α = 0 leaves the weight untouched (no reconstruction at all).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..backend import Model, runtime, weights
from ..sites import check_layer

Band = str  # "all" | "top" | "tail"; validated with a ValueError
BANDS: tuple[str, ...] = ("all", "top", "tail")
DEFAULT_MIN_FACTOR = 0.01


def check_alpha(alpha: float) -> float:
    """Validate a spectral edit strength.

    Args:
        alpha: the strength, a finite number (not a bool).

    Returns:
        alpha as a float.

    Raises:
        ValueError: if alpha is not a finite number.
    """
    if isinstance(alpha, bool):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}.")
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}.") from None
    if not math.isfinite(a):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}.")
    return a


@dataclass(frozen=True)
class SpectralEdit:
    """Rescale one layer's W_out spectrum by 1 + alpha * z(s), optionally on a band only.

    `shuffle_seed` turns the edit into its control: the same factors, randomly permuted over the
    band's singular values, so the spectrum's shape changes without following the z-scores.

    Attributes:
        layer: the layer whose MLP output matrix is edited.
        alpha: the edit strength (> 0: more peaked spectrum, < 0: flatter).
        band: "all", "top" (the k largest singular values) or "tail" (the k smallest).
        k: the band size for "top" / "tail" (None for "all").
        shuffle_seed: None for the real edit; an int for its shuffled control.
    """

    layer: int
    alpha: float
    band: Band = "all"
    k: int | None = None  # band size for "top"/"tail"
    shuffle_seed: int | None = None  # control: the same factors, randomly permuted over the band

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"SpectralEdit.layer must be an int >= 0, got {self.layer!r}.")
        object.__setattr__(self, "alpha", check_alpha(self.alpha))
        if self.band not in BANDS:
            raise ValueError(f"Unknown band {self.band!r}; valid bands are {list(BANDS)}.")
        if self.band == "all":
            if self.k is not None:
                raise ValueError("k is only used with band='top' or band='tail'.")
        elif isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"band={self.band!r} needs k, an int >= 1, got {self.k!r}.")
        if self.shuffle_seed is not None and (isinstance(self.shuffle_seed, bool)
                                              or not isinstance(self.shuffle_seed, int)):
            raise ValueError(f"shuffle_seed must be an int or None, got {self.shuffle_seed!r}.")

    def shuffled(self, seed: int) -> SpectralEdit:
        """The control edit: this edit's factors applied to randomly permuted singular values.

        Args:
            seed: seed of the permutation.

        Returns:
            A new `SpectralEdit` with `shuffle_seed=seed`.
        """
        return SpectralEdit(self.layer, self.alpha, self.band, self.k, int(seed))

    def to_dict(self) -> dict:
        """The edit as a JSON-ready dict (inverse: `SpectralEdit(**d)`).

        Returns:
            A dict of the five fields.
        """
        return {"layer": self.layer, "alpha": self.alpha, "band": self.band, "k": self.k,
                "shuffle_seed": self.shuffle_seed}


@dataclass(frozen=True)
class SpectralConfig:
    """Edits to several layers (one each), each with its own alpha and band.

    Attributes:
        edits: the per-layer edits; each layer at most once.
        name: a label for results and figures (e.g. "hybrid").
        min_factor: the smallest factor a singular value may be multiplied by, in (0, 1].
    """

    edits: tuple[SpectralEdit, ...]
    name: str = "custom"
    min_factor: float = DEFAULT_MIN_FACTOR

    def __post_init__(self) -> None:
        object.__setattr__(self, "edits", tuple(self.edits))
        if not self.edits or not all(isinstance(e, SpectralEdit) for e in self.edits):
            raise ValueError("SpectralConfig needs at least one SpectralEdit.")
        layers = [e.layer for e in self.edits]
        if len(set(layers)) != len(layers):
            raise ValueError(f"Each layer may appear once in a SpectralConfig; got layers {layers}.")
        mf = float(self.min_factor)
        if not math.isfinite(mf) or not 0.0 < mf <= 1.0:
            raise ValueError(f"min_factor must be in (0, 1], got {self.min_factor!r}.")

    @classmethod
    def from_alphas(cls, alphas: Mapping[int, float], name: str = "custom", band: Band = "all",
                    k: int | None = None, min_factor: float = DEFAULT_MIN_FACTOR) -> SpectralConfig:
        """One edit per layer: {layer: alpha}.

        Args:
            alphas: layer -> alpha.
            name: the config's label.
            band: the band every edit uses.
            k: the band size for "top" / "tail".
            min_factor: the clamping floor for factors.

        Returns:
            The config, edits sorted by layer.
        """
        return cls(tuple(SpectralEdit(int(layer), a, band, k) for layer, a in sorted(alphas.items())),
                   name, min_factor)

    @classmethod
    def from_dict(cls, d: Mapping) -> SpectralConfig:
        """Rebuild a config from `to_dict()` output.

        Args:
            d: a dict with "edits" (and optionally "name", "min_factor").

        Returns:
            The config.
        """
        return cls(tuple(SpectralEdit(**e) for e in d["edits"]), d.get("name", "custom"),
                   d.get("min_factor", DEFAULT_MIN_FACTOR))

    def to_dict(self) -> dict:
        """The config as a JSON-ready dict.

        Returns:
            A dict with name, min_factor and the edits.
        """
        return {"name": self.name, "min_factor": self.min_factor,
                "edits": [e.to_dict() for e in self.edits]}

    @property
    def layers(self) -> tuple[int, ...]:
        """The edited layers, in edit order."""
        return tuple(e.layer for e in self.edits)


# The published "hybrid" configuration (for a model with at least 25 layers).
HYBRID = SpectralConfig.from_alphas({15: -0.2, **dict.fromkeys(range(16, 25), 0.3)}, name="hybrid")


def rescale_spectrum(
    s: Float[Tensor, " k"],
    alpha: float,
    band: Band = "all",
    k: int | None = None,
    min_factor: float = DEFAULT_MIN_FACTOR,
    shuffle_seed: int | None = None,
) -> tuple[Float[Tensor, " k"], Float[Tensor, " k"], int]:
    """New singular values, the factors applied and how many factors were clamped.

    `s` is in descending order (as from an SVD). factor = 1 + alpha * (s - mean) / sd on the band,
    1 elsewhere; factors below min_factor are clamped to min_factor. With `shuffle_seed` the band's
    factors are permuted at random first (a control with the same factors but no link to s).

    Args:
        s: singular values, descending.
        alpha: the edit strength.
        band: "all", "top" or "tail".
        k: the band size for "top" / "tail".
        min_factor: the clamping floor for factors.
        shuffle_seed: permute the band's factors with this seed (the control); None for the edit.

    Returns:
        (new singular values in float64, the factors, the number of clamped factors).

    Raises:
        ValueError: for an invalid alpha, band or k, or a spectrum with fewer than 2 values.
    """
    edit = SpectralEdit(0, alpha, band, k, shuffle_seed)
    if s.ndim != 1 or s.numel() < 2:
        raise ValueError(f"A spectrum needs at least 2 singular values, got shape {tuple(s.shape)}.")
    s64 = s.to(torch.float64)
    sd = s64.std(unbiased=False)
    z = (s64 - s64.mean()) / sd if sd > 0 else torch.zeros_like(s64)
    in_band = torch.zeros_like(s64, dtype=torch.bool)
    if edit.band == "all":
        in_band[:] = True
    elif edit.band == "top":
        in_band[: edit.k] = True
    else:
        in_band[-edit.k:] = True
    factor = torch.where(in_band, 1.0 + edit.alpha * z, torch.ones_like(z))
    if edit.shuffle_seed is not None:
        idx = torch.nonzero(in_band).flatten()
        gen = torch.Generator().manual_seed(edit.shuffle_seed)
        factor[idx] = factor[idx[torch.randperm(idx.numel(), generator=gen)]]
    clamped = factor < min_factor
    factor = torch.where(clamped, torch.full_like(factor, min_factor), factor)
    return s64 * factor, factor, int(clamped.sum())


def effective_rank(s: np.ndarray) -> float:
    """exp of the entropy of the normalised singular values (Roy & Vetterli 2007).

    Args:
        s: singular values (zeros are ignored).

    Returns:
        The effective rank, between 1 and the number of nonzero values.
    """
    p = np.asarray(s, dtype=float)
    p = p[p > 0] / p[p > 0].sum()
    return float(np.exp(-(p * np.log(p)).sum()))


@dataclass(frozen=True)
class LayerSVD:
    """SVD of one layer's W_out in float64, with a fingerprint of the weight it came from.

    Attributes:
        layer: the layer.
        u: left singular vectors, [d_mlp, k].
        s: singular values, descending, [k].
        vh: right singular vectors, [k, d_model].
        fingerprint: (sum, sum of squares) of the weight, to detect a stale SVD.
    """

    layer: int
    u: Tensor
    s: Tensor
    vh: Tensor
    fingerprint: tuple[float, float]


def _fingerprint(w: Tensor) -> tuple[float, float]:
    w64 = w.detach().to(torch.float64)
    return float(w64.sum()), float((w64 * w64).sum())


def mlp_out_svd(model: Model, layer: int) -> LayerSVD:
    """SVD of a layer's MLP output matrix W_out [d_mlp, d_model] (float64, thin).

    Args:
        model (Model): the model.
        layer: the layer.

    Returns:
        The `LayerSVD`, reusable via `spectral_steering(..., svds=...)` while the weight is
        unchanged.

    Raises:
        ValueError: if the layer is out of range or has no MLP output matrix.
    """
    check_layer(model, layer)
    w = runtime.mlp_out_weight(model, layer).detach()
    u, s, vh = torch.linalg.svd(w.to(torch.float64), full_matrices=False)
    return LayerSVD(layer, u, s, vh, _fingerprint(w))


@dataclass(frozen=True)
class LayerEditReport:
    """What an edit did to one layer: spectra before/after and any clamping.

    Attributes:
        layer: the layer.
        alpha: the edit strength.
        band: the band edited.
        k: the band size (None for "all").
        n_clamped: how many factors were clamped to min_factor.
        s_before: singular values before, descending.
        s_after: singular values after, aligned with s_before (so not always sorted).
        applied: False for an exact no-op (alpha = 0), where the weight is untouched.
    """

    layer: int
    alpha: float
    band: str
    k: int | None
    n_clamped: int
    s_before: np.ndarray  # descending
    s_after: np.ndarray  # aligned with s_before (same singular vectors), so not always sorted
    applied: bool  # False for an exact no-op (alpha = 0), where the weight is untouched

    @property
    def effective_rank_before(self) -> float:
        """Effective rank of the spectrum before the edit."""
        return effective_rank(self.s_before)

    @property
    def effective_rank_after(self) -> float:
        """Effective rank of the spectrum after the edit."""
        return effective_rank(self.s_after)

    def to_dict(self) -> dict:
        """The report as a JSON-ready dict (effective ranks and top singular values, not spectra).

        Returns:
            A dict of the edit settings, clamping and the before/after summaries.
        """
        return {"layer": self.layer, "alpha": self.alpha, "band": self.band, "k": self.k,
                "n_clamped": self.n_clamped, "applied": self.applied,
                "effective_rank_before": self.effective_rank_before,
                "effective_rank_after": self.effective_rank_after,
                "top_singular_before": float(self.s_before[0]),
                "top_singular_after": float(self.s_after.max())}


@dataclass(frozen=True)
class SpectralEditResult:
    """Per-layer reports of one applied SpectralConfig.

    Index it by layer (`result[12]`) for that layer's `LayerEditReport`.

    Attributes:
        model: the model's id.
        config: the config applied.
        layers: one report per edited layer.
        warnings: messages about clamped factors.
    """

    model: str
    config: SpectralConfig
    layers: tuple[LayerEditReport, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def n_clamped(self) -> int:
        """Total clamped factors over all layers."""
        return sum(r.n_clamped for r in self.layers)

    @property
    def clamped(self) -> bool:
        """Whether any factor was clamped."""
        return self.n_clamped > 0

    def __getitem__(self, layer: int) -> LayerEditReport:
        for r in self.layers:
            if r.layer == layer:
                return r
        raise KeyError(f"Layer {layer} was not edited; edited layers are {self.config.layers}.")

    def to_dict(self) -> dict:
        """The result as a JSON-ready dict.

        Returns:
            A dict with the model, the config, n_clamped, warnings and the per-layer reports.
        """
        return {"model": self.model, "config": self.config.to_dict(), "n_clamped": self.n_clamped,
                "warnings": list(self.warnings), "layers": [r.to_dict() for r in self.layers]}


def _as_config(config: SpectralConfig | SpectralEdit | Sequence[SpectralEdit]) -> SpectralConfig:
    if isinstance(config, SpectralConfig):
        return config
    if isinstance(config, SpectralEdit):
        return SpectralConfig((config,))
    if isinstance(config, (list, tuple)):
        return SpectralConfig(tuple(config))
    raise ValueError(
        "spectral_steering takes a SpectralConfig, a SpectralEdit or a list of SpectralEdits; got "
        f"{type(config).__name__}."
    )


def plan_edit(
    model: Model,
    config: SpectralConfig | SpectralEdit | Sequence[SpectralEdit],
    svds: Mapping[int, LayerSVD] | None = None,
) -> tuple[SpectralEditResult, dict[int, Tensor]]:
    """Validate a config and compute the edited weights without touching the model.

    Args:
        model (Model): the model.
        config: a `SpectralConfig`, one `SpectralEdit` or a list of edits.
        svds: precomputed `mlp_out_svd`s by layer (checked against the current weights).

    Returns:
        (the `SpectralEditResult`, layer -> new W_out for every layer with alpha != 0).

    Raises:
        ValueError: for an invalid config or layer, or a cached SVD that no longer matches the
            weight.
    """
    config = _as_config(config)
    for e in config.edits:
        check_layer(model, e.layer)
        runtime.mlp_out_weight(model, e.layer)  # raises if the layer has no W_out
    reports, new_weights, warnings = [], {}, []
    for e in config.edits:
        w = runtime.mlp_out_weight(model, e.layer)
        svd = (svds or {}).get(e.layer)
        if svd is not None and svd.fingerprint != _fingerprint(w):
            raise ValueError(f"The cached SVD of layer {e.layer} does not match its current W_out.")
        svd = svd or mlp_out_svd(model, e.layer)
        band_k = min(e.k, svd.s.numel()) if e.k is not None else None
        s_new, _, n_clamped = rescale_spectrum(svd.s, e.alpha, e.band, band_k, config.min_factor,
                                               e.shuffle_seed)
        applied = e.alpha != 0.0
        if applied:
            new_weights[e.layer] = ((svd.u * s_new) @ svd.vh).to(w.dtype)
        else:
            s_new = svd.s
        if n_clamped:
            warnings.append(
                f"Layer {e.layer}: alpha={e.alpha} would make {n_clamped} singular value(s) "
                f"non-positive; their factors were clamped to min_factor={config.min_factor}."
            )
        reports.append(LayerEditReport(e.layer, e.alpha, e.band, band_k, n_clamped,
                                       svd.s.cpu().numpy(), s_new.cpu().numpy(), applied))
    result = SpectralEditResult(runtime.model_id(model), config, tuple(reports), tuple(warnings))
    return result, new_weights


@contextlib.contextmanager
def spectral_steering(
    model: Model,
    config: SpectralConfig | SpectralEdit | Sequence[SpectralEdit],
    svds: Mapping[int, LayerSVD] | None = None,
) -> Iterator[SpectralEditResult]:
    """Edit W_out spectra inside the block; the original weights are restored bit-exactly on exit.

    `svds` optionally supplies precomputed `mlp_out_svd`s (checked against the current weights),
    which saves the decomposition when sweeping many alphas on one layer.

    Args:
        model (Model): the model; its weights are edited in place and restored on every exit path.
        config: a `SpectralConfig`, one `SpectralEdit` or a list of edits.
        svds: precomputed `mlp_out_svd`s by layer.

    Yields:
        The `SpectralEditResult` describing what was applied.

    Raises:
        ValueError: as `plan_edit`, or when the model's weights are already being edited (by
            `orthogonalised` or another spectral edit), before the model is touched.
    """
    result, new_weights = plan_edit(model, config, svds)
    values = {weights.mlp_out_key(layer): w for layer, w in new_weights.items()}
    with weights.edited(model, values, "spectral_steering"):
        yield result
