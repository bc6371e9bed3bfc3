"""Evaluating weight edits: held-out NLL vs TransformerLens' own loss, exact zeros at alpha = 0,
resuming from disk, and the shipped held-out text."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from steerlens.spectral import (
    SpectralConfig,
    SpectralEdit,
    evaluate_configs,
    grid_configs,
    load_heldout,
    spectral_steering,
    spectral_sweep,
)

TEXTS = ["Rivers shape the land around them.", "Bread is one of the oldest prepared foods."]
PROMPTS = ["Tell me about tides.", "Describe a glacier."]


def tl_loss(model, text: str) -> float:
    """Reference: TransformerLens' mean next-token loss of one text (BOS prepended)."""
    with torch.no_grad():
        return float(model(model.to_tokens(text), return_type="loss"))


def test_measures_match_reference_and_alpha_zero_is_exact(tiny):
    cfgs = [SpectralConfig((SpectralEdit(0, 0.0),), name="zero"),
            SpectralConfig((SpectralEdit(1, 0.8),), name="edit")]
    res = evaluate_configs(tiny, cfgs, texts=TEXTS, prompts=PROMPTS, scorer=len, max_new_tokens=4,
                           chat=False, n_boot=200, show_progress=False)
    base_ref = np.mean([tl_loss(tiny, t) for t in TEXTS])
    # batched, padded float32 NLL vs TransformerLens' per-text loss: ~1e-6 on NLLs of ~5
    assert res.baseline.nll.estimate == pytest.approx(base_ref, abs=1e-5)
    assert res.baseline.nll.n == 2 and res.n_prompts == 2
    zero, edit = res.points
    # alpha 0 leaves the weights bit-identical (test_spectral_weights), so the same float32
    # forward runs twice in one process: exactly equal
    assert zero.delta_nll.estimate == 0.0 and zero.kl_bits.estimate == 0.0
    assert zero.delta_score.estimate == 0.0 and zero.effective_rank_change == 0.0
    with spectral_steering(tiny, cfgs[1]):
        edit_ref = np.mean([tl_loss(tiny, t) for t in TEXTS])
    assert edit.nll.estimate == pytest.approx(edit_ref, abs=1e-5)
    assert edit.delta_nll.estimate == pytest.approx(edit_ref - base_ref, abs=1e-5)
    assert edit.kl_bits.estimate > 0
    assert edit.effective_rank_change < 0  # alpha > 0 makes the spectrum more peaked
    df = res.table()
    assert list(df["label"]) == ["baseline", "zero", "edit"]
    assert res.to_dict()["n_texts"] == 2


def test_sweep_resumes_from_disk(tiny, tmp_path):
    kw = dict(texts=TEXTS, prompts=PROMPTS, chat=False, n_boot=100, show_progress=False,
              out_dir=tmp_path)
    first = spectral_sweep(tiny, [0, 1], [-0.5, 0.0, 0.5], **kw)
    assert [p.label for p in first.points] == ["L0 a=-0.5", "L0 a=+0.5", "L1 a=-0.5", "L1 a=+0.5"]
    files = sorted((tmp_path / "points").glob("*.json"))
    assert len(files) == 4
    saved = json.loads(files[0].read_text())
    saved["point"]["kl_bits"]["estimate"] = 123.0  # proves the second run reads the file
    files[0].write_text(json.dumps(saved))
    second = spectral_sweep(tiny, [0, 1], [-0.5, 0.0, 0.5], **kw)
    assert second.points[0].kl_bits.estimate == 123.0
    assert second.points[1].to_dict() == first.points[1].to_dict()  # JSON round-trips floats
    other = spectral_sweep(tiny, [0, 1], [-0.5, 0.0, 0.5], **{**kw, "texts": TEXTS[:1]})
    assert other.points[0].kl_bits.estimate != 123.0  # different settings: recomputed


def test_controls_and_bad_input(tiny):
    cfg = SpectralConfig((SpectralEdit(0, 0.5),), name="c")
    res = evaluate_configs(tiny, [cfg], texts=TEXTS, controls=True, n_boot=100, show_progress=False)
    assert [p.control for p in res.points] == [False, True]
    assert res.points[1].config.edits[0].shuffle_seed == 0
    with pytest.raises(ValueError, match="needs prompts"):
        evaluate_configs(tiny, [cfg], texts=TEXTS, scorer=len)
    with pytest.raises(ValueError, match="out of range"):
        evaluate_configs(tiny, grid_configs([5], [0.1]), texts=TEXTS, show_progress=False)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        grid_configs([0], [float("nan")])


def test_shipped_heldout_text():
    paras = load_heldout()
    words = sum(len(p.split()) for p in paras)
    assert len(paras) >= 30 and 3000 <= words <= 6000
    assert len(set(paras)) == len(paras)
    assert all(len(p.split()) <= 50 for p in load_heldout(5, max_words=50))
    with pytest.raises(ValueError, match="paragraphs shipped"):
        load_heldout(0)
