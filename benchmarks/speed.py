"""Scoring and training speed of each preset on one 240×240×155 volume (issue 4, "Speed and memory").

Scores a generated skull-stripped 240×240×155 head (BraTS-sized) through the public path
(``prepare_image`` then ``score_prepared``) with randomly initialised weights, and prints for each
preset and precision: slices per second, seconds per volume, peak memory, the FLOPs counted with
``torch.utils.flop_counter``, the achieved FLOP/s, the dense matmul FLOP/s measured in the same run
and precision, and the speed-up over a per-slice, batch-1, pass-after-pass loop (the way the
reference implementation scores). A second table gives training throughput for both networks, timed
through the training loop's own optimisation step and the stages' own data (not a copy of them).

Run from the repository root (one command; the default finishes in a few minutes on 2 CPU cores):

    PYTHONPATH=. "$(bash scripts/env.sh)/bin/python" benchmarks/speed.py

``--slices N`` times N brain slices (plus every empty slice of the volume) and extrapolates to the
whole volume; ``--slices 0`` times the whole volume. ``--image`` times a real volume instead of the
generated one (and skips, with a message, when that file is absent).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from MAEAnomalyLib.core.config import LANDMARK_PERCENTILES
from MAEAnomalyLib.data.io import read_mask, read_volume, to_canonical
from MAEAnomalyLib.data.preprocessing import PreparedVolume, prepare_image
from MAEAnomalyLib.data.slice_cache import SliceCache, SliceRows
from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.engine.distributed import Dist, StopControl
from MAEAnomalyLib.engine.loop import Progress, Run, RunOptions, make_loader
from MAEAnomalyLib.engine.samples import EpochBatches, batches_per_epoch
from MAEAnomalyLib.methods.mae_classifier import scorer as mae_scorer
from MAEAnomalyLib.methods.mae_classifier.classifier import anomaly_probability
from MAEAnomalyLib.methods.mae_classifier.reconstruction import reconstruct
from MAEAnomalyLib.methods.mae_classifier.stages import ClassifierStage, MAEStage
from MAEAnomalyLib.methods.model import AnomalyModel
from MAEAnomalyLib.methods.model_config import PRESETS, ModelConfig
from MAEAnomalyLib.methods.model_config import preset as make_preset
from MAEAnomalyLib.scoring import scores as scoring
from MAEAnomalyLib.scoring.scores import min_pixels

VOLUME_SHAPE = (155, 240, 240)  # (Z, Y, X), the BraTS grid
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PrecisionFn = Callable[[], contextlib.AbstractContextManager]
FLOP_COLUMNS = ["GFLOP/slice", "TFLOP/volume", "GFLOP/s", "matmul GFLOP/s", "ratio", "ratio (CPU time)", "CPU busy"]
LEGEND = """\
timed slices: brain slices timed (plus every empty slice); * = s/volume extrapolated from them to all of them.
slices/s: scored slices per second of score_prepared. s/volume: preparation (prep s) plus scoring.
peak RSS: whole benchmark process (about 1.2 GB of it is importing torch, MONAI and timm).
ref s/slice, speed-up: the per-slice, batch-1, pass-after-pass loop, and our speed-up over it
(in wall time, and in CPU time of this process, which sharing the cores with other processes does not distort).
empty slice time/FLOPs: what one skipped (empty) slice adds, relative to one scored slice.
ratio: achieved FLOP/s over dense matmul FLOP/s in the same precision (matmul: mean over 2 s windows
before and after the measurement); ratio (CPU time): the same per CPU second of this process.
CPU busy: process CPU time / (wall time x torch threads); well below 1 when other processes share the cores.
"""
CPU_TRAIN_BATCH = {"tiny": 32, "small": 16, "paper": 4}  # keeps the default CPU run to a few minutes


# --- measurement helpers ------------------------------------------------------------------------
def precision(device: torch.device, dtype: str) -> PrecisionFn:
    """fp32: no autocast; bf16: ``torch.autocast`` to bfloat16 on the device (what runtime.autocast does on CUDA)."""
    if dtype == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def scoring_precision(fn: PrecisionFn) -> Iterator[None]:
    """Makes the method's scorer (what ``score_prepared`` calls) use ``fn`` in place of ``runtime.autocast``
    (restored afterwards)."""
    saved = mae_scorer.autocast
    mae_scorer.autocast = lambda device: fn()
    try:
        yield
    finally:
        mae_scorer.autocast = saved


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of one call and the CPU seconds this process spent in it (all threads)."""

    wall: float
    cpu: float

    def busy(self, device: torch.device) -> float:
        """CPU seconds over wall seconds times torch threads: well below 1 means other processes held the cores."""
        return self.cpu / (self.wall * torch.get_num_threads()) if device.type == "cpu" else float("nan")


def timed(fn: Callable[[], object], device: torch.device) -> Timing:
    """Times one call, with the device synchronised on both sides."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def best(fn: Callable[[], object], device: torch.device, repeats: int) -> Timing:
    """The fastest of ``repeats`` calls."""
    return min((timed(fn, device) for _ in range(max(1, repeats))), key=lambda t: t.wall)


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call, as counted by ``FlopCounterMode`` (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@dataclass(frozen=True)
class Rate:
    """FLOPs done in a timed stretch: per wall second, and per CPU second of each torch thread."""

    flops: float
    timing: Timing

    @property
    def wall(self) -> float:
        return self.flops / self.timing.wall

    def per_cpu(self, device: torch.device) -> float:
        """FLOP/s had no other process shared the cores (CPU only; NaN on GPU)."""
        if device.type != "cpu":
            return float("nan")
        return self.flops / (self.timing.cpu / torch.get_num_threads())

    def __add__(self, other: Rate) -> Rate:
        t = Timing(self.timing.wall + other.timing.wall, self.timing.cpu + other.timing.cpu)
        return Rate(self.flops + other.flops, t)


def matmul_rate(device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> Rate:
    """Back-to-back dense square ``torch.mm`` in ``dtype`` (2048 on CPU, 8192 on GPU) for about ``seconds``:
    a mean over a window, not a best burst, so that it sees the same share of a shared machine as the
    measurement it is compared with."""
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)

    def run() -> None:
        for _ in range(1 if device.type == "cpu" else 20):
            torch.mm(a, b)

    count, total = 0, Timing(0.0, 0.0)
    while total.wall < seconds:
        t = timed(run, device)
        total = Timing(total.wall + t.wall, total.cpu + t.cpu)
        count += 1 if device.type == "cpu" else 20
    return Rate(2 * n**3 * count, total)


def ratios(model: Rate, mm: Rate, device: torch.device) -> dict[str, float]:
    """Achieved and matmul FLOP/s, their ratio, and the same ratio on CPU time (robust to shared cores)."""
    return {"GFLOP/s": model.wall / 1e9, "matmul GFLOP/s": mm.wall / 1e9, "ratio": model.wall / mm.wall,
            "ratio (CPU time)": model.per_cpu(device) / mm.per_cpu(device), "CPU busy": model.timing.busy(device)}


def peak_memory_gb(device: torch.device) -> tuple[float, float]:
    """Peak resident memory of this process, and peak CUDA allocation (NaN on CPU), in GB."""
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB
    gpu = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")
    return host, gpu


# --- volumes ------------------------------------------------------------------------------------
def preset(name: str, method: str = "mae_classifier") -> ModelConfig:
    """The preset's config, ready to score with untrained weights: a histogram-standardised preset gets the
    standard scale that puts each landmark where the percentile mapping would (training learns the real
    one; speed does not depend on it)."""
    cfg = make_preset(name, method)
    if cfg.preprocess.normalisation == "histogram":
        low, high = LANDMARK_PERCENTILES[0], LANDMARK_PERCENTILES[-1]
        cfg.preprocess.landmarks = [(p - low) / (high - low) for p in LANDMARK_PERCENTILES]
    return cfg


def generated_volume(seed: int = 0) -> sitk.Image:
    """A skull-stripped 240×240×155 head (zero outside the brain), like a BraTS volume."""
    subject = make_subject(seed, shape=VOLUME_SHAPE)
    array = sitk.GetArrayFromImage(subject.image) * (sitk.GetArrayFromImage(subject.brain_mask) > 0)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.CopyInformation(subject.image)
    return image


def sub_volume(image: sitk.Image, indices: np.ndarray) -> sitk.Image:
    """The axial slices ``indices`` of a canonical image as a new image on the same spacing and axes."""
    out = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[indices])
    out.SetSpacing(image.GetSpacing())
    out.SetOrigin(image.GetOrigin())
    out.SetDirection(image.GetDirection())
    return out


@dataclass
class Volume:
    """The volume to time, in canonical orientation (array[k] is axial slice k)."""

    image: sitk.Image
    mask: sitk.Image | None
    brain: np.ndarray  # slice indices with foreground
    empty: np.ndarray  # slice indices without foreground

    @classmethod
    def read(cls, image_path: Path, mask_path: Path | None) -> Volume:
        image = sitk.ReadImage(str(image_path), sitk.sitkFloat32)
        mask = None if mask_path is None else sitk.ReadImage(str(mask_path))
        # Which slices have foreground does not depend on the preset.
        skipped = prepare_image(image, preset("tiny").preprocess, mask).foreground_fraction == 0
        return cls(image, mask, np.flatnonzero(~skipped), np.flatnonzero(skipped))

    def subset(self, n_brain: int, with_empty: bool) -> tuple[sitk.Image, sitk.Image | None]:
        """The ``n_brain`` central brain slices, plus every empty slice when ``with_empty``."""
        mid = len(self.brain) // 2
        chosen = self.brain[max(0, mid - n_brain // 2):][:n_brain]
        indices = np.sort(np.concatenate([chosen, self.empty])) if with_empty else chosen
        return sub_volume(self.image, indices), None if self.mask is None else sub_volume(self.mask, indices)


def write_volume(args: argparse.Namespace, directory: Path) -> tuple[str, Path, Path | None]:
    """Writes the generated head, or ``--image`` (and ``--mask``), canonically oriented, for the workers."""
    if args.image is None:
        image, mask, name = generated_volume(), None, "generated skull-stripped head"
    else:
        original = read_volume(args.image)
        image, name = to_canonical(original), str(args.image)
        mask = None if args.mask is None else to_canonical(read_mask(args.mask, original))
    image_path = directory / "volume.mha"
    sitk.WriteImage(image, str(image_path))
    mask_path = None
    if mask is not None:
        mask_path = directory / "mask.mha"
        sitk.WriteImage(mask, str(mask_path))
    return f"{name} ({'x'.join(map(str, image.GetSize()))} voxels)", image_path, mask_path


# --- scoring --------------------------------------------------------------------------------------
def reference_loop(model: AnomalyModel, images: torch.Tensor, passes: int, samples: int, device: torch.device,
                   fn: PrecisionFn) -> None:
    """Scores slice by slice, batch 1, the masked passes one after another (the reference code's way),
    with as many reconstructions per slice as the preset scores (``mae_classifier.score_reconstructions``)."""
    generator = torch.Generator().manual_seed(mae_scorer.SCORING_SEED)
    with torch.inference_mode(), fn():
        for k in range(images.shape[0]):
            image = images[k:k + 1].to(device)
            for _ in range(samples):
                recon = sum(reconstruct(model.mae, image, 1, generator).float() for _ in range(passes)) / passes
                anomaly_probability(model.classifier((recon - image).abs())).cpu()


def bench_scoring(cfg: ModelConfig, volume: Volume, dtype: str, args: argparse.Namespace,
                  device: torch.device) -> dict[str, object]:
    """One row of the scoring table, measured in this (fresh) process."""
    fn = precision(device, dtype)
    total = len(volume.brain)
    n = total if args.slices <= 0 else min(args.slices, total)

    def prepare(image: sitk.Image, mask: sitk.Image | None) -> PreparedVolume:
        return prepare_image(image, cfg.preprocess, mask, min_pixels=min_pixels(cfg))

    t_prep = best(lambda: prepare(volume.image, volume.mask), device, args.repeats).wall
    model = AnomalyModel.from_config(cfg).eval().to(device)
    few, few_empty, main = prepare(*volume.subset(2, False)), prepare(*volume.subset(2, True)), \
        prepare(*volume.subset(n, True))

    def score(p: PreparedVolume) -> Callable[[], object]:
        return lambda: scoring.score_prepared(model, p, device, args.batch_size)

    mm = matmul_rate(device, DTYPES[dtype])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # leave the matmul test out of the scoring peak
    with scoring_precision(fn):
        # The counted runs double as warm-ups (same batch shapes as the timed runs).
        flops_main = count_flops(score(main))
        flops_few, flops_few_empty = count_flops(score(few)), count_flops(score(few_empty))
        main_timing = best(score(main), device, args.repeats)
        # The cost of skipped slices: the same 2 brain slices scored with and without every empty slice.
        t_few, t_few_empty = float("inf"), float("inf")
        for _ in range(max(3, args.repeats)):
            t_few = min(t_few, timed(score(few), device).wall)
            t_few_empty = min(t_few_empty, timed(score(few_empty), device).wall)
    peak_host, peak_gpu = peak_memory_gb(device)
    n_ref = min(n, args.reference_slices)
    ref_images = main.slices[np.flatnonzero(main.foreground_fraction > 0)[:n_ref]]
    passes, samples = cfg.settings.reconstruction_passes, cfg.settings.score_reconstructions
    reference_loop(model, ref_images[:1], passes, samples, device, fn)  # warm-up
    ref = best(lambda: reference_loop(model, ref_images, passes, samples, device, fn), device, args.repeats)
    mm = mm + matmul_rate(device, DTYPES[dtype])

    t_main = main_timing.wall
    flops_slice = flops_main / n
    per_slice = t_main / n
    cpu_speed_up = (ref.cpu / n_ref) / (main_timing.cpu / n) if device.type == "cpu" else float("nan")
    return {
        "preset": cfg.preset, "dtype": dtype, "recons": cfg.settings.score_reconstructions,
        "timed slices": f"{n}/{total}" + ("" if n == total else " *"),
        "slices/s": n / t_main, "prep s": t_prep, "s/volume": t_prep + per_slice * total,
        "peak RSS GB": peak_host, **({"peak GPU GB": peak_gpu} if device.type == "cuda" else {}),
        "ref s/slice": ref.wall / n_ref, "speed-up": (ref.wall / n_ref) / per_slice,
        "speed-up (CPU time)": cpu_speed_up,
        # One skipped slice's time as a share of one scored slice's (timing noise can make it negative).
        "empty slice time": f"{100 * (t_few_empty - t_few) / max(1, len(volume.empty)) / per_slice:+.1f}%",
        "empty slice FLOPs": "0" if flops_few_empty == flops_few else f"{(flops_few_empty - flops_few) / 1e9:.2f} G",
        "GFLOP/slice": flops_slice / 1e9, "TFLOP/volume": flops_slice * total / 1e12,
        **ratios(Rate(flops_main, main_timing), mm, device),
    }


# --- training -------------------------------------------------------------------------------------
def bench_training(cfg: ModelConfig, volume: Volume, dtype: str, args: argparse.Namespace,
                   device: torch.device) -> list[dict[str, object]]:
    """Images per second of one optimisation step of each stage (forward, backward, AdamW, schedule),
    timed through the training code itself: each stage's own optimisers and step (``engine.loop.Stage``) on
    the batches the stages' own datasets make (for the classifier: negatives and pseudo-abnormal positives)."""
    tc, fn = cfg.train, precision(device, dtype)
    batch = args.train_batch or tc.batch_size
    if args.train_batch is None and device.type == "cpu":
        batch = min(batch, CPU_TRAIN_BATCH.get(cfg.preset, batch))
    tc.batch_size = cfg.settings.classifier_batch_size = batch
    model = AnomalyModel.from_config(cfg)
    rows_out = []
    with tempfile.TemporaryDirectory(prefix="maeanomaly-speed-train-") as tmp:
        image, mask = volume.subset(batch, False)
        sitk.WriteImage(image, f"{tmp}/train.nrrd")
        paths = (Path(f"{tmp}/train.nrrd"), None)
        if mask is not None:
            sitk.WriteImage(mask, f"{tmp}/mask.nrrd")
            paths = (paths[0], Path(f"{tmp}/mask.nrrd"))
        cache = SliceCache(Path(tmp) / "cache", cfg.preprocess, min_pixels(cfg))
        rows = SliceRows([cache.ensure(cache.key(*paths), *paths)], 0.0)
        dist = Dist(device=device)
        run = Run(dist, StopControl(dist), RunOptions(), len(rows), tc.warmup_fraction, tc.seed,
                  save=lambda *_: None, checkpoint_dir=Path(tmp), log=lambda _: None, show_progress=False)
        progress = Progress()
        stages = [("MAE", MAEStage(model, rows, rows, run, progress).stage(), batch)]
        with fn():
            stages.append(("classifier", ClassifierStage(model, rows, rows, run, progress, Path(tmp)).stage(),
                           2 * batch))
        for name, stage, per_step in stages:
            net = stage.net.to(device).train()
            opts = stage.optimizers(net, stage.epochs * batches_per_epoch(len(rows), stage.batch))
            sampler = EpochBatches(len(rows), stage.batch, tc.seed, stage.name, stage.epochs, (0, 0), dist.rows)
            (step, _), data = next(sampler.steps()), next(iter(make_loader(stage.data, sampler, 0, device)))

            def one_step(stage=stage, net=net, data=data, step=step, opts=opts) -> None:
                with fn():
                    stage.step(net, data, step, opts)  # forward, backward, optimiser step and schedule

            mm = matmul_rate(device, DTYPES[dtype])
            flops = count_flops(one_step)  # also the first, warm-up step
            one_step()
            timing = best(one_step, device, args.train_steps)
            mm = mm + matmul_rate(device, DTYPES[dtype])
            rows_out.append({"preset": cfg.preset, "dtype": dtype, "network": name, "images/step": per_step,
                             "images/s": per_step / timing.wall, "GFLOP/image": flops / per_step / 1e9,
                             **ratios(Rate(flops, timing), mm, device)})
    rows_out[-1]["peak RSS GB"] = rows_out[0]["peak RSS GB"] = peak_memory_gb(device)[0]
    return rows_out


# --- output -------------------------------------------------------------------------------------
def fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def print_table(rows: list[dict[str, object]], columns: list[str] | None = None) -> None:
    """A Markdown table (readable in a terminal, pasteable into benchmarks/README.md)."""
    if not rows:
        return
    columns = columns or list(rows[0])
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) + " |")
    print(flush=True)


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"{cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads{gpu}; "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets (default: all)")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated precisions: fp32, bf16")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--slices", type=int, default=None,
                   help="brain slices to time (plus every empty slice), extrapolated to the volume; "
                        "0 = the whole volume (default: 32 on CPU, whole volume on GPU)")
    p.add_argument("--batch-size", type=int, default=32, help="scoring batch size (the CLI's default)")
    p.add_argument("--repeats", type=int, default=1, help="timed repeats; the best is reported")
    p.add_argument("--reference-slices", type=int, default=None,
                   help="slices timed with the per-slice reference loop (default: 4 on CPU, 32 on GPU)")
    p.add_argument("--no-train", action="store_true", help="skip the training-throughput table")
    p.add_argument("--train-batch", type=int, default=None,
                   help="training batch size (default: the preset's on GPU; on CPU at most 32 tiny, 16 small, "
                        "4 paper)")
    p.add_argument("--train-steps", type=int, default=2, help="timed training steps; the best is reported")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--image", type=Path, default=None, help="time this volume instead of the generated one")
    p.add_argument("--mask", type=Path, default=None, help="foreground mask for --image")
    # Internal: each measurement runs in a fresh process so that its peak memory is its own.
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--volume-file", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--mask-file", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for d in args.dtypes.split(","):
        if d.strip() and d.strip() not in DTYPES:
            p.error(f"unknown dtype '{d}' (choose fp32 or bf16)")
    for name in args.presets.split(","):
        if name.strip() and name.strip() not in PRESETS:
            p.error(f"unknown preset '{name}' (choose {', '.join(PRESETS)})")
    return args


def pick_device(args: argparse.Namespace) -> torch.device:
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def worker(args: argparse.Namespace) -> int:
    """Runs one measurement (``scoring:PRESET:DTYPE`` or ``training:PRESET:DTYPE``) and prints its rows as JSON."""
    kind, name, dtype = args.worker.split(":")
    device = pick_device(args)
    torch.manual_seed(0)
    cfg = preset(name)
    cfg.threshold = 0.5  # scoring needs one; speed does not depend on it
    volume = Volume.read(args.volume_file, args.mask_file)
    rows = ([bench_scoring(cfg, volume, dtype, args, device)] if kind == "scoring"
            else bench_training(cfg, volume, dtype, args, device))
    print("RESULT " + json.dumps(rows), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)
    for path in (args.image, args.mask):
        if path is not None and not path.exists():
            print(f"skipping: {path} not found (without --image the benchmark generates its volume and needs no data)")
            return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipping: --device cuda was asked for, but torch sees no CUDA GPU")
        return 0
    device = pick_device(args)
    on_cpu = device.type == "cpu"
    passed = list(argv)
    if args.slices is None:
        passed += ["--slices", "32" if on_cpu else "0"]
    if args.reference_slices is None:
        passed += ["--reference-slices", "4" if on_cpu else "32"]
    presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    dtypes = [s.strip() for s in args.dtypes.split(",") if s.strip()]
    print(f"# Speed on {device.type}: {machine(device)}")
    print(f"# command: python benchmarks/speed.py {' '.join(argv)}".rstrip())
    print(f"# load average at start: {load_average()}", flush=True)

    rows: dict[str, list[dict[str, object]]] = {"scoring": [], "training": []}
    with tempfile.TemporaryDirectory(prefix="maeanomaly-speed-") as tmp:
        start = time.perf_counter()
        name, image_path, mask_path = write_volume(args, Path(tmp))
        print(f"# volume: {name}, set up in {time.perf_counter() - start:.1f} s", flush=True)
        kinds = ["scoring"] + ([] if args.no_train else ["training"])
        for preset_name in presets:
            for dtype in dtypes:
                for kind in kinds:
                    start = time.perf_counter()
                    command = [sys.executable, str(Path(__file__).resolve()), *passed,
                               "--worker", f"{kind}:{preset_name}:{dtype}", "--volume-file", str(image_path)]
                    if mask_path is not None:
                        command += ["--mask-file", str(mask_path)]
                    done = subprocess.run(command, stdout=subprocess.PIPE, encoding="utf-8", check=False)
                    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                    if done.returncode or not result:
                        print(done.stdout, end="")
                        print(f"[{preset_name} {dtype} {kind}] failed (exit {done.returncode})", file=sys.stderr)
                        return 1
                    measured = json.loads(result[-1][len("RESULT "):])
                    rows[kind] += measured
                    print(f"[{preset_name} {dtype}] {kind} measured in {time.perf_counter() - start:.0f} s "
                          f"(load average {load_average()})", flush=True)
                    for row in measured:  # kept in the log even if the run is stopped before the tables
                        print("  " + json.dumps(row), flush=True)

    scored = rows["scoring"]
    first = [c for c in scored[0] if c not in FLOP_COLUMNS] if scored else []
    print("\n## Scoring one volume: speed and memory\n")
    print_table(scored, first)
    print("## Scoring one volume: floating-point work of score_prepared\n")
    print_table(scored, ["preset", "dtype", *FLOP_COLUMNS])
    if rows["training"]:
        print("## Training throughput (one step: forward, backward, AdamW; classifier images are the "
              "negatives plus the pseudo-abnormal positives)\n")
        print_table(rows["training"])
    print(LEGEND)
    print(f"# load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
