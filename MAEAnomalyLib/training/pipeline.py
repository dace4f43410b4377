"""Training from volume files to a model directory: the slice cache, the split into training and
held-out volumes, both stages (``stages``), calibration, and the model written once at the end.

Volumes are preprocessed once into an on-disk slice cache and read by DataLoader workers, so cohorts
larger than memory train. Under ``torchrun`` every rank takes its share of each global batch and
DistributedDataParallel averages the gradients; rank 0 logs and writes checkpoints and the model.
Checkpoints are written after every epoch and when SIGTERM arrives (after the current batch);
``resume=True`` continues from the exact batch with the same optimizer and schedule, and since every
random draw is derived from (seed, epoch, position), an interrupted run ends with the same weights
as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..calibration.slice_threshold import threshold_from_rows
from ..calibration.voxel_threshold import VoxelCalibration
from ..core.errors import MAEAnomalyError
from ..data.inputs import Source
from ..data.inputs import sources as pair_sources
from ..data.slice_cache import CacheEntry, SliceCache, SliceRows, preparation_pool, prepare_entry
from ..engine.checkpoint import load_checkpoint, save_checkpoint
from ..engine.distributed import Dist, StopControl, session
from ..engine.loop import LogFn, Optimisation, Progress, Run, RunOptions, TrainingInterrupted
from ..methods import get
from ..methods.base import TrainingData
from ..methods.model import AnomalyModel, load_model, save_model
from ..methods.model_config import ModelConfig
from .calibrate import healthy_rows, refuse_repeated_volumes
from .standardise import learn_from_sources

CHECKPOINT_DIR = "checkpoint"
WORK_DIR = "work"  # what a method's stages write on the way (removed once the model is saved)


def comparable(cfg: ModelConfig) -> dict:
    """The settings a checkpoint must share with a resumed run."""
    data = cfg.to_dict()
    for key in ("threshold", "versions", "training_summary"):
        data.pop(key)
    return data


def check_out_dir(out: Path, resume: bool) -> None:
    """Never replaces a finished model or silently restarts an unfinished run."""
    if out.is_file():
        raise MAEAnomalyError("--out must be a directory, but a file is there", out)
    if (out / "config.json").exists():
        # With --resume too: a finished model whose checkpoint is gone would be trained afresh over it.
        raise MAEAnomalyError("already holds a finished model; choose another --out or remove it", out)
    if resume:
        return
    if (out / "checkpoint").exists():
        raise MAEAnomalyError("holds an unfinished run; pass --resume to continue it, or choose another --out", out)


def split_volumes(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Holds out whole volumes (never single slices) for validation and calibration."""
    if n < 2:
        raise MAEAnomalyError("training needs at least 2 volumes: whole volumes are held out for calibration")
    n_val = min(n - 1, max(1, round(n * fraction)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


def cache_cohort(sources: Sequence[Source], cache: SliceCache, dist: Dist, stop: StopControl, workers: int,
                 show_progress: bool) -> tuple[list[str], list[CacheEntry]]:
    """Cache keys and entries of every volume. The ranks share the volumes in lock-step rounds (a stop
    request is agreed after each), and each rank prepares its share of a round in ``workers`` processes."""
    share = max(1, workers)
    per_round = share * dist.world
    digests = np.zeros((len(sources), 32), dtype=np.uint8)
    with preparation_pool(workers) as pool, tqdm(total=len(sources), desc="preparing volumes", unit="vol",
                                                 disable=not show_progress) as bar:
        for start in range(0, len(sources), per_round):
            first = start + dist.rank * share
            jobs = [(cache, source) for source in sources[first:first + share]]
            keys = pool.map(prepare_entry, jobs) if pool is not None else [prepare_entry(job) for job in jobs]
            for j, key in enumerate(keys):
                digests[first + j] = np.frombuffer(bytes.fromhex(key), dtype=np.uint8)
            bar.update(min(per_round, len(sources) - start))
            if stop.poll() == stop.SIGNAL:
                raise TrainingInterrupted("stopped by SIGTERM while preparing volumes; those prepared are cached "
                                          f"in {cache.root}; run the same command again")
    gathered = [part.reshape(-1, 32) for part in dist.gather(digests)]
    keys = [gathered[(i // share) % dist.world][i].tobytes().hex() for i in range(len(sources))]
    # A cache on node-local disk lacks the other nodes' entries: prepare those here.
    return keys, [cache.ensure(k, *s) for k, s in zip(keys, sources, strict=True)]


def start_model(model_dir: Path, cfg: ModelConfig) -> AnomalyModel:
    """A trained model to start from (``--mae-from``), when the method can (checked by ``start_from``)."""
    if get(cfg.method).start_from is None:
        raise MAEAnomalyError(f"--mae-from: method {cfg.method} trains nothing it could take from another model")
    return load_model(model_dir)


@contextlib.contextmanager
def _removed_on_error(out_dir: Path, owned: bool) -> Iterator[None]:
    """A bad input or a failed write ends a fresh run with no output folder, nor the slice cache made in
    it (a --cache-dir elsewhere keeps what was prepared, for the next run)."""
    try:
        yield
    except TrainingInterrupted:
        raise
    except (MAEAnomalyError, OSError):  # OSError: a full disk or a file-size limit while caching
        if owned:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _quiet(_: str) -> None:
    pass


def train(images: Sequence[Path], out_dir: Path, cfg: ModelConfig, device: torch.device,
          masks: Sequence[Path] | None = None, labels: Sequence[Path] | None = None, resume: bool = False,
          log: LogFn = print, show_progress: bool = True, options: RunOptions | None = None,
          mae_from: Path | None = None) -> AnomalyModel:
    """Trains and calibrates a model from volumes and writes it to ``out_dir`` (rank 0 under torchrun).

    With ``mae_from`` (a trained model's directory) the method starts from that model's networks (the
    paper's method: its MAE; only the classifier is trained), for trying later stages' settings.
    """
    options = options or RunOptions()
    out_dir = Path(out_dir)
    source = None if mae_from is None else start_model(Path(mae_from), cfg)
    volumes = pair_sources(images, masks, labels)
    refuse_repeated_volumes(volumes)  # a copy held out would set the threshold on training data
    fresh = not out_dir.exists()
    with session(device) as dist, StopControl(dist, options.max_minutes) as stop:
        if not dist.is_main:
            log, show_progress = _quiet, False
        torch.manual_seed(cfg.train.seed)
        train_ids, val_ids = split_volumes(len(volumes), cfg.train.validation_fraction, cfg.train.seed)
        if cfg.preprocess.normalisation == "histogram" and not cfg.preprocess.landmarks:  # never the held-out ones
            cfg.preprocess.landmarks = learn_from_sources([volumes[i] for i in train_ids])
        method = get(cfg.method)
        cache = SliceCache(options.cache_dir or out_dir / "slice_cache", cfg.preprocess, method.min_pixels(cfg))
        with _removed_on_error(out_dir, fresh and dist.is_main):
            keys, entries = cache_cohort(volumes, cache, dist, stop, options.workers, show_progress)
            min_fg = cfg.preprocess.min_train_foreground
            train_rows = SliceRows([entries[i] for i in train_ids], min_fg)
            val_rows = SliceRows([entries[i] for i in val_ids], min_fg)
            if len(train_rows) == 0 or len(val_rows) == 0:
                raise MAEAnomalyError("no healthy slices with enough foreground to train on (check masks and labels)")
            digest = hashlib.sha256(json.dumps([keys, train_ids, val_ids]).encode()).hexdigest()
            model = AnomalyModel.from_config(cfg)
            # Inside: a model to start from that does not fit (--mae-from) leaves no output folder either.
            progress, resumed = _start(model, source, mae_from, out_dir, digest, dist, resume, log)
        log(f"training on {len(train_rows)} slices from {len(train_ids)} volumes; {len(val_rows)} slices from "
            f"{len(val_ids)} held-out volumes for validation and calibration"
            + (f"; {dist.world} processes" if dist.world > 1 else ""))
        run = _run(model, out_dir, digest, dist, stop, options, len(train_rows), log, show_progress)
        method.train(model, TrainingData(train_rows, val_rows, out_dir / WORK_DIR), run, progress, resumed)
        voxels = VoxelCalibration(cfg.segmentation)
        rows = healthy_rows(model, [volumes[i] for i in val_ids], dist, stop, voxels=voxels)
        threshold, cfg.position_reference, calibration = threshold_from_rows(
            rows, cfg.method, cfg.calibration.target_fpr, cfg.calibration.position_reference, strict=False)
        calibration.update(voxels.thresholds(dist))
        cfg.threshold = threshold
        cfg.voxel_threshold = calibration["voxel_thresholds"]["difference"]["on"]
        cfg.training_summary = {
            "train_volumes": [str(images[i]) for i in train_ids],
            "validation_volumes": [str(images[i]) for i in val_ids],
            "train_slices": len(train_rows), "device": dist.device.type, "processes": dist.world,
            "train_seconds": round(progress.seconds, 1), "stopped_by_time_budget": progress.cut,
            "mae_from": None if mae_from is None else str(mae_from),
            **method.summary_of_training(cfg, progress), **calibration, "history": progress.history,
        }
        if dist.is_main:
            save_model(model, out_dir)
            shutil.rmtree(out_dir / WORK_DIR, ignore_errors=True)
        dist.barrier()
    log(f"threshold {threshold:.4f} (false-positive rate {calibration['validation_fpr']:.3f} on "
        f"{calibration['validation_slices']} held-out healthy slices); model written to {out_dir}")
    return model


def _start(model: AnomalyModel, mae_source: AnomalyModel | None, mae_source_dir: Path | None, out_dir: Path,
           digest: str, dist: Dist, resume: bool, log: LogFn) -> tuple[Progress, dict | None]:
    """Where training starts: a fresh run (the classifier stage when the MAE comes from another
    model), or the checkpoint's position with ``resume``."""
    progress = Progress()
    if mae_source is not None:
        try:
            get(model.config.method).start_from(model, mae_source, progress)
        except MAEAnomalyError as exc:
            raise MAEAnomalyError(exc.problem, mae_source_dir) from None
    if not resume:
        return progress, None
    loaded = load_checkpoint(out_dir / CHECKPOINT_DIR, model.networks, comparable(model.config), digest,
                             dist.is_main)
    if loaded is None:
        log("no checkpoint to resume from; starting afresh")
        return progress, None
    return loaded


def _run(model: AnomalyModel, out_dir: Path, digest: str, dist: Dist, stop: StopControl, options: RunOptions,
         n_train: int, log: LogFn, show_progress: bool) -> Run:
    tc = model.config.train
    directory = out_dir / CHECKPOINT_DIR

    def save(progress: Progress, optimisations: list[Optimisation]) -> None:
        if dist.is_main:
            save_checkpoint(directory, progress, model.networks, comparable(model.config), digest, optimisations,
                            dist.world)

    return Run(dist, stop, options, n_train, tc.warmup_fraction, tc.seed, save, directory, log, show_progress)
