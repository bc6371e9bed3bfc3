"""Half precision: load_model's dtype / n_devices arguments, and bf16 / fp16 against float32.

The comparisons load the same weights three times (float32, bfloat16, float16; the cache is
float32 and cast after the load) and measure, on the tiny model and on SmolLM2: last-position
logits, the next-token distribution (KL(fp32 || half)), the steered next-token KL of one CAA
vector, the CAA vector itself (cosine per layer), text perplexity, and greedy continuations.
The reductions (log-softmax, KL, perplexity's mean NLL, the pair means) run in float64 in the
library whatever the model dtype, so what differs is the model's own rounding.

Tolerances, per dtype, from the unit roundoff u = 2^-p (p significand bits: bf16 p = 8,
u = 3.9e-3; fp16 p = 11, u = 4.9e-4). Every matmul output and every residual-stream addition is
rounded once, so after k roundings the relative error of the residual stream grows like
sqrt(k) u (independent roundings) to k u (worst case); SmolLM2 has 30 blocks of ~4 rounded
writes each (k ~ 120: sqrt(k) u = 4.3e-2 in bf16, 5.3e-3 in fp16). The bounds below sit at about
that random-walk estimate and 2-5x above the largest value measured here
(benchmarks/bench_precision.py prints the same quantities for 16 prompts and 48 pairs; the
table is in docs/topics/precision.md):
- logits, max |diff| / max |logit|: bf16 0.05, fp16 0.01 (measured: bf16 1.9e-2, fp16 2.3e-3).
- next-token KL(fp32 || half), bits: KL ~ Var_p(delta logits) / (2 ln 2), and the logit
  errors are ~0.1-0.3 nats where the probability mass is: bf16 0.05, fp16 1e-3 (measured:
  bf16 3.8e-3, fp16 6.3e-5).
- steered KL (same vector, strength 4): relative difference of the mean over prompts: the
  steered KL is a difference of two rounded passes, so its relative error is the logit error
  over the KL's own logit shift: bf16 0.05, fp16 0.01 (measured: bf16 1.5e-2, fp16 3.1e-3).
- CAA cosine to the float32 vector, worst layer: a mean of differences of two activations
  whose own errors are ~sqrt(k) u; the difference is ~1/3-1/10 of the activation norm, so the
  direction error is ~3-10x that: bf16 >= 0.99, fp16 >= 0.999 (measured: 0.998 with 16 pairs,
  0.9995 with 48; fp16 0.99998).
- perplexity, relative: exp of a mean NLL; a token's log-prob error is about the logit error
  at the scale of the logits (bf16: ~0.1 nats, fp16 ~8x less) with a random sign, so over n
  scored tokens the mean is off by ~0.1 / sqrt(n) nats, i.e. a relative perplexity error of
  ~1e-2 for the ~100 tokens scored here: bf16 0.02, fp16 5e-3 (measured over ~400 tokens:
  1.4e-3, 3e-4; over two 15-token sentences bf16 reached 2.1e-2, which is why the texts are
  paragraphs).
- greedy text: token-identical continuations are not a property half precision has (a near tie
  flips and the texts part); what is asserted is that every divergence happens at a near tie:
  at the first differing step the float32 margin between its own choice and the half model's
  choice is at most 2x the logit tolerance (then the choice is within rounding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.special
import torch

import steerlens
from steerlens.backend import load_model, runtime
from steerlens.backend.loading import DTYPE_NAMES, block_devices, check_devices, resolve_dtype
from steerlens.generate import generate
from steerlens.measures import kl_bits, next_token_kl
from steerlens.measures.perplexity import text_perplexity
from steerlens.methods import build_vector

TOL = {
    "bf16": {"logit_rel": 0.05, "kl_bits": 0.05, "steered_rel": 0.05, "cos": 0.99,
             "ppl_rel": 0.02},
    "fp16": {"logit_rel": 0.01, "kl_bits": 1e-3, "steered_rel": 0.01, "cos": 0.999,
             "ppl_rel": 5e-3},
}
TEXTS = ["Tides are the slow rise and fall of the sea, caused mainly by the Moon's pull.",
         "A good loaf of bread needs flour, water, salt, yeast and time to rise."]
# perplexity compares need enough tokens for the per-token errors to average (see the docstring):
# two held-out paragraphs, 240 characters each (fits the tiny model's 256-byte context)
HELDOUT = (Path(steerlens.__file__).parent / "data" / "heldout.txt").read_text(encoding="utf-8")
PPL_TEXTS = [t[:240] for t in HELDOUT.split("\n\n") if t.strip()][:2]


# --------------------------------------------------------------------------- load_model arguments


@pytest.mark.parametrize("arg,expected", [
    (None, torch.float32), ("float32", torch.float32), ("fp32", torch.float32),
    ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16), ("BF16", torch.bfloat16),
    ("float16", torch.float16), ("fp16", torch.float16), ("torch.float16", torch.float16),
    (torch.bfloat16, torch.bfloat16), (torch.float64, torch.float64),
])
def test_resolve_dtype(arg, expected):
    assert resolve_dtype(arg) is expected


@pytest.mark.parametrize("bad", ["int8", "half-ish", "", torch.int64, torch.complex64])
def test_bad_dtype_error_lists_the_valid_ones(bad):
    with pytest.raises(ValueError, match="Unsupported dtype") as err:
        load_model("tiny-random", device="cpu", dtype=bad)
    for name in ("bf16", "float16", "float32", "torch.bfloat16"):
        assert name in str(err.value)
    for other in (16, float, "float8"):  # values the signature's type check would refuse first
        with pytest.raises(ValueError, match="Unsupported dtype"):
            resolve_dtype(other)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16", torch.bfloat16])
def test_dtype_is_honoured(dtype):
    model = load_model("tiny-random", device="cpu", dtype=dtype)
    want = resolve_dtype(dtype)
    assert {p.dtype for p in model.parameters()} == {want}
    assert runtime.model_dtype(model) == want
    batch = runtime.encode_prompts(model, ["hello"], chat=False)
    assert runtime.forward(model, batch).dtype == want
    assert runtime.forward(model, batch, stop_at_layer=1, return_type=None).dtype == want


def test_default_is_float32_and_the_cast_keeps_the_weights(tiny):
    """Casting after the fp32 build: the bf16 weights are exactly the fp32 weights rounded."""
    assert runtime.model_dtype(tiny) == torch.float32
    half = load_model("tiny-random", device="cpu", dtype="bf16")
    ref = dict(tiny.named_parameters())
    for name, p in half.named_parameters():
        assert torch.equal(p, ref[name].to(torch.bfloat16)), name  # one correctly rounded op


def test_n_devices_errors_are_clear(monkeypatch):
    with pytest.raises(ValueError, match=r"n_devices=2 .*'cpu'.*use n_devices=1"):
        load_model("tiny-random", device="cpu", n_devices=2)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="n_devices must be a positive int"):
            load_model("tiny-random", device="cpu", n_devices=bad)
    for bad in (1.5, True, "2"):
        with pytest.raises(ValueError, match="n_devices must be a positive int"):
            check_devices("cpu", bad)
    with pytest.raises(ValueError, match="Invalid device"):
        check_devices("gpu0", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"needs \['cuda:0', 'cuda:1', 'cuda:2'\].*2 CUDA "
                                         r"device\(s\): \['cuda:0', 'cuda:1'\]"):
        check_devices("cuda", 3)
    with pytest.raises(ValueError, match=r"needs \['cuda:1', 'cuda:2'\]"):
        check_devices("cuda:1", 2)
    assert check_devices("cuda:0", 2) == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"0 CUDA device\(s\): none"):
        load_model("tiny-random", device="cuda")


@pytest.mark.parametrize("n_layers,n_devices,first", [(30, 4, 0), (30, 2, 0), (2, 2, 1), (18, 3, 2)])
def test_block_layout_is_contiguous_and_balanced(n_layers, n_devices, first):
    """The pipeline layout TransformerLens' forward follows: consecutive blocks share a device,
    devices first..first+n-1 are used in order, each gets floor or ceil of n_layers / n."""
    plan = [d.index for d in block_devices(n_layers, n_devices, f"cuda:{first}")]
    assert plan == sorted(plan)
    assert plan[0] == first and plan[-1] == first + n_devices - 1
    counts = np.bincount(np.asarray(plan) - first, minlength=n_devices)
    assert counts.min() >= n_layers // n_devices and counts.max() <= -(-n_layers // n_devices)


def test_dtype_names_cover_the_issue():
    assert {"float32", "bfloat16", "float16", "fp32", "bf16", "fp16"} <= set(DTYPE_NAMES)


# ---------------------------------------------------------------- reductions ignore the model dtype


def test_kl_reduces_in_float64_on_half_logits():
    """kl_bits on bf16 logits equals scipy's KL on the same (exactly representable) values in
    float64: the log-softmax and the sum never run in bf16 (in bf16 they would be off by ~1e-3)."""
    gen = torch.Generator().manual_seed(0)
    p = (3 * torch.randn(4, 500, generator=gen)).to(torch.bfloat16)
    q = (p.double() + 0.05 * torch.randn(4, 500, generator=gen, dtype=torch.float64)).to(
        torch.bfloat16)
    got = kl_bits(p, q)
    assert got.dtype == torch.float64
    pp = scipy.special.softmax(p.double().numpy(), -1)
    qq = scipy.special.softmax(q.double().numpy(), -1)
    want = scipy.special.rel_entr(pp, qq).sum(-1) / np.log(2)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)  # float64 vs float64 on equal inputs
    assert float(kl_bits(p, p).abs().max()) == 0.0


def test_half_model_measures_are_float64_and_zero_at_strength_zero(sentiment):
    model = load_model("tiny-random", device="cpu", dtype="bf16")
    vec = build_vector(model, sentiment.train[:4], [1], show_progress=False)
    assert vec[1].dtype == torch.float32  # vectors are stored in float32 whatever the model
    r0 = next_token_kl(model, ["Hi there", "What now?"], vec, 0.0)
    assert r0.bits == (0.0, 0.0)  # the same bf16 logits twice: exactly 0 after float64 math
    ppl = text_perplexity(model, TEXTS[:1])
    assert np.isfinite(ppl.perplexity[0]) and ppl.nll[0] > 0


def test_perplexity_of_a_half_model_matches_a_float64_hand_computation():
    """Perplexity on a bf16 model against exp(mean -log p) computed by hand in float64 from the
    same model's full-forward logits: equal up to the two bf16 unembedding kernels' rounding
    (runtime.unembed vs TransformerLens' own; one rounding of logits ~10: ~4e-2 absolute per
    logit, averaging down over ~80 tokens), so rel 1e-2."""
    model = load_model("tiny-random", device="cpu", dtype="bf16")
    got = text_perplexity(model, TEXTS[:1]).perplexity[0]
    batch = runtime.encode(model, TEXTS[:1])
    logits = runtime.forward(model, batch)[0].double()
    lp = logits[:-1].log_softmax(-1).gather(-1, batch.tokens[0, 1:, None])[:, 0]
    assert got == pytest.approx(float(torch.exp(-lp.mean())), rel=1e-2)


# ----------------------------------------------------------------- half precision against float32


def _last_logits(model, prompts):
    batch = runtime.encode_prompts(model, prompts, chat=runtime.has_chat_template(model))
    resid = runtime.forward(model, batch, stop_at_layer=runtime.n_layers(model), return_type=None)
    return runtime.unembed(model, resid[:, -1]).double()


def _measure(name, dtype, pairs, prompts, layers, vec, n_tokens):
    model = load_model(name, device="cpu", dtype=dtype)
    chat = runtime.has_chat_template(model)
    out = {
        "model": model,
        "logits": _last_logits(model, prompts),
        "vector": build_vector(model, pairs, layers, show_progress=False),
        "ppl": text_perplexity(model, PPL_TEXTS).pooled_perplexity,
        "greedy": generate(model, prompts, chat=chat, max_new_tokens=n_tokens).tokens,
    }
    if vec is not None:
        out["steered"] = np.asarray(next_token_kl(model, prompts, vec, 4.0).bits)
    return out


def _compare(name, dtype, sentiment, layers, steer_layer, n_prompts, n_pairs, n_tokens):
    prompts = list(sentiment.eval_prompts)[:n_prompts]
    pairs = sentiment.train[:n_pairs]
    ref = _measure(name, "fp32", pairs, prompts, layers, None, n_tokens)
    vec = ref["vector"].layer(steer_layer)  # the same vector in every dtype: model rounding only
    ref["steered"] = np.asarray(next_token_kl(ref["model"], prompts, vec, 4.0).bits)
    got = _measure(name, dtype, pairs, prompts, layers, vec, n_tokens)
    tol = TOL[dtype]
    row = {}

    d = (got["logits"] - ref["logits"]).abs().max() / ref["logits"].abs().max()
    row["logit_rel"] = float(d)
    kl = kl_bits(ref["logits"], got["logits"])
    row["kl_bits"] = float(kl.max())
    row["steered_rel"] = float(abs(got["steered"].mean() - ref["steered"].mean())
                               / ref["steered"].mean())
    row["cos"] = min(float(torch.nn.functional.cosine_similarity(
        got["vector"][lay].double(), ref["vector"][lay].double(), dim=0)) for lay in layers)
    row["ppl_rel"] = abs(got["ppl"] - ref["ppl"]) / ref["ppl"]
    print(f"\n{name} {dtype}: " + ", ".join(f"{k} {v:.3g} (tol {tol[k]:g})" for k, v in row.items()))
    assert row["logit_rel"] <= tol["logit_rel"]
    assert row["kl_bits"] <= tol["kl_bits"]
    assert ref["steered"].mean() > 1e-3  # a real steering effect to compare
    assert row["steered_rel"] <= tol["steered_rel"]
    assert row["cos"] >= tol["cos"]
    assert row["ppl_rel"] <= tol["ppl_rel"]
    _check_greedy(ref, got, prompts, tol["logit_rel"])


def _check_greedy(ref, got, prompts, logit_rel):
    """Every divergence of the half model's greedy text is at a float32 near tie."""
    model32 = ref["model"]
    chat = runtime.has_chat_template(model32)
    same = 0
    for prompt, a, b in zip(prompts, ref["greedy"], got["greedy"]):
        t = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if t is None:
            same += 1
            continue
        ids = runtime.prompt_ids(model32, prompt, chat) + list(a[:t])
        batch = runtime.batch_from_ids(model32, [(ids, len(ids))])
        logits = runtime.forward(model32, batch)[0, -1].double()
        assert int(logits.argmax()) == a[t]  # the float32 greedy step, recomputed
        margin = float(logits[a[t]] - logits[b[t]])
        bound = 2 * logit_rel * float(logits.abs().max())
        assert 0 <= margin <= bound, (prompt, t, margin, bound)
    print(f"greedy: {same}/{len(prompts)} continuations token-identical")


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_vs_float32_tiny(dtype, sentiment):
    _compare("tiny-random", dtype, sentiment, layers=[1], steer_layer=1, n_prompts=8, n_pairs=16,
             n_tokens=16)


@pytest.mark.embedded
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_vs_float32_smollm2(dtype, sentiment):
    _compare("smollm2-135m-instruct", dtype, sentiment, layers=[3, 9, 15, 21, 27], steer_layer=15,
             n_prompts=8, n_pairs=16, n_tokens=12)


@pytest.mark.embedded
def test_the_weights_cache_stays_float32():
    from safetensors import safe_open

    from steerlens.backend import cache_root

    load_model("smollm2-135m-instruct", device="cpu", dtype="bf16")
    path = cache_root() / "models" / "smollm2-135m-instruct" / "weights.safetensors"
    with safe_open(str(path), "pt") as fh:
        dtypes = {fh.get_slice(k).get_dtype() for k in fh.keys()}  # noqa: SIM118 (not iterable)
    assert dtypes - {"BOOL"} == {"F32"}  # every float tensor F32 (masks are BOOL buffers)


def test_stats_take_half_precision_tensors():
    """numpy has no bfloat16: stats convert any torch tensor to float64 first, giving exactly
    the result of the same values passed as Python floats."""
    from steerlens.stats import bootstrap_ci, cohens_d

    t = torch.tensor([0.5, 1.25, 2.0, 3.5, 0.75], dtype=torch.bfloat16)  # exact in bf16
    values = [0.5, 1.25, 2.0, 3.5, 0.75]
    assert bootstrap_ci(t) == bootstrap_ci(values)
    assert cohens_d(t, t.flip(0).to(torch.float16)) == cohens_d(values, values[::-1])
