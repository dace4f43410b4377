"""What the training tests share: the environment of a training subprocess, the quickest training command of
any method, a model's weights, and a run stopped by SIGTERM just after it writes a checkpoint (importable from
tests: ``conftest.py`` is here)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from MAEAnomalyLib.methods import get

ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    """One thread, like the command-line runs here: the thread count changes the order of floating-point sums."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def weights(directory: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every ``NAME.safetensors`` of a model directory, by NAME."""
    return {p.stem: load_file(str(p)) for p in sorted(directory.glob("*.safetensors"))}


def _stamp(path: Path) -> int:
    return path.stat().st_mtime_ns if path.exists() else 0


def interrupt_after_checkpoint(command: list[str], checkpoint: Path) -> subprocess.CompletedProcess:
    """Runs ``command`` and sends SIGTERM shortly after it writes its next checkpoint into ``checkpoint``."""
    before = _stamp(checkpoint / "state.safetensors")
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", cwd=ROOT,
                          env=child_env()) as proc:
        deadline = time.monotonic() + 300
        while _stamp(checkpoint / "state.safetensors") == before:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
        time.sleep(0.05)  # into the next epoch, so that the stop lands between two batches
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def quick_settings(method: str) -> list[str]:
    """The smallest run of any method: 32-px slices, batches of 8, and every epoch count of its section at 2
    (found by name, so that a new method needs no entry here)."""
    settings = get(method).settings_type()
    epochs = [f.name for f in dataclasses.fields(settings) if f.name.endswith("epochs")]
    return ["--preset", "tiny", "--set", "preprocess.image_size=32", "--set", "train.batch_size=8",
            *(item for name in epochs for item in ("--set", f"{method}.{name}=2"))]


def train_command(method: str, cohort: dict, out: Path, *extra: str) -> list[str]:
    """The command line that trains ``method`` quickly on ``cohort``'s healthy images and masks."""
    return [sys.executable, "-m", "MAEAnomalyLib", "train", "--method", method, *quick_settings(method),
            "--device", "cpu", "--workers", "0", "--out", str(out), "--images", *map(str, cohort["images"]),
            "--masks", *map(str, cohort["masks"]), *extra]
