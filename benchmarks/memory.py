"""Peak memory of ``maeanomaly score`` on generated volumes: one volume per size, and a cohort scored by
``score --images`` with prefetching workers. Usage (from the repository root):

    python benchmarks/memory.py [--shapes 300x512x512,150x256x256] [--cohort 4] [--workers 2]
                                [--model untrained|brain-t1|MODEL_DIR] [--work DIR] [--label L] [--compare-with OTHER]

Each run is ``python -m MAEAnomalyLib score ... --brain-mask none --device cpu`` in a child process (deepbet
stays out). A thread samples the RSS and PSS of the child and all its descendants from /proc every 50 ms;
``os.wait4`` gives the kernel's own peak RSS of the largest single process. Bytes per voxel: the peak over
the volume's voxels, and the slope between the two sizes (what each further voxel costs, the ~1 GB of
imported libraries and weights left out).

Volumes are generated heads (``data.synthetic``) resampled to each size and stored as int16 NIfTI, like a
scanner's: background noise, so the automatic head foreground takes its Otsu path. ``--model untrained``
(default): a ``tiny`` network with random weights and a voxel threshold, so that the segmentation runs too;
the voxel arrays, not the network, make the peak. Outputs go to ``WORK/outputs/LABEL`` (``--label``,
default the checkout's folder name); ``--compare-with OTHER`` then checks them against an earlier run's
``WORK/outputs/OTHER`` (e.g. the same command run from a worktree of an earlier commit): every ``_scores.csv``
and ``_components.csv`` byte-identical, the difference maps equal within 1e-6 relative, the label maps equal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_memory import _descendants, _kib  # noqa: E402  (the same /proc readers)
from voxel_memory import untrained_model  # noqa: E402  (tiny, random weights, slice and voxel thresholds)

GB = 1e9


def generated_volume(path: Path, shape: tuple[int, int, int], seed: int) -> Path:
    """A lesioned generated head of ``shape`` (Z, Y, X) voxels as int16 NIfTI, made at a quarter of the
    size and resampled (cheap), plus noise everywhere; reused when it exists."""
    if path.exists():
        return path
    import numpy as np
    import SimpleITK as sitk

    from MAEAnomalyLib.data.synthetic import make_subject

    small = make_subject(seed, lesion=True, shape=tuple(max(16, n // 4) for n in shape)).image
    size = (shape[2], shape[1], shape[0])
    spacing = [sp * n / m for sp, n, m in zip(small.GetSpacing(), small.GetSize(), size, strict=True)]
    grid = sitk.Resample(small, size, sitk.Transform(), sitk.sitkLinear, small.GetOrigin(), spacing,
                         small.GetDirection(), 0.0, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(grid)
    rng = np.random.default_rng(seed)
    out = np.empty(array.shape, dtype=np.int16)
    for k in range(len(array)):  # slab by slab: the generator's own peak stays small
        out[k] = np.clip(array[k] + np.abs(rng.normal(0, 8.0, array.shape[1:])), 0, 32767).astype(np.int16)
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(grid)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


class TreeSampler(threading.Thread):
    """The largest total RSS and PSS (KiB) of a process and its descendants, and the most processes."""

    def __init__(self, pid: int, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.period, self.done = pid, period, threading.Event()
        self.rss = self.pss = self.processes = self.worker_rss = 0

    def run(self) -> None:
        while not self.done.is_set():
            pids = [self.pid, *_descendants(self.pid)]
            rss = [_kib(f"/proc/{p}/status").get("VmRSS", 0) for p in pids]
            self.rss = max(self.rss, sum(rss))
            self.worker_rss = max([self.worker_rss, *rss[1:]])
            self.pss = max(self.pss, sum(_kib(f"/proc/{p}/smaps_rollup").get("Pss", 0) for p in pids))
            self.processes = max(self.processes, len(pids))
            self.done.wait(self.period)


def measure(command: list[str], repo: Path) -> dict:
    """Runs ``command`` with ``repo`` first on the path; its peaks in GB and its wall time."""
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    start = time.perf_counter()
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: nothing blocks however much is logged
        child = subprocess.Popen(command, env=env, cwd=repo, stdout=subprocess.DEVNULL, stderr=errors)
        sampler = TreeSampler(child.pid)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        sampler.done.set()
        sampler.join()
        code = os.waitstatus_to_exitcode(status)
        child.returncode = code  # reaped here, so that Popen does not wait for it again
        if code != 0:
            errors.seek(0)
            raise SystemExit(f"{' '.join(command)} failed ({code}):\n{errors.read().decode(errors='replace')[-2000:]}")
    return {"seconds": round(time.perf_counter() - start, 1), "max_rss_gb": usage.ru_maxrss * 1024 / GB,
            "tree_rss_gb": sampler.rss * 1024 / GB, "tree_pss_gb": sampler.pss * 1024 / GB,
            "worker_rss_gb": sampler.worker_rss * 1024 / GB, "processes": sampler.processes}


def compare(out_a: Path, out_b: Path) -> list[str]:
    """Differences between two output folders of the same command (empty: the same to float32 precision)."""
    import numpy as np
    import SimpleITK as sitk

    problems = []
    names = sorted(p.name for p in out_a.iterdir() if p.name.endswith((".csv", ".nii.gz")))
    for name in names:
        a, b = out_a / name, out_b / name
        if not b.exists():
            problems.append(f"{name}: missing in {out_b}")
        elif name.endswith("_diff.nii.gz"):
            x, y = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))).astype(np.float64) for p in (a, b))
            scale = max(float(np.abs(x).max()), 1e-30)
            if x.shape != y.shape or float(np.abs(x - y).max()) > 1e-6 * scale:
                problems.append(f"{name}: maps differ by {float(np.abs(x - y).max()) / scale:.3g} (relative)")
        elif name.endswith(".nii.gz"):
            x, y = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (a, b))
            if x.shape != y.shape or not np.array_equal(x, y):
                problems.append(f"{name}: label maps differ")
        elif name != "cohort.csv" and a.read_bytes() != b.read_bytes():
            problems.append(f"{name}: not byte-identical")
    return problems


def run_all(args: argparse.Namespace) -> tuple[list[dict], list[Path]]:
    """Every measurement of this checkout; its rows and output folders."""
    work = Path(args.work)
    model = untrained_model(work) if args.model == "untrained" else args.model
    score = [sys.executable, "-m", "MAEAnomalyLib", "score", "--model", str(model), "--brain-mask", "none",
             "--device", "cpu"]
    rows, outs = [], []
    for text in args.shapes.split(","):
        shape = tuple(int(n) for n in text.split("x"))
        volume = generated_volume(work / "volumes" / f"head_{text}_0.nii.gz", shape, 0)
        out = work / "outputs" / args.label / f"single_{text}"
        rows.append({"run": f"1 volume {text}", "voxels": int(shape[0] * shape[1] * shape[2]),
                     **measure([*score, "--image", str(volume), "--out-dir", str(out)], ROOT)})
        outs.append(out)
    if args.cohort:
        text = args.shapes.split(",")[0]
        shape = tuple(int(n) for n in text.split("x"))
        volumes = [str(generated_volume(work / "volumes" / f"head_{text}_{i}.nii.gz", shape, i))
                   for i in range(args.cohort)]
        out = work / "outputs" / args.label / f"cohort_{text}"
        rows.append({"run": f"{args.cohort} volumes {text}, {args.workers} workers",
                     "voxels": int(shape[0] * shape[1] * shape[2]),
                     **measure([*score, "--images", *volumes, "--workers", str(args.workers), "--out-dir", str(out)],
                               ROOT)})
        outs.append(out)
    for row in rows:  # the kernel's peak of one process, or the sampled sum over the tree if larger
        row["peak_gb"] = max(row["max_rss_gb"], row["tree_rss_gb"])
        row["bytes_per_voxel"] = round(row["peak_gb"] * GB / row["voxels"], 1)
    singles = [r for r in rows if r["run"].startswith("1 volume")]
    if len(singles) >= 2:
        big, small = singles[0], singles[-1]
        slope = (big["max_rss_gb"] - small["max_rss_gb"]) * GB / (big["voxels"] - small["voxels"])
        for row in singles:
            row["bytes_per_extra_voxel"] = round(slope, 1)
    return rows, outs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="300x512x512,150x256x256", help="Z x Y x X of each volume, largest first")
    parser.add_argument("--cohort", type=int, default=4, help="volumes of the first shape in the cohort (0: none)")
    parser.add_argument("--workers", type=int, default=2, help="prefetching workers of the cohort run")
    parser.add_argument("--model", default="untrained", help="'untrained' (tiny, random weights) or a model")
    parser.add_argument("--work", default="/tmp/maeanomaly_memory", help="volumes and outputs (volumes reused)")
    parser.add_argument("--label", default=ROOT.name, help="outputs in WORK/outputs/LABEL")
    parser.add_argument("--compare-with", metavar="OTHER", help="compare the outputs with WORK/outputs/OTHER")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    rows, outs = run_all(args)
    for row in rows:
        print(json.dumps(row))
    problems = []
    if args.compare_with:
        for out in outs:
            problems += compare(out, Path(args.work) / "outputs" / args.compare_with / out.name)
        print(f"outputs identical to those of {args.compare_with} to float32 precision" if not problems
              else "\n".join(problems))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
