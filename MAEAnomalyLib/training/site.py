"""``maeanomaly calibrate``: a trained model made to fit a site's scanner and protocol, without
retraining. Its weights are copied byte for byte; the position reference is rebuilt and the threshold
recomputed on the site's own healthy volumes. The new model directory appears whole, by one rename of a
folder, or not at all."""

from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from ..calibration.slice_threshold import threshold_from_rows
from ..calibration.voxel_threshold import VoxelCalibration
from ..core.errors import MAEAnomalyError
from ..core.files import AtomicWriter, current_umask, refuse_inputs, signals_deferred, write_failure
from ..data.brain import prepare_volume
from ..data.inputs import sources as pair_sources
from ..engine.distributed import Dist
from ..methods import get
from ..methods.model import CONFIG_NAME, config_json, is_model_dir, load_model
from ..methods.model_config import apply_overrides, resolve_alias
from .calibrate import healthy_rows, refuse_repeated_volumes


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in paths:  # a DICOM folder: its files in name order
        with p.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def check_calibration_out(out: Path, model_dir: Path) -> None:
    """A new folder (or an empty one), never the source model's nor inside any model directory, where
    this process can write: checked before any volume is scored, so that no scoring is wasted."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MAEAnomalyError("--out must be a new or empty folder", out)
    if out.resolve() == model_dir.resolve():
        raise MAEAnomalyError("--out must not be the model being calibrated", out)
    parents = Path(os.path.abspath(out)).parents
    model = next((p for p in parents if is_model_dir(p)), None)
    if model is not None:
        raise MAEAnomalyError(f"--out is inside the model directory {model}; choose a folder outside any model", out)
    base = next(p for p in parents if p.exists())  # where the first folder will be made
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=base))
    except OSError as exc:
        raise write_failure(out, exc) from None


def write_model_folder(out: Path, files: dict[str, bytes]) -> None:
    """Writes ``files`` into a hidden folder beside ``out`` and renames it to ``out`` (absent or empty) in
    one step: SIGTERM, SIGKILL or a crash leaves the whole model or nothing, never weights without their
    config.json. SIGTERM and SIGINT wait for the end of the renames (``files.signals_deferred``)."""
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()][::-1]
    hidden: Path | None = None
    writer = AtomicWriter()
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            hidden = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
            os.chmod(hidden, 0o777 & ~current_umask())  # mkdtemp makes 0700
        except OSError as exc:
            raise write_failure(out, exc) from None
        for name, data in files.items():
            writer.write_bytes(data, hidden / name)
        with signals_deferred():
            writer.commit()  # inside the hidden folder: nothing is visible yet
            try:
                if os.name != "posix" and out.is_dir():
                    out.rmdir()  # a POSIX rename replaces an empty folder; Windows' does not
                os.rename(hidden, out)
            except OSError as exc:
                raise write_failure(out, exc) from None
    except BaseException:
        writer.discard()
        if hidden is not None:
            shutil.rmtree(hidden, ignore_errors=True)  # gone already when the rename was done
        for folder in reversed(made):
            with contextlib.suppress(OSError):  # not empty: the model is in it
                folder.rmdir()
        raise


def calibrate_site(model_dir: Path, images: Sequence[str], masks: Sequence[str] | None, brain_mask: str,
                   out: Path, device: torch.device, target_fpr: float | None = None,
                   settings: Sequence[str] = (), labels: Sequence[str] | None = None) -> dict:
    """Writes ``out``: the model's weights unchanged and a config whose position reference and threshold
    come from ``images`` (healthy volumes of one site, or patients' volumes whose ``labels`` mark the slices
    to leave out, as training's held-out volumes do), after ``settings`` (``segmentation.field=value``:
    how the voxel map is made and cut, which the voxel threshold depends on). Returns the calibration record."""
    check_calibration_out(out, model_dir)
    model = load_model(model_dir)
    method = get(model.config.method)
    allowed = {f"{method.name}.{name}" for name in method.map_settings}
    for item in settings:
        key = resolve_alias(method.name, item.partition("=")[0])
        if not (key.startswith("segmentation.") or key in allowed):
            raise MAEAnomalyError(f"--set {item}: calibrate changes segmentation settings only"
                                  + (f" (and {', '.join(sorted(allowed))})" if allowed else "")
                                  + "; the networks were trained with the others")
    apply_overrides(model.config, settings)  # before scoring: the difference map depends on them
    cfg = copy.deepcopy(model.config)
    fpr = cfg.calibration.target_fpr if target_fpr is None else target_fpr
    if not 0 < fpr < 1:
        raise MAEAnomalyError(f"--target-fpr {fpr}: give a rate between 0 and 1, e.g. 0.05")
    volumes = pair_sources(images, masks, labels)
    refuse_repeated_volumes(volumes)  # before any scoring

    def prepare_fn(image, preprocess, mask, label, min_pixels):
        chosen = mask if mask is not None else brain_mask
        return prepare_volume(image, preprocess, chosen, label, min_pixels, device)[0]

    voxels, dist = VoxelCalibration(cfg.segmentation), Dist(device=device)
    rows = healthy_rows(model, volumes, dist, None, prepare_fn, voxels)
    threshold, reference, summary = threshold_from_rows(rows, cfg.method, fpr, cfg.calibration.position_reference,
                                                        strict=True)
    voxel = voxels.thresholds(dist)
    earlier = cfg.site_calibration
    record = {
        "volumes": len(volumes), "slices": summary["validation_slices"], "target_fpr": fpr,
        "fpr_on_calibration_slices": summary["validation_fpr"],
        "files": [{"path": str(v[0]), "sha256": _sha256(Path(v[0]))} for v in volumes],
        "brain_mask": "given" if masks else brain_mask,
        "labelled_slices_left_out": bool(labels),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source_model": str(model_dir),
        # The threshold training set, kept through any number of re-calibrations.
        "original_threshold": earlier.get("original_threshold", cfg.threshold),
        "original_position_reference": earlier.get("original_position_reference", cfg.position_reference),
        "original_voxel_threshold": earlier.get("original_voxel_threshold", cfg.voxel_threshold),
        "voxel_thresholds": voxel["voxel_thresholds"], "voxel_calibration_voxels": voxel["voxel_calibration_voxels"],
        "settings": list(settings),
    }
    cfg.threshold, cfg.position_reference, cfg.site_calibration = threshold, reference, record
    cfg.voxel_threshold = voxel["voxel_thresholds"]["difference"]["on"]
    cfg.check()
    paths = [model_dir / f"{name}.safetensors" for name in model.networks]
    inputs = [*images, *(masks or []), *(labels or []), *paths]
    refuse_inputs([out / CONFIG_NAME, *(out / w.name for w in paths)], inputs, "--out")
    weights = {path.name: path.read_bytes() for path in paths}
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in weights.items()}
    if any(model.weights_sha256.get(name, digest) != digest for name, digest in digests.items()):
        raise MAEAnomalyError("its weights changed while calibrating; run calibrate again", model_dir)
    # The digests are recorded also when the source model has none (the shipped one).
    write_model_folder(out, {**weights, CONFIG_NAME: config_json(cfg, digests).encode()})
    return record
