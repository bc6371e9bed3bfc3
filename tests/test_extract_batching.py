"""Length-sorted extraction batches: exact chunks, chunk-size invariance, SmolLM2 CAA vs a hand mean."""

from __future__ import annotations

import pytest
import torch

from steerlens.backend import runtime
from steerlens.extract import _length_sorted_chunks, extract
from steerlens.methods import build_vector
from steerlens.pairs import as_contrast_set, load_behaviour

# lengths deliberately shuffled, so sorting reorders rows and the unsorting has work to do
TEXTS = ["Hi", "A much longer sentence about dogs, parks and the rain in spring!", "The cat sat.",
         "x", "Numbers 1 2 3 4 5 6 7 8", "Short one", "Another fairly long line of plain text."]


def test_length_sorted_chunks_are_the_rows_without_their_shared_padding(tiny):
    full = runtime.encode(tiny, TEXTS, ["Q:"] * len(TEXTS), chat=False, device="cpu")
    chunks = _length_sorted_chunks(full, 3)
    order = torch.cat([idx for idx, _ in chunks])
    assert sorted(order.tolist()) == list(range(len(TEXTS)))  # every row exactly once
    lengths = full.lengths[order].tolist()
    assert lengths == sorted(lengths, reverse=True)  # longest first
    width = full.tokens.shape[1]
    for idx, sub in chunks:
        off = width - sub.tokens.shape[1]
        assert sub.tokens.shape[1] == int(full.lengths[idx].max())  # no all-padding column left
        # exact: the same ids, mask and spans, shifted by the dropped columns
        assert torch.equal(sub.tokens, full.tokens[idx, off:])
        assert torch.equal(sub.attention_mask, full.attention_mask[idx, off:])
        assert torch.equal(full.attention_mask[idx, :off], torch.zeros_like(full.tokens[idx, :off]))
        assert torch.equal(sub.span_start + off, full.span_start[idx])
        assert torch.equal(sub.span_end + off, full.span_end[idx])


@pytest.mark.parametrize("read_at", ["last", "first", "mean", "all"])
def test_results_do_not_depend_on_the_chunking(tiny, read_at):
    runs = [extract(tiny, TEXTS, [0, 1], prompts=["Q:"] * len(TEXTS), read_at=read_at,
                    batch_size=bs, chat=False, show_progress=False) for bs in (1, 2, 3, 16)]
    ref = runs[0]  # batch size 1: every row alone, unpadded
    for acts in runs[1:]:
        assert torch.equal(acts.row_index, ref.row_index)  # rows back in input order
        for layer in (0, 1):
            # padded float32 batches vs rows alone: summation order only (~1e-6 relative)
            torch.testing.assert_close(acts[layer], ref[layer], atol=1e-5, rtol=1e-5)
    if read_at == "all":
        spans = runtime.encode(tiny, TEXTS, ["Q:"] * len(TEXTS), chat=False, device="cpu")
        counts = (spans.span_end - spans.span_start).tolist()
        assert ref.row_index.tolist() == sum(([i] * c for i, c in enumerate(counts)), [])


@pytest.mark.embedded
def test_smollm2_caa_all_layers_equals_hand_written_cache_mean(smol):
    """6 sentiment pairs, every layer (resid_post): batched build_vector vs per-text run_with_cache."""
    pairs = as_contrast_set(list(load_behaviour("sentiment").train)[:6])
    layers = list(range(runtime.n_layers(smol)))
    vec = build_vector(smol, pairs, layers, component="resid_post", batch_size=5,
                       show_progress=False)
    names = {runtime.hook_name(layer, "resid_post") for layer in layers}

    def last(prompt: str, text: str) -> list[torch.Tensor]:
        ids = runtime.prompt_ids(smol, prompt, chat=True) + runtime.text_ids(smol, text)
        _, cache = smol.run_with_cache(torch.tensor([ids]), names_filter=lambda n: n in names)
        return [cache[runtime.hook_name(layer, "resid_post")][0, -1] for layer in layers]

    diffs = [[p - n for p, n in zip(last(pair.prompt, pair.positive), last(pair.prompt, pair.negative))]
             for pair in pairs]
    for li, layer in enumerate(layers):
        ref = torch.stack([d[li] for d in diffs]).mean(0)
        # float32 forwards through up to 30 layers, padded batches vs one text alone: ~1e-6
        # relative per entry; late-layer residual entries reach O(10-100), hence rtol 1e-4
        # with an absolute floor of 1e-4 for near-zero entries of the difference
        torch.testing.assert_close(vec[layer], ref, rtol=1e-4, atol=1e-4)
