"""``score --images`` at scale: two processes under torchrun equal one, and a SIGTERM mid-cohort leaves
only whole outputs, which --resume completes to what an uninterrupted run writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cohort import OUTPUTS, assert_same_outputs

from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.scoring.cohort_table import RECORDS, read_cohort_csv

pytestmark = pytest.mark.slow  # several processes, each importing torch

ROOT = Path(__file__).resolve().parents[2]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five volumes in a folder (given as the folder), one of them damaged."""
    root = tmp_path_factory.mktemp("cohort_scale") / "images"
    root.mkdir()
    for seed in range(4):
        image, _, _ = make_subject(seed, lesion=seed == 2).write(root.parent / "raw", f"s{seed}")
        image.rename(root / image.name)
    (root / "s9.nii.gz").write_bytes(b"damaged")
    return root


def command(model: Path, images: Path, out: Path, *extra: str) -> list[str]:
    # The whole heads are scored (no brain extraction): these tests are about the cohort, not the brain.
    return ["-m", "MAEAnomalyLib", "score", "--model", str(model), "--images", str(images), "--out-dir", str(out),
            "--device", "cpu", "--brain-mask", "none", *extra]


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, encoding="utf-8", cwd=ROOT, env=child_env(),
                          timeout=600)


@pytest.fixture(scope="module")
def single(untrained_model_dir: Path, volumes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    done = run(command(untrained_model_dir, volumes, out, "--workers", "0"))
    assert done.returncode == 3, done.stderr[-3000:]
    return out


def assert_same_cohort(out: Path, reference: Path) -> None:
    assert (out / "cohort.csv").read_text() == (reference / "cohort.csv").read_text()
    for row in read_cohort_csv(reference / "cohort.csv"):
        if row["status"] == "ok":
            assert_same_outputs(out, row["name"], reference, row["name"])


def test_two_processes_score_each_volume_once(untrained_model_dir: Path, volumes: Path, single: Path,
                                              tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    done = run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                *command(untrained_model_dir, volumes, out, "--workers", "1")])
    # One volume failed: rank 0 exits 3, which torchrun reports (and exits 1); rank 1 exits 0, or is stopped
    # by torchrun if it is still shutting down, and in neither case claims that nothing was written.
    assert done.returncode == 1 and done.stderr.count("exitcode  : 3") == 1, done.stderr[-3000:]
    root_cause = done.stderr.split("Root Cause")[1]
    assert "rank      : 0" in root_cause and "exitcode  : 3" in root_cause, done.stderr[-3000:]
    assert "terminated" not in done.stderr.replace("Signal 15 (SIGTERM) received", "")
    assert done.stderr.count("5 volumes: 4 scored, 1 failed, 0 skipped") == 1  # rank 0 alone sums up
    assert done.stderr.count("maeanomaly: error:") == 1  # the damaged volume, by the rank that had it
    assert_same_cohort(out, single)
    # With the damaged file gone, resuming under torchrun skips every volume and exits 0.
    (volumes / "s9.nii.gz").unlink()
    try:
        done = run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    *command(untrained_model_dir, volumes, out, "--workers", "0", "--resume")])
    finally:
        (volumes / "s9.nii.gz").write_bytes(b"damaged")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 volumes: 0 scored, 0 failed, 4 skipped" in done.stderr


def test_sigterm_leaves_whole_outputs_and_resume_completes(untrained_model_dir: Path, volumes: Path, single: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = command(untrained_model_dir, volumes, out, "--workers", "1")
    with subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          encoding="utf-8", cwd=ROOT, env=child_env()) as proc:
        deadline = time.monotonic() + 300
        while not (out / RECORDS).is_dir() or not any((out / RECORDS).glob("*.json")):  # a volume finished
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no volume was finished"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-3000:]
    assert "terminated (SIGTERM)" in stderr and "--resume" in stderr
    assert not (out / "cohort.csv").exists()
    assert not [p.name for p in out.rglob(".*.tmp*")]  # no temporary file left behind
    finished = {p.stem for p in (out / RECORDS).glob("*.json")}
    assert finished and len(finished) < 4
    for name in finished:  # a record is committed last: its volume's outputs are all there, and whole
        assert_same_outputs(out, name, single, name)
    done = run([*args, "--resume"])
    assert done.returncode == 3, done.stderr[-3000:]
    assert f"5 volumes: {4 - len(finished)} scored, 1 failed, {len(finished)} skipped" in done.stderr
    assert_same_cohort(out, single)
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(
        ["cohort.csv", *(f"s{k}_{o}" for k in range(4) for o in OUTPUTS)])


def test_cohort_speed_benchmark_prints_its_table() -> None:
    done = run([str(ROOT / "benchmarks" / "cohort_speed.py"), "--presets", "tiny", "--volumes", "2", "--workers",
                "0,1", "--device", "cpu"])
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("|  ")]
    assert [[cell.strip() for cell in row][:4] for row in rows] == [["tiny", "fp32", "0", "2"],
                                                                    ["tiny", "fp32", "1", "2"]]
    assert all(float(row[5]) > 0 for row in rows)  # vol/s
