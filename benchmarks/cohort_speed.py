"""Cohort scoring speed (issue 20): volumes per second of ``score --images`` on generated 240×240×155
volumes, with 0 workers (each volume read and prepared in the scoring process) against several
preparing ahead, and where the time goes.

Scores ``--volumes`` links to two generated skull-stripped heads (BraTS-sized, written as .nii.gz)
through ``MAEAnomalyLib.scoring.cohort.score_cohort``, the code ``score --images`` runs, with randomly
initialised weights of each preset (speed does not depend on training). Every run writes all outputs.
On a GPU, scoring runs in bf16 (``runtime.autocast``); on a CPU in fp32.

Run from the repository root:

    PYTHONPATH=. "$(bash scripts/env.sh)/bin/python" benchmarks/cohort_speed.py --volumes 50 --workers 0,1,4

Columns: vol/s over the whole run (model loading and the first volume's warm-up included); then the
mean seconds per volume that the scoring process spent waiting for a prepared volume (waiting) and
scoring it (``score_prepared``: transfer, networks, difference map on the input grid); the seconds a
writing thread (``--writers``, 2) spent writing its outputs (CSV, compressed NIfTI, PNG report, each
read back) while later volumes were scored, and how long the scoring process then still waited for
that write (write wait); and the seconds a worker spent reading and preparing it (alongside the rest
when workers > 0).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import generated_volume, load_average, machine, preset, print_table

from MAEAnomalyLib.methods.model import AnomalyModel, save_model
from MAEAnomalyLib.methods.model_config import PRESETS
from MAEAnomalyLib.scoring.cohort import CohortOptions, score_cohort


def write_cohort(directory: Path, volumes: int) -> list[str]:
    """``volumes`` links (``v000.nii.gz`` …) to two generated heads, alternately."""
    sources = []
    for seed in range(2):
        path = directory / f"head{seed}.nii.gz"
        image = generated_volume(seed)
        # At BraTS's 1 mm the generated brain is brain-sized (deepbet: 1.9-2.1 L); at the generator's 3 mm it
        # would be 70 L, which brain extraction rightly refuses.
        image.SetSpacing((1.0, 1.0, 1.0))
        sitk.WriteImage(image, str(path), useCompression=True)
        sources.append(path)
    (directory / "images").mkdir()
    links = []
    for k in range(volumes):
        link = directory / "images" / f"v{k:03d}.nii.gz"
        link.symlink_to(sources[k % 2])
        links.append(str(link))
    return links


def bench(name: str, images: list[str], workers: int, args: argparse.Namespace, device: torch.device,
          tmp: Path) -> dict[str, object]:
    torch.manual_seed(0)
    cfg = preset(name)
    cfg.threshold = 0.5
    model_dir = tmp / f"model-{name}"
    if not model_dir.exists():
        save_model(AnomalyModel.from_config(cfg), model_dir)
    out = tmp / f"out-{name}-{workers}"
    options = CohortOptions(out, device, args.batch_size, workers, show_progress=False, writers=args.writers)
    start = time.perf_counter()
    result = score_cohort(model_dir, images, None, options, log=print)
    wall = time.perf_counter() - start
    assert result.scored == len(images), result
    n = len(images)
    return {"preset": name, "dtype": "bf16" if device.type == "cuda" else "fp32", "workers": workers,
            "volumes": n, "wall s": wall, "vol/s": n / wall, "s/volume": wall / n,
            **{f"{k} s/vol": v / n for k, v in result.seconds.items()}, "load avg": load_average()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="small,paper", help="comma-separated presets (default: small,paper)")
    p.add_argument("--volumes", type=int, default=50, help="volumes in the cohort (default: 50)")
    p.add_argument("--workers", default="0,1,4", help="comma-separated worker counts (default: 0,1,4)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=32, help="scoring batch size (the CLI's default)")
    p.add_argument("--writers", type=int, default=2, help="threads writing outputs (the CLI's: 2)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    for name in presets:
        if name not in PRESETS:
            p.error(f"unknown preset '{name}' (choose {', '.join(PRESETS)})")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipping: --device cuda was asked for, but torch sees no CUDA GPU")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    print(f"# Cohort scoring speed on {device.type}: {machine(device)}")
    print(f"# command: python benchmarks/cohort_speed.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"# load average at start: {load_average()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="maeanomaly-cohort-speed-") as tmp:
        start = time.perf_counter()
        images = write_cohort(Path(tmp), args.volumes)
        print(f"# {args.volumes} volumes (240x240x155) written in {time.perf_counter() - start:.0f} s", flush=True)
        for name in presets:
            for workers in (int(w) for w in args.workers.split(",") if w.strip()):
                rows.append(bench(name, images, workers, args, device, Path(tmp)))
                print("  " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in rows[-1].items()), flush=True)
    print()
    print_table(rows)
    print(f"# load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
