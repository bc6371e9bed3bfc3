"""Progress bars for long jobs (tqdm, quiet when disabled or when not attached to a terminal)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def progress(it: Iterable[T], desc: str = "", enabled: bool = True, total: int | None = None):
    """Wrap an iterable in a tqdm bar when `enabled`.

    Args:
        it: the iterable.
        desc: the bar's label.
        enabled: show a bar; False returns `it` unchanged.
        total: the number of items, when `it` has no length.

    Returns:
        (Iterable[T]): `it`, or a tqdm iterator over it.
    """
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, leave=False, dynamic_ncols=True)
