"""Batched extraction against an independent per-text run_with_cache computation."""

from __future__ import annotations

import pytest
import torch

from steerlens.backend import runtime
from steerlens.extract import extract, extract_pairs, extract_prompts
from steerlens.methods import build_vector
from steerlens.pairs import ContrastPair, ContrastSet

TEXTS = ["The cat sat.", "A much longer sentence about dogs and parks!", "Hi", "Numbers 1 2 3"]
PROMPTS = ["Q: animal?", "Tell me:", "Say hi", "Count"]


def _reference(model, text, prompt, layer, component, position, chat=False):
    """Unbatched, unpadded: TL run_with_cache on one sequence, reduced by hand."""
    if prompt is None:
        ids = runtime.prompt_ids(model, text, chat=False)
        start = 1
    else:
        head = runtime.prompt_ids(model, prompt, chat)
        sep = "" if chat else " "
        ids = head + runtime.text_ids(model, sep + text)
        start = len(head)
    _, cache = model.run_with_cache(torch.tensor([ids]))
    act = cache[runtime.hook_name(layer, component)][0]
    span = act[start:]
    return {"last": span[-1], "first": span[0], "mean": span.mean(0), "all": span}[position]


@pytest.mark.parametrize("position", ["last", "first", "mean", "all"])
@pytest.mark.parametrize("with_prompt", [False, True])
def test_extract_matches_unbatched(tiny, position, with_prompt):
    prompts = PROMPTS if with_prompt else None
    acts = extract(tiny, TEXTS, [0, 1], prompts=prompts, read_at=position, batch_size=3,
                   chat=False, show_progress=False)
    for layer in (0, 1):
        refs = [_reference(tiny, t, p, layer, "resid_pre", position)
                for t, p in zip(TEXTS, prompts or [None] * 4)]
        if position == "all":
            ref = torch.cat(refs)
            assert acts.row_index.tolist() == sum(([i] * len(r) for i, r in enumerate(refs)), [])
        else:
            ref = torch.stack(refs)
        # batched, padded float32 forward vs one text at a time: summation order differs
        # (~1e-6 relative); residual entries are O(1), so 1e-5 both ways
        torch.testing.assert_close(acts[layer], ref, atol=1e-5, rtol=1e-5)


def test_extract_components_and_chat(tiny):
    acts = extract(tiny, TEXTS[:2], [1], prompts=PROMPTS[:2], component="mlp_out", chat=True,
                   show_progress=False)
    refs = torch.stack([_reference(tiny, t, p, 1, "mlp_out", "last", chat=True)
                        for t, p in zip(TEXTS[:2], PROMPTS[:2])])
    torch.testing.assert_close(acts[1], refs, atol=1e-5, rtol=1e-5)  # batched vs unbatched float32


def test_mean_diff_equals_hand_written_cache_mean(tiny):
    pairs = ContrastSet(tuple(ContrastPair(a, b, p) for a, b, p in
                              [("I love it", "I hate it", "Review:"),
                               ("Wonderful day", "Awful day", "Today:"),
                               ("So happy", "So sad", "Mood:")]))
    vec = build_vector(tiny, pairs, [0, 1], show_progress=False)  # instruct model: chat template
    for layer in (0, 1):
        pos = torch.stack([_reference(tiny, p.positive, p.prompt, layer, "resid_pre", "last", True)
                           for p in pairs])
        neg = torch.stack([_reference(tiny, p.negative, p.prompt, layer, "resid_pre", "last", True)
                           for p in pairs])
        # batched float32 activations, then a mean: same float32 path tolerance as above
        torch.testing.assert_close(vec[layer], (pos - neg).mean(0), atol=1e-5, rtol=1e-5)
    assert vec.n_pairs == 3 and vec.method == "mean_diff" and vec.model_id == "tiny-random"


def test_extract_bad_input(tiny):
    with pytest.raises(ValueError, match="valid values are"):
        extract(tiny, TEXTS, [0], read_at="middle", show_progress=False)
    with pytest.raises(ValueError, match=r"layers 0\.\.1"):
        extract(tiny, TEXTS, [5], show_progress=False)
    with pytest.raises(ValueError, match="at least one text"):
        extract(tiny, [], [0], show_progress=False)
    with pytest.raises(ValueError, match="at least one layer"):
        extract(tiny, TEXTS, [], show_progress=False)
    with pytest.raises(ValueError, match="cannot be aligned"):
        extract_pairs(tiny, ContrastSet((ContrastPair("a", "b"),)), [0], read_at="all")
    with pytest.raises(ValueError, match="context length"):
        extract(tiny, ["x" * 400], [0], show_progress=False)
    with pytest.raises(ValueError, match="texts but"):
        extract(tiny, TEXTS, [0], prompts=PROMPTS[:2], show_progress=False)


@pytest.mark.parametrize("read_at", ["last", "mean"])
@pytest.mark.parametrize("chat", [False, True])
def test_extract_prompts_matches_unbatched_cache(tiny, read_at, chat):
    acts = extract_prompts(tiny, PROMPTS + TEXTS, [0, 1], read_at=read_at, batch_size=3, chat=chat,
                           show_progress=False)
    assert acts.row_index.tolist() == list(range(len(PROMPTS + TEXTS)))
    for layer in (0, 1):
        for i, prompt in enumerate(PROMPTS + TEXTS):
            ids = runtime.prompt_ids(tiny, prompt, chat)  # what generate() feeds
            _, cache = tiny.run_with_cache(torch.tensor([ids]))
            act = cache[runtime.hook_name(layer, "resid_pre")][0]
            ref = act[-1] if read_at == "last" else act[1:].mean(0)  # span: after BOS
            # left-padded batch vs one unpadded sequence, float32: ~1e-6 relative
            torch.testing.assert_close(acts[layer][i], ref, rtol=1e-5, atol=1e-5)


def test_extract_prompts_bad_input(tiny):
    with pytest.raises(ValueError, match="at least one prompt"):
        extract_prompts(tiny, [], [0])
    with pytest.raises(ValueError, match="at least one layer"):
        extract_prompts(tiny, ["hi"], [])
    with pytest.raises(ValueError, match="read_at"):
        extract_prompts(tiny, ["hi"], [0], read_at="middle")
