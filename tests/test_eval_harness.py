"""HarnessRunner (the lm-eval request answering) on the tiny model, checked against hand math.

No lm-eval needed: the runner is lm-eval-free. References are computed one sequence at a time
from `runtime.forward` logits in float64, with steering added by a hand-written hook, so batching,
left padding, sorting, de-duplication and the steer() path are all checked against something
independent of them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from steerlens.backend import runtime
from steerlens.eval import HarnessRunner, check_tasks, cut_at_stops, rolling_windows
from steerlens.eval.harness import check_finite_strength
from steerlens.generate import generate
from steerlens.vectors import SteeringVector

LAYER = 1


@pytest.fixture(scope="module")
def vec(tiny):
    g = torch.Generator().manual_seed(0)
    return SteeringVector.from_tensors({LAYER: torch.randn(64, generator=g)}, "resid_pre",
                                       model=tiny)


def _ref_logprobs(model, ids, vector=None, strength=0.0):
    """Per-position float64 log-probs of one unpadded sequence, optional hand-added vector."""
    batch = runtime.batch_from_ids(model, [(list(ids), 0)])
    hooks = []
    if vector is not None:
        v = vector[LAYER]

        def add(act, hook):
            return act + strength * v.to(act.dtype)

        hooks = [(runtime.hook_name(LAYER, "resid_pre"), add)]
    with runtime.attached(model, hooks):
        logits = runtime.forward(model, batch)
    return torch.log_softmax(logits[0].double(), -1)


def _ref_score(model, ctx, cont, vector=None, strength=0.0):
    lp = _ref_logprobs(model, list(ctx) + list(cont)[:-1], vector, strength)
    tail = lp[len(ctx) - 1:]
    total = float(sum(tail[i, t] for i, t in enumerate(cont)))
    greedy = all(int(tail[i].argmax()) == t for i, t in enumerate(cont))
    return total, greedy


PAIRS = [("The cat sat on the", " mat"), ("Hi", " there, friend"), ("A longer context here:", " x"),
         ("The cat sat on the", " hat"), ("Numbers: 1 2 3", " 4 5")]


@pytest.mark.parametrize("steered", [False, True])
def test_loglikelihood_matches_one_at_a_time_float64(tiny, vec, steered):
    runner = HarnessRunner(tiny, vec if steered else None, 2.5 if steered else None, batch_size=2)
    got = runner.loglikelihood(PAIRS)
    for (ctx, cont), (lp, greedy) in zip(PAIRS, got):
        c_ids, x_ids = runner.encode_pair(ctx, cont)
        want, want_greedy = _ref_score(tiny, c_ids, x_ids, vec if steered else None, 2.5)
        # two float32 paths (batched + left-padded vs one sequence) summed over <= 13 tokens
        assert lp == pytest.approx(want, rel=1e-5, abs=1e-4)
        assert greedy == want_greedy


def test_steering_changes_scores_and_strength_zero_does_not(tiny, vec):
    base = HarnessRunner(tiny).loglikelihood(PAIRS)
    zero = HarnessRunner(tiny, vec, 0.0).loglikelihood(PAIRS)
    steered = HarnessRunner(tiny, vec, 3.0).loglikelihood(PAIRS)
    assert [a for a, _ in zero] == [a for a, _ in base]  # strength 0 skips the add: same path
    assert max(abs(a - b) for (a, _), (b, _) in zip(base, steered)) > 1e-2


def test_greedy_flag_is_true_for_the_argmax_continuation(tiny):
    runner = HarnessRunner(tiny)
    ctx = runner.tok_encode("Hello")
    lp = _ref_logprobs(tiny, ctx)
    best = int(lp[-1].argmax())
    ((_, greedy),) = runner.loglikelihood_tokens([(ctx, [best])])
    ((_, other),) = runner.loglikelihood_tokens([(ctx, [(best + 1) % lp.shape[-1]])])
    assert greedy and not other


def test_batch_size_and_order_do_not_change_results(tiny, vec):
    a = HarnessRunner(tiny, vec, 1.5, batch_size=1).loglikelihood(PAIRS)
    b = HarnessRunner(tiny, vec, 1.5, batch_size=16).loglikelihood(PAIRS[::-1])[::-1]
    # two float32 paths: different padding and batch composition
    np.testing.assert_allclose([x for x, _ in a], [x for x, _ in b], rtol=1e-5, atol=1e-4)
    assert [g for _, g in a] == [g for _, g in b]


def test_encode_pair_moves_trailing_space_and_handles_empty_context(tiny):
    runner = HarnessRunner(tiny)
    ctx, cont = runner.encode_pair("Answer: ", "yes")
    assert ctx == runner.tok_encode("Answer:")
    assert cont == runner.tok_encode("Answer: yes")[len(ctx):]
    assert runner.tokenizer.decode(cont) == " yes"
    ctx, cont = runner.encode_pair("", "yes")
    assert ctx == [runner.prefix_token_id]
    assert cont == runner.tok_encode("yes", add_special_tokens=False)


def test_bos_is_never_doubled(tiny):
    runner = HarnessRunner(tiny)
    bos = runner.tokenizer.bos_token
    plain = runner.tok_encode("abc")
    assert plain[0] == runner.prefix_token_id  # the tiny tokenizer prepends BOS
    assert runner.tok_encode(bos + "abc") == plain
    assert HarnessRunner(tiny, add_bos_token=False).tok_encode("abc") == plain[1:]


def test_rolling_windows_by_hand():
    # 7 tokens, context length 3. Inputs [p 0 1] -> predict 0 1 2; [2 3 4] -> 3 4 5 (context
    # kept: 2); [3 4 5] -> 6 (context kept: 3 4 5). Context = input minus its overlap.
    wins = rolling_windows(list(range(7)), prefix_token=99, max_len=3)
    assert wins == [([99], [0, 1, 2]), ([2], [3, 4, 5]), ([3, 4, 5], [6])]
    assert [t for _, c in wins for t in c] == list(range(7))
    assert rolling_windows([], 99, 3) == []
    with pytest.raises(ValueError, match="max_len"):
        rolling_windows([1], 99, 0)


def test_rolling_windows_match_lm_eval():
    utils = pytest.importorskip("lm_eval.utils")
    for n, max_len in [(1, 4), (5, 5), (6, 5), (17, 4), (40, 7)]:
        toks = list(range(100, 100 + n))
        want = [utils.make_disjoint_window(w)
                for w in utils.get_rolling_token_windows(toks, 7, max_len, 1)]
        assert rolling_windows(toks, 7, max_len) == want


def test_loglikelihood_rolling_is_the_whole_text_logprob(tiny):
    runner = HarnessRunner(tiny)
    text = "The quick brown fox jumps over the lazy dog."
    ids = runner.tok_encode(text)
    lp = _ref_logprobs(tiny, [runner.prefix_token_id] + ids[:-1])
    want = float(sum(lp[i, t] for i, t in enumerate(ids)))
    (got,) = runner.loglikelihood_rolling([text])
    assert got == pytest.approx(want, rel=1e-5, abs=1e-4)  # two float32 paths


def test_loglikelihood_rolling_windows_past_the_context(tiny):
    runner = HarnessRunner(tiny)
    text = "abcdefghij" * 40  # 400 byte tokens (+BOS) > n_ctx 256: two windows
    ids = runner.tok_encode(text)
    assert len(ids) > runner.max_length
    want = 0.0
    for ctx, cont in rolling_windows(ids, runner.prefix_token_id, runner.max_length):
        want += _ref_score(tiny, ctx, cont)[0]
    (got,) = runner.loglikelihood_rolling([text])
    assert got == pytest.approx(want, rel=1e-5, abs=1e-3)  # two float32 paths, 400 terms


def test_generate_until_equals_generate_cut_at_stops(tiny, vec):
    prompts = ["Once upon", "The cat", "Hello there"]
    runner = HarnessRunner(tiny, vec, 1.0, batch_size=2)
    kwargs = {"until": ["e"], "max_gen_toks": 12, "do_sample": False, "temperature": 0.0}
    got = runner.generate_until([(p, kwargs) for p in prompts])
    ref = generate(tiny, prompts, vec, 1.0, chat=False, max_new_tokens=12)
    assert got == [t.split("e")[0] for t in ref.texts]
    assert cut_at_stops("abcXdefYg", ["Y", "X"]) == "abc"


def test_generate_until_groups_settings_and_keeps_order(tiny):
    runner = HarnessRunner(tiny, batch_size=1)
    reqs = [("Once upon", {"until": [], "max_gen_toks": 3}), ("The cat", {"max_gen_toks": 5}),
            ("Once upon", {"until": [], "max_gen_toks": 5})]
    got = runner.generate_until(reqs)
    ref3 = generate(tiny, ["Once upon"], chat=False, max_new_tokens=3).texts[0]
    ref5 = generate(tiny, ["Once upon", "The cat"], chat=False, max_new_tokens=5).texts
    assert got == [ref3, ref5[1], ref5[0]]


# --------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "nan", "abc", None])
def test_non_finite_strength_is_refused(bad):
    with pytest.raises(ValueError, match="finite number"):
        check_finite_strength(bad)


def test_runner_refuses_bad_settings(tiny, vec):
    with pytest.raises(ValueError, match="finite number"):
        HarnessRunner(tiny, vec, math.nan)
    with pytest.raises(ValueError, match="needs a strength"):
        HarnessRunner(tiny, vec)
    with pytest.raises(ValueError, match="without a vector"):
        HarnessRunner(tiny, None, 2.0)
    with pytest.raises(ValueError, match="batch_size"):
        HarnessRunner(tiny, batch_size=0)
    with pytest.raises(ValueError, match="positions"):
        HarnessRunner(tiny, vec, 1.0, positions="middle")
    with pytest.raises(ValueError, match=r"valid while scoring: \['all', 'first'\]"):
        HarnessRunner(tiny, vec, 1.0, positions="last").loglikelihood(PAIRS[:1])
    with pytest.raises(ValueError, match="Unsupported generation kwargs"):
        HarnessRunner(tiny).generate_until([("Hi", {"num_beams": 2})])


def test_vector_for_another_model_is_refused(tiny):
    wide = SteeringVector.from_tensors({LAYER: torch.ones(32)}, "resid_pre")
    with pytest.raises(ValueError, match="d_model"):
        HarnessRunner(tiny, wide, 1.0)
    deep = SteeringVector.from_tensors({7: torch.ones(64)}, "resid_pre")
    with pytest.raises(ValueError, match="layer"):
        HarnessRunner(tiny, deep, 1.0)


def test_unknown_task_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown task\(s\) \['capitals'\].*steerlens_capitals"):
        check_tasks("capitals")
    with pytest.raises(ValueError, match="at least one task"):
        check_tasks("")
    assert check_tasks("steerlens_arithmetic,steerlens_capitals") == [
        "steerlens_arithmetic", "steerlens_capitals"]
    assert check_tasks(["hellaswag"], known=["hellaswag"]) == ["hellaswag"]
