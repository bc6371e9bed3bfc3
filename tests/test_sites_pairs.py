"""Sites and contrast pairs: validation, file formats, shipped behaviours."""

from __future__ import annotations

import json

import pytest

from steerlens.pairs import ContrastPair, ContrastSet, list_behaviours, load_behaviour
from steerlens.sites import COMPONENTS, Site, check_layer, sites

BEHAVIOURS = ["calendar_json", "formality", "french", "refusal", "sentiment", "sycophancy"]


def test_site_hook_names(tiny):
    assert Site(1, "resid_pre").hook_name(tiny) == "blocks.1.hook_resid_pre"
    assert Site(0, "mlp_out").hook_name(tiny) == "blocks.0.hook_mlp_out"
    for comp in COMPONENTS:
        assert Site(1, comp).hook_name() in tiny.hook_dict
    assert [s.layer for s in sites([0, 1], "attn_out")] == [0, 1]


def test_site_bad_input(tiny):
    with pytest.raises(ValueError, match=r"valid components are .*resid_pre"):
        Site(0, "resid")
    with pytest.raises(ValueError, match=r"layers 0\.\.1"):
        Site(2).validate(tiny)
    with pytest.raises(ValueError, match="must be >= 0"):
        Site(-1)
    # TypeError: under the test suite's jaxtyping hook the annotation catches it first
    with pytest.raises((ValueError, TypeError), match="must be an int|parameter .layer."):
        Site(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"layers 0\.\.1"):
        check_layer(tiny, 7)


def test_pair_validation():
    with pytest.raises(ValueError, match="positive must be a non-empty string"):
        ContrastPair("", "no")
    with pytest.raises(ValueError, match="is empty"):
        ContrastSet(())


def test_flipped_swaps_positive_and_negative():
    cs = ContrastSet((ContrastPair("good", "bad", "How?"), ContrastPair("yes", "no")), "x/train")
    f = cs.flipped()
    assert f.positives == cs.negatives and f.negatives == cs.positives
    assert f.prompts == cs.prompts and f.name == "x/train/flipped"
    assert f.flipped() == cs  # flipping twice is the identity, name included
    assert cs.positives == ["good", "yes"]  # the original is untouched


def test_jsonl_round_trip(tmp_path):
    cs = ContrastSet((ContrastPair("good", "bad", "How?"), ContrastPair("yes", "no")), "x")
    path = cs.to_jsonl(tmp_path / "p.jsonl")
    back = ContrastSet.from_jsonl(path)
    assert back.pairs == cs.pairs
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0] == {"positive": "good", "negative": "bad", "prompt": "How?"}
    assert "prompt" not in lines[1]


def test_jsonl_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"positive": "a", "negative": "b"}\n{not json}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not valid JSON"):
        ContrastSet.from_jsonl(bad)
    bad.write_text('{"positive": "a"}\n')
    with pytest.raises(ValueError, match=r"lacks \['negative'\]"):
        ContrastSet.from_jsonl(bad)
    with pytest.raises(FileNotFoundError):
        ContrastSet.from_jsonl(tmp_path / "missing.jsonl")


def test_caa_format(tmp_path):
    data = [{"question": "Do you agree?\n\nChoices:\n (A) Yes\n (B) No",
             "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"},
            {"question": "Q2", "answer_matching_behavior": ["(B)"],
             "answer_not_matching_behavior": ["(A)"]}]
    path = tmp_path / "caa.json"
    path.write_text(json.dumps(data))
    cs = ContrastSet.from_caa_json(path)
    assert cs[0].positive == "(A" and cs[0].negative == "(B" and cs[1].positive == "(B"
    out = cs.to_caa_json(tmp_path / "out.json")
    again = json.loads(out.read_text())
    assert again[0]["answer_matching_behavior"] == "(A)"
    assert ContrastSet.from_caa_json(out).pairs == cs.pairs
    (tmp_path / "bad.json").write_text('[{"question": "q"}]')
    with pytest.raises(ValueError, match="needs keys"):
        ContrastSet.from_caa_json(tmp_path / "bad.json")


def test_shipped_behaviours():
    assert list_behaviours() == BEHAVIOURS
    for name in BEHAVIOURS:
        b = load_behaviour(name)
        assert len(b.train) + len(b.test) >= 40
        assert len(b.test) >= 10
        train_prompts = {p.prompt for p in b.train}
        assert not train_prompts & {p.prompt for p in b.test}, name
        assert all(p.positive != p.negative for p in b.train)
        assert len(b.eval_prompts) >= 10 and b.scorer.get("kind")
        # eval prompts are held out: no train or test pair is built on them
        assert not set(b.eval_prompts) & (train_prompts | {p.prompt for p in b.test}), name
        assert len(set(b.eval_prompts)) == len(b.eval_prompts), name
    with pytest.raises(ValueError, match="Valid behaviours are"):
        load_behaviour("nope")


def test_calendar_positives_are_json():
    b = load_behaviour("calendar_json")
    for p in (*b.train, *b.test):
        assert isinstance(json.loads(p.positive), dict)


def test_identical_pairs_warn_naming_them(tmp_path):
    import warnings

    from steerlens.pairs import IdenticalPairWarning

    with pytest.warns(IdenticalPairWarning, match=r"set 'x': pair 1 has identical"):
        ContrastSet.from_dicts([{"positive": "a", "negative": "b"},
                                {"positive": "c", "negative": "c"}], "x")
    item = {"question": "Q", "answer_matching_behavior": "(A)",
            "answer_not_matching_behavior": "(B)"}
    path = tmp_path / "caa.json"
    path.write_text(json.dumps([item, {**item, "answer_not_matching_behavior": "(A)"},
                                {**item, "answer_matching_behavior": "(B)"}]))
    with pytest.warns(IdenticalPairWarning, match=r"2 of 3 pairs .*pair 1 \(.*caa.json: item 1\)"):
        ContrastSet.from_caa_json(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdenticalPairWarning)
        for name in BEHAVIOURS:  # the shipped sets have none
            load_behaviour(name)
