"""The Intervention protocol: application order at a hook, per-row and named strengths for any
kind, reset on a new prompt pass only, the dtype check through max_push, save/load and bad files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import steerlens.interventions as interventions
from steerlens.backend import runtime
from steerlens.generate import generate
from steerlens.interventions.base import (
    ORDERS,
    BoundIntervention,
    Intervention,
    InterventionFileError,
    load_intervention,
    save_intervention,
    weight,
)
from steerlens.steer import Injection, steer, steered_forward
from steerlens.vectors import SteeringVector

PROMPTS = ["Hello there, friend", "Hi"]
SITE = ("resid_post", 0)


@dataclass(frozen=True)
class _Affine(Intervention):
    """Test kind: act -> act + w * ((factor - 1) act + shift) at resid_post 0."""

    kind: ClassVar[str] = "test_affine"
    order: ClassVar[int] = ORDERS["clamp"]
    factor: float = 1.0
    shift: float = 0.0
    push: float = 0.0
    strength: float = 1.0
    positions: str = "all"
    start_step: int = 0
    stop_step: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        self.check_common()

    def check_model(self, model) -> None:
        pass

    def sites(self, model):
        return [(runtime.hook_name(0, "resid_post"), 0)]

    def bind(self, model):
        return _BoundAffine(self.factor, self.shift)

    def max_push(self) -> float:
        return self.push

    def to_dict(self):
        return {"factor": self.factor, "shift": self.shift}

    @classmethod
    def from_saved(cls, fields, tensors, common):
        return cls(fields["factor"], fields["shift"], **common)


class _BoundAffine(BoundIntervention):
    def __init__(self, factor, shift):
        self.factor, self.shift = factor, shift
        self.resets = 0
        self.calls = 0

    def apply(self, act, layer, hook_name, scale, mask, context):
        self.calls += 1
        return act + weight(act, scale, mask) * ((self.factor - 1.0) * act + self.shift)

    def reset(self):
        self.resets += 1


def _x(tiny, batch, steerer=None):
    return steered_forward(tiny, batch, steerer, stop_at_layer=1, return_type=None)


def _v(seed=0):
    return torch.randn(64, generator=torch.Generator().manual_seed(seed))


def test_order_then_list_index(tiny):
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    x = _x(tiny, batch)
    v = _v()
    inj = Injection(SteeringVector({0: v}, component="resid_post"))
    double, shift = _Affine(factor=2.0), _Affine(shift=0.5)
    # the addition (order 3) runs after the order-1 kind, wherever it is listed
    with steer(tiny, [inj, double]) as s:
        torch.testing.assert_close(_x(tiny, batch, s), 2 * x + v, atol=1e-5, rtol=0)
    # equal orders keep the list order
    with steer(tiny, [shift, double]) as s:
        torch.testing.assert_close(_x(tiny, batch, s), 2 * (x + 0.5), atol=1e-5, rtol=0)
    with steer(tiny, [double, shift]) as s:
        torch.testing.assert_close(_x(tiny, batch, s), 2 * x + 0.5, atol=1e-5, rtol=0)


def test_named_and_per_row_strengths_for_any_kind(tiny):
    batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
    x = _x(tiny, batch)
    with steer(tiny, {"dbl": _Affine(factor=2.0)}, strengths={"dbl": [0.0, 0.5]}) as s:
        assert s.names == ["dbl"]
        got = _x(tiny, batch, s)
        assert torch.equal(got[0], x[0])
        torch.testing.assert_close(got[1], 1.5 * x[1], atol=1e-5, rtol=0)
        s.set_strength("dbl", 3.0)
        torch.testing.assert_close(_x(tiny, batch, s), 4 * x, atol=2e-5, rtol=0)
        s.set_strength(0, [1.0, 1.0, 1.0])
        with pytest.raises(ValueError, match="3 per-row strengths set but the batch has 2 rows"):
            _x(tiny, batch, s)


def test_skip_at_zero_and_reset_on_new_prompt_pass_only(tiny):
    iv = _Affine(shift=0.1)
    for cached, want_resets in ((True, 1), (False, 4)):
        with steer(tiny, iv) as s:
            bound = s._bound[0]
            generate(tiny, PROMPTS, s, max_new_tokens=4, stop_at_eos=False, use_kv_cache=cached)
            assert bound.resets == want_resets  # cached: prompt pass only; uncached: every step
    with steer(tiny, _Affine(shift=0.1, strength=0.0)) as s:
        batch = runtime.encode_prompts(tiny, PROMPTS, chat=False)
        _x(tiny, batch, s)
        assert s._bound[0].calls == 0  # skipped at strength 0
        s._bound[0].skip_at_zero = False
        _x(tiny, batch, s)
        assert s._bound[0].calls == 1


def test_dtype_check_uses_max_push(tiny):
    with pytest.raises(ValueError, match="overflow"), steer(tiny, _Affine(push=1e30)):
        pass
    with steer(tiny, _Affine(push=1.0, name="a")) as s, pytest.raises(ValueError, match="overflow"):
        s.set_strength("a", 1e30)
    assert runtime.attached_hook_count(tiny) == 0


def test_weight_helper_shapes():
    act = torch.zeros(2, 3, 4, 5)
    assert weight(act, 2.0, None) == 2.0
    w = weight(act, torch.tensor([1.0, 2.0]), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
    assert w.shape == (2, 3, 1, 1)
    assert w[:, :, 0, 0].tolist() == [[1.0, 0.0, 1.0], [0.0, 2.0, 2.0]]
    assert weight(act[..., 0], torch.tensor([1.0, 2.0]), None).shape == (2, 1, 1)


def test_injection_save_load_round_trip(tiny, tmp_path):
    vec = SteeringVector({0: _v(1), 1: _v(2)}, component="resid_mid", method="mean_diff",
                         model_id="tiny-random", n_pairs=3, extra={"seed": 4})
    inj = Injection(vec, 2.5, "generated", 1, 5, "formal")
    save_intervention(inj, tmp_path / "inj")
    back = load_intervention(tmp_path / "inj" / "intervention.json", model=tiny)
    assert isinstance(back, Injection) and back.common() == inj.common()
    assert back.vector.metadata() == vec.metadata()
    assert all(torch.equal(back.vector[la], vec[la]) for la in (0, 1))
    save_intervention(_Affine(3.0, 0.25, name="aff"), tmp_path / "aff")
    assert load_intervention(tmp_path / "aff") == _Affine(3.0, 0.25, name="aff")


def test_bad_files(tiny, tmp_path):
    with pytest.raises(InterventionFileError, match="does not exist"):
        load_intervention(tmp_path / "nothing")
    d = save_intervention(Injection(SteeringVector({0: _v()})), tmp_path / "x")
    meta = json.loads((d / "intervention.json").read_text())
    blob = (d / "intervention.safetensors").read_bytes()
    (d / "intervention.safetensors").write_bytes(blob[:-8])
    with pytest.raises(InterventionFileError, match="SHA-256"):
        load_intervention(d)
    (d / "intervention.safetensors").write_bytes(blob)
    (d / "intervention.json").write_text(json.dumps({**meta, "kind": "teleport"}))
    with pytest.raises(InterventionFileError, match="Unknown intervention kind 'teleport'"):
        load_intervention(d)
    (d / "intervention.json").write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(InterventionFileError, match="format 99"):
        load_intervention(d)
    (d / "intervention.json").write_text("{not json")
    with pytest.raises(InterventionFileError, match="not valid"):
        load_intervention(d)
    (d / "intervention.json").write_text(json.dumps({**meta, "common": {"strength": "big"}}))
    with pytest.raises(InterventionFileError, match="Cannot rebuild"):
        load_intervention(d)
    wide = save_intervention(Injection(SteeringVector({0: torch.ones(32)})), tmp_path / "w")
    with pytest.raises(ValueError, match="d_model"):
        load_intervention(wide, model=tiny)


def test_steer_rejects_other_objects_and_lazy_names(tiny):
    with pytest.raises(ValueError, match="Intervention"), steer(tiny, ["not a vector"]):
        pass
    with pytest.raises(ValueError, match="unique"), steer(tiny, [_Affine(name="a"),
                                                                 _Affine(name="a")]):
        pass
    with pytest.raises(AttributeError, match="no attribute 'Teleport'"):
        interventions.Teleport  # noqa: B018
    assert interventions.Injection is Injection
    assert {"add", "ablate"} <= set(interventions.registered_kinds())
