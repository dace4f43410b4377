"""Command line: ``maeanomaly train | score | evaluate | calibrate | models | demo`` (also ``python -m
MAEAnomalyLib``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import MAEAnomalyError
from ..core.termination import Terminated, terminated_on_sigterm
from ..methods import DEFAULT_METHOD
from ..methods import names as method_names
from ..methods.model_config import PRESETS, apply_overrides, preset
from .models import add_model_commands


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def flag_settings(args: argparse.Namespace, method: str) -> list[str]:
    """The flags that are short forms of ``--set`` (before any ``--set``, which wins)."""
    items = [f"train.{name}={getattr(args, name)}" for name in ("batch_size", "seed")
             if getattr(args, name) is not None]
    if args.batch_size is not None and method == "mae_classifier":  # both of its stages
        items.append(f"mae_classifier.classifier_batch_size={args.batch_size}")
    for flag in ("mae_epochs", "classifier_epochs"):
        if getattr(args, flag) is not None:
            items.append(f"mae_classifier.{flag}={getattr(args, flag)}")
    return items


def cmd_train(args: argparse.Namespace) -> int:
    from ..core.runtime import resolve_device
    from ..data.inputs import expand_paths
    from ..engine.distributed import env_rank
    from ..training import RunOptions, TrainingInterrupted, check_out_dir, train

    # Under torchrun only rank 0 reports.
    log = _log if env_rank() == 0 else (lambda _: None)
    cfg = preset(args.preset, args.method)
    apply_overrides(cfg, flag_settings(args, cfg.method) + (args.set or []))
    try:  # every setting, before any work starts
        cfg.check()
    except ValueError as exc:
        raise MAEAnomalyError(f"invalid training setting: {exc}") from None
    if args.workers < 0:
        raise MAEAnomalyError(f"--workers {args.workers}: give 0 (load in the main process) or more")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise MAEAnomalyError(f"--max-minutes {args.max_minutes}: give a positive number of minutes")
    images, masks, labels = expand_paths(args.images), expand_paths(args.masks), expand_paths(args.labels)
    out = Path(args.out)
    check_out_dir(out, args.resume)
    device = resolve_device(args.device)
    options = RunOptions(cache_dir=Path(args.cache_dir) if args.cache_dir else None, workers=args.workers,
                         max_minutes=args.max_minutes, compile=args.compile)
    log(f"method {cfg.method}, preset {cfg.preset}: {cfg.preprocess.image_size} px, {len(images)} volumes, "
        f"device {device.type}")
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


def _check_batch_size(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise MAEAnomalyError(f"--batch-size {args.batch_size}: give 1 or more slices per batch")


def cmd_score(args: argparse.Namespace) -> int:
    from .cohort import check_single_volume_args, score_cohort_command

    _check_batch_size(args)
    if args.images is not None:
        return score_cohort_command(args, _log, Terminated)
    check_single_volume_args(args)
    from ..core.runtime import resolve_device
    from ..core.shipped import resolve_model
    from ..scoring.outputs import score_to_files

    model = resolve_model(args.model)
    result, paths, foreground = score_to_files(model, args.image, args.mask or args.brain_mask, args.out_dir,
                                               resolve_device(args.device), args.batch_size,
                                               _progress_printer(args.progress))
    flagged = int(result.table["abnormal"].sum())
    _log(f"model {model}; foreground: {foreground.how}")
    _log(f"{len(result.table['score'])} slices scored, {flagged} above the threshold {result.threshold:.4f}")
    if "anomalies" not in paths:
        _log("the model has no voxel threshold (trained before voxel calibration): no anomaly segmentation written")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..core.files import atomic_outputs, refuse_inputs
    from ..core.shipped import resolve_model
    from ..evaluation.cohort import evaluate_cohort, format_metrics

    _check_batch_size(args)
    args.model = resolve_model(args.model)
    if args.json:
        model_files = list(Path(args.model).glob("*")) if Path(args.model).is_dir() else [args.model]
        refuse_inputs([args.json], [*args.images, *args.labels, *(args.masks or []), *model_files], "--json")
        if Path(args.json).is_dir():
            raise MAEAnomalyError("--json must name a file, but a folder is there", args.json)
    metrics = evaluate_cohort(args.model, args.images, args.labels, args.masks, args.device, args.batch_size,
                              args.brain_mask)
    print(f"model: {args.model}")
    print(format_metrics(metrics))
    if args.json:
        with atomic_outputs() as writer:
            writer.write_text(json.dumps(metrics, indent=2) + "\n", args.json)
        print(f"metrics: {args.json}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..evaluation.cohort import format_metrics
    from .demo import run_demo, run_demo_training

    out = Path(args.out_dir)

    def run(argv: list[str]) -> int:
        return main(argv, raise_errors=True)

    if args.train:
        metrics, seconds = run_demo_training(out, args.healthy, args.device, args.quick, _log, run)
        print(format_metrics(metrics))
        auroc = metrics["foreground_slices"]["score"]["auroc"]
        print(f"demo finished in {seconds:.0f} s: slice-level AUROC {auroc:.3f} (slices with foreground); "
              f"outputs in {out}")
        return 0
    found, seconds = run_demo(out, args.device, _log, run)
    healthy, lesion = found["healthy"], found["synthetic lesion"]
    print(f"healthy volume: {healthy['flagged']} of {healthy['brain_slices']} brain slices flagged")
    print(f"with a SYNTHETIC lesion (inserted by the demo, not a real one): the {lesion['lesion_slices']} slices "
          f"holding it rank {lesion['lesion_slice_ranks']} of {lesion['brain_slices']} brain slices by score, "
          f"{lesion['lesion_slices_flagged']} of them flagged; {lesion['flagged']} slices flagged in all")
    print(f"anomaly segmentation: healthy volume {healthy['components']} components, {healthy['components_ml']} mL; "
          f"with the lesion {lesion['components']} components, {lesion['components_ml']} mL, outlining "
          f"{lesion['lesion_outlined']:.0%} of the lesion's {lesion['lesion_ml']} mL")
    print(f"demo finished in {seconds:.0f} s; outputs in {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maeanomaly", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on healthy volumes")
    p.add_argument("--images", nargs="+", required=True,
                   help="training volumes: files, DICOM folders, folders of volumes, or .txt lists of paths")
    p.add_argument("--masks", nargs="+", help="foreground masks, paired with --images (by name from folders)")
    p.add_argument("--labels", nargs="+", help="label maps; slices with any voxel > 0 are left out (same forms)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--method", choices=method_names(), default=DEFAULT_METHOD,
                   help="the method to train (default: mae_classifier, the paper's); see docs/usage.md")
    p.add_argument("--preset", choices=PRESETS, default="small",
                   help="network sizes and training settings (default: small; tiny for tests, paper for a GPU)")
    p.add_argument("--mae-epochs", type=int, help="mae_classifier: epochs of the masked autoencoder (default: the "
                   "preset's; the same as --set mae_classifier.mae_epochs=N)")
    p.add_argument("--classifier-epochs", type=int, help="mae_classifier: epochs of the classifier (default: the "
                   "preset's)")
    p.add_argument("--batch-size", type=int, help="slices per batch in both stages (default: the preset's)")
    p.add_argument("--seed", type=int, help="seed of every random draw (default: the preset's, 0)")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="override a setting: METHOD.FIELD (e.g. mae_classifier.pseudo_abnormal.beta_mode=pixel) "
                   "or a shared one (e.g. segmentation.smoothing_mm=6); repeatable")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help=DEVICE_HELP)
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

    p = sub.add_parser("score", help="score every axial slice of one volume, or of a cohort",
                       description="Scores every axial slice of one volume (--image) and writes NAME_scores.csv, "
                                   "NAME_diff.nii.gz, NAME_report.png and, when the model has a voxel threshold, "
                                   "NAME_anomalies.nii.gz and NAME_components.csv to --out-dir (all or none); with "
                                   "--images, the same for every volume plus cohort.csv (exit code 3: some "
                                   "volumes failed; their errors are in cohort.csv).")
    p.add_argument("--model", help=MODEL_HELP)
    one = p.add_mutually_exclusive_group(required=True)
    one.add_argument("--image", help="the volume: NIfTI, NRRD, MetaImage, Analyze or a DICOM folder")
    one.add_argument("--images", nargs="+",
                     help="a cohort: files, DICOM folders, folders of volumes, or .txt lists of paths")
    p.add_argument("--brain-mask", default="auto", metavar="auto|none|PATH", help=BRAIN_MASK_HELP)
    p.add_argument("--mask", help="with --image: the same as --brain-mask PATH")
    p.add_argument("--masks", nargs="+", help="brain masks, paired with --images (by name from folders)")
    p.add_argument("--out-dir", required=True, help="folder for the outputs (created if needed)")
    p.add_argument("--workers", type=int,
                   help="with --images: processes preparing volumes ahead of the scoring (default: 2; 0: none)")
    p.add_argument("--resume", action="store_true",
                   help="with --images: skip volumes whose outputs an earlier run completed")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help=DEVICE_HELP)
    p.add_argument("--batch-size", type=int, default=32, help="slices per batch (each reconstructed 4 times)")
    p.add_argument("--progress", choices=("none", "lines"), default="none",
                   help="'lines' prints 'progress <fraction>' to stderr, for programs that run this one")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("evaluate", help="slice-level AUROC and AUPRC on labelled volumes")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--images", nargs="+", required=True, help="labelled volumes to score")
    p.add_argument("--labels", nargs="+", required=True, help="label maps; a slice is abnormal if any voxel > 0")
    p.add_argument("--masks", nargs="+", help="foreground masks, paired with --images (by name from folders)")
    p.add_argument("--brain-mask", default="auto", choices=("auto", "none"),
                   help="without --masks: auto extracts the brain unless skull-stripped (default), none uses "
                        "the head")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help=DEVICE_HELP)
    p.add_argument("--batch-size", type=int, default=32, help="slices per batch (default: 32)")
    p.set_defaults(func=cmd_evaluate)

    add_model_commands(sub, DEVICE_HELP)

    p = sub.add_parser("demo", help="the shipped model on a real healthy T1 volume and on a copy with a synthetic "
                                    "lesion (--train: generate data, train 'tiny', score and evaluate)")
    p.add_argument("--out-dir", default="maeanomaly_demo",
                   help="folder for the data, model and outputs (default: maeanomaly_demo; only an earlier "
                        "demo's output is ever replaced)")
    p.add_argument("--train", action="store_true", help="train 'tiny' on a generated cohort instead")
    p.add_argument("--healthy", type=int, default=10, help="with --train: number of healthy training volumes")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help=DEVICE_HELP)
    p.add_argument("--quick", action="store_true", help="with --train: a few epochs only (a smoke test)")
    p.set_defaults(func=cmd_demo)
    return parser


DEVICE_HELP = "auto: CUDA when torch sees a GPU, else the CPU (default: auto)"
MODEL_HELP = "a shipped model's name (see 'maeanomaly models') or a model directory (default: brain-t1)"
BRAIN_MASK_HELP = ("the brain: a mask on the image's grid, 'auto' (default: the volume's own background when it "
                   "is skull-stripped, else deepbet's brain extraction, written as NAME_brainmask.nii.gz) or "
                   "'none' (the whole head, for models trained that way)")


def _sets_committed() -> int:
    """Sets of outputs committed so far (``files`` is imported only by commands that write)."""
    files = sys.modules.get(f"{__package__.rpartition('.')[0]}.core.files")
    return files.sets_committed() if files is not None else 0


def main(argv: Sequence[str] | None = None, raise_errors: bool = False) -> int:
    """Entry point; user errors become one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    committed = _sets_committed()
    try:
        with terminated_on_sigterm(args.command != "train"):  # train stops at a batch boundary itself
            return args.func(args)
    except Terminated:
        # A SIGTERM that arrives while a set is renamed waits for its end (files.signals_deferred).
        done = "nothing was written" if _sets_committed() == committed else "its outputs were written whole before it"
        print(f"maeanomaly: terminated (SIGTERM); {done}", file=sys.stderr)
        return 143
    except MAEAnomalyError as exc:
        if raise_errors:
            raise
        print(f"maeanomaly: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("maeanomaly: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        from ..core.files import is_write_failure, write_failure

        if raise_errors or not is_write_failure(exc):
            raise
        print(f"maeanomaly: error: {write_failure(exc.filename or 'output', exc)}", file=sys.stderr)
        return 2
