"""Feature-targeted steering vectors: exact decoder algebra, output scores against an independent
numpy W_dec @ W_U product, save/load, steering and bad input, on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _sae_helpers import HOOK, make_sae

from steerlens.backend import runtime
from steerlens.generate import generate
from steerlens.sae.decompose import FeatureSelection, domain_features
from steerlens.sae.targeted import (
    feature_vector,
    output_scores,
    select_by_activation_diff,
    select_by_output_score,
    single_feature_vector,
    token_ids,
    word_token_ids,
)
from steerlens.steer import steer
from steerlens.vectors import SteeringVector


@pytest.fixture(scope="module")
def sae():
    return make_sae(seed=1)


def _wdec(sae) -> np.ndarray:
    return sae.W_dec.detach().double().numpy()


def test_single_feature_is_the_decoder_row(tiny, sae):
    vec = single_feature_vector(tiny, sae, 17)
    assert vec.layers == [1] and vec.component == "resid_pre" and vec.method == "sae_features"
    assert torch.equal(vec[1], sae.W_dec[17].detach().float())
    scaled = single_feature_vector(tiny, sae, 17, norm=3.0)
    row = _wdec(sae)[17]
    # float32 rescale of a unit row (entries ~0.1) vs float64: float32 rounding, ~1e-8 absolute
    np.testing.assert_allclose(scaled[1].numpy(), 3.0 * row / np.linalg.norm(row), atol=1e-6)
    assert vec.extra["features"] == [17] and vec.extra["d_sae"] == 256


def test_uniform_activation_and_explicit_weights(tiny, sae):
    ids = [5, 9, 100]
    rows = _wdec(sae)[ids]
    uni = feature_vector(tiny, sae, ids, norm=1.0)
    s = rows.sum(0)
    np.testing.assert_allclose(uni[1].numpy(), s / np.linalg.norm(s), atol=1e-6)  # as above
    sel = FeatureSelection(tuple(ids), (2.0, 0.5, 1.5), "activation_diff", HOOK, 256)
    act = feature_vector(tiny, sae, sel, weights="activation")
    # independent: what the SAE decoder writes for that activation pattern, minus b_dec
    code = torch.zeros(1, 256)
    code[0, ids] = torch.tensor([2.0, 0.5, 1.5])
    with torch.no_grad():
        decoded = (sae.decode(code)[0] - sae.b_dec).double().numpy()
    # float32 decode (a 256-term matmul, then minus b_dec) vs our float32 weighted sum
    np.testing.assert_allclose(act[1].numpy(), decoded, atol=1e-5)
    assert act.extra["weighting"] == "activation" and act.extra["selection_rule"] == "activation_diff"
    exp = feature_vector(tiny, sae, ids, weights=[1.0, -1.0, 0.0])
    np.testing.assert_allclose(exp[1].numpy(), rows[0] - rows[1], atol=1e-6)
    ref = SteeringVector({1: torch.full((64,), 0.5), 0: torch.ones(64)})
    matched = feature_vector(tiny, sae, sel, weights="activation", norm=ref)
    assert matched.norms[1] == pytest.approx(ref.norms[1], rel=1e-5)  # float32 rescale: ulps
    assert torch.nn.functional.cosine_similarity(matched[1], act[1], dim=0) > 0.99999


def test_output_scores_match_numpy(tiny, sae):
    targets = [70, 81, 68]
    w_u = tiny.W_U.detach().double().numpy()
    w = tiny.ln_final.w.detach().double().numpy()
    logits = (_wdec(sae) * w) @ w_u  # [d_sae, vocab], independent of runtime.direction_logits
    expected = logits[:, targets].mean(1) - logits.mean(1)
    # float32 (W_dec * w) @ W_U over d_model 64 vs float64 numpy; scores are O(1) differences
    np.testing.assert_allclose(output_scores(tiny, sae, targets).numpy(), expected, rtol=1e-4,
                               atol=1e-5)
    sel = select_by_output_score(tiny, sae, targets, k=6)
    assert list(sel.features) == list(np.argsort(-expected, kind="stable")[:6])
    assert sel.rule == "output_score"
    avoid = [97, 98]
    exp2 = logits[:, targets].mean(1) - logits[:, avoid].mean(1)
    np.testing.assert_allclose(output_scores(tiny, sae, targets, avoid).numpy(), exp2, rtol=1e-4,
                               atol=1e-5)
    # direction_logits over the whole vocabulary equals the same product
    full = runtime.direction_logits(tiny, sae.W_dec[:3].detach())
    np.testing.assert_allclose(full.double().numpy(), logits[:3], rtol=1e-4, atol=1e-5)
    # a feature whose decoder row pushes the target logits is picked first
    u = torch.tensor((w_u[:, 70] - w_u.mean(1)) / w, dtype=torch.float32)
    planted = make_sae(seed=1)
    with torch.no_grad():
        planted.W_dec[42] = u / u.norm()
    assert select_by_output_score(tiny, planted, [70], k=1).features == (42,)


def test_token_ids(tiny):
    assert token_ids(tiny, ["a", 70]) == [runtime.text_ids(tiny, "a")[0], 70]
    with pytest.raises(ValueError, match="is 3 tokens"):
        token_ids(tiny, ["abc"])
    with pytest.raises(ValueError, match="id in 0..258"):
        token_ids(tiny, [10_000])
    with pytest.raises(ValueError, match="at least one target token"):
        token_ids(tiny, [])
    found, dropped = word_token_ids(tiny, ["a", "xy"])
    assert found == {"a": runtime.text_ids(tiny, "a")[0]} and dropped == ["xy"]


def test_activation_diff_selection_equals_domain_ranking(tiny, sae):
    dom_t, neu_t = ["zzz zoo zip", "zany zebra"], ["the cat sat", "quiet noon"]
    sel = select_by_activation_diff(tiny, sae, dom_t, neu_t, k=5)
    dom = domain_features(tiny, sae, dom_t, neu_t)
    assert sel.features == dom.top(5)
    # two runs of the same batched float32 pipeline: equal up to float32 rounding at most
    np.testing.assert_allclose(sel.scores, dom.scores[list(sel.features)].numpy(), rtol=1e-5,
                               atol=1e-6)


def test_vectors_save_load_steer_and_generate(tiny, sae, tmp_path):
    vec = feature_vector(tiny, sae, [3, 4], norm=4.0)
    vec.save(tmp_path / "v")
    back = SteeringVector.load(tmp_path / "v", tiny)
    assert torch.equal(back[1], vec[1]) and back.extra["features"] == [3, 4]
    assert back.method == "sae_features"
    ids = torch.tensor([runtime.prompt_ids(tiny, "hello there", chat=False)])
    batch = runtime.encode(tiny, ["hello there"])
    base = tiny(ids)
    with steer(tiny, back, strength=2.0) as st:
        from steerlens.steer import steered_forward

        out = steered_forward(tiny, batch, st)

    def add(act, hook):  # independent: plain TransformerLens hook adding the vector everywhere
        return act + 2.0 * vec[1]

    hand = tiny.run_with_hooks(ids, fwd_hooks=[(HOOK, add)])
    assert not torch.allclose(out[:, -1], base[:, -1], atol=1e-3)
    # steered batched float32 forward vs a plain hooked forward: logits O(1-10), ~1e-6 relative
    torch.testing.assert_close(out[:, -1], hand[:, -1], atol=1e-4, rtol=1e-4)
    assert len(tiny.hook_dict[HOOK].fwd_hooks) == 0
    gen = generate(tiny, ["hi"], steering=vec, strength=3.0, max_new_tokens=3)
    assert len(gen) == 1


def test_bad_inputs(tiny, sae):
    with pytest.raises(ValueError, match=r"k must be an int in 1..256"):
        select_by_output_score(tiny, sae, [70], k=257)
    with pytest.raises(ValueError, match=r"k must be an int in 1..256"):
        select_by_activation_diff(tiny, sae, ["a"], ["b"], k=0)
    with pytest.raises(ValueError, match="at least one feature"):
        feature_vector(tiny, sae, [])
    with pytest.raises(ValueError, match="valid ids are 0..255"):
        feature_vector(tiny, sae, [300])
    with pytest.raises(ValueError, match="repeated"):
        feature_vector(tiny, sae, [1, 1])
    with pytest.raises(ValueError, match="needs a FeatureSelection"):
        feature_vector(tiny, sae, [1, 2], weights="activation")
    with pytest.raises(ValueError, match="valid: \\['uniform', 'activation'\\]"):
        feature_vector(tiny, sae, [1, 2], weights="softmax")
    with pytest.raises(ValueError, match="2 weights for 3"):
        feature_vector(tiny, sae, [1, 2, 3], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="positive and finite"):
        feature_vector(tiny, sae, [1], norm=0.0)
    with pytest.raises(ValueError, match="is zero"):
        feature_vector(tiny, sae, [1, 2], weights=[0.0, 0.0])
    other = FeatureSelection((1,), (1.0,), "activation_diff", HOOK, 512)
    with pytest.raises(ValueError, match="made for an SAE"):
        feature_vector(tiny, sae, other)
    with pytest.raises(ValueError, match="d_in is 32"):
        feature_vector(tiny, make_sae(d_in=32), [1])
    with pytest.raises(ValueError, match="does not exist in the model"):
        single_feature_vector(tiny, make_sae(hook="blocks.9.hook_resid_pre"), 1)


def _rms_identity(model):
    """direction_logits(d) / rms(d) equals the model's own final norm + unembedding of d, minus
    b_U (the norm's 1/rms factor is what direction_logits leaves out)."""
    g = torch.Generator().manual_seed(0)
    d = torch.randn(3, runtime.d_model(model), generator=g)
    rms = (d.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    via_model = runtime.unembed(model, d) - model.b_U
    # float32 both ways, but the model's norm divides before the unembedding and we divide
    # after: on SmolLM2 logits up to ~20 differ by ~2e-5 (576-term sums), well inside 1e-3
    torch.testing.assert_close(runtime.direction_logits(model, d) / rms, via_model, atol=1e-3,
                               rtol=1e-3)
    cols = [5, 7]
    # a 2-column float32 product vs the full one sliced: another kernel, ~1e-6 relative
    torch.testing.assert_close(runtime.direction_logits(model, d, cols),
                               runtime.direction_logits(model, d)[:, cols], rtol=1e-5, atol=1e-5)


def test_direction_logits_match_the_models_unembedding(tiny):
    assert tiny.cfg.normalization_type == "RMS"  # ln weight applied explicitly
    _rms_identity(tiny)


@pytest.mark.embedded
def test_direction_logits_match_unembedding_on_smol(smol):
    assert smol.cfg.normalization_type == "RMSPre"  # ln weight folded into W_U
    _rms_identity(smol)
