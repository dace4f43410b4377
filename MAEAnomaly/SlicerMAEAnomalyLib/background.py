"""Runs ``python -m MAEAnomalyLib score`` in a separate process, so that scoring never freezes Slicer.

Inside Slicer the interpreter is ``PythonSlicer``, a launcher that runs ``python-real`` as its child and
forwards no signals; stopping the launcher alone would leave the scoring process running. The job is
therefore started as the leader of a process group of its own (on Windows, the root of a tree that
``taskkill /T`` stops), and ``cancel`` stops the whole tree. Nothing here needs Slicer or Qt: the widget
calls ``ScoringJob.poll`` from a timer, and the tests call it in a loop.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from MAEAnomalyLib.core.errors import MAEAnomalyError

ERROR_PREFIX = "maeanomaly: error: "
PROGRESS_PREFIX = "progress "
_KEPT_LINES = 50
# How long the tree gets to exit after SIGTERM (the CLI then removes its temporary outputs) before SIGKILL.
TERMINATE_GRACE_S = 0.5
# After the process exits, how long its pipes may stay open before ``poll`` kills its process group (a
# stray grandchild holding them), and how much longer it then waits for the readers before reporting the
# job finished anyway (a holder outside the group).
PIPE_DRAIN_S = 2.0
STRAY_EOF_S = 1.0


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


def _popen_tree_options() -> dict:
    """Popen options that make the child the root of a tree ``kill_tree`` can stop as a whole."""
    if os.name == "nt":
        # No console window; a process group of its own so that Ctrl+Break never reaches Slicer.
        return {"creationflags": subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}  # its own session and process group, whose id is its pid


def kill_tree(process: subprocess.Popen, grace: float = TERMINATE_GRACE_S) -> None:
    """Stops ``process`` and every process it started: SIGTERM to its process group, SIGKILL after
    ``grace`` seconds (on Windows, ``taskkill /T /F``, which has no gentle form for console programs)."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, creationflags=subprocess.CREATE_NO_WINDOW, check=False)
        process.wait()
        return
    group = process.pid
    if _signal_group(group, signal.SIGTERM):
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            process.poll()  # reaps the group leader once it exits
            if not _group_has_live_members(group):
                break
            time.sleep(0.02)
        _signal_group(group, signal.SIGKILL)
    process.wait()


def _signal_group(group: int, sig: int) -> bool:
    """Whether the signal reached a process of ``group`` (POSIX only)."""
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # only zombies are left, or the group id was reused by another user
        return False
    return True


def _group_has_live_members(group: int) -> bool:
    """Whether a process of ``group`` is still running (zombies waiting for their parent do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():  # macOS: no /proc; a signal 0 also counts zombies, so this errs on waiting
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command name: state, ppid, pgrp.
        if int(fields[2]) == group and fields[0] not in ("Z", "X"):
            return True
    return False


class ScoringJob:
    """One running ``score`` command; ``poll`` it until finished, then read ``returncode``, ``error`` and
    ``outputs`` (the ``kind: path`` lines the command printed)."""

    def __init__(self, args: list[str], python: str | None = None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (library_parent(), env.get("PYTHONPATH")) if p)
        env["PYTHONIOENCODING"] = "utf-8"  # the parent decodes the messages as UTF-8 on every platform
        self.command = [python or python_executable(), "-m", "MAEAnomalyLib", "score", *args, "--progress", "lines"]
        # errors="replace": a stray non-UTF-8 byte (a library's message in the system code page) must not
        # end the reader, or the pipe would fill and the child would block forever.
        self._process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, encoding="utf-8", errors="replace", env=env,
                                         **_popen_tree_options())
        self._lock = threading.Lock()
        self._lines: deque[str] = deque(maxlen=_KEPT_LINES)
        self._progress = 0.0
        self._error: str | None = None
        self._outputs: dict[str, str] = {}
        self._exited_at: float | None = None
        self._strays_killed = False
        self.cancelled = False
        # Threads drain both pipes: reading them from poll() could block, and a full pipe would stall the child.
        self._readers = [threading.Thread(target=self._read_stderr, daemon=True),
                         threading.Thread(target=self._read_stdout, daemon=True)]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

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

    def _read_stdout(self) -> None:
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            kind, sep, path = raw.rstrip().partition(": ")
            if sep and kind and " " not in kind:
                with self._lock:
                    self._outputs[kind] = path

    def poll(self) -> JobStatus:
        """Never blocks; ``finished`` becomes true once the process has exited and its output is read, so
        that nothing the GUI calls next waits. A finished job's processes still holding the pipes are ours
        to kill (``PIPE_DRAIN_S``)."""
        finished = self._process.poll() is not None
        if finished and any(r.is_alive() for r in self._readers):
            now = time.monotonic()
            if self._exited_at is None:
                self._exited_at = now
            waited = now - self._exited_at
            if waited > PIPE_DRAIN_S and not self._strays_killed:
                self._strays_killed = True
                if os.name != "nt":  # the group outlives its exited leader while a member runs
                    _signal_group(self._process.pid, signal.SIGKILL)
            finished = waited > PIPE_DRAIN_S + STRAY_EOF_S
        with self._lock:
            return JobStatus(finished, self._progress)

    def wait(self, timeout: float | None = None) -> JobStatus:
        """Blocks until ``poll`` reports the job finished (for scripts and tests; the GUI polls, and after
        that this returns at once). ``timeout`` bounds the wait for the process to exit."""
        self._process.wait(timeout)
        while not (status := self.poll()).finished:
            for reader in self._readers:
                reader.join(0.05)
        return status

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    @property
    def outputs(self) -> dict[str, str]:
        """The output files the command reported, by kind (``scores``, ``difference``, ...)."""
        with self._lock:
            return dict(self._outputs)

    @property
    def error(self) -> str | None:
        """The one-line message for a failed run, or None if it succeeded or is still running."""
        code = self._process.returncode
        if code is None or (code == 0 and not self.cancelled):
            return None
        with self._lock:
            if self.cancelled:
                return "scoring was cancelled"
            if self._error:
                return self._error
            last = self._lines[-1] if self._lines else "no output"
        return f"scoring process failed with exit code {code}: {last}"

    def cancel(self) -> None:
        """Stops the process and every process it started (see ``kill_tree``)."""
        if self._process.poll() is not None and not _tree_may_remain(self._process):
            return
        self.cancelled = True
        kill_tree(self._process)
        for reader in self._readers:
            reader.join(1.0)


def _tree_may_remain(process: subprocess.Popen) -> bool:
    """Whether processes started by an exited launcher may still run (POSIX only; Windows kills the tree)."""
    return os.name != "nt" and _group_has_live_members(process.pid)
