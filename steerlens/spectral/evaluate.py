"""Evaluating spectral weight edits with the measurement tools: perplexity, KL and behaviour.

Each configuration is applied with `spectral_steering` and measured against the unedited model
on the same inputs: perplexity of the held-out text steerlens ships (`load_heldout`; per text
mean NLL, paired edited - baseline), next-token KL (bits) from the unedited to the edited model
after each prompt's last token, and optionally a behaviour score of greedy continuations (paired
edited - baseline per prompt). Every estimate carries a percentile-bootstrap CI and its n.
`spectral_sweep` runs a layer x alpha grid (one SVD per layer, reused across alphas), plus any
extra configurations and, with `controls=True`, the shuffled-factor control of each edit.
A configuration "improves" a behaviour when the CI of its paired score change lies above zero and
its perplexity stays within the baseline perplexity's CI. Results stream to `out_dir` (one JSON
per configuration, atomically) so an interrupted sweep resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..backend import Model, runtime
from ..extract import resolve_chat
from ..generate import generate
from ..io import atomic_write_text
from ..measures import get_scorer, kl_bits, safe_score, text_perplexity
from ..progress import progress
from ..sites import check_layer
from ..stats import CI, bootstrap_ci
from .weights import (
    Band,
    LayerSVD,
    SpectralConfig,
    SpectralEdit,
    check_alpha,
    mlp_out_svd,
    spectral_steering,
)


def load_heldout(n: int | None = None, max_words: int | None = None) -> list[str]:
    """The shipped held-out prose (original encyclopedic paragraphs), one text per paragraph.

    Args:
        n: keep the first n paragraphs (None: all).
        max_words: truncate each paragraph to this many words (None: no limit).

    Returns:
        The paragraphs.

    Raises:
        ValueError: if n is outside 1..(number of shipped paragraphs).
    """
    text = resources.files("steerlens").joinpath("data/heldout.txt").read_text(encoding="utf-8")
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    if n is not None:
        if not 1 <= n <= len(paras):
            raise ValueError(f"n must be in 1..{len(paras)} (paragraphs shipped), got {n}.")
        paras = paras[:n]
    if max_words is not None:
        paras = [" ".join(p.split()[:max_words]) for p in paras]
    return paras


def _ci_dict(c: CI | None) -> dict | None:
    if c is None:
        return None
    return {"estimate": c.estimate, "low": c.low, "high": c.high, "n": c.n}


def _ci_from(d: dict | None) -> CI | None:
    if d is None:
        return None
    return CI(d["estimate"], d["low"], d["high"], d["n"], math.nan)


@dataclass(frozen=True)
class SpectralPoint:
    """Measurements of one configuration (or of the unedited baseline, `config=None`).

    Attributes:
        label: the configuration's name ("baseline" for the unedited model).
        config: the configuration, or None for the baseline.
        n_clamped: factors clamped to min_factor.
        nll: mean NLL (nats/token) per held-out text, with CI.
        delta_nll: paired edited - baseline NLL per text (None for the baseline).
        kl_bits: next-token KL (bits) from the unedited to the edited model per prompt.
        score: behaviour score of greedy continuations (None without a scorer).
        delta_score: paired edited - baseline score per prompt.
        effective_rank_change: mean over edited layers of effective rank after - before.
        control: True for a shuffled-factor control.
    """

    label: str
    config: SpectralConfig | None
    n_clamped: int
    nll: CI  # mean NLL (nats/token) per held-out text
    delta_nll: CI | None  # paired edited - baseline
    kl_bits: CI | None
    score: CI | None
    delta_score: CI | None
    effective_rank_change: float  # mean over edited layers, after - before
    control: bool = False  # a shuffled-factor control

    @property
    def perplexity(self) -> float:
        """exp of the mean held-out NLL."""
        return math.exp(self.nll.estimate)

    @property
    def perplexity_ci(self) -> tuple[float, float]:
        """The NLL CI mapped through exp: (low, high) perplexity."""
        return math.exp(self.nll.low), math.exp(self.nll.high)

    @property
    def layer(self) -> int | None:
        """The edited layer of a single-layer configuration (None otherwise)."""
        return self.config.edits[0].layer if self.config and len(self.config.edits) == 1 else None

    @property
    def alpha(self) -> float | None:
        """The alpha of a single-layer configuration (None otherwise)."""
        return self.config.edits[0].alpha if self.config and len(self.config.edits) == 1 else None

    def to_dict(self) -> dict:
        """The point as a JSON-ready dict (CIs as estimate/low/high/n).

        Returns:
            A dict of every field plus perplexity and its CI.
        """
        return {
            "label": self.label, "config": self.config.to_dict() if self.config else None,
            "n_clamped": self.n_clamped, "nll": _ci_dict(self.nll),
            "delta_nll": _ci_dict(self.delta_nll), "kl_bits": _ci_dict(self.kl_bits),
            "score": _ci_dict(self.score), "delta_score": _ci_dict(self.delta_score),
            "effective_rank_change": self.effective_rank_change, "control": self.control,
            "perplexity": self.perplexity, "perplexity_ci": list(self.perplexity_ci),
        }

    @classmethod
    def from_dict(cls, d: dict) -> SpectralPoint:
        """Rebuild a point from `to_dict()` output (CIs lose their SE).

        Args:
            d: the dict `to_dict` wrote.

        Returns:
            The point.
        """
        return cls(d["label"], SpectralConfig.from_dict(d["config"]) if d["config"] else None,
                   d["n_clamped"], _ci_from(d["nll"]), _ci_from(d["delta_nll"]),
                   _ci_from(d["kl_bits"]), _ci_from(d["score"]), _ci_from(d["delta_score"]),
                   d["effective_rank_change"], d.get("control", False))


@dataclass(frozen=True)
class SpectralSweepResult:
    """A baseline and measured configurations on one model, texts and prompts.

    Attributes:
        model: the model's id.
        baseline: the unedited model's measurements.
        points: one measurement per configuration (controls included).
        n_texts: number of held-out texts for perplexity.
        n_prompts: number of prompts for KL and scores.
        scorer: the scorer's label (None without one).
        max_new_tokens: tokens generated per scored continuation.
    """

    model: str
    baseline: SpectralPoint
    points: tuple[SpectralPoint, ...]
    n_texts: int
    n_prompts: int
    scorer: str | None
    max_new_tokens: int

    def improves(self, point: SpectralPoint) -> bool:
        """Score change CI above 0 and perplexity within the baseline perplexity's CI.

        Args:
            point: one of this result's points.

        Returns:
            True when the configuration improves the behaviour "for free".
        """
        if point.delta_score is None or not math.isfinite(point.delta_score.low):
            return False
        return point.delta_score.low > 0 and point.perplexity <= self.baseline.perplexity_ci[1]

    @property
    def improvements(self) -> tuple[SpectralPoint, ...]:
        """The points that `improves` accepts."""
        return tuple(p for p in self.points if self.improves(p))

    def table(self) -> pd.DataFrame:
        """One row per point (baseline first) with every estimate and its CI.

        Returns:
            A DataFrame with label, layer, alpha, control, perplexity, each measure with
            `_low`/`_high` columns and `improves`.
        """
        rows = []
        for p in (self.baseline, *self.points):
            row = {"label": p.label, "layer": p.layer, "alpha": p.alpha, "control": p.control,
                   "n_clamped": p.n_clamped, "perplexity": p.perplexity,
                   "ppl_low": p.perplexity_ci[0], "ppl_high": p.perplexity_ci[1],
                   "effective_rank_change": p.effective_rank_change}
            for name in ("delta_nll", "kl_bits", "score", "delta_score"):
                c = getattr(p, name)
                row.update({name: c.estimate if c else math.nan,
                            f"{name}_low": c.low if c else math.nan,
                            f"{name}_high": c.high if c else math.nan})
            row["improves"] = p is not self.baseline and self.improves(p)
            rows.append(row)
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        """The result as a JSON-ready dict.

        Returns:
            A dict with the settings, the baseline, every point and the improving labels.
        """
        return {"model": self.model, "n_texts": self.n_texts, "n_prompts": self.n_prompts,
                "scorer": self.scorer, "max_new_tokens": self.max_new_tokens,
                "baseline": self.baseline.to_dict(),
                "points": [p.to_dict() for p in self.points],
                "improvements": [p.label for p in self.improvements]}


class _Measurer:
    """Measures the model as it currently is, against baseline values taken at construction."""

    def __init__(self, model: Model, texts, prompts, scorer, max_new_tokens, chat, batch_size,
                 n_boot, seed):
        self.model, self.texts, self.prompts = model, list(texts), list(prompts)
        self.scorer, self.max_new_tokens, self.chat = scorer, max_new_tokens, chat
        self.batch_size, self.n_boot, self.seed = batch_size, n_boot, seed
        self.base_nll, self.base_logits, self.base_scores = self._raw()

    def _ci(self, values) -> CI:
        return bootstrap_ci(np.asarray(values, float), n_boot=self.n_boot, seed=self.seed,
                            nan_policy="omit")

    def _raw(self):
        ppl = text_perplexity(self.model, self.texts, batch_size=self.batch_size)
        nll = np.asarray(ppl.nll, float)
        logits = None
        if self.prompts:
            batch = runtime.encode_prompts(self.model, self.prompts, chat=self.chat)
            resid = runtime.forward(self.model, batch, stop_at_layer=runtime.n_layers(self.model),
                                    return_type=None)
            logits = runtime.unembed(self.model, resid[:, -1]).double().cpu()
        scores = None
        if self.scorer is not None:
            gen = generate(self.model, self.prompts, None, max_new_tokens=self.max_new_tokens,
                           chat=self.chat)
            scores, _ = safe_score(self.scorer, gen.texts)
        return nll, logits, scores

    def point(self, label: str, config: SpectralConfig | None, n_clamped: int, erank: float,
              control: bool = False) -> SpectralPoint:
        if config is None:
            nll, logits, scores = self.base_nll, self.base_logits, self.base_scores
        else:
            nll, logits, scores = self._raw()
        kl = self._ci(kl_bits(self.base_logits, logits).numpy()) if logits is not None else None
        return SpectralPoint(
            label=label, config=config, n_clamped=n_clamped, nll=self._ci(nll),
            delta_nll=None if config is None else self._ci(nll - self.base_nll),
            kl_bits=kl, score=self._ci(scores) if scores is not None else None,
            delta_score=(self._ci(scores - self.base_scores)
                         if scores is not None and config is not None else None),
            effective_rank_change=erank, control=control,
        )


def _fingerprint(model: Model, texts, prompts, scorer_label, max_new_tokens, chat, n_boot, seed) -> str:
    blob = json.dumps([runtime.model_id(model), texts, prompts, scorer_label, max_new_tokens, chat,
                       n_boot, seed])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluate_configs(
    model: Model,
    configs: Sequence[SpectralConfig],
    *,
    texts: Sequence[str] | None = None,
    prompts: Sequence[str] = (),
    scorer=None,
    max_new_tokens: int = 24,
    chat: bool | None = None,
    controls: bool = False,
    control_seed: int = 0,
    batch_size: int = 16,
    n_boot: int = 2000,
    seed: int = 0,
    out_dir: str | Path | None = None,
    show_progress: bool = True,
) -> SpectralSweepResult:
    """Measure each configuration against the unedited model (see the module docstring).

    `texts` default to the shipped held-out paragraphs. `scorer` (a spec for
    `measures.get_scorer` or a callable) needs `prompts`. `controls` adds, per configuration, the
    same edits with shuffled factors (seeded by `control_seed`).

    Args:
        model (Model): the model; each configuration is applied and undone in turn.
        configs: the configurations to measure.
        texts: held-out texts for perplexity (None: `load_heldout()`).
        prompts: prompts for next-token KL and scored continuations.
        scorer (str | dict | Callable | None): the behaviour scorer, or None for no score.
        max_new_tokens: tokens per greedy continuation.
        chat: chat-template the prompts; None = auto.
        controls: add each configuration's shuffled-factor control.
        control_seed: seed of the first control's permutation.
        batch_size: most texts per forward.
        n_boot: bootstrap resamples per CI.
        seed: bootstrap seed.
        out_dir: stream one JSON per configuration here and resume from it (None: no files).
        show_progress: show a progress bar.

    Returns:
        A `SpectralSweepResult`.

    Raises:
        ValueError: if a config is not a `SpectralConfig` or names an invalid layer, or a scorer is
            given without prompts.
    """
    configs = list(configs)
    if not all(isinstance(c, SpectralConfig) for c in configs):
        raise ValueError("configs must be SpectralConfig objects.")
    texts = load_heldout() if texts is None else list(texts)
    prompts = list(prompts)
    if scorer is not None and not prompts:
        raise ValueError("A scorer needs prompts to generate continuations from.")
    chat = resolve_chat(model, chat, has_prompts=True)
    score_fn = get_scorer(scorer) if scorer is not None else None
    scorer_label = None if scorer is None else (scorer if isinstance(scorer, (str, dict))
                                                 else getattr(scorer, "__name__", "custom"))
    for cfg in configs:  # validate every configuration before any model work
        for e in cfg.edits:
            check_layer(model, e.layer)
            runtime.mlp_out_weight(model, e.layer)
    if controls:
        configs = configs + [
            SpectralConfig(tuple(e.shuffled(control_seed + i) for i, e in enumerate(c.edits)),
                           f"{c.name} (shuffled control)", c.min_factor) for c in configs]
    store = Path(out_dir) / "points" if out_dir is not None else None
    fp = _fingerprint(model, texts, prompts, scorer_label, max_new_tokens, chat, n_boot, seed)
    measurer = _Measurer(model, texts, prompts, score_fn, max_new_tokens, chat, batch_size,
                         n_boot, seed)
    baseline = measurer.point("baseline", None, 0, 0.0)
    svds: dict[int, LayerSVD] = {}
    points = []
    for i, cfg in enumerate(progress(configs, desc="spectral", enabled=show_progress)):
        path = store / f"{i:04d}.json" if store is not None else None
        if path is not None and path.exists():
            saved = json.loads(path.read_text())
            if saved.get("fingerprint") == fp and saved["point"]["config"] == cfg.to_dict():
                points.append(SpectralPoint.from_dict(saved["point"]))
                continue
        for e in cfg.edits:
            if e.layer not in svds:
                svds[e.layer] = mlp_out_svd(model, e.layer)
        with spectral_steering(model, cfg, svds=svds) as res:
            erank = float(np.mean([r.effective_rank_after - r.effective_rank_before
                                   for r in res.layers]))
            control = any(e.shuffle_seed is not None for e in cfg.edits)
            point = measurer.point(cfg.name, cfg, res.n_clamped, erank, control)
        points.append(point)
        if path is not None:
            atomic_write_text(path, json.dumps({"fingerprint": fp, "point": point.to_dict()}))
    return SpectralSweepResult(runtime.model_id(model), baseline, tuple(points), len(texts),
                               len(prompts), None if scorer_label is None else str(scorer_label),
                               max_new_tokens)


def grid_configs(
    layers: Sequence[int], alphas: Sequence[float], band: Band = "all", k: int | None = None
) -> list[SpectralConfig]:
    """One single-layer configuration per (layer, alpha), alpha = 0 skipped (it is the baseline).

    Args:
        layers: the layers.
        alphas: the strengths.
        band: the band every edit uses.
        k: the band size for "top" / "tail".

    Returns:
        The configurations, named "L{layer} a={alpha}".

    Raises:
        ValueError: if an alpha is not a finite number.
    """
    alphas = [check_alpha(a) for a in alphas]
    return [SpectralConfig((SpectralEdit(int(layer), a, band, k),), name=f"L{layer} a={a:+g}")
            for layer in layers for a in alphas if a != 0.0]


def spectral_sweep(
    model: Model,
    layers: Sequence[int],
    alphas: Sequence[float],
    *,
    band: Band = "all",
    k: int | None = None,
    extra: Sequence[SpectralConfig] = (),
    **kwargs,
) -> SpectralSweepResult:
    """A layer x alpha grid of single-layer edits (plus `extra` configurations), measured by
    `evaluate_configs` (keyword arguments pass through).

    Args:
        model (Model): the model.
        layers: the layers to edit, one at a time.
        alphas: the strengths (0 is skipped: it is the baseline).
        band: the band every edit uses.
        k: the band size for "top" / "tail".
        extra: further configurations to measure (e.g. `HYBRID`).
        **kwargs (Any): passed to `evaluate_configs` (texts, prompts, scorer, controls,
            out_dir, ...).

    Returns:
        A `SpectralSweepResult`.
    """
    with torch.no_grad():
        return evaluate_configs(model, [*grid_configs(layers, alphas, band, k), *extra], **kwargs)
