"""Shared fixtures: the tiny random model (unit tests) and the embedded models (integration)."""

from __future__ import annotations

import pytest

from steerlens.backend import load_model


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
