"""Vectors from steering-vectors and repeng: exact conversion, and identical steering on SmolLM2.

The layer conventions were read from the libraries' source (steering-vectors 0.12.2:
`SteeringVector.patch_activations` hooks the output of the layer_num-th matching module; repeng
0.4.0: `ControlModule.forward` adds the control to the wrapped decoder layer's output). The
embedded tests steer the Hugging Face export of SmolLM2 with the other library's own hook and the
TransformerLens model with `steer()` on the converted vector, and compare next-token log-probs.
repeng 0.4.0 cannot be imported next to numpy 2 (it uses `np.float_`), so when it is missing the
repeng side is a `ControlVector`-shaped object and a forward hook written from `ControlModule`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

import steerlens as sl
from steerlens.backend import runtime
from steerlens.interop.recipes import (
    STEERING_VECTORS_SITES,
    from_repeng,
    from_steering_vectors,
    to_layer_activations,
)
from steerlens.steer import steered_forward


@dataclass
class SVShaped:
    """What steering-vectors' SteeringVector holds (used when the package is missing)."""

    layer_activations: dict
    layer_type: str = "decoder_block"


@dataclass
class ControlVectorShaped:
    """What repeng's ControlVector holds: model_type and directions {layer: np.ndarray}."""

    model_type: str
    directions: dict = field(default_factory=dict)


def _sv(acts, layer_type="decoder_block"):
    if importlib.util.find_spec("steering_vectors") is not None:
        from steering_vectors import SteeringVector

        return SteeringVector(acts, layer_type)
    return SVShaped(acts, layer_type)


def test_steering_vectors_conversion_is_exact(tiny):
    g = torch.Generator().manual_seed(1)
    acts = {0: torch.randn(64, generator=g), 1: torch.randn(64, generator=g).double()}
    for layer_type, component in STEERING_VECTORS_SITES.items():
        vec = from_steering_vectors(_sv(acts, layer_type), model=tiny)
        assert vec.component == component and vec.layers == [0, 1]
        assert vec.method == "steering-vectors" and vec.model_id == runtime.model_id(tiny)
        for k, t in acts.items():
            assert torch.equal(vec[k], t.float())  # a copy cast to float32, nothing rescaled


def test_steering_vectors_negative_keys_and_bad_layer_types(tiny):
    v = torch.ones(64)
    assert from_steering_vectors(_sv({-1: v}), model=tiny).layers == [1]
    assert from_steering_vectors(_sv({-2: v}), n_layers=2).layers == [0]
    with pytest.raises(ValueError, match="counts from the end"):
        from_steering_vectors(_sv({-1: v}))
    with pytest.raises(ValueError, match=r"does not exist in a model with 2 layers"):
        from_steering_vectors(_sv({2: v}), model=tiny)
    with pytest.raises(ValueError, match=r"both name block 1"):
        from_steering_vectors(_sv({1: v, -1: v}), model=tiny)
    with pytest.raises(ValueError, match=r"input_layernorm.*convertible types are"):
        from_steering_vectors(_sv({0: v}, "input_layernorm"))
    with pytest.raises(TypeError, match="layer_activations"):
        from_steering_vectors(object())
    with pytest.raises(ValueError, match="d_model"):
        from_steering_vectors(_sv({0: torch.ones(32)}), model=tiny)


def test_repeng_conversion_is_exact_and_resolves_negative_layers(tiny):
    rng = np.random.default_rng(0)
    cv = ControlVectorShaped("llama", {-1: rng.standard_normal(64).astype(np.float32),
                                       0: rng.standard_normal(64).astype(np.float32)})
    vec = from_repeng(cv, model=tiny)
    assert vec.component == "resid_post" and vec.layers == [0, 1]
    np.testing.assert_array_equal(vec[1].numpy(), cv.directions[-1])  # exact copy
    np.testing.assert_array_equal(vec[0].numpy(), cv.directions[0])
    assert vec.extra["model_type"] == "llama" and vec.extra["source_layers"] == [-1, 0]
    with pytest.raises(ValueError, match="counts from the end"):
        from_repeng(cv)
    with pytest.raises(TypeError, match="directions"):
        from_repeng(SVShaped({}))
    with pytest.raises(ValueError, match="finite"):
        from_repeng(ControlVectorShaped("x", {0: np.full(64, np.nan, np.float32)}))


def test_to_layer_activations_inverts_the_conventions(tiny):
    g = torch.Generator().manual_seed(2)
    post = sl.SteeringVector.from_tensors({0: torch.randn(64, generator=g)}, "resid_post")
    pre = sl.SteeringVector.from_tensors({1: post[0]}, "resid_pre")
    assert to_layer_activations(post).keys() == {0}
    assert torch.equal(to_layer_activations(pre)[0], post[0])
    back = from_steering_vectors(_sv(to_layer_activations(pre)), model=tiny)
    assert torch.equal(back[0], post[0]) and back.component == "resid_post"
    with pytest.raises(ValueError, match="embedding output"):
        to_layer_activations(sl.SteeringVector.from_tensors({0: post[0]}, "resid_pre"))
    with pytest.raises(ValueError, match="attn_out"):
        to_layer_activations(sl.SteeringVector.from_tensors({0: post[0]}, "attn_out"))


# ----------------------------------------------------------------- SmolLM2: HF hook vs steer()
@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM

    from steerlens.backend.loading import cached_hf_export

    return AutoModelForCausalLM.from_pretrained(cached_hf_export("smollm2-135m-instruct"),
                                                dtype=torch.float32).eval()


PROMPTS = ["The capital of France is", "My favourite food is", "Tell me a story about"]


def _ids(model, text):
    return runtime.prompt_ids(model, text, chat=False)


def _hf_logprobs(hf, ids):
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0, -1].double(), -1)


def _tl_logprobs(model, ids, vec=None, strength=None):
    batch = runtime.batch_from_ids(model, [(ids, 1)])
    if vec is None:
        return torch.log_softmax(runtime.forward(model, batch)[0, -1].double(), -1)
    with sl.steer(model, vec, strength) as steerer:
        out = steered_forward(model, batch, steerer)
    return torch.log_softmax(out[0, -1].double(), -1)


def _directions(smol, layers, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(runtime.d_model(smol), generator=g) * 8.0 for k in layers}


# SmolLM2's HF export and the TL model differ by float32 error (folded layer norms): ~1e-4
# nats on next-token log-probs; steering moves them by >0.1, the off-by-one layer by >1e-2.
TOL = 2e-3


@pytest.mark.embedded
@pytest.mark.parametrize("layer_type", ["decoder_block", "self_attn", "mlp"])
def test_steering_vectors_steers_like_steer(smol, hf, layer_type):
    sv_mod = pytest.importorskip("steering_vectors")
    acts = _directions(smol, [3, 12])
    sv = sv_mod.SteeringVector(acts, layer_type)
    ours = from_steering_vectors(sv, model=smol)
    for prompt in PROMPTS:
        ids = _ids(smol, prompt)
        base = _hf_logprobs(hf, ids)
        with sv.apply(hf, multiplier=2.0):
            theirs = _hf_logprobs(hf, ids)
        mine = _tl_logprobs(smol, ids, ours, 2.0)
        assert float((theirs - mine).abs().max()) < TOL
        assert float((theirs - base).abs().max()) > 0.1  # the steering did something
    if layer_type == "decoder_block":  # the convention matters: resid_pre at the same index fails
        wrong = sl.SteeringVector.from_tensors(acts, "resid_pre", model=smol)
        ids = _ids(smol, PROMPTS[0])
        with sv.apply(hf, multiplier=2.0):
            theirs = _hf_logprobs(hf, ids)
        assert float((theirs - _tl_logprobs(smol, ids, wrong, 2.0)).abs().max()) > 1e-2


def _repeng_control(hf, directions, coeff):
    """repeng's ControlModel when importable, else a hook written from its ControlModule."""
    if importlib.util.find_spec("repeng") is not None:
        try:
            from repeng import ControlModel, ControlVector

            model = ControlModel(hf, list(directions))
            model.set_control(ControlVector("llama", directions) * coeff)
            return model, model.reset
        except (ImportError, AttributeError):
            pass
    layers = hf.model.layers
    handles = []
    for key, d in directions.items():
        control = torch.as_tensor(d).reshape(1, 1, -1) * coeff

        def hook(module, args, output, control=control):
            if isinstance(output, tuple):
                return (output[0] + control, *output[1:])
            return output + control

        handles.append(layers[key].register_forward_hook(hook))
    return hf, lambda: [h.remove() for h in handles]


@pytest.mark.embedded
def test_repeng_steers_like_steer(smol, hf):
    n = runtime.n_layers(smol)
    dirs = {k: v.numpy() for k, v in _directions(smol, [-3, 10], seed=1).items()}
    ours = from_repeng(ControlVectorShaped("llama", dirs), model=smol)
    assert ours.layers == [10, n - 3]
    for prompt in PROMPTS:
        ids = _ids(smol, prompt)
        base = _hf_logprobs(hf, ids)
        steered_model, undo = _repeng_control(hf, dirs, 1.5)
        try:
            theirs = _hf_logprobs(steered_model, ids)
        finally:
            undo()
        mine = _tl_logprobs(smol, ids, ours, 1.5)
        assert float((theirs - mine).abs().max()) < TOL
        assert float((theirs - base).abs().max()) > 0.1
