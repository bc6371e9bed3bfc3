"""The model type every steerlens function takes, as one alias.

Annotating `model: Model` everywhere (instead of leaving it bare) lets the test suite's runtime
type checks catch a wrong object early, and keeps the backend class named in one place: moving to
TransformerLens' `TransformerBridge` changes this alias and the backend, nothing else.
"""

from __future__ import annotations

from transformer_lens import HookedTransformer

Model = HookedTransformer
"""A loaded model (today a TransformerLens `HookedTransformer`)."""
