"""How well does kernel ridge regression reproduce each attention head's output?

The eigengap claim rests on reading a head as kernel ridge regression (KRR) with the linear kernel
k(a, b) = a·b / d_head:  Ẑ = K_qk (K_kk + λI)^{-1} V, with K_qk = Q Kᵀ / d_head and
K_kk = K Kᵀ / d_head. We test that reading directly: R² = 1 - Σ‖z - ẑ‖² / Σ‖z - z̄‖² between the
head's actual output z (the pattern-weighted values, before W_O) and the KRR prediction, over a
grid of ridge strengths λ. In a causal model the output at position i only sees keys 0..i, so by
default (`causal=True`) query i is regressed on that prefix alone; `causal=False` uses the whole
prompt, exactly the matrix formula above. λ is relative by default: λ_abs = λ · tr(K_kk) / T, the
mean eigenvalue of the prompt's key Gram matrix, which makes one grid comparable across layers
whose key norms differ by orders of magnitude (with a linear kernel a common rescaling of K_kk,
K_qk and λ leaves Ẑ unchanged). Queries and keys are taken after the rotary embedding when the
model has one (that is what the attention scores use); each query head is paired with its key/
value head under grouped-query attention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..backend import Model, runtime
from ..extract import resolve_chat
from ._capture import capture_attention, encode_checked, resolve_layers

DEFAULT_LAMBDAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def check_lambdas(lambdas: Sequence[float]) -> tuple[float, ...]:
    """Validate a grid of ridge strengths.

    Args:
        lambdas: the ridge strengths, each finite and > 0.

    Returns:
        The grid as a tuple of floats.

    Raises:
        ValueError: if the grid is empty or holds a value that is not finite and positive.
    """
    lam = tuple(float(x) for x in lambdas)
    if not lam or any(not math.isfinite(x) or x <= 0 for x in lam):
        raise ValueError(f"lambdas must be a non-empty list of finite numbers > 0, got {lambdas!r}.")
    return lam


def krr_predict(
    q: Float[Tensor, "heads pos d"],
    k: Float[Tensor, "kv_heads pos d"],
    v: Float[Tensor, "kv_heads pos dv"],
    lambdas: Sequence[float],
    causal: bool = True,
    relative: bool = True,
) -> Float[Tensor, "heads n_lambda pos dv"]:
    """KRR prediction of every head's output for one prompt (no padding), in float64.

    Query head h uses key/value head h // (heads / kv_heads). One Cholesky factor per (kv head, λ)
    serves every causal prefix, since each prefix system is a leading block of K_kk + λI.

    Args:
        q: queries per query head, [heads, pos, d].
        k: keys per key/value head, [kv_heads, pos, d].
        v: values per key/value head, [kv_heads, pos, dv].
        lambdas: ridge strengths.
        causal: regress query i on keys 0..i only (what a causal model sees).
        relative: scale each λ by the mean eigenvalue of the key Gram matrix, tr(K_kk) / T.

    Returns:
        The predicted outputs, [heads, n_lambda, pos, dv].

    Raises:
        ValueError: if the query heads cannot be grouped over the key/value heads, or a λ is
            invalid.
    """
    lam = torch.tensor(check_lambdas(lambdas), dtype=torch.float64, device=q.device)
    n_heads, t, d = q.shape
    n_kv = k.shape[0]
    if n_heads % n_kv:
        raise ValueError(f"{n_heads} query heads cannot be grouped over {n_kv} key/value heads.")
    group = n_heads // n_kv
    q, k, v = (x.to(torch.float64) for x in (q, k, v))
    gkk = k @ k.mT / d  # [kv, T, T]
    gqk = q.reshape(n_kv, group, t, d) @ k.mT[:, None] / d  # [kv, group, Tq, Tk]
    if relative:
        lam_abs = lam[None, :] * (gkk.diagonal(dim1=-2, dim2=-1).sum(-1) / t)[:, None]  # [kv, nl]
    else:
        lam_abs = lam[None, :].expand(n_kv, -1)
    eye = torch.eye(t, dtype=torch.float64, device=q.device)
    # The prefix system of query i, K_kk[:i+1, :i+1] + λI, is a leading block of K_kk + λI, so one
    # Cholesky factor L serves every prefix: with u = L⁻¹(k_qi masked to j <= i) and Y = L⁻¹V,
    # ẑ_i = Σ_{j<=i} u_j Y_j (L is lower triangular, so rows <= i only involve the prefix).
    chol = torch.linalg.cholesky(gkk[:, None] + lam_abs[..., None, None] * eye)  # [kv, nl, T, T]
    y = torch.linalg.solve_triangular(chol, v[:, None].expand(-1, len(lam), -1, -1), upper=False)
    keep = torch.tril(torch.ones(t, t, dtype=torch.float64, device=q.device)) if causal else None
    g = gqk if keep is None else gqk * keep  # [kv, group, Tq, Tk]; keep[i, j] = j <= i
    rhs = g.permute(0, 3, 1, 2).reshape(n_kv, 1, t, group * t)  # [kv, 1, Tk, group*Tq]
    u = torch.linalg.solve_triangular(chol, rhs.expand(-1, len(lam), -1, -1), upper=False)
    u = u.reshape(n_kv, len(lam), t, group, t)  # [kv, nl, Tk, group, Tq]
    if keep is not None:
        u = u * keep.T[None, None, :, None, :]
    z = torch.einsum("anjgi,anjd->agnid", u, y)  # [kv, group, nl, Tq, dv]
    return z.reshape(n_heads, len(lam), t, v.shape[-1])


def r2_score(
    target: Float[Tensor, "*#batch pos d"], pred: Float[Tensor, "*#batch pos d"]
) -> Float[Tensor, " *#batch"]:
    """R² = 1 - Σ(z - ẑ)² / Σ(z - z̄)², summed over positions and dimensions (z̄ per dimension).

    Args:
        target: actual outputs z, [..., pos, d].
        pred: predictions ẑ, broadcastable to `target`.

    Returns:
        R² per leading index (unbounded below; -inf or NaN where z does not vary).
    """
    target, pred = target.to(torch.float64), pred.to(torch.float64)
    sse = ((target - pred) ** 2).sum((-2, -1))
    sst = ((target - target.mean(-2, keepdim=True)) ** 2).sum((-2, -1))
    return 1.0 - sse / sst


@dataclass(frozen=True)
class KRRResult:
    """R² of the KRR reading of attention for every prompt, layer, query head and λ.

    Attributes:
        model: the model's id.
        layers: the layers analysed.
        lambdas: the λ grid.
        relative: whether λ was relative to the key Gram matrix's mean eigenvalue.
        causal: whether each query was regressed on its causal prefix only.
        r2: R², [prompt, layer, head, lambda].
        n_tokens: tokens per prompt.
    """

    model: str
    layers: tuple[int, ...]
    lambdas: tuple[float, ...]
    relative: bool
    causal: bool
    r2: np.ndarray  # [prompt, layer, head, lambda]
    n_tokens: tuple[int, ...]

    @property
    def n_prompts(self) -> int:
        """Number of prompts."""
        return int(self.r2.shape[0])

    # Summaries use medians: R² has no lower bound, and a head whose output barely varies over
    # the prompt (e.g. one that only attends to the first token) has Σ(z - z̄)² near 0 and an
    # R² of -1e6 or less, which would swamp any mean.

    @property
    def head_r2(self) -> np.ndarray:
        """[layer, head, lambda] median R² over prompts."""
        return np.median(self.r2, axis=0)

    @property
    def layer_r2(self) -> np.ndarray:
        """[layer, lambda] median R² over prompts and heads."""
        return np.median(self.r2, axis=(0, 2))

    @property
    def best_lambda(self) -> np.ndarray:
        """[layer, head] the grid λ with the highest median R²."""
        return np.asarray(self.lambdas)[self.head_r2.argmax(-1)]

    @property
    def best_r2(self) -> np.ndarray:
        """[layer, head] R² at each head's best λ (chosen on the same prompts: optimistic)."""
        return self.head_r2.max(-1)

    def to_dict(self) -> dict:
        """Per-layer median R² by λ and each head's best λ and R², as a JSON-ready dict.

        Returns:
            A dict with the model, n_prompts, the λ grid, the settings and one entry per layer.
        """
        return {
            "model": self.model, "n_prompts": self.n_prompts, "lambdas": list(self.lambdas),
            "relative_lambda": self.relative, "causal": self.causal,
            "layers": [
                {"layer": layer, "median_r2_by_lambda": self.layer_r2[i].tolist(),
                 "best_r2_per_head": self.best_r2[i].tolist(),
                 "best_lambda_per_head": self.best_lambda[i].tolist()}
                for i, layer in enumerate(self.layers)
            ],
        }


def krr_fit(
    model: Model,
    prompts: Sequence[str],
    layers: Sequence[int] | None = None,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    *,
    causal: bool = True,
    relative: bool = True,
    chat: bool | None = None,
    batch_size: int = 8,
) -> KRRResult:
    """R² of the KRR formula against each head's actual output, over a λ grid.

    Queries and keys are taken after the rotary embedding when the model has one; each prompt is
    fitted on its own tokens (padding removed).

    Args:
        model (Model): the model.
        prompts: the prompts.
        layers: the layers to analyse (None: every layer).
        lambdas: the λ grid (relative to the mean key-Gram eigenvalue when `relative`).
        causal: regress query i on keys 0..i only.
        relative: make λ relative to tr(K_kk) / T per prompt and head.
        chat: chat-template the prompts; None = auto.
        batch_size: most prompts per forward.

    Returns:
        A `KRRResult` with R² per (prompt, layer, head, λ).

    Raises:
        ValueError: for a bad λ grid, layer or prompt list.
    """
    lambdas = check_lambdas(lambdas)
    layers = resolve_layers(model, layers)
    chat = resolve_chat(model, chat, has_prompts=True)
    batch = encode_checked(model, prompts, chat)
    rotary = runtime.has_hook(model, runtime.key_hook_name(layers[0], rotated=True))
    qk = ("rot_q", "rot_k") if rotary else ("q", "k")
    cap = capture_attention(model, batch, layers, [*qk, "v", "z"], batch_size)
    r2 = np.empty((len(prompts), len(layers), cap.parts["z"].shape[-2], len(lambdas)))
    for p in range(len(prompts)):
        keep = cap.mask[p]
        for li in range(len(layers)):
            q, k, v, z = (cap.parts[name][p, li][keep].transpose(0, 1)
                          for name in (*qk, "v", "z"))  # [heads, T, d]
            pred = krr_predict(q, k, v, lambdas, causal=causal, relative=relative)
            r2[p, li] = r2_score(z[:, None], pred).cpu().numpy()
    return KRRResult(runtime.model_id(model), layers, lambdas, relative, causal, r2, cap.n_tokens)
