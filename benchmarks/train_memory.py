"""Peak memory of ``maeanomaly train`` on a generated cohort, read through the on-disk slice cache.

Generates ``--volumes`` synthetic heads (default 500, 40x64x64 voxels), trains the ``tiny`` preset
for one MAE and one classifier epoch in a child process with DataLoader workers, samples the memory
of that process and its workers from /proc, and compares the peak with what holding the cohort's
slices and reconstructions in memory would take. Run from the repository root with:

    "$(bash scripts/env.sh)/bin/python" benchmarks/train_memory.py [--volumes 500] [--workers 2]

Peak memory should not grow with the cohort: compare ``--volumes 100`` with the default.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIB = 1024 * 1024


def write_volumes(directory: Path, count: int) -> tuple[Path, Path]:
    """``count`` healthy subjects: images in ``images/``, brain masks in ``masks/`` (reused if present)."""
    from MAEAnomalyLib.data.synthetic import make_subject

    images, masks = directory / "images", directory / "masks"
    for folder in (images, masks):
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = f"subject{i:05d}"
        if (masks / f"{name}.nii.gz").exists():
            continue
        image, mask, _ = make_subject(10_000 + i).write(directory / "tmp", name)
        image.replace(images / image.name)
        mask.replace(masks / f"{name}.nii.gz")
    shutil.rmtree(directory / "tmp", ignore_errors=True)
    return images, masks


def _kib(path: str) -> dict[str, int]:
    """The kB fields of a /proc file (status, smaps_rollup); empty once the process is gone."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, _, v in (ln.partition(":") for ln in lines) if v.strip().endswith("kB")}


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class Sampler(threading.Thread):
    """Samples the memory of the training process and of all its workers every ``period`` seconds.

    Forked workers share most pages with the trainer, so the total uses PSS (each shared page
    divided among the processes that map it) rather than a sum of RSS.
    """

    def __init__(self, pid: int, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.peak = {"trainer_rss": 0, "trainer_anon": 0, "trainer_pss_anon": 0, "total_pss": 0, "total_pss_anon": 0,
                     "workers": 0}
        self.phase = "preparing volumes"
        # Per phase, the sample with the most anonymous PSS (KiB): (trainer and workers, trainer alone).
        self.phases: dict[str, tuple[int, int]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            trainer = _kib(f"/proc/{self.pid}/status")
            pids = [self.pid, *_descendants(self.pid)]
            rollups = [_kib(f"/proc/{p}/smaps_rollup") for p in pids]
            sample = {"trainer_rss": trainer.get("VmRSS", 0), "trainer_anon": trainer.get("RssAnon", 0),
                      "trainer_pss_anon": rollups[0].get("Pss_Anon", 0),
                      "total_pss": sum(r.get("Pss", 0) for r in rollups),
                      "total_pss_anon": sum(r.get("Pss_Anon", 0) for r in rollups), "workers": len(pids) - 1}
            for key, value in sample.items():
                self.peak[key] = max(self.peak[key], value)
            self.phases[self.phase] = max(self.phases.get(self.phase, (0, 0)),
                                          (sample["total_pss_anon"], sample["trainer_pss_anon"]))
            self.done.wait(self.period)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the training process")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each stage")
    parser.add_argument("--work-dir", help="keep the cohort, cache and model here (default: a temporary folder)")
    args = parser.parse_args()
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="maeanomaly-bench-"))
    try:
        started = time.perf_counter()
        images, masks = write_volumes(work / f"cohort{args.volumes}", args.volumes)
        generated = time.perf_counter() - started
        out = work / "model"
        shutil.rmtree(out, ignore_errors=True)
        epochs = str(args.epochs)
        command = [sys.executable, "-m", "MAEAnomalyLib", "train", "--preset", "tiny", "--mae-epochs", epochs,
                   "--classifier-epochs", epochs, "--device", "cpu", "--workers", str(args.workers),
                   "--images", str(images), "--masks", str(masks), "--out", str(out)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        started = time.perf_counter()
        child = subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.PIPE, encoding="utf-8")
        sampler = Sampler(child.pid)
        sampler.start()
        lines = []
        assert child.stderr is not None
        for line in child.stderr:  # the trainer's log names the phase the samples belong to
            lines.append(line)
            if line.startswith("training on"):
                sampler.phase = "MAE stage"
            elif line.startswith(f"MAE epoch {epochs}/{epochs}"):
                sampler.phase = "reconstruction and classifier stage"
            elif line.startswith(f"classifier epoch {epochs}/{epochs}"):
                sampler.phase = "calibration and saving"
        child.wait()
        stderr = "".join(lines)
        sampler.done.set()
        sampler.join()
        seconds = time.perf_counter() - started
        if child.returncode != 0:
            print(stderr[-4000:], file=sys.stderr)
            return child.returncode
        # The kernel's own peak, for the largest single process (the trainer); Linux reports KiB.
        kernel_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        summary = json.loads((out / "config.json").read_text())["training_summary"]
        cache_bytes = sum(p.stat().st_size for p in (out / "slice_cache").rglob("slices.npy"))
        slice_bytes = 64 * 64 * 4
        in_memory = cache_bytes + summary["train_slices"] * slice_bytes  # every slice, plus reconstructions
        result = {
            "volumes": args.volumes, "workers": args.workers, "epochs": args.epochs,
            "train_slices": summary["train_slices"],
            "generate_s": round(generated, 1), "train_s": round(seconds, 1),
            "slice_cache_mib": round(cache_bytes / MIB, 1),
            "in_memory_equivalent_mib": round(in_memory / MIB, 1),
            "peak_rss_trainer_mib": round(kernel_peak / MIB, 1),
            "peak_anon_trainer_mib": round(sampler.peak["trainer_anon"] / 1024, 1),
            "peak_pss_with_workers_mib": round(sampler.peak["total_pss"] / 1024, 1),
            "peak_pss_anon_with_workers_mib": round(sampler.peak["total_pss_anon"] / 1024, 1),
            "most_workers_at_once": sampler.peak["workers"],
            "peak_pss_anon_by_phase_mib (all, trainer)": {
                k: [round(v / 1024, 1) for v in values] for k, values in sampler.phases.items()},
        }
        width = max(map(len, result))
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
        print(json.dumps(result))
        return 0
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
