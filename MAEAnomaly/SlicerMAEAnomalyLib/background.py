"""Runs ``python -m MAEAnomalyLib score`` in a separate process, so that scoring never freezes Slicer.

Nothing here needs Slicer or Qt: the widget calls ``ScoringJob.poll`` from a timer, and the tests call it
in a loop.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from MAEAnomalyLib.errors import MAEAnomalyError

ERROR_PREFIX = "maeanomaly: error: "
PROGRESS_PREFIX = "progress "
_KEPT_LINES = 50


def python_executable() -> str:
    """The interpreter that has our dependencies: PythonSlicer inside Slicer (whose own ``sys.executable``
    is the application), else the running interpreter."""
    try:
        from slicer import app  # noqa: F401  (only the Slicer application provides slicer.app)
    except ImportError:
        return sys.executable
    found = shutil.which("PythonSlicer")
    if not found:
        raise MAEAnomalyError("PythonSlicer executable not found on PATH; reinstall Slicer")
    return found


def library_parent() -> str:
    """The folder holding the ``MAEAnomalyLib`` package, which the child process must be able to import."""
    import MAEAnomalyLib

    return str(Path(MAEAnomalyLib.__file__).resolve().parent.parent)


@dataclass
class JobStatus:
    """What ``ScoringJob.poll`` reports: finished or not, and the fraction done (0..1)."""

    finished: bool
    progress: float


class ScoringJob:
    """One running ``score`` command; ``poll`` it until finished, then read ``returncode`` or ``error``."""

    def __init__(self, args: list[str]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (library_parent(), env.get("PYTHONPATH")) if p)
        env["PYTHONIOENCODING"] = "utf-8"  # the parent decodes the messages as UTF-8 on every platform
        # The child uses the same threads as Slicer would; keep its console window hidden on Windows.
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        self.command = [python_executable(), "-m", "MAEAnomalyLib", "score", *args, "--progress", "lines"]
        self._process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, encoding="utf-8", env=env, creationflags=flags)
        self._lock = threading.Lock()
        self._lines: deque[str] = deque(maxlen=_KEPT_LINES)
        self._progress = 0.0
        self._error: str | None = None
        self.cancelled = False
        # A thread drains stderr: reading it from poll() could block, and a full pipe would stall the child.
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        for raw in self._process.stderr:
            line = raw.rstrip()
            with self._lock:
                if line.startswith(PROGRESS_PREFIX):
                    try:
                        self._progress = min(1.0, max(0.0, float(line[len(PROGRESS_PREFIX):])))
                    except ValueError:
                        self._lines.append(line)
                elif line.startswith(ERROR_PREFIX):
                    self._error = line[len(ERROR_PREFIX):]
                elif line:
                    self._lines.append(line)

    def poll(self) -> JobStatus:
        """Never blocks; ``finished`` becomes true once the process has exited and its output is read."""
        finished = self._process.poll() is not None
        if finished:
            self._reader.join(timeout=5)
        with self._lock:
            return JobStatus(finished, self._progress)

    def wait(self, timeout: float | None = None) -> JobStatus:
        """Blocks until the process exits (for scripts and tests; the GUI polls)."""
        self._process.wait(timeout)
        return self.poll()

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    @property
    def error(self) -> str | None:
        """The one-line message for a failed run, or None if it succeeded or is still running."""
        code = self._process.returncode
        if code in (None, 0):
            return None
        with self._lock:
            if self._error:
                return self._error
            if self.cancelled:
                return "scoring was cancelled"
            last = self._lines[-1] if self._lines else "no output"
        return f"scoring process failed with exit code {code}: {last}"

    def cancel(self) -> None:
        """Stops the process (terminate, then kill if it does not exit within a few seconds)."""
        if self._process.poll() is not None:
            return
        self.cancelled = True
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=5)
