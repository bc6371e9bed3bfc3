"""Argument checks shared across the library, each written once with one strictness.

Every public function validates its input before any model work, with a ValueError that names the
argument, what it got and what is valid. Counts (`check_count`, `check_batch_size`) reject bools
and non-integers; text lists (`check_texts`) reject non-strings and empty lists.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence


def check_count(value: int, name: str, minimum: int = 1) -> int:
    """Return `value` as an int if it is an integer >= `minimum` (bools are rejected).

    Args:
        value: the value to check.
        name: the argument's name, for the message.
        minimum: the smallest valid value.

    Returns:
        The value as a Python int.

    Raises:
        ValueError: if it is not an integer or is below `minimum`.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def check_choice(value: str, valid: Sequence[str], what: str) -> str:
    """Return `value` if it is one of `valid`.

    Args:
        value: the value to check.
        valid: the valid values.
        what: the argument's name, for the message.

    Returns:
        The value.

    Raises:
        ValueError: naming the bad value and listing the valid ones.
    """
    if value not in valid:
        raise ValueError(f"Unknown {what} {value!r}; valid values are {list(valid)}.")
    return value


def check_batch_size(batch_size: int) -> int:
    """Return `batch_size` if it is a positive int.

    Args:
        batch_size: most rows per forward pass.

    Returns:
        The batch size.

    Raises:
        ValueError: if it is not an int >= 1.
    """
    return check_count(batch_size, "batch_size", 1)


def check_texts(texts: str | Sequence[str], what: str = "prompts") -> list[str]:
    """A non-empty list of strings (a single string becomes a one-item list).

    Args:
        texts: one string or a sequence of strings.
        what: what the texts are, for the message.

    Returns:
        The texts as a list.

    Raises:
        ValueError: for an empty sequence or a non-string item (the message gives its index).
    """
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence):
        raise ValueError(f"{what} must be a string or a sequence of strings, got "
                         f"{type(texts).__name__}.")
    items = list(texts)
    if not items:
        raise ValueError(f"Need at least one of {what}; got an empty sequence.")
    bad = [i for i, t in enumerate(items) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"All {what} must be strings; item {bad[0]} is "
                         f"{type(items[bad[0]]).__name__}.")
    return items


class NonFiniteError(ValueError):
    """A computation produced NaN or infinity (e.g. a strength too large for the model's dtype).

    Raised instead of returning garbage: steerlens never lets a non-finite number leave a
    measure, a generation or a sweep cell unannounced. Sweeps record it per cell instead.
    """


def check_finite_tensor(x, what: str) -> None:
    """Raise `NonFiniteError` if the tensor `x` holds NaN or infinity.

    Args:
        x (torch.Tensor): the tensor to check.
        what: what it is, for the message (e.g. "steered logits").

    Raises:
        NonFiniteError: naming `what` and how many entries are not finite.
    """
    import torch

    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise NonFiniteError(f"The {what} contain {int(bad.sum())} non-finite value(s) (NaN or "
                             "inf); the steering strength is probably too large for the model's "
                             "dtype. Nothing was computed from them.")
