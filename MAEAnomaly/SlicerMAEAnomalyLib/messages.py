"""Errors reach the user as one line in a dialog, from every slot: Qt drops an exception raised in a slot
after printing it to the Python console, where a user of the panel never looks."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import slicer

from MAEAnomalyLib.core.errors import MAEAnomalyError


def oneLine(exc: BaseException) -> str:
    """The message of an error: our own as it is, any other as its type and first line."""
    if isinstance(exc, MAEAnomalyError):
        return str(exc)
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def showError(exc: BaseException) -> str:
    """Shows ``exc`` in an error dialog (the traceback of an unexpected one goes to the log, for bug
    reports) and returns the line shown."""
    if not isinstance(exc, MAEAnomalyError):
        logging.error("MAEAnomaly failed", exc_info=exc)
    message = oneLine(exc)
    slicer.util.errorDisplay(message, windowTitle="MAEAnomaly")
    return message


def reportingErrors(slot: Callable) -> Callable:
    """A slot whose errors are shown by ``showError`` instead of escaping into Qt."""

    @functools.wraps(slot)
    def wrapper(*args, **kwargs):
        try:
            return slot(*args, **kwargs)
        except Exception as exc:  # every failure of a user's action must be seen by that user
            showError(exc)
            return None

    return wrapper
