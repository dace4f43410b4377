"""SIGTERM (a scheduler's pre-emption, Slicer's Cancel) unwinds a command like Ctrl-C, so that pending outputs
are discarded; never while logging's lock is held, which the unwinding would leave held."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like Ctrl-C, so that pending outputs are discarded."""


def _holds_logging_lock() -> bool:
    """Whether this thread is inside logging's module lock (between its acquire and release)."""
    owned = getattr(getattr(logging, "_lock", None), "_is_owned", None)
    return bool(owned and owned())


@contextlib.contextmanager
def terminated_on_sigterm(enabled: bool) -> Iterator[None]:
    """Within the block (main thread), SIGTERM raises ``Terminated``, or a moment later when it lands in
    logging's lock."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        if _holds_logging_lock():
            # Raised here, the exception would leave logging's lock held for ever (or be swallowed by the
            # library that logs), and every thread that logs next (a writer drawing its report) would hang.
            threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGTERM)).start()
            return
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
