"""SAE decomposition of steering vectors, domain features, overlap tables and feature contexts,
checked against independent numpy / run_with_cache computations on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _sae_helpers import HOOK, make_sae, np_encode

from steerlens.backend import runtime
from steerlens.pairs import ContrastPair, ContrastSet
from steerlens.sae.decompose import (
    DomainFeatures,
    FeatureSelection,
    VectorDecomposition,
    decompose,
    decompose_pairs,
    domain_features,
    encode_direction,
    overlap,
    overlap_table,
)
from steerlens.sae.features import feature_contexts
from steerlens.vectors import SteeringVector

DOMAIN = ["zzz zoo zip zap zen", "the zebra zigzags in a zone", "zany zealots zoom by",
          "zinc and zirconium zest", "a dozen zippy zebras", "jazz fizz buzz razz"]
NEUTRAL = ["the cat sat on the mat", "morning rain over the hills", "a quiet library at noon",
           "bread and butter for tea", "she read the letter twice", "lamps lit the long road"]


def _hand_acts(model, text: str, prompt: str | None = None) -> np.ndarray:
    """resid_pre at layer 1 of each content token, one text at a time via run_with_cache."""
    if prompt is None:
        ids = runtime.prompt_ids(model, text, chat=False)
        start = 1
    else:
        head = runtime.prompt_ids(model, prompt, chat=False)
        ids = head + runtime.text_ids(model, " " + text)
        start = len(head)
    _, cache = model.run_with_cache(torch.tensor([ids]), names_filter=HOOK)
    return cache[HOOK][0, start:].double().numpy()


@pytest.fixture(scope="module")
def sae():
    return make_sae()


def test_encodings_match_numpy(tiny, sae):
    v = torch.randn(64, generator=torch.Generator().manual_seed(3))
    vn = v.double().numpy()
    w_enc = sae.W_enc.detach().double().numpy()
    w_dec = sae.W_dec.detach().double().numpy()
    # float32 encoder (64-term dot products of O(1) entries) vs float64 numpy: ~1e-6
    np.testing.assert_allclose(encode_direction(sae, v, "encoder").numpy(), vn @ w_enc,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(encode_direction(sae, v, "raw").numpy(), np_encode(sae, vn[None])[0],
                               rtol=1e-5, atol=1e-5)
    cos = (w_dec @ vn) / (np.linalg.norm(w_dec, axis=1) * np.linalg.norm(vn))
    np.testing.assert_allclose(encode_direction(sae, v, "decoder").numpy(), cos, atol=1e-6)
    with pytest.raises(ValueError, match="valid encodings are"):
        encode_direction(sae, v, "pca")
    with pytest.raises(ValueError, match="d_in is 64"):
        encode_direction(sae, torch.zeros(10), "encoder")


def test_diffusion_and_participation_against_numpy(tiny, sae):
    v = torch.randn(64, generator=torch.Generator().manual_seed(4))
    vec = SteeringVector({1: v, 0: -v})
    d = decompose(tiny, sae, vec, encoding="encoder")
    vals = v.double().numpy() @ sae.W_enc.detach().double().numpy()
    thr = 0.1 * np.abs(vals).max()
    # float32 encoding vs float64 numpy (~1e-6 relative); counts above the threshold agree
    # unless a value sits within 1e-6 of it (not for this seed); the count ratio is then exact
    assert d.threshold == pytest.approx(thr, rel=1e-5)
    assert d.n_active == int((np.abs(vals) > thr).sum())
    assert d.diffusion == pytest.approx((np.abs(vals) > thr).mean())
    pr = (vals ** 2).sum() ** 2 / (vals ** 4).sum() / vals.size
    assert d.participation == pytest.approx(pr, rel=1e-4)  # 4th powers: 4x the relative error
    assert d.relative_threshold == 0.1 and d.hook_name == HOOK
    # absolute threshold; top-k in each sign order
    raw = decompose(tiny, sae, vec, encoding="raw", threshold=0.0, relative=False)
    raw_np = np_encode(sae, v.double().numpy()[None])[0]
    assert raw.n_active == int((raw_np > 0).sum()) and raw.relative_threshold is None
    assert list(d.top(5)) == list(np.argsort(-vals, kind="stable")[:5])
    assert list(d.top(5, "negative")) == list(np.argsort(vals, kind="stable")[:5])
    assert list(d.top(5, "abs")) == list(np.argsort(-np.abs(vals), kind="stable")[:5])
    with pytest.raises(ValueError, match=r"k must be an int in 1..256"):
        d.top(257)
    with pytest.raises(ValueError, match="relative threshold"):
        decompose(tiny, sae, vec, threshold=1.5)
    with pytest.raises(ValueError, match="has layers \\[0\\]"):
        decompose(tiny, sae, vec.layer(0))
    with pytest.raises(ValueError, match="component"):
        decompose(tiny, sae, SteeringVector({1: v}, component="mlp_out"))


def test_decompose_pairs_matches_hand_loop(tiny, sae):
    pairs = ContrastSet((ContrastPair("I love this so much", "I hate this so much", "Say it"),
                         ContrastPair("what a joy", "what a pain", "Again"),
                         ContrastPair("bright and warm", "dark and cold", "Once more")), "toy")
    # batched float32 activations + float32 encoder vs per-text activations + float64 encoder;
    # SAE codes are O(1): 1e-4 leaves room for the ReLU-free encoder sums
    d = decompose_pairs(tiny, sae, pairs, read_at="last", chat=False)
    pos = np.stack([np_encode(sae, _hand_acts(tiny, p.positive, p.prompt)[-1:])[0] for p in pairs])
    neg = np.stack([np_encode(sae, _hand_acts(tiny, p.negative, p.prompt)[-1:])[0] for p in pairs])
    np.testing.assert_allclose(d.values.numpy(), pos.mean(0) - neg.mean(0), rtol=1e-4, atol=1e-4)
    assert d.encoding == "pairs" and d.label == "toy"
    dm = decompose_pairs(tiny, sae, pairs, read_at="mean", chat=False)
    pos = np.stack([np_encode(sae, _hand_acts(tiny, p.positive, p.prompt)).mean(0) for p in pairs])
    neg = np.stack([np_encode(sae, _hand_acts(tiny, p.negative, p.prompt)).mean(0) for p in pairs])
    np.testing.assert_allclose(dm.values.numpy(), pos.mean(0) - neg.mean(0), rtol=1e-4, atol=1e-4)


def test_domain_features_match_hand_means(tiny, sae):
    dom = domain_features(tiny, sae, DOMAIN[:3], NEUTRAL[:2], batch_size=2)
    hand_d = np.mean([np_encode(sae, _hand_acts(tiny, t)).mean(0) for t in DOMAIN[:3]], axis=0)
    hand_n = np.mean([np_encode(sae, _hand_acts(tiny, t)).mean(0) for t in NEUTRAL[:2]], axis=0)
    np.testing.assert_allclose(dom.scores.numpy(), hand_d - hand_n, rtol=1e-4, atol=1e-4)  # as above
    assert (dom.n_domain, dom.n_neutral) == (3, 2)
    assert list(dom.top(4)) == list(np.argsort(-(hand_d - hand_n), kind="stable")[:4])
    sel = dom.selection(4)
    # the selection copies the score (float32 -> float): exact
    assert sel.rule == "activation_diff" and sel.scores[0] == float(dom.scores.max())
    with pytest.raises(ValueError, match="at least one domain text"):
        domain_features(tiny, sae, [], NEUTRAL)


def test_domain_ranking_recovers_a_planted_feature(tiny):
    """Plant the domain-vs-neutral direction (learned on half the texts) as feature 123; the
    ranking on the other half must put it first."""
    planted = 123
    fit_d = np.concatenate([_hand_acts(tiny, t) for t in DOMAIN[:3]])
    fit_n = np.concatenate([_hand_acts(tiny, t) for t in NEUTRAL[:3]])
    u = fit_d.mean(0) - fit_n.mean(0)
    u /= np.linalg.norm(u)
    sae = make_sae(seed=5, biases=False)
    with torch.no_grad():
        sae.W_dec[planted] = torch.tensor(u, dtype=torch.float32)
        sae.W_enc[:, planted] = torch.tensor(u, dtype=torch.float32)
        sae.b_dec.copy_(torch.tensor(fit_n.mean(0), dtype=torch.float32))
    dom = domain_features(tiny, sae, DOMAIN[3:], NEUTRAL[3:])
    assert dom.top(1) == (planted,)
    # the control: a SAE without the plant does not rank that feature first
    assert domain_features(tiny, make_sae(seed=5, biases=False), DOMAIN[3:],
                           NEUTRAL[3:]).top(1) != (planted,)


def test_overlap_table_counts():
    a, b = (1, 2, 3, 4), (3, 4, 5, 6)
    assert overlap(a, b) == 2
    d1 = VectorDecomposition(torch.tensor([5.0, 4, 3, 2, 1, 0, 0, 0]), "encoder", 0.1, None, HOOK)
    dom = DomainFeatures(torch.tensor([0.0, 0, 1, 2, 3, 4, 0, 0]), torch.zeros(8), torch.zeros(8),
                         1, 1, "mean", HOOK)
    sel = FeatureSelection((7, 6, 0), (3.0, 2.0, 1.0), "output_score", HOOK, 8)
    t = overlap_table({"v": d1, "s": sel}, {"dom": dom, "ids": [0, 1, 7]}, k=3)
    # v top3 = {0,1,2}; s top3 = {7,6,0}; dom top3 = {5,4,3}; ids = {0,1,7}
    assert t.counts == ((0, 2), (0, 2))
    assert t.expected_random == pytest.approx(9 / 8, rel=1e-12)  # k * k / d_sae in float64
    df = t.frame()
    assert len(df) == 4 and set(df["overlap"]) == {0, 2}
    with pytest.raises(ValueError, match="1..8"):
        overlap_table({"v": d1}, {"d": dom}, k=9)
    with pytest.raises(ValueError, match="one SAE size"):
        overlap_table({"v": d1}, {"d": [1, 2, 3]}, k=2, d_sae_=16)
    with pytest.raises(ValueError, match="cannot give a top-4"):
        overlap_table({"v": d1}, {"d": [1, 2, 3]}, k=4)


def test_feature_contexts_match_hand_activations(tiny, sae):
    texts = DOMAIN + NEUTRAL
    feats = [3, 40, 200]
    fc = feature_contexts(tiny, sae, texts, feats, k=4, window=2, batch_size=5)
    hand = [np_encode(sae, _hand_acts(tiny, t)) for t in texts]
    # batched float32 activations + encoder vs per-text float64 encoding: rel 1e-4, abs 1e-5 on
    # O(1) codes; copied values (example centre = its activation) compare with approx's default
    for j, f in enumerate(feats):
        col = [h[:, f] for h in hand]
        flat = np.concatenate(col)
        assert fc.max_activation[j] == pytest.approx(flat.max(), rel=1e-4, abs=1e-5)
        assert fc.frequency[j] == pytest.approx((flat > 0).mean())
        exs = fc.examples[j]
        assert exs[0].activation == pytest.approx(flat.max(), rel=1e-4, abs=1e-5)
        assert [e.activation for e in exs] == sorted((e.activation for e in exs), reverse=True)
        for e in exs:
            assert e.values[e.center] == pytest.approx(e.activation)
            assert e.activation == pytest.approx(col[e.text_index][e.token_index], rel=1e-4,
                                                 abs=1e-5)
            ids = runtime.prompt_ids(tiny, texts[e.text_index], chat=False)[1:]
            assert e.tokens[e.center] == runtime.decode(tiny, [ids[e.token_index]],
                                                        skip_special=False)
            others = [o for o in exs if o is not e and o.text_index == e.text_index]
            assert all(abs(o.token_index - e.token_index) > 2 for o in others)
        assert fc.top_tokens[j][0][1] == pytest.approx(flat.max(), rel=1e-4, abs=1e-5)
    assert fc.for_feature(40) == fc.examples[1]
    assert fc.n_tokens == sum(len(h) for h in hand)
    with pytest.raises(ValueError, match="valid ids are 0..255"):
        feature_contexts(tiny, sae, texts, [256])
    with pytest.raises(ValueError, match="not requested"):
        fc.for_feature(5)


def test_sae_figures_render(tiny, sae, tmp_path):
    from steerlens.figures import save_html
    from steerlens.figures.sae import (
        decomposition_bar,
        diffusion_bar,
        feature_view,
        overlap_heatmap,
    )
    from steerlens.figures.tokens import save_token_view

    v = torch.randn(64, generator=torch.Generator().manual_seed(1))
    d = decompose(tiny, sae, v)
    fig = decomposition_bar(d, k=5)
    assert len(fig.data[0].x) >= 5
    fig = diffusion_bar({"a": d, "b": decompose(tiny, sae, -v)})
    assert fig.data[0].y[0] == d.diffusion  # the figure copies the number
    dom = domain_features(tiny, sae, DOMAIN[:2], NEUTRAL[:2])
    t = overlap_table({"a": d}, {"dom": dom}, k=10)
    fig = overlap_heatmap(t)
    assert fig.data[0].z[0][0] == t.counts[0][0]
    save_html(fig, tmp_path / "o.html")
    fc = feature_contexts(tiny, sae, DOMAIN, [1, 2], k=2, window=2)
    view = feature_view(fc)
    path = save_token_view(view, tmp_path / "f.html", title="features")
    text = path.read_text()
    assert "TopkSamples" in text and "unpkg" not in text.split("<script")[0]
