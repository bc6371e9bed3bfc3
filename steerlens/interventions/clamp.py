"""SAE feature clamping: set chosen SAE features to a value (or scale them), keeping the SAE's error.

At the hook the SAE reads (a residual-stream site), the activation x is encoded, f = encode(x), and
the chosen features S are moved to their clamped values f'_S: `value=v` sets them to v (one number,
or one per feature), `scale=c` multiplies them by c. Rather than replacing x by the SAE's
reconstruction, the edit is added to x itself,

    x <- x + s * (f'_S - f_S) @ W_dec[S],

so the SAE's reconstruction error (x - decode(f)) is kept and clamping nothing changes nothing
bit for bit: an empty feature list, `scale=1`, a value equal to the current activation or strength
0 add exactly zero. The strength s interpolates linearly in feature space between no clamp (0) and
the full clamp (1), f_S + s (f'_S - f_S); values above 1 extrapolate, per-row strengths clamp each
row by its own amount, and position modes and schedules mean what they mean for additive steering
(`positions="all"` clamps every position, as AxBench-style clamping does). Features are encoded
from the activation as it reaches the clamp, so a clamp sees the edits that ran before it at the
same hook (ablations, kind order 0; clamps run at order 1). For SAELens `StandardSAE`s with a
ReLU and no activation normalisation only the chosen encoder columns are computed; any other SAE
(JumpReLU, top-k, normalised inputs...) goes through its own `encode`/`decode`, with the edit
`decode(f') - decode(f)`. Saving records how the SAE was loaded (`source`: a shipped name, a
SAELens-format directory or a pretrained release with `sae_id`), never the SAE's weights, plus a
fingerprint (SHA-256 of the chosen decoder rows, d_in, d_sae and hook), checked on load.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from ..backend import Model, runtime
from ..sae.load import check_sae, load_sae
from ..sae.site import d_sae, sae_hook_name
from .base import ORDERS, BoundIntervention, Intervention, PositionContext, weight


def _check_ids(features, sae) -> tuple[int, ...]:
    """Feature ids as a tuple of distinct ints in 0..d_sae-1 (empty allowed: clamp nothing)."""
    n = d_sae(sae)
    if isinstance(features, int) and not isinstance(features, bool):
        features = [features]
    if isinstance(features, (str, bytes)) or not hasattr(features, "__iter__"):
        raise ValueError(f"FeatureClamp.features must be a feature id or a sequence of ids (valid "
                         f"ids are 0..{n - 1}), got {type(features).__name__}.")
    out = []
    for f in list(features):
        if hasattr(f, "item") and getattr(f, "ndim", 0) == 0:
            f = f.item()
        if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < n:
            raise ValueError(f"Feature id {f!r} is out of range: this SAE has {n} features, valid "
                             f"ids are 0..{n - 1}.")
        out.append(int(f))
    if len(set(out)) != len(out):
        raise ValueError(f"Feature ids must be distinct; repeated: "
                         f"{sorted({f for f in out if out.count(f) > 1})}.")
    return tuple(out)


def _finite(v: object, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ValueError(f"{what} must be a finite number, got {v!r}.")
    return float(v)


def _model_name_ok(sae_name: str | None, model_id: str) -> bool:
    if not sae_name:
        return True

    def norm(s: str) -> str:
        return s.split("/")[-1].lower()

    return norm(sae_name) == norm(model_id)


def fast_encodable(sae) -> bool:
    """Whether only the chosen encoder columns need computing: a SAELens `StandardSAE` with a ReLU,
    no activation normalisation and no reshaping (the shipped SAEs and `random_sae`).

    Args:
        sae (sae_lens.SAE): the SAE.

    Returns:
        True when `relu((x - b_dec) @ W_enc[:, S] + b_enc[S])` equals `encode(x)[..., S]`.
    """
    cfg = sae.cfg
    return (type(sae).__name__ == "StandardSAE"
            and getattr(cfg, "normalize_activations", "none") == "none"
            and getattr(cfg, "reshape_activations", "none") == "none"
            and isinstance(getattr(sae, "activation_fn", None), torch.nn.ReLU))


def sae_fingerprint(sae, features: Sequence[int]) -> str:
    """SHA-256 of what a clamp depends on: d_in, d_sae, the hook and the chosen decoder rows.

    Args:
        sae (sae_lens.SAE): the SAE.
        features: the feature ids.

    Returns:
        A hex digest (checked when a saved clamp reloads its SAE).
    """
    h = hashlib.sha256()
    h.update(f"{int(sae.cfg.d_in)}|{d_sae(sae)}|{sae_hook_name(sae)}|{list(features)}".encode())
    if features:
        rows = sae.W_dec.detach()[torch.tensor(list(features), device=sae.W_dec.device)]
        h.update(rows.float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class FeatureClamp(Intervention):
    """Set chosen SAE features to a value, or scale them, keeping the SAE's reconstruction error.

    Attributes:
        sae: a SAELens `SAE` reading a residual-stream site of the model (shipped, SAELens-format
            directory, or pretrained release; see `steerlens.sae.load_sae`).
        features: the feature ids to clamp (empty: clamp nothing, an exact no-op).
        value: the clamped activation, one number or one per feature (exclusive with `scale`).
        scale: multiply the features' current activations by this (exclusive with `value`).
        source: how `sae` was loaded (a shipped SAE name, a SAELens-format directory, or a
            pretrained release name with `sae_id`); needed only to save the clamp.
        sae_id: the SAE's id within a pretrained release (None otherwise).
        strength: interpolation from no clamp (0) to the full clamp (1); per-row allowed.
        positions: where it applies, one of `POSITION_MODES`.
        start_step: first generated-token index at which it is active.
        stop_step: generated-token index at which it stops (None: never).
        name: a label for `Steerer.set_strength(name, ...)`.
    """

    kind: ClassVar[str] = "clamp"
    order: ClassVar[int] = ORDERS["clamp"]

    sae: Any
    features: Sequence[int] | int
    value: float | Sequence[float] | None = None
    scale: float | None = None
    source: str | None = None
    sae_id: str | None = None
    strength: float = 1.0
    positions: str = "all"
    start_step: int = 0
    stop_step: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        sae = self.sae
        if not hasattr(sae, "W_dec") or not hasattr(getattr(sae, "cfg", None), "d_sae"):
            raise ValueError(f"FeatureClamp.sae must be a SAELens SAE (e.g. from "
                             f"steerlens.sae.load_sae), got {type(sae).__name__}.")
        sae_hook_name(sae)  # a ValueError if the SAE records no hook
        ids = _check_ids(self.features, sae)
        object.__setattr__(self, "features", ids)
        if (self.value is None) == (self.scale is None):
            raise ValueError("FeatureClamp needs exactly one of value= (set the features to a "
                             "number, or one per feature) or scale= (multiply them).")
        if isinstance(self.value, (int, float)):
            object.__setattr__(self, "value", _finite(self.value, "FeatureClamp.value"))
        elif self.value is not None:
            vals = tuple(_finite(v, "Each FeatureClamp.value") for v in self.value)
            if len(vals) != len(ids):
                raise ValueError(f"FeatureClamp.value has {len(vals)} entries for {len(ids)} "
                                 "features; give one number, or one per feature.")
            object.__setattr__(self, "value", vals)
        if self.scale is not None:
            object.__setattr__(self, "scale", _finite(self.scale, "FeatureClamp.scale"))
        if self.source is not None:
            if not isinstance(self.source, (str, Path)) or not str(self.source):
                raise ValueError(f"FeatureClamp.source must be a shipped SAE name, a directory or "
                                 f"a release name, got {self.source!r}.")
            object.__setattr__(self, "source", str(self.source))
        if self.sae_id is not None and (not isinstance(self.sae_id, str) or not self.sae_id):
            raise ValueError(f"FeatureClamp.sae_id must be a non-empty string or None, got "
                             f"{self.sae_id!r}.")
        self.check_common()

    @property
    def hook(self) -> str:
        """The hook name the SAE reads (and the clamp edits)."""
        return sae_hook_name(self.sae)

    def values(self) -> tuple[float, ...] | None:
        """The clamp value of each feature (None in scale mode).

        Returns:
            One value per feature, or None.
        """
        if self.value is None:
            return None
        if isinstance(self.value, tuple):
            return self.value
        return (float(self.value),) * len(self.features)

    def check_model(self, model: Model) -> None:
        """Refuse an SAE for another model, site or width.

        Args:
            model (Model): the model.

        Raises:
            ValueError: if the SAE's hook is not a residual-stream site of `model`, its d_in is not
                the model's width, or its metadata names another model.
        """
        check_sae(model, self.sae)
        meta_name = getattr(self.sae.cfg.metadata, "model_name", None)
        if not _model_name_ok(meta_name, runtime.model_id(model)):
            raise ValueError(f"This SAE was trained on {meta_name!r} but the model is "
                             f"{runtime.model_id(model)!r}; load the SAE made for this model.")

    def sites(self, model: Model) -> list[tuple[str, int]]:
        """The SAE's hook.

        Args:
            model (Model): the model.

        Returns:
            [(hook name, layer)].
        """
        site = check_sae(model, self.sae)
        return [(runtime.hook_name(site.layer, site.component), site.layer)]

    def bind(self, model: Model) -> BoundIntervention:
        """Precompute the chosen decoder rows (and encoder columns) on the model's device.

        Args:
            model (Model): the model.

        Returns:
            The bound clamp.
        """
        self.check_model(model)
        return _BoundClamp(self, runtime.model_device(model), runtime.model_dtype(model))

    def max_push(self) -> float:
        """A bound on |entry| written in value mode: sum over features of |value| x max |W_dec row|.

        Scale mode depends on the activations seen (0.0 is returned; the model's own activations
        bound it).

        Returns:
            The bound.
        """
        vals = self.values()
        if vals is None or not self.features:
            return 0.0
        rows = self.sae.W_dec.detach()[torch.tensor(self.features, device=self.sae.W_dec.device)]
        amax = rows.double().abs().amax(-1).cpu()
        return float((torch.tensor(vals, dtype=torch.float64).abs() * amax).sum())

    def to_dict(self) -> dict[str, Any]:
        """Own fields for saving: how to reload the SAE, the features, value/scale, fingerprint.

        Returns:
            A JSON-ready dict.

        Raises:
            ValueError: if `source` is None (the SAE itself is never saved).
        """
        if self.source is None:
            raise ValueError("Saving a FeatureClamp needs source= (the shipped SAE name, the "
                             "SAELens-format directory, or the release name with sae_id=) that "
                             "the SAE was loaded from; the SAE's weights are not saved.")
        vals = self.values()
        return {"source": self.source, "sae_id": self.sae_id, "features": list(self.features),
                "value": None if vals is None else list(vals),
                "value_is_scalar": not isinstance(self.value, tuple),
                "scale": self.scale, "hook": self.hook, "d_in": int(self.sae.cfg.d_in),
                "d_sae": d_sae(self.sae), "fingerprint": sae_fingerprint(self.sae, self.features)}

    @classmethod
    def from_saved(cls, fields: Mapping[str, Any], tensors: Mapping[str, Tensor],
                   common: Mapping[str, Any]) -> FeatureClamp:
        """Reload the SAE from `source` (on CPU) and check its fingerprint.

        Args:
            fields: what `to_dict` returned.
            tensors: unused (a clamp saves no tensors).
            common: the common fields.

        Returns:
            The clamp.

        Raises:
            ValueError: if the SAE cannot be loaded or is not the one the clamp was saved with.
        """
        sae = load_sae(fields["source"], fields.get("sae_id"))
        feats = [int(f) for f in fields["features"]]
        found = sae_fingerprint(sae, feats) if int(sae.cfg.d_sae) > max(feats, default=-1) else ""
        if found != fields.get("fingerprint"):
            raise ValueError(f"The SAE loaded from {fields['source']!r} is not the one this clamp "
                             f"was saved with (hook {fields.get('hook')!r}, d_sae "
                             f"{fields.get('d_sae')}): its decoder rows or shape differ.")
        value = fields.get("value")
        if value is not None and fields.get("value_is_scalar", False):
            value = float(value[0]) if value else 0.0
        return cls(sae, feats, value=value, scale=fields.get("scale"), source=fields["source"],
                   sae_id=fields.get("sae_id"), **common)


def clamp_delta(f_s: Float[Tensor, "*batch k"], w_dec_s: Float[Tensor, "k d_in"],
                value: Float[Tensor, " k"] | None, scale: float | None
                ) -> Float[Tensor, "*batch d_in"]:
    """The full-strength edit `(f'_S - f_S) @ W_dec[S]` for value or scale clamping.

    Args:
        f_s: the chosen features' current activations, [..., k].
        w_dec_s: their decoder rows, [k, d_in].
        value: clamp values [k] (value mode), or None.
        scale: the factor (scale mode), or None.

    Returns:
        The edit to add to the activation, [..., d_in] (exactly zero where f'_S equals f_S).
    """
    target = value.to(f_s.dtype).expand_as(f_s) if value is not None else f_s * scale
    return (target - f_s).to(w_dec_s.dtype) @ w_dec_s


class _BoundClamp(BoundIntervention):
    def __init__(self, clamp: FeatureClamp, device, dtype: torch.dtype) -> None:
        sae = clamp.sae
        self.sae = sae
        self.ids = list(clamp.features)
        self.fast = fast_encodable(sae)
        self.scale = clamp.scale
        vals = clamp.values()
        sdev, sdt = sae.W_dec.device, sae.W_dec.dtype
        self.sae_dtype, self.sae_device = sdt, sdev
        idx = torch.tensor(self.ids, dtype=torch.long, device=sdev)
        with torch.inference_mode():
            self.value = None if vals is None else torch.tensor(vals, dtype=sdt, device=sdev)
            self.w_dec = sae.W_dec.detach()[idx].to(device, dtype)  # [k, d_in]
            if self.fast:
                self.w_enc = sae.W_enc.detach()[:, idx]  # [d_in, k]
                self.b_enc = sae.b_enc.detach()[idx]
                apply = float(bool(getattr(sae.cfg, "apply_b_dec_to_input", True)))
                self.b_dec = sae.b_dec.detach() * apply

    def encode(self, x: Tensor) -> Tensor:
        """The chosen features' activations, [..., k], in the SAE's dtype."""
        x = x.to(self.sae_device, self.sae_dtype)
        if self.fast:
            return torch.relu((x - self.b_dec) @ self.w_enc + self.b_enc)
        return self.sae.encode(x)[..., self.ids]

    def apply(self, act: Tensor, layer: int, hook_name: str, scale: float | Tensor,
              mask: Tensor | None, context: PositionContext) -> Tensor:
        if not self.ids:
            return act
        if self.fast:
            f_s = self.encode(act)
            delta = clamp_delta(f_s, self.w_dec.to(f_s.dtype), self.value, self.scale)
        else:
            x = act.to(self.sae_device, self.sae_dtype)
            f = self.sae.encode(x)
            new = f.clone()
            cur = f[..., self.ids]
            new[..., self.ids] = (self.value.expand_as(cur) if self.value is not None
                                  else cur * self.scale)
            delta = self.sae.decode(new) - self.sae.decode(f)
        delta = delta.to(act.device, act.dtype)
        return act + weight(act, scale, mask) * delta
