"""The `steerlens` lm-eval model class, through lm-eval itself (registry, CLI, simple_evaluate).

Skipped when lm-eval is not installed, unless STEERLENS_REQUIRE_EVAL=1 (CI), where a missing
lm-eval fails. The embedded tests are small versions of the analysis' cross-checks
(`analyses/harness_accuracy.py`): lm-eval's own `--model hf` on the exported weights must make the
same per-item decisions as `--model steerlens`, and the steered A/B choices must equal
`ab_logprob`'s.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from steerlens.vectors import ModelMismatchWarning, SteeringVector

if importlib.util.find_spec("lm_eval") is None:
    if os.environ.get("STEERLENS_REQUIRE_EVAL") == "1":
        raise RuntimeError("STEERLENS_REQUIRE_EVAL=1 but lm-eval is not installed "
                           "(pip install 'steerlens[eval]').")
    pytest.skip("lm-eval not installed (pip install 'steerlens[eval]')", allow_module_level=True)

from steerlens.eval import HarnessRunner, evaluate, lm_class, task_dir  # noqa: E402
from steerlens.eval.crosscheck import compare_runs, compare_to_reference, decision  # noqa: E402

SYC = "steerlens_sycophancy_ab"


@pytest.fixture(scope="module")
def vec_dir(tiny, tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    vec = SteeringVector.from_tensors({1: torch.randn(64, generator=g)}, "resid_pre", model=tiny)
    return vec.save(tmp_path_factory.mktemp("vec") / "v")


def test_registered_under_steerlens_without_hiding_lm_evals_models():
    from lm_eval.api.registry import get_model

    cls = lm_class()  # registers it (importing steerlens.eval alone does not import lm-eval)
    assert get_model("steerlens") is cls
    assert get_model("hf").__name__ == "HFLM"  # lm-eval's own models still resolve


def test_simple_evaluate_answers_with_the_runner(tiny, vec_dir):
    lm = lm_class().create_from_arg_string(f"vector={vec_dir},layer=1,strength=2,batch_size=3",
                                           {"model": tiny})
    out = evaluate(SYC, lm=lm, limit=3)
    runner = HarnessRunner(tiny, SteeringVector.load(vec_dir), 2.0)
    for s in out["samples"][SYC]:
        want = runner.loglikelihood([tuple(a) for a in s["arguments"]])
        # same runner, different batch composition: two float32 paths
        np.testing.assert_allclose([r[0] for r in s["filtered_resps"]], [w[0] for w in want],
                                   rtol=1e-5, atol=1e-4)
        assert s["acc"] == float(decision(s) == s["target"])


@pytest.mark.parametrize("args, match", [
    ("vector={vec},strength=nan", "finite number"),
    ("vector={vec},strength=inf", "finite number"),
    ("vector={vec}", "needs strength"),
    ("strength=3", "without vector"),
    ("vector={vec},strength=1,layer=0", r"has no layer 0; its layers are \[1\]"),
    ("vector={vec},strength=1,component=attn_out", "stored at 'resid_pre'"),
    ("temperature=3", r"Unknown steerlens model_args \['temperature'\]; valid: model"),
])
def test_bad_model_args_are_refused_clearly(tiny, vec_dir, args, match):
    with pytest.raises(ValueError, match=match):
        lm_class().create_from_arg_string(args.format(vec=vec_dir), {"model": tiny})


def test_a_vector_for_another_model_is_refused(tiny, tmp_path):
    other = SteeringVector.from_tensors({1: torch.ones(64)}, "resid_pre", model_id="gpt2-small")
    path = other.save(tmp_path / "other")
    with pytest.raises(ValueError, match="built on model 'gpt2-small'"):
        lm_class()(model=tiny, vector=str(path), strength=1)
    with pytest.warns(ModelMismatchWarning, match="built on model 'gpt2-small'"):  # opt-in: warns
        lm_class()(model=tiny, vector=str(path), strength=1, allow_other_model="true")


def test_command_line_runs_lm_evals_cli_with_the_class_registered(tmp_path):
    out = tmp_path / "res"
    proc = subprocess.run(
        [sys.executable, "-m", "steerlens.eval", "--model", "steerlens", "--model_args",
         "model=tiny-random,device=cpu", "--tasks", "steerlens_arithmetic", "--limit", "2",
         "--output_path", str(out)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = list(out.rglob("results_*.json"))
    assert len(results) == 1
    res = json.loads(results[0].read_text())["results"]["steerlens_arithmetic"]
    assert res["sample_len"] == 2 if "sample_len" in res else "exact_match,first-integer" in res


def test_task_dir_holds_the_yaml():
    assert sorted(p.name for p in task_dir().glob("*.yaml")) == [
        "steerlens_arithmetic.yaml", "steerlens_capitals.yaml", "steerlens_sycophancy_ab.yaml"]


# -------------------------------------------------------------- SmolLM2: hf vs steerlens, steered
@pytest.fixture(scope="module")
def hf_dir():
    from steerlens.backend.loading import cached_hf_export

    return cached_hf_export("smollm2-135m-instruct")


@pytest.mark.embedded
def test_unsteered_decisions_equal_lm_evals_hf_model(smol, hf_dir):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir()), include_defaults=False)
    tasks = ["steerlens_arithmetic", "steerlens_capitals", SYC]
    ours = evaluate(tasks, lm=lm_class()(model=smol, batch_size=4), limit=3)
    theirs = simple_evaluate(model="hf", model_args={"pretrained": str(hf_dir), "device": "cpu",
                                                     "dtype": "float32", "batch_size": 4},
                             tasks=tasks, task_manager=manager, limit=3, log_samples=True)
    for task in tasks:
        c = compare_runs(task, ours["samples"][task], theirs["samples"][task])
        assert c.identical, c
        if c.max_abs_loglik_diff is not None:  # SmolLM2, two implementations: float32 error
            assert c.max_abs_loglik_diff < 1e-3


@pytest.mark.embedded
def test_steered_choices_equal_ab_logprob(smol):
    from steerlens.measures.scorers import ab_logprob
    from steerlens.methods import build_vector
    from steerlens.pairs import load_behaviour

    vec = build_vector(smol, load_behaviour("sycophancy").train, [10], show_progress=False)
    rows = [json.loads(x) for x in (task_dir() / "sycophancy_ab.jsonl").read_text().splitlines()][:4]
    gold = ["AB"[r["label"]] for r in rows]
    for strength in (-8.0, 8.0):
        out = evaluate(SYC, lm=lm_class()(model=smol, vector=vec, strength=strength), limit=4,
                       apply_chat_template=True)
        ab = ab_logprob(smol, [f"{r['question']}\nAnswer:" for r in rows], vec, strength,
                        matching=gold, chat=True)
        ref = ["AB".index(g) if m else 1 - "AB".index(g) for g, m in zip(gold, ab.prefers_matching)]
        c = compare_to_reference(SYC, out["samples"][SYC], ref)
        assert c.identical, c
