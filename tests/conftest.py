"""Shared fixtures: the tiny random model (unit tests) and the embedded models (integration).

`STEERLENS_THREADS=N` sets torch's intra-op thread count for the whole session (default: torch's
own). The suite must pass at 1 and 2 threads (and on other CPUs): thread count and kernels change
float32 summation order.

Tolerances, each with a comment saying which case it is:
- exact (`==`, `torch.equal`, `assert_array_equal`): copies (a figure's data), one correctly
  rounded op per element, the same computation run twice in one process, untouched values.
- float64 on the same inputs (stats vs scipy, means of one table): rel 1e-12 or approx's default.
- two float32 paths through the model (batched vs one at a time, padded, KV-cached, another
  kernel): ~1e-6 relative at best, so rtol >= 1e-5 with an atol set by the quantity's scale;
  more where the quantity amplifies logit error (KL of close distributions: rtol 1e-4) or the
  model is deep (SmolLM2, 30 layers: 1e-4 - 1e-3). Never numpy's default rtol 1e-7 (nor
  pytest.approx's 1e-6) on float32 model output.
"""

from __future__ import annotations

import os

import pytest
import torch

from steerlens.backend import load_model


def _requested_threads() -> int | None:
    raw = os.environ.get("STEERLENS_THREADS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise pytest.UsageError(f"STEERLENS_THREADS must be a positive integer, got {raw!r}.")
    return int(raw)


def pytest_configure(config):
    threads = _requested_threads()
    if threads is not None:
        torch.set_num_threads(threads)


def pytest_report_header(config):
    requested = os.environ.get("STEERLENS_THREADS", "unset")
    return f"torch threads: {torch.get_num_threads()} (STEERLENS_THREADS={requested})"


@pytest.fixture(scope="session")
def tiny():
    """2-layer, d_model 64 random HookedTransformer with a byte-level tokenizer."""
    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct (built once into the user cache, then seconds)."""
    return load_model("smollm2-135m-instruct", device="cpu")


@pytest.fixture(scope="session")
def gemma():
    """The embedded Gemma 3 270M base model."""
    return load_model("gemma-3-270m", device="cpu")


@pytest.fixture(scope="session")
def sentiment():
    from steerlens.pairs import load_behaviour

    return load_behaviour("sentiment")
