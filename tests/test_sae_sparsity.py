"""The sparsity-robustness mode of analyses.sae_steering (diffusion / overlap on several SAEs) and
the per-domain reporting of analyses.train_sae, on the tiny model."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from steerlens.sae import random_sae
from steerlens.sae.train import save_sae


def test_sparsity_mode_writes_rows_per_sae_with_bands(tiny, tmp_path):
    mod = importlib.import_module("analyses.sae_steering")
    dirs = []
    for seed in (0, 1):
        sae = random_sae(64, 128, seed=seed, hook_name="blocks.1.hook_resid_pre",
                         model_name="tiny-random")
        dirs.append(save_sae(sae, tmp_path / f"sae{seed}"))
    arg = f"a={dirs[0]},b={dirs[1]}"
    out = mod.main(["--model", "tiny-random", "--quick", "--out", str(tmp_path / "o"),
                    "--fig-dir", str(tmp_path / "fig"), "--no-progress", "--sparsity-saes", arg,
                    "--n-boot", "30", "--n-random", "40"], model=tiny)
    frame = pd.read_csv(tmp_path / "o" / "diffusion_by_sparsity.csv")
    # 2 SAEs x 2 behaviours (quick) x 2 vectors x 2 measures
    assert len(frame) == 16 and set(frame.sae) == {"a", "b"}
    pair = frame[frame.vector.str.startswith("pair")]
    assert pair[["low", "high"]].notna().all().all()
    assert (pair.low <= pair.high).all()
    assert (frame.random_low <= frame.random_high).all()
    ov = frame[frame.measure.str.contains("overlap")]
    assert ((ov.estimate >= 0) & (ov.estimate <= 4)).all()  # k = 4 in --quick
    assert np.allclose(ov.chance_overlap, 4 * 4 / 128)
    found = json.loads((tmp_path / "o" / "findings.json").read_text())["findings"]
    assert len(found) == 16 and any(f["headline"] for f in found)
    assert len(out["findings"]) == 16


def test_diffusion_and_overlap_helpers_by_hand():
    mod = importlib.import_module("analyses.sae_steering")
    v = torch.tensor([[10.0, 0.5, -2.0, 1.5, 0.0]])
    # 10% of the largest |value| (10) is 1.0: |10|, |-2|, |1.5| exceed it -> 3 of 5
    assert float(mod._diffusion(v)[0]) == pytest.approx(3 / 5)
    # top-2 largest values: features 0 and 3; domain {3, 4} -> overlap 1
    assert float(mod._overlap(v, torch.tensor([3, 4]), 2)[0]) == 1.0


def test_train_sae_rows_and_choice_from_saved_results():
    mod = importlib.import_module("analyses.train_sae")

    def run(k, ev, l0, dead=0.0):
        m = {"n_tokens": 254, "mse": 1.0, "explained_variance": ev, "l0": l0,
             "dead_fraction": dead, "mean_norm": 1.0}
        dom = {"metrics": m, "ev_low": ev - 0.01, "ev_high": ev + 0.01, "n_blocks": 2}
        return {"config": {"architecture": "topk", "k": k, "d_sae": 4608}, "n_train_tokens": 10,
                "domains": {"docs": dom, "prose": dom, "chat": dom}}

    runs = [run(32, 0.7, 32), run(64, 0.81, 64), run(128, 0.85, 128), run(256, 0.9, 200)]
    assert mod.choose(runs)["config"]["k"] == 64  # sparsest meeting the target
    assert mod.choose([run(32, 0.7, 32), run(128, 0.75, 128), run(256, 0.9, 200)])[
        "config"]["k"] == 128  # none meets it: best EV with L0 <= 150
    assert mod.choose([run(64, 0.9, 64, dead=0.2), run(32, 0.7, 32)])["config"]["k"] == 64
    rows = mod.findings_from_results({"hook_name": "h", "runs": runs[:2],
                                      "random_sae": {"docs": 0.1, "prose": 0.1, "chat": 0.1}})
    assert len(rows) == 6 and sum(r.headline for r in rows) == 2
    chat64 = [r for r in rows if "k=64" in r.measure and "chat" in r.measure][0]
    assert (chat64.value, chat64.low, chat64.high) == (0.81, 0.81 - 0.01, 0.81 + 0.01)
    assert "target (EV >= 0.80, L0 <= 150, dead <= 5%) met" in chat64.verdict


def test_ev_bootstrap_ci_brackets_the_estimate():
    mod = importlib.import_module("analyses.train_sae")
    sae = random_sae(8, 16, seed=0, hook_name="h")
    x = torch.randn(127 * 6, 8, generator=torch.Generator().manual_seed(0))
    lo, hi, nb = mod.ev_bootstrap(sae, x, n_boot=200)
    from steerlens.sae import sae_metrics

    ev = sae_metrics(sae, x).explained_variance
    assert nb == 6 and lo <= ev + 1e-9 and ev - 1e-9 <= hi
