"""A stop signal turned into an exception that cannot be lost.

A handler that raises is how a signal interrupts a blocking call in Python. But the raise lands
in whatever bytecode runs when the signal arrives, and where that is a weakref callback, a
``__del__``, a garbage-collector callback or a library's bare ``except``, the exception is
printed or dropped and the program runs on as if no signal came (CI once saw ``broker start``
exit 0, Tansu up, after a SIGTERM raised inside ``_get_module_lock``'s weakref callback).
:class:`StopSignal` therefore also *records* the signal, and the program's waits call
:meth:`StopSignal.check`, which raises it again.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable


class StopSignal:
    """Handler for stop signals: records the first and raises ``exception(signum)`` while armed."""

    def __init__(self, exception: Callable[[int], BaseException]) -> None:
        self._exception = exception
        self.armed = True
        self.signum: int | None = None

    def handler(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
        if self.armed:
            raise self._exception(signum)

    def check(self) -> None:
        """Raise a signal that came (and may have been swallowed) while armed."""
        if self.armed and self.signum is not None:
            raise self._exception(self.signum)

    def commit(self) -> None:
        """The last check: from here on a signal is only recorded. (One between the two lines
        still raises, inside the caller's clean-up.)"""
        self.check()
        self.armed = False

    def install(self, signals: Iterable[signal.Signals]) -> dict[signal.Signals, object]:
        """This handler for ``signals`` (main thread only: elsewhere nothing); the handlers it
        replaced, to put back with :func:`restore`."""
        if threading.current_thread() is not threading.main_thread():
            self.armed = False
            return {}
        return {sig: signal.signal(sig, self.handler) for sig in signals}


def restore(before: dict[signal.Signals, object]) -> None:
    for sig, handler in before.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]
