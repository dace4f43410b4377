"""The background scoring process as Slicer runs it: through a launcher that starts Python as its child and
forwards no signals (like ``PythonSlicer``, which runs ``python-real``). Cancel must stop the whole tree
and remove the work folder at once, bytes that are not UTF-8 must not stop the output readers, and a process
the run leaves behind must not make the GUI thread wait."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from MAEAnomalyLib.core.errors import MAEAnomalyError
from SlicerMAEAnomalyLib.background import ScoringJob

pytestmark = pytest.mark.skipif(os.name == "nt" or not Path("/proc").is_dir(),
                                reason="reads the process tree from /proc")

LAUNCHER = """#!{python}
# Like PythonSlicer: runs the interpreter as a child, forwards no signal, and exits with its code.
import subprocess, sys
{before}
sys.exit(subprocess.call([{python!r}, *sys.argv[1:]]))
"""


# A scoring process that succeeds but leaves a grandchild holding its stdout and stderr.
STRAY = """#!{python}
import subprocess, sys
stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
print(f"grandchild: {{stray.pid}}")
print("scores: /o/x_scores.csv")
print("progress 1.0", file=sys.stderr)
"""


def write_launcher(folder: Path, before: str = "") -> Path:
    path = folder / "PythonSlicer"
    path.write_text(LAUNCHER.format(python=sys.executable, before=before))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def descendants(pid: int) -> list[int]:
    table = process_table()
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, (ppid, _) in table.items() if ppid == parent]
        found += children
        frontier += children
    return found


def alive(pid: int) -> bool:
    state = process_table().get(pid)
    return state is not None and state[1] not in ("Z", "X")


def wait_for_child(pid: int, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while not (found := descendants(pid)):
        assert time.monotonic() < deadline, "the launcher never started its child"
        time.sleep(0.05)
    return found


def test_cancel_stops_the_launcher_and_the_scoring_process(tmp_path: Path, untrained_model_dir: Path) -> None:
    """Cancel during a real scoring run started through the launcher: within a second no process of the
    tree is left and the work folder is gone."""
    slicer = pytest.importorskip("slicer")
    from SlicerMAEAnomalyLib.logic import MAEAnomalyLogic

    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "head")
    slicer.util.updateVolumeFromArray(volume, np.random.default_rng(0).random((16, 64, 64), dtype=np.float32))
    logic = MAEAnomalyLogic(scene)
    logic.pythonExecutable = str(write_launcher(tmp_path))
    run = logic.startProcessing(volume, untrained_model_dir, device="cpu")
    launcher = run.job.pid
    tree = [launcher, *wait_for_child(launcher)]
    assert run.workDir.is_dir() and not run.poll().finished

    started = time.monotonic()
    run.cancel()
    assert time.monotonic() - started < 1.0
    assert not [pid for pid in tree if alive(pid)], "a process of the scoring tree survived Cancel"
    assert not run.workDir.exists()
    assert run.poll().finished and run.job.error == "scoring was cancelled"


def test_invalid_utf8_on_stderr_does_not_stop_the_run(tmp_path: Path) -> None:
    """The launcher writes bytes that are not UTF-8, more than a pipe holds; the run still ends with the
    CLI's own one-line error, which comes after them."""
    noise = "sys.stderr.buffer.write(b'\\xff\\xfe\\xc3(' * 40000 + b'\\n'); sys.stderr.flush()"
    launcher = write_launcher(tmp_path, before=noise)
    missing = tmp_path / "no-model"
    job = ScoringJob(["--model", str(missing), "--image", str(tmp_path / "x.nii.gz"), "--out-dir",
                      str(tmp_path / "out")], python=str(launcher))
    deadline = time.monotonic() + 120
    while not job.poll().finished:
        assert time.monotonic() < deadline, "the run never finished: the stderr reader stopped"
        time.sleep(0.05)
    assert job.returncode == 2
    assert job.error == f"{missing}: model directory not found"


def test_finishing_never_waits_for_a_stray_grandchild(tmp_path: Path) -> None:
    """The run succeeds but leaves a grandchild holding its pipes: ``poll`` still reports it finished, with
    the grandchild stopped, and everything the GUI then calls (``finishProcessing``, ``error``, ``outputs``)
    returns at once."""
    slicer = pytest.importorskip("slicer")
    from SlicerMAEAnomalyLib.logic import MAEAnomalyLogic, ScoringRun

    fake = tmp_path / "python"
    fake.write_text(STRAY.format(python=sys.executable))
    fake.chmod(0o755)
    job = ScoringJob([], python=str(fake))
    try:
        deadline = time.monotonic() + 30
        while not job.poll().finished:
            assert time.monotonic() < deadline, "the run never finished"
            time.sleep(0.05)
        # The input node is gone, so finishing stops with that error right after the job's own checks.
        run = ScoringRun(job, "vtkMRMLScalarVolumeNodeGone", tmp_path / "model", tmp_path / "work",
                         tmp_path / "x.nii.gz")
        logic = MAEAnomalyLogic(slicer.vtkMRMLScene())
        started = time.monotonic()
        with pytest.raises(MAEAnomalyError, match="removed from the scene"):
            logic.finishProcessing(run)
        assert job.returncode == 0 and job.error is None
        outputs = job.outputs
        assert time.monotonic() - started < 0.5, "finishing a run blocked the GUI thread"
        assert outputs["scores"] == "/o/x_scores.csv"
        assert not alive(int(outputs["grandchild"])), "the stray grandchild survived the run"
    finally:
        job.cancel()
