"""Command line: ``maeanomaly train | score | evaluate | demo`` (also ``python -m MAEAnomalyLib``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .config import PRESETS, ModelConfig, preset, setting_problem
from .errors import MAEAnomalyError

DEMO_MARKER = ".maeanomaly-demo"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def apply_overrides(cfg: ModelConfig, overrides: Sequence[str]) -> None:
    """Applies ``section.field=value`` settings, converting each value to the field's type."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        section_name, _, field_name = key.partition(".")
        section = getattr(cfg, section_name, None)
        if not sep or section is None or not dataclasses.is_dataclass(section) or not hasattr(section, field_name):
            raise MAEAnomalyError(f"--set {item}: expected section.field=value, e.g. pseudo_abnormal.beta_mode=pixel")
        current = getattr(section, field_name)
        try:
            if isinstance(current, bool):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                value: object = raw.lower() in ("true", "1")
            else:
                value = type(current)(raw)
        except ValueError:
            raise MAEAnomalyError(f"--set {item}: '{raw}' is not a valid {type(current).__name__}") from None
        problem = setting_problem(section_name, field_name, value)
        if problem is not None:
            raise MAEAnomalyError(f"--set {item}: {problem}")
        setattr(section, field_name, value)


def _check_out_dir(out: Path, resume: bool) -> None:
    """Never replaces a finished model or silently restarts an unfinished run."""
    if out.is_file():
        raise MAEAnomalyError("--out must be a directory, but a file is there", out)
    if resume:
        return
    if (out / "config.json").exists():
        raise MAEAnomalyError("already holds a model; choose another --out or remove it", out)
    if (out / "checkpoint").exists():
        raise MAEAnomalyError("holds an unfinished run; pass --resume to continue it, or choose another --out", out)


def expand_paths(items: Sequence[str] | None) -> list[str] | None:
    """Paths as given, except that a folder becomes the volume files directly inside it (sorted by
    name), or its subfolders when it holds only folders (DICOM series), and a ``.txt`` file becomes
    the paths it lists, one a line (relative to the list's folder; blank lines and ``#`` comments skipped).

    A folder with neither is kept as it is: a DICOM series.
    """
    from .io import VOLUME_SUFFIXES

    if items is None:
        return None
    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_file() and path.suffix.lower() == ".txt":
            try:
                lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            except (OSError, UnicodeDecodeError) as exc:
                raise MAEAnomalyError(f"cannot read the list of paths ({exc.__class__.__name__})", path) from None
            listed = [str(path.parent / ln) for ln in lines if ln and not ln.startswith("#")]
            if not listed:
                raise MAEAnomalyError("lists no paths", path)
            out += listed
        elif path.is_dir():
            entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
            volumes = [p for p in entries if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)]
            folders = [p for p in entries if p.is_dir()]
            if volumes:
                out += [str(p) for p in volumes]
            elif folders and not any(p.is_file() for p in entries):
                out += [str(p) for p in folders]
            else:
                out.append(item)
        else:
            out.append(item)
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .distributed import env_rank
    from .runtime import resolve_device
    from .training import RunOptions, TrainingInterrupted, train

    # Under torchrun only rank 0 reports.
    log = _log if env_rank() == 0 else (lambda _: None)
    cfg = preset(args.preset)
    tc = cfg.train
    for name in ("mae_epochs", "classifier_epochs", "batch_size", "seed"):
        if getattr(args, name) is not None:
            setattr(tc, name, getattr(args, name))
    if args.batch_size is not None:  # both stages; --set train.classifier_batch_size=N sets the classifier's
        tc.classifier_batch_size = args.batch_size
    apply_overrides(cfg, args.set or [])
    if args.workers < 0:
        raise MAEAnomalyError(f"--workers {args.workers}: give 0 (load in the main process) or more")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise MAEAnomalyError(f"--max-minutes {args.max_minutes}: give a positive number of minutes")
    images, masks, labels = expand_paths(args.images), expand_paths(args.masks), expand_paths(args.labels)
    out = Path(args.out)
    _check_out_dir(out, args.resume)
    device = resolve_device(args.device)
    options = RunOptions(cache_dir=Path(args.cache_dir) if args.cache_dir else None, workers=args.workers,
                         max_minutes=args.max_minutes, compile=args.compile)
    log(f"preset {cfg.preset}: {cfg.preprocess.image_size} px, MAE {tc.mae_epochs} epochs, "
        f"classifier {tc.classifier_epochs} epochs, {len(images)} volumes, device {device.type}")
    try:
        train(images, out, cfg, device, masks, labels, args.resume, log=log, options=options,
              mae_from=Path(args.mae_from) if args.mae_from else None)
    except TrainingInterrupted as exc:
        log(f"maeanomaly: {exc}")
        return 143  # 128 + SIGTERM, as schedulers expect from a terminated job
    return 0


def _progress_printer(mode: str):
    if mode != "lines":
        return None

    def report(fraction: float) -> None:
        print(f"progress {fraction:.3f}", file=sys.stderr, flush=True)

    return report


def cmd_score(args: argparse.Namespace) -> int:
    from .io import read_mask, read_volume, volume_name
    from .model_io import load_model
    from .outputs import write_score_outputs
    from .runtime import resolve_device
    from .scoring import score_image

    model = load_model(args.model)
    device = resolve_device(args.device)
    image = read_volume(args.image)
    mask = read_mask(args.mask, image) if args.mask else None
    result = score_image(model, image, mask, device, args.batch_size, _progress_printer(args.progress),
                         source=str(args.image))
    inputs = tuple(p for p in (args.image, args.mask) if p)
    paths = write_score_outputs(result, args.out_dir, volume_name(args.image), protected=inputs)
    flagged = int(result.table["abnormal"].sum())
    _log(f"{len(result.table['score'])} slices scored, {flagged} above the threshold {result.threshold:.4f}")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _check_pairs(images: Sequence, others: Sequence | None, flag: str) -> None:
    if others is not None and len(others) != len(images):
        raise MAEAnomalyError(f"{flag} gives {len(others)} files for {len(images)} images; they pair in order")


def evaluate_cohort(model_dir: str | Path, images: Sequence, labels: Sequence, masks: Sequence | None,
                    device_name: str = "auto", batch_size: int = 32) -> dict:
    """Scores every volume and returns the slice-level metrics (see ``evaluation.slice_metrics``)."""
    from tqdm import tqdm

    from .evaluation import slice_metrics
    from .model_io import load_model
    from .preprocessing import prepare
    from .runtime import resolve_device
    from .scoring import score_prepared

    _check_pairs(images, labels, "--labels")
    _check_pairs(images, masks, "--masks")
    model = load_model(model_dir)
    device = resolve_device(device_name)
    model.to(device)
    tables, truth, areas = [], [], []
    for i, path in enumerate(tqdm(images, desc="scoring volumes", unit="vol")):
        prepared = prepare(path, model.config.preprocess, masks[i] if masks else None, labels[i],
                           min_pixels=model.config.mae.patch_size)
        tables.append(score_prepared(model, prepared, device, batch_size).table)
        truth.append(prepared.labelled)
        areas.append(prepared.labelled_area_mm2)
    metrics = slice_metrics(tables, truth, areas, [str(path) for path in images])
    metrics["volumes"] = len(images)
    metrics["threshold"] = model.config.threshold
    return metrics


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import format_metrics
    from .io import atomic_outputs

    metrics = evaluate_cohort(args.model, args.images, args.labels, args.masks, args.device, args.batch_size)
    print(format_metrics(metrics))
    if args.json:
        with atomic_outputs() as writer:
            writer.write_text(json.dumps(metrics, indent=2) + "\n", args.json)
        print(f"metrics: {args.json}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .evaluation import format_metrics
    from .synthetic import write_cohort

    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()):
        if not (out / DEMO_MARKER).exists():
            raise MAEAnomalyError("exists and is not an earlier demo's output; choose another --out-dir", out)
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / DEMO_MARKER).write_text("written by 'maeanomaly demo'; safe to delete\n")
    start = time.perf_counter()
    _log(f"1/4 generating a synthetic cohort in {out / 'data'}")
    healthy, lesioned = write_cohort(out / "data", healthy=args.healthy, lesioned=3, seed=0)
    _log("2/4 training the 'tiny' preset on the healthy volumes")
    train_args = ["train", "--preset", "tiny", "--out", str(out / "model"), "--device", args.device,
                  "--images", *[str(h[0]) for h in healthy], "--masks", *[str(h[1]) for h in healthy]]
    if args.quick:
        train_args += ["--mae-epochs", "3", "--classifier-epochs", "1"]
    main(train_args, raise_errors=True)
    _log("3/4 scoring a volume with a synthetic lesion")
    main(["score", "--model", str(out / "model"), "--image", str(lesioned[0][0]), "--mask", str(lesioned[0][1]),
          "--out-dir", str(out / "scores"), "--device", args.device], raise_errors=True)
    _log("4/4 evaluating on the lesioned volumes")
    metrics = evaluate_cohort(out / "model", [str(p[0]) for p in lesioned], [str(p[2]) for p in lesioned],
                              [str(p[1]) for p in lesioned], args.device)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(format_metrics(metrics))
    auroc = metrics["foreground_slices"]["score"]["auroc"]
    print(f"demo finished in {time.perf_counter() - start:.0f} s: slice-level AUROC {auroc:.3f} "
          f"(slices with foreground); outputs in {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maeanomaly", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on healthy volumes")
    p.add_argument("--images", nargs="+", required=True,
                   help="training volumes: files, DICOM folders, folders of volumes, or .txt lists of paths")
    p.add_argument("--masks", nargs="+", help="foreground masks, paired with --images in order (same forms)")
    p.add_argument("--labels", nargs="+", help="label maps; slices with any voxel > 0 are left out (same forms)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--preset", choices=PRESETS, default="small")
    p.add_argument("--mae-epochs", type=int)
    p.add_argument("--classifier-epochs", type=int)
    p.add_argument("--batch-size", type=int, help="slices per batch in both stages (default: the preset's)")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="override any config field, e.g. pseudo_abnormal.beta_mode=pixel (repeatable)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes per training process (0: none)")
    p.add_argument("--cache-dir", help="slice cache folder, shareable between runs (default: <out>/slice_cache)")
    p.add_argument("--max-minutes", type=float,
                   help="time budget: end each stage early (after at least one epoch) to finish in about this time")
    p.add_argument("--mae-from", metavar="MODEL_DIR",
                   help="take the MAE from this trained model and train only the classifier")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training step (minutes to compile; pays off in long GPU runs)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("score", help="score every axial slice of one volume")
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--mask")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=32, help="slices per batch (each reconstructed 4 times)")
    p.add_argument("--progress", choices=("none", "lines"), default="none",
                   help="'lines' prints 'progress <fraction>' to stderr, for programs that run this one")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("evaluate", help="slice-level AUROC and AUPRC on labelled volumes")
    p.add_argument("--model", required=True)
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--labels", nargs="+", required=True, help="label maps; a slice is abnormal if any voxel > 0")
    p.add_argument("--masks", nargs="+")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="generate data, train 'tiny', score and evaluate, end to end")
    p.add_argument("--out-dir", default="maeanomaly_demo")
    p.add_argument("--healthy", type=int, default=10, help="number of healthy training volumes")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="a few epochs only (a smoke test, not a useful model)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None, raise_errors: bool = False) -> int:
    """Entry point; user errors become one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MAEAnomalyError as exc:
        if raise_errors:
            raise
        print(f"maeanomaly: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("maeanomaly: interrupted", file=sys.stderr)
        return 130
