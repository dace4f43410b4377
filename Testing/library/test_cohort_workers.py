"""``score --images`` with prefetch workers under faults: a file-size limit gives the volume its error row
(never a hang), a worker killed as the OOM killer would costs only its volume, and workers die with a
SIGKILLed cohort. Real processes, real signals and a real RLIMIT_FSIZE; Linux (/proc) only."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import SimpleITK as sitk

from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.scoring.cohort_table import RECORDS, RUN_LOCK, read_cohort_csv

pytestmark = [pytest.mark.slow,  # processes of their own, each importing torch
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds worker processes in /proc")]

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 180  # seconds a cohort run may take before it counts as hung (these take ~20 s on two busy cores)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[1] == str(pid):
            found.add(int(entry.name))
    return found


def reading(pid: int, paths: list[Path]) -> bool:
    """Whether the process has one of ``paths`` open (a worker reading its volume)."""
    with contextlib.suppress(OSError):
        return any(os.readlink(fd) in map(str, paths) for fd in Path(f"/proc/{pid}/fd").iterdir())
    return False


def alive(pid: int) -> bool:
    """Running (a zombie has ended; only nobody reaped it yet)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def run_cohort(args: list[str], preexec: Callable[[], None] | None = None,
               while_running: Callable[[subprocess.Popen, set[int]], None] | None = None
               ) -> tuple[subprocess.Popen, str, set[int]]:
    """Runs ``score`` and returns it with its stderr and every child process seen; ``while_running`` is
    called with the children so far until the run ends. A run past DEADLINE is hung: it and its children
    are killed and the test fails (rather than hanging itself)."""
    command = [sys.executable, "-m", "MAEAnomalyLib", "score", "--device", "cpu", "--brain-mask", "none", *args]
    seen: set[int] = set()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as log, subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT, preexec_fn=preexec,
            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}) as proc:
        deadline = time.monotonic() + DEADLINE
        while proc.poll() is None:
            seen |= children(proc.pid)
            if while_running is not None:
                while_running(proc, seen)
            if time.monotonic() > deadline:
                for pid in [*seen, proc.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()
                log.seek(0)
                pytest.fail(f"the cohort hung for {DEADLINE} s; stderr: {log.read()[-2000:]}")
            time.sleep(0.02)
        log.seek(0)
        return proc, log.read(), seen


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three volumes large in plane (each takes seconds to read and prepare, so that workers are caught
    at work) and few slices (so that scoring them is quick)."""
    root = tmp_path_factory.mktemp("cohort_workers")
    paths = []
    for seed in range(3):
        image = make_subject(seed).image
        grid = sitk.Image([384, 384, 40], image.GetPixelID())
        grid.SetSpacing([image.GetSpacing()[i] * image.GetSize()[i] / grid.GetSize()[i] for i in range(3)])
        grid.SetOrigin(image.GetOrigin())
        grid.SetDirection(image.GetDirection())
        paths.append(root / f"big{seed}.nii.gz")
        sitk.WriteImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear), str(paths[-1]), True)
    return paths


def test_a_file_size_limit_gives_the_volume_its_error_row_never_a_hang(untrained_model_dir: Path, tmp_path: Path
                                                                      ) -> None:
    """Under a file-size limit that cohort.csv fits but a volume's outputs do not (nor its tensors in a
    shared-memory file, where the DataLoader's worker dropped the volume and the run waited for ever)."""
    image, _, _ = make_subject(0).write(tmp_path / "data", "case")
    out = tmp_path / "out"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    proc, stderr, workers = run_cohort(["--model", str(untrained_model_dir), "--images", str(image),
                                        "--out-dir", str(out)], preexec=limit)
    assert proc.returncode == 3, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("maeanomaly: error: ")]
    # The write that failed names its file, as with --workers 0; nothing of the volume is committed.
    assert len(errors) == 1 and "cannot write" in errors[0], stderr
    (row,) = read_cohort_csv(out / "cohort.csv")
    assert row["image"] == str(image) and row["status"] == errors[0].removeprefix("maeanomaly: error: ")
    assert sorted(p.name for p in out.iterdir()) == [RECORDS, "cohort.csv"]
    assert [p.name for p in (out / RECORDS).iterdir()] == [RUN_LOCK]  # the run's lock, no record of the volume
    assert workers  # prepared by a worker, as by default
    # Volumes pass through no shared-memory file (torch names them after the process that made them).
    assert not [p.name for p in Path("/dev/shm").glob("torch_*") if p.name.split("_")[1] in map(str, workers)]


def test_a_killed_worker_costs_only_its_volume(untrained_model_dir: Path, volumes: list[Path], tmp_path: Path) -> None:
    """``kill -9`` of a worker at work (as the OOM killer would): its volume's row says so, the others
    are scored, exit code 3 and cohort.csv."""
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_one(proc: subprocess.Popen, seen: set[int]) -> None:
        for pid in sorted(seen):
            if not killed and reading(pid, volumes):  # a worker at work: it holds a volume
                killed.append(pid)
                os.kill(pid, signal.SIGKILL)

    proc, stderr, _ = run_cohort(["--model", str(untrained_model_dir), "--images", *map(str, volumes),
                                  "--out-dir", str(out), "--workers", "2"], while_running=kill_one)
    assert killed and proc.returncode == 3, stderr
    rows = read_cohort_csv(out / "cohort.csv")
    failed = [r for r in rows if r["status"] != "ok"]
    assert len(rows) == 3 and len(failed) == 1, rows
    assert failed[0]["status"].startswith(failed[0]["image"] + ": ")
    assert "worker process preparing it ended unexpectedly (killed by SIGKILL" in failed[0]["status"]
    errors = [ln for ln in stderr.splitlines() if ln.startswith("maeanomaly: error: ")]
    assert errors == [f"maeanomaly: error: {failed[0]['status']}"], stderr
    assert "Traceback" not in stderr
    for row in rows:
        if row["status"] == "ok":
            assert (out / f"{row['name']}_diff.nii.gz").is_file()


def test_workers_die_with_a_sigkilled_cohort(untrained_model_dir: Path, volumes: list[Path], tmp_path: Path
                                             ) -> None:
    """SIGKILL of the cohort while its workers prepare volumes: no worker outlives it (they once went on,
    re-parented to init, holding a prepared volume each, and out of reach of a process-group kill)."""
    workers: set[int] = set()

    def kill_cohort(proc: subprocess.Popen, seen: set[int]) -> None:
        if len(seen) == 2 and not workers:
            time.sleep(1.0)  # both at work
            workers.update(seen | children(proc.pid))
            proc.kill()

    try:
        proc, _, _ = run_cohort(["--model", str(untrained_model_dir), "--images", *map(str, volumes),
                                 "--out-dir", str(tmp_path / "out"), "--workers", "2"], while_running=kill_cohort)
        assert workers and proc.returncode == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if alive(pid)], "workers outlived the cohort"
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
