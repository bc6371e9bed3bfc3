"""Behaviour scorers (checked on the shipped behaviours' own test pairs) and A/B log-prob scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from steerlens.measures import (
    ab_logprob,
    ab_logprob_pairs,
    contains_json_object,
    get_scorer,
    keyword_scorer,
    regex_scorer,
    safe_score,
    sentiment_scorer,
    words,
)
from steerlens.pairs import ContrastPair, ContrastSet, list_behaviours, load_behaviour
from steerlens.vectors import SteeringVector


def test_sentiment_sign():
    s = sentiment_scorer()
    assert s("I love this, it is wonderful!") > 0.5
    assert s("This is awful and I hate it.") < -0.5
    assert s("") == 0.0


def test_words_keep_inner_apostrophes():
    assert words("C'est très BIEN, don’t stop 'quoted' x_y") == [
        "c'est", "très", "bien", "don't", "stop", "quoted", "x", "y"]


def test_keyword_scorer_by_hand():
    s = keyword_scorer(positive=["c'est", "très"], negative=["the", "and"])
    # ratios of word counts: exact but for the division's rounding
    # words: c'est très bien and the cat there -> (2 - 2) / 7; "there" is not "the"
    assert s("C'est très bien and the cat there") == pytest.approx(0.0)
    assert s("C’est très bien") == pytest.approx(2 / 3)
    assert s("the THE cat") == pytest.approx(-2 / 3)
    assert s("") == 0.0
    with pytest.raises(ValueError, match="single word"):
        keyword_scorer(positive=["two words"])
    with pytest.raises(ValueError, match="both positive and negative"):
        keyword_scorer(positive=["a"], negative=["A"])


def test_regex_scorer_case_insensitive():
    s = regex_scorer(r"\bi can't\b")
    assert s("Sorry, I CAN'T do that") == 1.0 and s("I can do that") == 0.0
    with pytest.raises(ValueError, match="Invalid regex"):
        regex_scorer("(unclosed")


@pytest.mark.parametrize("text,expected", [
    ('{"title": "Lunch", "time": "12:00"}', True),
    ('Sure! ```json\n{"event": {"day": "Mon"}}\n```', True),
    ("Here it is: {bad json} and then {\"a\": [1, 2]} done", True),
    ("[1, 2, 3]", False),
    ("{not: json}", False),
    ("No braces at all.", False),
])
def test_json_detection(text, expected):
    assert contains_json_object(text) is expected
    assert get_scorer({"kind": "json"})(text) == float(expected)


@pytest.mark.parametrize("name", list_behaviours())
def test_shipped_scorers_separate_their_own_test_pairs(name):
    """Each behaviour's scorer spec gives its positive test completions higher scores than the
    negative ones on average (the data and the scorer agree)."""
    beh = load_behaviour(name)
    scorer = get_scorer(beh.scorer)
    assert get_scorer(name)(beh.test.positives[0]) == scorer(beh.test.positives[0])
    pos = np.array([scorer(t) for t in beh.test.positives])
    neg = np.array([scorer(t) for t in beh.test.negatives])
    assert pos.mean() > neg.mean()
    assert (pos > neg).mean() >= 0.6


def test_get_scorer_errors_list_valid_options():
    with pytest.raises(ValueError, match=r"valid kinds are \['sentiment'"):
        get_scorer({"kind": "toxicity"})
    with pytest.raises(ValueError, match="shipped behaviours"):
        get_scorer("nonsense")
    with pytest.raises(ValueError, match="also has"):
        get_scorer({"kind": "regex", "pattern": "x", "flags": "i"})
    with pytest.raises((ValueError, TypeError), match="callable|Callable"):
        get_scorer(3)
    f = len
    assert get_scorer(f) is f


def test_safe_score_records_failures():
    def flaky(text: str) -> float:
        if text == "boom":
            raise RuntimeError("scorer crashed")
        return float("nan") if text == "nan" else float(len(text))

    scores, errors = safe_score(flaky, ["ab", "boom", "nan", "abcd"])
    assert scores[0] == 2.0 and scores[3] == 4.0
    assert math.isnan(scores[1]) and math.isnan(scores[2])
    assert [e.index for e in errors] == [1, 2]
    assert "scorer crashed" in errors[0].error


def _hand_logprob(model, question, answer, hooks=()):
    tok = model.tokenizer
    head = tok(tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                       add_generation_prompt=True), add_special_tokens=False).input_ids
    body = tok(answer, add_special_tokens=False).input_ids
    ids = head + body
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
        logp = model(torch.tensor([ids]))[0].double().log_softmax(-1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(len(head), len(ids)))


def test_ab_logprob_matches_hand_loop(tiny):
    qs = ["Pick one. (A) yes (B) no", "Which? (A) red (B) blue (C) green"]
    res = ab_logprob(tiny, qs, matching=["A", "C"], answers=("A", "B", "C"), chat=True)
    table = np.array([[_hand_logprob(tiny, q, f"({a}") for a in "ABC"] for q in qs])
    # batched, padded float32 logits vs one unpadded forward per answer: ~1e-6 relative on
    # logits of O(1-10), so log-probs (sums of 2 tokens) agree to ~1e-5 absolute
    tol = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.logprob_matching, [table[0, 0], table[1, 2]], **tol)
    np.testing.assert_allclose(res.logprob_other, [max(table[0, 1:]), max(table[1, :2])], **tol)
    assert res.prefers_matching == tuple(bool(m > 0) for m in res.margin)
    p = np.exp(table - table.max(1, keepdims=True))
    # a softmax of log-probs good to 1e-5 moves p by at most ~1e-5 (|dp_i| <= 2 p_i max|dlp|)
    np.testing.assert_allclose(res.p_matching, [p[0, 0] / p[0].sum(), p[1, 2] / p[1].sum()],
                               **tol)
    assert res.n == 2


def test_ab_logprob_swap_and_pairs_agree(tiny):
    qs = ["Q one (A) x (B) y", "Q two (A) x (B) y"]
    a = ab_logprob(tiny, qs, matching=["A", "B"], chat=True)
    b = ab_logprob(tiny, qs, matching=["B", "A"], chat=True)
    # the same float32 forwards with the labels swapped: margins negate and the two p's of a
    # two-way softmax sum to 1 (float64); a wrong label would be off by O(margin), not 1e-6
    np.testing.assert_allclose(a.margin, -np.array(b.margin), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.array(a.p_matching) + np.array(b.p_matching), 1.0, atol=1e-12)
    pairs = ContrastSet((ContrastPair("(A", "(B", qs[0]), ContrastPair("(B", "(A", qs[1])))
    c = ab_logprob_pairs(tiny, pairs, chat=True)
    # another batch order of the same continuations: float32 path tolerance on log-probs
    np.testing.assert_allclose(c.margin, a.margin, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c.p_matching, a.p_matching, rtol=1e-5, atol=1e-5)


def test_ab_logprob_steered_matches_hooked_loop(tiny):
    v = SteeringVector({1: torch.randn(64, generator=torch.Generator().manual_seed(9))})
    q = "Choose (A) or (B)"
    res = ab_logprob(tiny, [q], v, 3.0, matching=["B"], chat=True)

    def add(act, hook):
        return act + 3.0 * v[1]

    hooks = [("blocks.1.hook_resid_pre", add)]
    ref = _hand_logprob(tiny, q, "(B", hooks) - _hand_logprob(tiny, q, "(A", hooks)
    # float32 batched vs unpadded hooked forwards; a margin is a difference of log-probs
    assert res.steered and res.margin[0] == pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_ab_logprob_bad_input(tiny):
    with pytest.raises(ValueError, match="not one of the answers"):
        ab_logprob(tiny, ["q"], matching=["C"])
    with pytest.raises(ValueError, match="1 questions but 2"):
        ab_logprob(tiny, ["q"], matching=["A", "B"])
    with pytest.raises(ValueError, match="two distinct"):
        ab_logprob(tiny, ["q"], matching=["A"], answers=("A", "A"))
