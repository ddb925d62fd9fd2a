"""Ctrl-C and SIGTERM during the epochs: finish the epoch, save a checkpoint, then stop.

Inside :func:`deferred_interrupts` the first SIGINT or SIGTERM only sets a flag, which the
optimisation loop reads after each epoch (:meth:`Deferred.pending`); it then writes its
checkpoint and raises :class:`Interrupted`. A second signal interrupts at once. Outside
the block (and outside the main thread, where Python allows no handlers) signals keep
their usual meaning; a SIGKILL loses at most the epochs since the last checkpoint.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by SIGINT or SIGTERM; the message says what was saved."""


class Deferred:
    """The signal received inside :func:`deferred_interrupts`, if any."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def pending(self) -> bool:
        return self.signal is not None

    def handle(self, number: int, frame) -> None:
        if self.signal is not None:  # the second one: stop now
            raise KeyboardInterrupt
        self.signal = number

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""


@contextmanager
def deferred_interrupts() -> Iterator[Deferred]:
    """Defer SIGINT and SIGTERM to the caller's next :meth:`Deferred.pending` check."""
    deferred = Deferred()
    if threading.current_thread() is not threading.main_thread():
        yield deferred
        return
    previous = {number: signal.getsignal(number) for number in _SIGNALS}
    for number in _SIGNALS:
        signal.signal(number, deferred.handle)
    try:
        yield deferred
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
