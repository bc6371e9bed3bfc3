"""KRR reading of attention: predictions vs scikit-learn KernelRidge, R² vs sklearn's r2_score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.kernel_ridge import KernelRidge
from sklearn.metrics import r2_score as sk_r2

from steerlens.spectral.krr import krr_fit, krr_predict, r2_score


def sklearn_krr(q, k, v, lam, causal):
    """Reference: one KernelRidge per head and query (prefix keys when causal), linear kernel / d."""
    n_heads, t, d = q.shape
    group = n_heads // k.shape[0]
    out = np.zeros((n_heads, t, v.shape[-1]))
    for h in range(n_heads):
        kk, vv, qq = k[h // group], v[h // group], q[h]
        for i in range(t):
            n = i + 1 if causal else t
            fit = KernelRidge(alpha=lam, kernel="precomputed").fit(kk[:n] @ kk[:n].T / d, vv[:n])
            out[h, i] = fit.predict(qq[i:i + 1] @ kk[:n].T / d)[0]
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_krr_predict_matches_sklearn(causal):
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(*s, generator=gen, dtype=torch.float64)
               for s in ((6, 9, 5), (2, 9, 5), (2, 9, 4)))
    lambdas = [0.05, 1.0, 20.0]
    pred = krr_predict(q, k, v, lambdas, causal=causal, relative=False).numpy()
    for li, lam in enumerate(lambdas):
        ref = sklearn_krr(q.numpy(), k.numpy(), v.numpy(), lam, causal)
        # float64 in, float64 solves (torch vs sklearn): rounding x conditioning at lambda 0.05
        np.testing.assert_allclose(pred[:, li], ref, atol=1e-9)
    # relative λ is λ times the mean eigenvalue tr(K Kᵀ / d) / T of each kv head's Gram matrix
    rel = krr_predict(q, k, v, [0.3], causal=causal, relative=True).numpy()
    for g in range(2):
        scale = float((k[g] @ k[g].T / 5).trace() / 9)
        ref = sklearn_krr(q[3 * g:3 * g + 3].numpy(), k[g:g + 1].numpy(), v[g:g + 1].numpy(),
                          0.3 * scale, causal)
        np.testing.assert_allclose(rel[3 * g:3 * g + 3, 0], ref, atol=1e-9)


def test_krr_interpolates_values_when_queries_are_keys():
    # With Q = K, T <= d and λ -> 0, non-causal KRR reproduces V exactly (K Kᵀ is invertible).
    gen = torch.Generator().manual_seed(2)
    k = torch.randn(1, 6, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 6, 3, generator=gen, dtype=torch.float64)
    pred = krr_predict(k, k, v, [1e-9], causal=False, relative=False)
    # lambda 1e-9 leaves a ~1e-9-relative ridge bias, float64 solves of a well-conditioned K Kᵀ
    np.testing.assert_allclose(pred[0, 0].numpy(), v[0].numpy(), atol=1e-6)
    assert r2_score(v[0], pred[0, 0]).item() == pytest.approx(1.0, abs=1e-9)


def test_relative_lambda_is_invariant_to_key_query_scale():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((2, 7, 4), (1, 7, 4),
                                                                             (1, 7, 3)))
    a = krr_predict(q, k, v, [0.1, 1.0], relative=True)
    b = krr_predict(3.0 * q, 3.0 * k, v, [0.1, 1.0], relative=True)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)  # exact in algebra; float64 solves


def test_krr_fit_matches_hand_written_reference(tiny):
    prompts = ["The cat sat on the mat.", "Glaciers carve valleys"]
    res = krr_fit(tiny, prompts, lambdas=[0.1, 10.0], chat=False, relative=False)
    assert res.r2.shape == (2, 2, 4, 2)
    for p, prompt in enumerate(prompts):
        names = {f"blocks.{layer}.attn.hook_{x}" for layer in (0, 1)
                 for x in ("rot_q", "rot_k", "v", "z")}
        _, cache = tiny.run_with_cache(tiny.to_tokens(prompt), names_filter=names.__contains__)
        for layer in (0, 1):
            q, k, v, z = (cache[f"blocks.{layer}.attn.hook_{x}"][0].double().numpy().transpose(1, 0, 2)
                          for x in ("rot_q", "rot_k", "v", "z"))
            for li, lam in enumerate((0.1, 10.0)):
                pred = sklearn_krr(q, k, v, lam, causal=True)
                for h in range(4):
                    ref = sk_r2(z[h], pred[h], multioutput="variance_weighted")
                    # batched float32 q/k/v/z vs one prompt alone; R2 through a ridge solve
                    assert res.r2[p, layer, h, li] == pytest.approx(ref, abs=1e-4)
    assert res.best_r2.shape == (2, 4)
    assert set(np.unique(res.best_lambda)) <= {0.1, 10.0}


def test_krr_bad_input(tiny):
    for bad in ([], [0.0], [-1.0], [float("nan")], [float("inf")]):
        with pytest.raises(ValueError, match="lambdas must be"):
            krr_fit(tiny, ["hello there"], lambdas=bad, chat=False)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        krr_fit(tiny, [""], chat=False)
