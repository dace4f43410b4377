"""The benchmark scripts from the command line: the healthy validation task, and skipping without data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # each runs a benchmark script in a process of its own


def _run(script: str, *args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def _rows(stdout: str) -> dict[int, tuple[float, float, float]]:
    """R -> (loss, AUROC, accuracy) from healthy_validation.py's table."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0].isdigit():
            rows[int(parts[0])] = tuple(float(p) for p in parts[1:])
    return rows


def test_healthy_validation_draws_the_boxes_of_the_task_it_is_given(tiny_model_dir: Path, cohort: dict) -> None:
    image, mask, _ = cohort["healthy"][0]
    common = (tiny_model_dir, "--images", image, "--masks", mask, "--reconstructions", "1,2", "--draws", "1")
    own = _run("healthy_validation.py", *common)
    assert own.returncode == 0, own.stderr
    assert set(_rows(own.stdout)) == {1, 2}
    # Boxes scaled by β = 1 change nothing: positives equal negatives, so the task is unlearnable.
    # (the format-1 name of a setting is an alias of the format-2 one: both are accepted)
    blank = _run("healthy_validation.py", *common, "--task", "pseudo_abnormal.beta_low=1.0",
                 "--task", "mae_classifier.pseudo_abnormal.beta_high=1.0")
    assert blank.returncode == 0, blank.stderr
    assert "task: pseudo_abnormal.beta_low=1.0" in blank.stdout
    for r, (_, auroc, _) in _rows(blank.stdout).items():
        assert auroc == 0.5, (r, blank.stdout)
    assert _rows(own.stdout)[1][1] > 0.5  # the trained model does separate its own task's boxes


def test_healthy_validation_rejects_a_task_setting_outside_pseudo_abnormal(untrained_model_dir: Path,
                                                                          cohort: dict) -> None:
    image = cohort["healthy"][0][0]
    done = _run("healthy_validation.py", untrained_model_dir, "--images", image, "--task", "train.seed=3")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --task train.seed=3: only pseudo_abnormal settings define the validation task")
