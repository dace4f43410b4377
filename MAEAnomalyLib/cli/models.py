"""``maeanomaly models`` (the shipped models) and ``maeanomaly calibrate`` (a model fitted to a site)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_models(args: argparse.Namespace) -> int:
    from ..core.shipped import DEFAULT_MODEL, models_dir, shipped_models

    found = shipped_models()
    if not found:
        print(f"no shipped models in {models_dir()}", file=sys.stderr)
        return 1
    width = max(len(m.name) for m in found)
    for m in found:
        mark = " (default)" if m.name == DEFAULT_MODEL else ""
        print(f"{m.name:<{width}}  {m.summary}{mark}\n{'':<{width}}  {m.path}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..core.runtime import resolve_device
    from ..core.shipped import resolve_model
    from ..data.inputs import expand_paths
    from ..training.site import calibrate_site

    model = resolve_model(args.model)
    images, masks, labels = expand_paths(args.images), expand_paths(args.masks), expand_paths(args.labels)
    kind = "volumes, their labelled slices left out" if labels else "healthy volumes"
    print(f"calibrating {model} on {len(images)} {kind}", file=sys.stderr, flush=True)
    record = calibrate_site(model, images, masks, args.brain_mask, Path(args.out), resolve_device(args.device),
                            args.target_fpr, args.set, labels)
    old = record["original_threshold"]
    print(f"threshold at a false-positive rate of {record['target_fpr']:g} on {record['slices']} healthy slices "
          f"of {record['volumes']} volumes (original threshold {old:.4f} kept in config.json); weights unchanged; "
          f"model written to {args.out}")
    return 0


def add_model_commands(sub: argparse._SubParsersAction, device_help: str) -> None:
    """Adds ``calibrate`` and ``models`` to the command line."""
    p = sub.add_parser("calibrate", help="fit a model's threshold to a site's healthy volumes, without retraining",
                       description="Writes a new model directory with the same weights (byte for byte), the "
                                   "position reference rebuilt and the threshold recomputed on healthy volumes "
                                   "from your own scanner and protocol.")
    p.add_argument("--model", help="a shipped model's name or a model directory (default: brain-t1)")
    p.add_argument("--images", nargs="+", required=True,
                   help="healthy volumes of the site: files, DICOM folders, folders of volumes, or .txt lists")
    p.add_argument("--masks", nargs="+", help="brain masks, paired with --images (by name from folders)")
    p.add_argument("--labels", nargs="+", help="label maps, paired with --images: slices with a labelled voxel "
                                               "are left out (patients' volumes, as training's --labels)")
    p.add_argument("--brain-mask", default="auto", choices=("auto", "none"),
                   help="without --masks: auto extracts the brain unless skull-stripped (default), none uses "
                        "the head")
    p.add_argument("--out", required=True, help="the new model directory (new or empty)")
    p.add_argument("--target-fpr", type=float, help="share of healthy slices flagged (default: the model's)")
    p.add_argument("--set", action="append", default=[], metavar="segmentation.FIELD=VALUE",
                   help="change a segmentation setting before the voxel threshold is recalibrated, e.g. "
                        "segmentation.spread_floor=0.05 (repeatable)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help=device_help)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("models", help="list the models that ship with MAEAnomaly")
    p.set_defaults(func=cmd_models)

