"""Open token streams on a model, so that an abandoned one can never keep steering.

`generate_stream` attaches its steering hooks when its first step runs and removes them when it
ends, raises, or is closed. A consumer that stops iterating without closing would leave them on
the model, and a later unrelated call would be silently steered. So every open stream registers
here, and the backend's entry points (`runtime.forward`, `runtime.attached`) first close, with a
warning, every open stream on that model other than the one currently running. Registration is by
weak reference: a stream that is dropped is closed by garbage collection as usual.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

from .types import Model

_ACTIVE: contextvars.ContextVar[Any] = contextvars.ContextVar("steerlens_stream", default=None)
_OPEN: weakref.WeakKeyDictionary[Model, weakref.WeakSet] = weakref.WeakKeyDictionary()


def register(model: Model, stream: Any) -> None:
    """Record `stream` as open on `model`.

    Args:
        model (Model): the model the stream decodes with.
        stream (TokenStream): an object with `close()` and a `started` flag.
    """
    _OPEN.setdefault(model, weakref.WeakSet()).add(stream)


def unregister(model: Model, stream: Any) -> None:
    """Forget `stream` (it ended or was closed).

    Args:
        model (Model): the model.
        stream (TokenStream): the stream.
    """
    streams = _OPEN.get(model)
    if streams is not None:
        streams.discard(stream)


@contextlib.contextmanager
def running(stream: Any) -> Iterator[None]:
    """Mark `stream` as the one executing in this context (its own forwards do not close it).

    Args:
        stream (TokenStream): the stream taking a step.

    Yields:
        Nothing; the mark holds inside the block.
    """
    token = _ACTIVE.set(stream)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def open_count(model: Model) -> int:
    """How many streams are open (registered and not yet ended) on `model`.

    Args:
        model (Model): the model.

    Returns:
        The number of open streams.
    """
    streams = _OPEN.get(model)
    return len(streams) if streams is not None else 0


def close_abandoned(model: Model) -> int:
    """Close every open stream on `model` except the running one; warn for started ones.

    Args:
        model (Model): the model about to be used.

    Returns:
        How many streams were closed.
    """
    streams = _OPEN.get(model)
    if not streams:
        return 0
    active = _ACTIVE.get()
    closed = 0
    for stream in list(streams):
        if stream is active:
            continue
        if getattr(stream, "started", False):
            warnings.warn(
                "An unfinished generate_stream() on this model was closed and its steering hooks "
                "removed, because another steerlens call used the model. Consume a stream to the "
                "end or call its close() before using the model for anything else.",
                RuntimeWarning, stacklevel=4)
        try:
            stream.close()
        except ValueError:  # executing in another thread right now: leave it to its owner
            continue
        closed += 1
    return closed
