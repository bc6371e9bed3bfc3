"""Logit lens: read vectors and residual streams in the model's output vocabulary.

*Vector lens.* A steering direction v added to the residual stream changes the final logits, to
first order, by J(x) v pushed through the unembedding. For RMSNorm, J(x) = (g / rms(x)) (I - x x^T /
(d rms(x)^2)): the dominant term is the final norm's per-dimension scale g times v, up to a positive
factor 1/rms(x) that does not change the ranking of tokens. So the default `norm="scale"` projects
`(g * v) @ W_U` (for LayerNorm, v is also centred, since centring is linear and acts exactly on
an added vector). When the model was loaded with the norm folded into W_U (the embedded models
are), g already lives in W_U and "scale" is simply `v @ W_U`. `norm="none"` is `v @ W_U` on the
unfolded matrix, and `norm="full"` applies the final norm to v as if it were a residual (values
are then independent of the vector's norm, which makes layers comparable). The unembedding bias
is left out: it cancels in the difference a vector makes.

*Residual lens* (nostalgebraist 2020). The residual stream entering every block (`resid_pre`)
and the final one (`resid_post` of the last block) are each put through the final norm and the
unembedding at one token position, giving the model's "current guess" per layer. The last row
equals the model's actual output logits there.
Precision: the residual lens upcasts each layer's logits to float64 before its softmax and
ranks; the vector lens returns float32 logit effects (a bf16/fp16 model's unembedding is read
in its own dtype by the backend). See docs/topics/precision.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..backend import Model, runtime
from ..checks import check_finite_tensor
from ..steer import PositionMode, steered_forward
from ..vectors import SteeringVector
from ._common import steering_context, token_strings, use_chat

LensNorm = str  # "scale" | "none" | "full" (`LENS_NORMS`); validated with a ValueError


@dataclass(frozen=True)
class TokenScore:
    """One vocabulary entry: decoded string, id and value (a logit or a probability)."""

    token: str
    id: int
    value: float


@dataclass(frozen=True)
class VectorLens:
    """Top promoted / suppressed tokens of a steering vector's direction at each layer."""

    layers: tuple[int, ...]
    promoted: Mapping[int, tuple[TokenScore, ...]]
    suppressed: Mapping[int, tuple[TokenScore, ...]]
    k: int
    norm: str
    component: str
    method: str
    model_id: str

    def top_tokens(self, layer: int, kind: Literal["promoted", "suppressed"] = "promoted") -> list[str]:
        """The token strings promoted (or suppressed) at one layer, strongest first.

        Args:
            layer: a layer of the lens.
            kind: "promoted" or "suppressed".

        Returns:
            The k token strings.

        Raises:
            KeyError: if the layer is not in the lens.
        """
        table = self.promoted if kind == "promoted" else self.suppressed
        if layer not in table:
            raise KeyError(f"Layer {layer} not in this lens; its layers are {list(self.layers)}.")
        return [t.token for t in table[layer]]


def _check_k(model: Model, k: int) -> int:
    vocab = runtime.d_vocab(model)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
        raise ValueError(f"k must be an int in 1..{vocab} (the vocabulary size), got {k!r}.")
    return k


def vector_lens(
    model: Model, vector: SteeringVector, k: int = 10, norm: LensNorm = "scale"
) -> VectorLens:
    """Top-k promoted and suppressed tokens of each layer's direction in `vector`.

    Args:
        model: the model the vector was built for.
        vector: the steering vector.
        k: tokens to keep per side and layer.
        norm: how the final norm is treated: "scale" (default), "none" or "full" (module
            docstring).

    Returns:
        A `VectorLens` with promoted and suppressed tokens per layer.

    Raises:
        ValueError: for a non-vector, a vector for another model, k out of range or an unknown norm.

    Example:
        >>> lens = sl.vector_lens(model, vec, k=5)  # doctest: +SKIP
        >>> lens.top_tokens(10)  # doctest: +SKIP
    """
    if not isinstance(vector, SteeringVector):
        raise ValueError(f"vector must be a SteeringVector, got {type(vector).__name__}.")
    vector.check_model(model)
    _check_k(model, k)
    layers = vector.layers
    stacked = torch.stack([vector[lay] for lay in layers])
    logits = runtime.direction_logits(model, stacked, norm=norm).float().cpu()
    top = logits.topk(k, dim=-1)
    bottom = logits.topk(k, dim=-1, largest=False)
    promoted, suppressed = {}, {}
    for row, layer in enumerate(layers):
        for table, res in ((promoted, top), (suppressed, bottom)):
            ids = res.indices[row].tolist()
            table[layer] = tuple(
                TokenScore(s, i, float(v))
                for s, i, v in zip(token_strings(model, ids), ids, res.values[row].tolist())
            )
    return VectorLens(tuple(layers), promoted, suppressed, k, norm, vector.component,
                      vector.method, vector.model_id)


@dataclass(frozen=True)
class ResidualLens:
    """Per-layer top-k next-token predictions read from the residual stream at one position.

    Row i of the tables is `labels[i]`: "resid_pre 0" ... "resid_pre L-1", then "resid_post L-1"
    (the final residual, whose lens is the model's actual output distribution). `target_rank` is
    0-based (0 = the top token).
    """

    prompt: str
    tokens: tuple[str, ...]
    read_at: int
    labels: tuple[str, ...]
    top_ids: tuple[tuple[int, ...], ...]
    top_tokens: tuple[tuple[str, ...], ...]
    top_probs: tuple[tuple[float, ...], ...]
    target: str | None
    target_id: int | None
    target_rank: tuple[int, ...] | None
    target_prob: tuple[float, ...] | None
    steered: bool
    chat: bool

    @property
    def n_rows(self) -> int:
        """Number of rows (one per layer read, plus the final residual)."""
        return len(self.labels)


def _target_id(model: Model, target: str | int) -> int:
    vocab = runtime.d_vocab(model)
    if isinstance(target, int) and not isinstance(target, bool):
        if not 0 <= target < vocab:
            raise ValueError(f"Target id {target} out of range 0..{vocab - 1}.")
        return target
    if not isinstance(target, str) or not target:
        raise ValueError(f"target must be a token string or id, got {target!r}.")
    ids = runtime.text_ids(model, target)
    if len(ids) != 1:
        raise ValueError(
            f"Target {target!r} is {len(ids)} tokens ({token_strings(model, ids)}); give a string "
            f"that is exactly one token (mind the leading space) or a token id."
        )
    return ids[0]


def residual_lens(
    model: Model,
    prompt: str,
    steering=None,
    strength: float | None = None,
    *,
    k: int = 10,
    read_at: int = -1,
    target: str | int | None = None,
    positions: PositionMode = "all",
    chat: bool | None = None,
    position: int | None = None,
) -> ResidualLens:
    """Logit lens of `prompt`'s residual stream at every layer, read at one token.

    With `steering`, the lens reads the steered run (the injection is included in the residual of
    the steered layer's `resid_pre`).

    Args:
        model: the model.
        prompt: the prompt text.
        steering (SteeringVector | SteeringVectorSet | Injection | list | None): anything `steer()`
            accepts, or None for the clean run.
        strength: strength for a vector given without one.
        k: how many top tokens to keep per layer.
        read_at: the token index the residual is read at (negative counts from the end).
        target: a one-token string or token id whose rank and probability are tracked.
        positions: where steering vectors are written.
        chat: chat-template the prompt; None = auto (on for instruct models with a template).
        position: deprecated name of `read_at`.

    Returns:
        A `ResidualLens` with each layer's top-k guesses (and the target's rank/probability).

    Raises:
        ValueError: for an empty prompt, k or read_at out of range, or a multi-token target.
    """
    if position is not None:
        warnings.warn("residual_lens(position=...) is deprecated; use read_at=... (where the "
                      "activation is read).", DeprecationWarning, stacklevel=3)
        read_at = position
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}.")
    _check_k(model, k)
    chat_on = use_chat(model, chat)
    batch = runtime.encode_prompts(model, [prompt], chat=chat_on)
    n_pos = int(batch.tokens.shape[1])
    if isinstance(read_at, bool) or not isinstance(read_at, int) or not -n_pos <= read_at < n_pos:
        raise ValueError(f"read_at must be an int in {-n_pos}..{n_pos - 1} (the prompt has {n_pos} "
                         f"tokens), got {read_at!r}.")
    pos = read_at % n_pos
    tid = None if target is None else _target_id(model, target)
    n_layers = runtime.n_layers(model)
    captured: dict[str, Tensor] = {}

    def grab(key: str):
        def hook(act, hook):
            captured[key] = act[0, pos].detach().clone()

        return hook

    names = [runtime.hook_name(layer, "resid_pre") for layer in range(n_layers)]
    names.append(runtime.hook_name(n_layers - 1, "resid_post"))
    with steering_context(model, steering, strength, positions) as steerer, \
            runtime.attached(model, [(n, grab(n)) for n in names]):
        steered_forward(model, batch, steerer, stop_at_layer=n_layers, return_type=None)
    resid = torch.stack([captured[n] for n in names])
    check_finite_tensor(resid, "residual stream read by the lens")
    probs = runtime.unembed(model, resid).double().softmax(-1).cpu()
    top = probs.topk(k, dim=-1)
    top_ids = tuple(tuple(row) for row in top.indices.tolist())
    ranks = probs_t = None
    if tid is not None:
        p_t = probs[:, tid]
        ranks = tuple(int(r) for r in (probs > p_t[:, None]).sum(-1).tolist())
        probs_t = tuple(float(p) for p in p_t.tolist())
    labels = tuple(f"resid_pre {i}" for i in range(n_layers)) + (f"resid_post {n_layers - 1}",)
    return ResidualLens(
        prompt=prompt,
        tokens=tuple(token_strings(model, batch.tokens[0].tolist())),
        read_at=pos,
        labels=labels,
        top_ids=top_ids,
        top_tokens=tuple(tuple(token_strings(model, row)) for row in top_ids),
        top_probs=tuple(tuple(float(p) for p in row) for row in top.values.tolist()),
        target=None if tid is None else runtime.decode(model, [tid], skip_special=False),
        target_id=tid,
        target_rank=ranks,
        target_prob=probs_t,
        steered=steering is not None,
        chat=chat_on,
    )
