"""No non-finite number leaves the library unannounced, and no stream keeps steering after it is
abandoned (issue 15, items 2 and 4)."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
from scipy.special import rel_entr

import steerlens as sl
from steerlens.backend import runtime, streams
from steerlens.checks import NonFiniteError
from steerlens.measures import kl_bits, text_perplexity

PROMPTS = ["Hello there", "Tell me about cats"]


@pytest.fixture(scope="module")
def vec(tiny, sentiment):
    return sl.build_vector(tiny, sentiment.train[:8], [1], show_progress=False)


def test_strength_checked_in_the_models_dtype(tiny, vec):
    amax = float(vec[1].abs().max())
    # the norm squares and sums d_model entries in float32: |entry| < sqrt(max / d_model)
    limit = (float(torch.finfo(torch.float32).max) / 64) ** 0.5
    msg = "beyond the largest value a float32 model"
    for s in (1e300, 1e30, 1.01 * limit / amax, -2 * limit / amax):
        with pytest.raises(ValueError, match=msg), sl.steer(tiny, vec, s):
            pass
        with pytest.raises(ValueError, match=msg):
            sl.generate(tiny, PROMPTS, vec, s, max_new_tokens=2)
    with sl.steer(tiny, vec, 0.99 * limit / amax):  # just inside the limit is accepted
        pass
    with sl.steer(tiny, vec, 1.0) as st:
        with pytest.raises(ValueError, match=msg):
            st.set_strength(0, 1e300)
        with pytest.raises(ValueError, match=msg):
            st.set_strength(0, [0.0, 1e300])
        assert float(st.strengths[0]) == 1.0  # a refused change leaves the old value
    assert runtime.attached_hook_count(tiny) == 0


def test_non_finite_activations_raise_not_garbage(tiny, vec):
    """Activations that still become non-finite inside the network (here forced by a hook that
    overflows the final residual, as a too-strong push in half precision would): generation, KL
    and perplexity raise NonFiniteError instead of returning tokens or numbers."""
    def overflow(act, hook):
        return act * float("inf")

    name = f"blocks.{runtime.n_layers(tiny) - 1}.hook_resid_post"
    with runtime.attached(tiny, [(name, overflow)]):
        with pytest.raises(NonFiniteError, match="non-finite"):
            sl.generate(tiny, PROMPTS, vec, 1.0, max_new_tokens=3)
        with pytest.raises(NonFiniteError):
            sl.next_token_kl(tiny, PROMPTS, vec, 1.0)
        with pytest.raises(NonFiniteError):
            text_perplexity(tiny, ["hello world"], vec, 1.0)
    assert runtime.attached_hook_count(tiny) == 0


def test_kl_bits_never_finite_for_garbage():
    p = torch.randn(3, 11, dtype=torch.float64)
    q = torch.randn(3, 11, dtype=torch.float64)
    ref = rel_entr(p.softmax(-1).numpy(), q.softmax(-1).numpy()).sum(-1) / torch.log(
        torch.tensor(2.0, dtype=torch.float64)).numpy()
    torch.testing.assert_close(kl_bits(p, q), torch.from_numpy(ref), rtol=1e-12, atol=1e-12)
    for bad in (float("nan"), float("inf")):
        for which in ("p", "q"):
            pp, qq = p.clone(), q.clone()
            (pp if which == "p" else qq)[1, 4] = bad
            with pytest.raises(NonFiniteError, match=f"{which}_logits"):
                kl_bits(pp, qq)
    # -inf is a token with probability 0, not garbage: finite where P(v) = 0
    pp = p.clone()
    pp[:, 0] = float("-inf")
    assert torch.isfinite(kl_bits(pp, q)).all()


def test_abandoned_stream_is_closed_before_the_next_call(tiny, vec):
    base = sl.generate(tiny, PROMPTS, max_new_tokens=6, chat=False).tokens
    stream = sl.generate_stream(tiny, PROMPTS, vec, 8.0, max_new_tokens=6, chat=False)
    next(stream)  # hooks attached, stream suspended
    assert runtime.attached_hook_count(tiny) > 0 and streams.open_count(tiny) == 1
    with pytest.warns(RuntimeWarning, match="unfinished generate_stream"):
        again = sl.generate(tiny, PROMPTS, max_new_tokens=6, chat=False).tokens
    assert again == base  # not silently steered
    assert runtime.attached_hook_count(tiny) == 0 and streams.open_count(tiny) == 0
    with pytest.raises(StopIteration):
        next(stream)  # the closed stream is over


def test_dropped_stream_detaches_at_once(tiny, vec):
    stream = sl.generate_stream(tiny, PROMPTS, vec, 8.0, max_new_tokens=6)
    next(stream)
    assert runtime.attached_hook_count(tiny) > 0
    del stream
    gc.collect()
    assert runtime.attached_hook_count(tiny) == 0 and streams.open_count(tiny) == 0


def test_stream_context_manager_and_full_consumption(tiny, vec):
    with sl.generate_stream(tiny, PROMPTS, vec, 8.0, max_new_tokens=6) as stream:
        next(stream)
    assert runtime.attached_hook_count(tiny) == 0
    steps = list(sl.generate_stream(tiny, PROMPTS, vec, 8.0, max_new_tokens=4, chat=False))
    ref = sl.generate(tiny, PROMPTS, vec, 8.0, max_new_tokens=4, chat=False)
    assert steps[-1].token_ids == ref.tokens and streams.open_count(tiny) == 0


def test_unsteered_generate_warns_about_foreign_hooks(tiny, vec):
    with sl.steer(tiny, vec, 4.0) as st:
        with pytest.warns(RuntimeWarning, match="hook"):
            sl.generate(tiny, PROMPTS, max_new_tokens=2)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sl.generate(tiny, PROMPTS, st, max_new_tokens=2)  # explicit: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sl.generate(tiny, PROMPTS, max_new_tokens=2)  # nothing attached: no warning
