"""Training: the MAE on healthy slices, then the classifier on (pseudo-abnormal) reconstruction
differences, then calibration of the decision threshold on held-out healthy volumes.

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
import ctypes
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from .checkpoint import load_state, save_state
from .config import ModelConfig
from .distributed import Dist, StopControl, session, shield_worker
from .errors import MAEAnomalyError
from .model_io import AnomalyModel, load_model, save_model
from .models import init_classifier_from_mae
from .models.classifier import anomaly_probability, classifier_loss
from .preprocessing import prepare
from .reconstruction import reconstruct
from .runtime import autocast
from .scoring import score_prepared
from .slice_cache import CacheEntry, SliceCache, SliceRows, preparation_pool, prepare_entry
from .train_data import (
    ChunkBatches,
    ClassifierSamples,
    EpochBatches,
    MAESamples,
    ReconStore,
    Step,
    batches_per_epoch,
    generator,
)

CHECKPOINT_DIR = "checkpoint"
RECONSTRUCTION_DIR = "reconstructions"
# Rough cost of a classifier epoch in MAE epochs (every patch, two inputs per slice); only used to
# split a time budget between the two stages.
CLASSIFIER_EPOCH_COST = 2.0
LogFn = Callable[[str], None]
Source = tuple[Path, Path | None, Path | None]


class TrainingInterrupted(MAEAnomalyError):
    """Training stopped on SIGTERM; a checkpoint (if any) allows ``--resume``."""


@dataclass
class RunOptions:
    """How to run training; none of these change the trained weights (except a time budget)."""

    cache_dir: Path | None = None  # default: <out>/slice_cache
    workers: int = 0  # DataLoader worker processes; 0 reads in the main process
    max_minutes: float | None = None  # stop both stages within this wall-clock budget
    compile: bool = False  # torch.compile the training step


def release_freed_memory() -> None:
    """Hands freed heap back to the OS. glibc keeps it otherwise, so per-volume work would ratchet up the
    trainer's footprint, and forked DataLoader workers would share (and copy) the garbage."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def split_volumes(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Holds out whole volumes (never single slices) for validation and calibration."""
    if n < 2:
        raise MAEAnomalyError("training needs at least 2 volumes: whole volumes are held out for calibration")
    n_val = min(n - 1, max(1, round(n * fraction)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then half-cosine decay to zero (as in MAE)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


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


@dataclass
class _Stage:
    name: str
    net: nn.Module
    epochs: int
    batch: int
    lr: float
    weight_decay: float
    data: Dataset
    step: Callable[[nn.Module, object, Step], tuple[torch.Tensor, torch.Tensor, int]]
    end_epoch: Callable[[float], str]


class Trainer:
    """Runs both stages with checkpoints in ``out_dir/checkpoint``."""

    def __init__(self, model: AnomalyModel, train: SliceRows, val: SliceRows, out_dir: Path, dist: Dist,
                 stop: StopControl, options: RunOptions, data_digest: str, log: LogFn = print,
                 show_progress: bool = True) -> None:
        self.model, self.train_rows, self.val_rows = model, train, val
        self.cfg = model.config
        self.device, self.out_dir, self.dist, self.stop = dist.device, out_dir, dist, stop
        self.options, self.data_digest, self.log, self.show_progress = options, data_digest, log, show_progress
        self.history: dict[str, list[float]] = {"mae_loss": [], "mae_val_loss": [], "classifier_loss": [],
                                                "classifier_val_loss": [], "classifier_val_accuracy": []}
        # Position: the stage, completed epochs, completed batches of the current epoch, and whether
        # the stage is over (a time budget can end it early).
        self.stage, self.epoch, self.batch, self.finished = "mae", 0, 0, False
        self.totals = [0.0, 0.0]  # loss sum and sample count of the current epoch, over all ranks
        self.seconds = 0.0
        self.cut: list[str] = []  # stages ended early by the time budget
        # The classifier epoch with the lowest validation loss so far, with its weights (on the CPU).
        self.best: dict | None = None
        # With ``train.classifier_ema``: the moving average of the classifier's weights, and its state
        # (live tensors while the stage runs; from the checkpoint after a resume).
        self.ema: ModelEmaV3 | None = None
        self.ema_state: dict | None = None

    # --- helpers ---------------------------------------------------------------------------------
    def _optimizer(self, net: nn.Module, lr: float, weight_decay: float, epochs: int, batch: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        def decays(name: str, p: torch.Tensor) -> bool:
            return p.ndim > 1 and "token" not in name and "pos_embed" not in name

        params = list(net.named_parameters())
        opt = torch.optim.AdamW([{"params": [p for n, p in params if decays(n, p)], "weight_decay": weight_decay},
                                 {"params": [p for n, p in params if not decays(n, p)], "weight_decay": 0.0}],
                                lr=lr, betas=(0.9, 0.95), fused=self.device.type == "cuda")
        steps = epochs * batches_per_epoch(len(self.train_rows), batch)
        warmup = max(1, int(steps * self.cfg.train.warmup_fraction))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, warmup))
        return opt, sched

    def _loader(self, data: Dataset, sampler: Sampler) -> DataLoader:
        workers = self.options.workers
        if workers:
            release_freed_memory()  # before the workers fork from this process
        return DataLoader(data, batch_sampler=sampler, num_workers=workers, pin_memory=self.device.type == "cuda",
                          worker_init_fn=shield_worker if workers else None, prefetch_factor=4 if workers else None)

    def _my_chunks(self, n: int) -> list[int]:
        """Validation chunks of this rank (round-robin: each is evaluated whole, by one rank)."""
        return list(range(self.dist.rank, math.ceil(n / self.cfg.train.batch_size), self.dist.world))

    def _share(self, loss: torch.Tensor, n: int, size: int) -> torch.Tensor:
        """This rank's part of the global-batch mean: DDP averages over ranks, whose shares may differ
        (or be empty: zero weight)."""
        factor = n * self.dist.world / size
        return loss if factor == 1 else loss * factor

    # --- checkpoints -----------------------------------------------------------------------------
    def _save(self, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR) -> None:
        if not self.dist.is_main:
            return
        state = {"stage": self.stage, "epoch": self.epoch, "batch": self.batch, "finished": self.finished,
                 "totals": self.totals, "config": _comparable(self.cfg), "data": self.data_digest,
                 "mae": self.model.mae.state_dict(), "classifier": self.model.classifier.state_dict(),
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": self.history,
                 "seconds": self.seconds, "cut": self.cut, "world_size": self.dist.world, "best": self.best,
                 "classifier_ema": self.ema_state}
        save_state(state, self.out_dir / CHECKPOINT_DIR)

    def _load(self) -> dict | None:
        path = self.out_dir / CHECKPOINT_DIR
        if not (path / "state.json").exists():
            return None
        state = load_state(path)
        if state["config"] != _comparable(self.cfg):
            raise MAEAnomalyError("checkpoint was made with other settings; start afresh without --resume", path)
        if state.get("data") != self.data_digest:
            raise MAEAnomalyError("checkpoint was made with other training volumes; start afresh without --resume",
                                  path)
        self.model.mae.load_state_dict(state["mae"])
        self.model.classifier.load_state_dict(state["classifier"])
        self.history, self.seconds, self.cut = state["history"], state["seconds"], state["cut"]
        self.stage, self.epoch, self.batch = state["stage"], state["epoch"], state["batch"]
        self.finished, self.totals = state["finished"], list(state["totals"])
        self.best = state.get("best")
        self.ema_state = state.get("classifier_ema")
        if not self.dist.is_main:
            self.totals = [0.0, 0.0]  # rank 0 carries the partial epoch's sums
        return state

    # --- stages ----------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> None:
        state = self._load() if resume else None
        if resume and state is None:
            self.log("no checkpoint to resume from; starting afresh")
        tc = self.cfg.train
        if self.stage == "mae":
            stage = _Stage("mae", self.model.mae, tc.mae_epochs, tc.batch_size, tc.mae_lr, tc.mae_weight_decay,
                           MAESamples(self.train_rows, tc.seed, "mae", tc.hflip), self._mae_step, self._mae_epoch_end)
            share = (tc.mae_epochs - self.epoch) / max(1e-9, tc.mae_epochs - self.epoch
                                                       + CLASSIFIER_EPOCH_COST * tc.classifier_epochs)
            remaining = self.stop.remaining()
            self._stage(stage, state, None if remaining is None else time.monotonic() + share * remaining)
            self.begin_classifier_stage()
            state = None
        if self.finished or self.epoch >= tc.classifier_epochs:
            self._select_classifier()
            return
        # Variant 0 keeps the name (and so the masks) of a single reconstruction.
        train_recons = [self._reconstruct("train" if k == 0 else f"train{k}", self.train_rows)
                        for k in range(tc.reconstruction_variants)]
        pseudo, clf = self.cfg.pseudo_abnormal, self.cfg.classifier
        self.val_data = ClassifierSamples(self.val_rows, [self._reconstruct("val", self.val_rows)], pseudo, clf,
                                          tc.seed, "classifier-val", hflip=False)
        max_shift = round(tc.classifier_shift * self.cfg.preprocess.image_size)
        data = ClassifierSamples(self.train_rows, train_recons, pseudo, clf, tc.seed, "classifier", tc.hflip, max_shift)
        stage = _Stage("classifier", self.model.classifier, tc.classifier_epochs, tc.classifier_batch_size,
                       tc.classifier_lr, tc.classifier_weight_decay, data, self._classifier_step,
                       self._classifier_epoch_end)
        self._stage(stage, state, self.stop.deadline)
        self._select_classifier()

    def begin_classifier_stage(self) -> None:
        """Moves on from the MAE (trained here, or taken from another model) to the classifier."""
        self.stage, self.epoch, self.batch, self.finished = "classifier", 0, 0, False
        self.totals = [0.0, 0.0]
        if self.cfg.classifier.init_from_mae:
            init_classifier_from_mae(self.model.classifier, self.model.mae)

    def _select_classifier(self) -> None:
        """Keeps the best epoch's weights (``classifier_selection == "best_validation"``) or else the
        moving average, when one is kept; the weights of the last step otherwise."""
        average = " (moving average)" if self.ema_state is not None else ""
        if self.cfg.train.classifier_selection == "best_validation" and self.best is not None:
            self.model.classifier.load_state_dict(self.best["weights"])
            self.log(f"keeping the classifier{average} of epoch {self.best['epoch']} (lowest validation loss, "
                     f"{self.best['loss']:.4f})")
        elif self.ema_state is not None:
            self.model.classifier.load_state_dict(self.ema_state)
            self.log("keeping the moving average of the classifier's weights")

    def _validated_classifier(self) -> nn.Module:
        """What validation judges and selection keeps: the moving average when one is kept."""
        return self.ema.module if self.ema is not None else self.model.classifier

    def _stage(self, spec: _Stage, state: dict | None, deadline: float | None) -> None:
        """Trains one stage from the current position to its last epoch, a stop request or the deadline."""
        if self.finished or self.epoch >= spec.epochs:
            return
        tc = self.cfg.train
        net = spec.net.to(self.device)
        opt, sched = self._optimizer(net, spec.lr, spec.weight_decay, spec.epochs, spec.batch)
        if state is not None:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        if spec.name == "classifier" and tc.classifier_ema > 0:
            # Every rank makes the same updates, so the averages agree without communication.
            self.ema = ModelEmaV3(net, decay=tc.classifier_ema)
            if self.ema_state is not None:
                self.ema.module.load_state_dict(self.ema_state)
            self.ema_state = self.ema.module.state_dict()
        module = self.dist.wrap(net)
        if self.options.compile:
            module = torch.compile(module)
        sampler = EpochBatches(len(self.train_rows), spec.batch, tc.seed, spec.name, spec.epochs,
                               (self.epoch, self.batch), self.dist.rows)
        local = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, count since the last fold
        mark = time.perf_counter()
        bar = tqdm(total=len(sampler), desc=f"{spec.name} training", unit="batch", leave=False,
                   disable=None if self.show_progress else True)
        net.train()
        for (step, _), batch in zip(sampler.steps(), self._loader(spec.data, sampler), strict=True):
            objective, loss, count = spec.step(module, batch, step)
            opt.zero_grad(set_to_none=True)
            objective.backward()
            opt.step()
            sched.step()
            if self.ema is not None:  # the first update copies the weights (timm: decay 0 at step 1)
                self.ema.update(net, step=step.epoch * sampler.per_epoch + step.batch + 1)
            local[0] += loss.detach().double() * count
            local[1] += count
            self.batch = step.batch + 1
            bar.update()
            epoch_done = self.batch == sampler.per_epoch
            if epoch_done:
                self._fold(local)
                self.epoch, self.batch = self.epoch + 1, 0
                mean, self.totals = self.totals[0] / max(1.0, self.totals[1]), [0.0, 0.0]
                message = spec.end_epoch(mean)
                self.seconds, mark = self.seconds + time.perf_counter() - mark, time.perf_counter()
                self._save(opt, sched)
                self.log(message)
                net.train()
            # The budget only counts once the stage has one full epoch, so that the model is usable.
            reason = self.stop.poll(deadline if self.epoch >= 1 else None)
            if reason == StopControl.NONE:
                continue
            bar.close()
            if not epoch_done:
                self._fold(local)
            self.seconds += time.perf_counter() - mark
            if reason == StopControl.SIGNAL:
                self._save(opt, sched)
                self.dist.barrier()  # rank 0's checkpoint is complete before any rank exits
                raise TrainingInterrupted(
                    f"stopped by SIGTERM in {spec.name} epoch {self.epoch + 1}/{spec.epochs} after batch "
                    f"{self.batch} of {sampler.per_epoch}; checkpoint in {self.out_dir / CHECKPOINT_DIR}; "
                    "continue with --resume")
            self.finished = True
            self.cut.append(spec.name)
            self._save(opt, sched)
            self.log(f"time budget: {spec.name} stage ends after {self.epoch} epochs and {self.batch} batches "
                     f"of {spec.epochs} epochs")
            return
        bar.close()

    def _fold(self, local: torch.Tensor) -> None:
        """Adds every rank's running sums to the epoch totals."""
        summed = self.dist.sum(local.tolist())
        self.totals = [self.totals[0] + summed[0], self.totals[1] + summed[1]]
        local.zero_()

    # --- MAE stage -------------------------------------------------------------------------------
    def _mae_step(self, module: nn.Module, images: torch.Tensor, step: Step
                  ) -> tuple[torch.Tensor, torch.Tensor, int]:
        gen = generator(self.cfg.train.seed, "mae-mask", step.epoch, step.batch)
        if step.a:
            # Skip the masking noise of the ranks before this one: CPU generators draw element by
            # element, so rank r then draws exactly its rows of the single-process noise.
            torch.rand(step.a, self.model.mae.num_patches, generator=gen)
        with autocast(self.device):
            loss, _, _ = module(images.to(self.device, non_blocking=True), gen)
        n = step.b - step.a
        return self._share(loss, n, step.size), loss, n

    def _mae_epoch_end(self, mean_loss: float) -> str:
        val_loss = self._mae_validation()
        self.history["mae_loss"].append(mean_loss)
        self.history["mae_val_loss"].append(val_loss)
        return (f"MAE epoch {self.epoch}/{self.cfg.train.mae_epochs}: loss {mean_loss:.5f}, "
                f"validation loss {val_loss:.5f}")

    @torch.no_grad()
    def _mae_validation(self) -> float:
        tc = self.cfg.train
        mae = self.model.mae.eval()
        chunks = self._my_chunks(len(self.val_rows))
        data = MAESamples(self.val_rows, tc.seed, "mae-val", hflip=False)
        total = 0.0
        for c, images in zip(chunks, self._loader(data, ChunkBatches(len(self.val_rows), tc.batch_size, chunks)),
                             strict=True):
            with autocast(self.device):
                loss, _, _ = mae(images.to(self.device), generator(tc.seed, "mae-val-mask", c))
            total += loss.item() * len(images)
        return self.dist.sum([total])[0] / max(1, len(self.val_rows))

    @torch.no_grad()
    def _reconstruct(self, name: str, rows: SliceRows) -> ReconStore:
        """Reconstructs every slice once into ``out/reconstructions`` (each rank its share)."""
        tc = self.cfg.train
        directory = self.out_dir / RECONSTRUCTION_DIR
        store = ReconStore(directory, name, len(rows), tc.batch_size, self.dist.world)
        mae = self.model.mae.to(self.device).eval()
        chunks = store.chunks(self.dist.rank)
        batches = iter(self._loader(MAESamples(rows, tc.seed, name, hflip=False),
                                    ChunkBatches(len(rows), tc.batch_size, chunks)))
        size = self.cfg.preprocess.image_size

        def parts():
            # Equal rounds on every rank, so that the stop polls (collectives) pair up.
            for j in range(math.ceil(store.n_chunks / self.dist.world)):
                if j < len(chunks):
                    images = next(batches).to(self.device)
                    with autocast(self.device):
                        recon = reconstruct(mae, images, tc.reconstruction_passes,
                                            generator(tc.seed, "recon", name, chunks[j]))
                    yield recon.float().cpu().numpy()
                if self.stop.poll() == StopControl.SIGNAL:
                    raise TrainingInterrupted("stopped by SIGTERM while reconstructing slices for the classifier; "
                                              "continue with --resume")

        store.write(self.dist.rank, parts(), (1, size, size))
        self.dist.barrier()
        return store

    # --- classifier stage ------------------------------------------------------------------------
    def _classifier_inputs(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        negatives, positives = batch
        n = len(negatives)
        inputs = torch.cat([negatives, positives]).to(self.device, non_blocking=True)
        return inputs, torch.cat([torch.zeros(n), torch.ones(n)]).to(self.device)

    def _classifier_step(self, module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], step: Step
                         ) -> tuple[torch.Tensor, torch.Tensor, int]:
        inputs, targets = self._classifier_inputs(batch)
        with autocast(self.device):
            loss = classifier_loss(module(inputs), targets, self.cfg.classifier)
        n = step.b - step.a
        return self._share(loss, n, step.size), loss, 2 * n

    def _classifier_epoch_end(self, mean_loss: float) -> str:
        val_loss, val_acc = self._classifier_validation()
        self.history["classifier_loss"].append(mean_loss)
        self.history["classifier_val_loss"].append(val_loss)
        self.history["classifier_val_accuracy"].append(val_acc)
        if self.cfg.train.classifier_selection == "best_validation" and (
                self.best is None or val_loss < self.best["loss"]):
            weights = {k: v.detach().cpu().clone() for k, v in self._validated_classifier().state_dict().items()}
            self.best = {"epoch": self.epoch, "loss": val_loss, "weights": weights}
        return (f"classifier epoch {self.epoch}/{self.cfg.train.classifier_epochs}: loss {mean_loss:.4f}, "
                f"validation loss {val_loss:.4f}, validation accuracy {val_acc:.3f} (pseudo-abnormal)")

    @torch.no_grad()
    def _classifier_validation(self) -> tuple[float, float]:
        """Loss and accuracy on held-out healthy volumes against their pseudo-abnormal versions."""
        clf = self._validated_classifier().eval()
        chunks = self._my_chunks(len(self.val_rows))
        total, correct = 0.0, 0.0
        batches = self._loader(self.val_data, ChunkBatches(len(self.val_rows), self.cfg.train.batch_size, chunks))
        for batch in batches:
            inputs, targets = self._classifier_inputs(batch)
            with autocast(self.device):
                logits = clf(inputs)
            total += classifier_loss(logits, targets, self.cfg.classifier).item() * len(inputs)
            correct += float(((anomaly_probability(logits) >= 0.5).float() == targets).sum())
        total, correct = self.dist.sum([total, correct])
        count = max(1, 2 * len(self.val_rows))
        return total / count, correct / count


def _comparable(cfg: ModelConfig) -> dict:
    """The settings a checkpoint must share with a resumed run."""
    data = cfg.to_dict()
    for key in ("threshold", "versions", "training_summary"):
        data.pop(key)
    return data


def calibrate(model: AnomalyModel, sources: Sequence[Source], dist: Dist, stop: StopControl, target_fpr: float
              ) -> tuple[float, dict]:
    """Threshold at ``target_fpr`` false positives on held-out healthy slices (with foreground).

    The held-out volumes are prepared and scored one at a time, exactly as ``maeanomaly score`` does,
    and shared among the ranks.
    """
    cfg = model.config
    model.to(dist.device).eval()
    local = []
    for start in range(0, len(sources), dist.world):
        if start + dist.rank < len(sources):
            image, mask, labels = sources[start + dist.rank]
            volume = prepare(image, cfg.preprocess, mask, labels, min_pixels=cfg.mae.patch_size)
            result = score_prepared(model, volume, dist.device)
            usable = result.table["skipped"] == 0
            if volume.labelled is not None:
                usable &= ~volume.labelled
            local.append(result.table["score"][usable])
            del volume, result
            release_freed_memory()
        if stop.poll() == StopControl.SIGNAL:
            raise TrainingInterrupted("stopped by SIGTERM during calibration (training itself is complete); "
                                      "--resume calibrates again")
    values = np.concatenate(dist.gather(np.concatenate(local) if local else np.zeros(0)))
    if values.size == 0:
        raise MAEAnomalyError("the held-out volumes have no usable slices for calibration")
    threshold = float(np.quantile(values, 1 - target_fpr, method="higher"))
    summary = {"validation_slices": int(values.size), "target_fpr": target_fpr,
               "validation_fpr": float((values >= threshold).mean())}
    return threshold, summary


def _quiet(_: str) -> None:
    pass


def mae_of(model_dir: Path, cfg: ModelConfig) -> AnomalyModel:
    """A trained model whose MAE can serve ``cfg``: same preprocessing and MAE settings."""
    source = load_model(model_dir)
    if source.config.preprocess != cfg.preprocess or source.config.mae != cfg.mae:
        raise MAEAnomalyError("its preprocessing or MAE settings differ from this run's (use the same preset and "
                              "MAE settings)", model_dir)
    return source


def train(images: Sequence[Path], out_dir: Path, cfg: ModelConfig, device: torch.device,
          masks: Sequence[Path] | None = None, labels: Sequence[Path] | None = None, resume: bool = False,
          log: LogFn = print, show_progress: bool = True, options: RunOptions | None = None,
          mae_from: Path | None = None) -> AnomalyModel:
    """Trains and calibrates a model from volumes and writes it to ``out_dir`` (rank 0 under torchrun).

    With ``mae_from`` (a trained model's directory) the MAE is taken from it and only the classifier is
    trained: for trying classifier settings without training the MAE again.
    """
    options = options or RunOptions()
    out_dir = Path(out_dir)
    source = None if mae_from is None else mae_of(Path(mae_from), cfg)
    for name, paths in (("--masks", masks), ("--labels", labels)):
        if paths is not None and len(paths) != len(images):
            raise MAEAnomalyError(f"{name} gives {len(paths)} files for {len(images)} images; they pair in order")
    sources = [(Path(p), Path(masks[i]) if masks else None, Path(labels[i]) if labels else None)
               for i, p in enumerate(images)]
    fresh = not out_dir.exists()
    with session(device) as dist, StopControl(dist, options.max_minutes) as stop:
        if not dist.is_main:
            log, show_progress = _quiet, False
        torch.manual_seed(cfg.train.seed)
        train_ids, val_ids = split_volumes(len(sources), cfg.train.validation_fraction, cfg.train.seed)
        cache = SliceCache(options.cache_dir or out_dir / "slice_cache", cfg.preprocess, cfg.mae.patch_size)
        try:
            keys, entries = cache_cohort(sources, cache, dist, stop, options.workers, show_progress)
        except TrainingInterrupted:
            raise
        except MAEAnomalyError:
            # A bad input leaves no output folder behind (a --cache-dir keeps what was prepared).
            if fresh and options.cache_dir is None and dist.is_main:
                shutil.rmtree(out_dir, ignore_errors=True)
            raise
        min_fg = cfg.preprocess.min_train_foreground
        train_rows = SliceRows([entries[i] for i in train_ids], min_fg)
        val_rows = SliceRows([entries[i] for i in val_ids], min_fg)
        if len(train_rows) == 0 or len(val_rows) == 0:
            raise MAEAnomalyError("no healthy slices with enough foreground to train on (check masks and labels)")
        digest = hashlib.sha256(json.dumps([keys, train_ids, val_ids]).encode()).hexdigest()
        log(f"training on {len(train_rows)} slices from {len(train_ids)} volumes; {len(val_rows)} slices from "
            f"{len(val_ids)} held-out volumes for validation and calibration"
            + (f"; {dist.world} processes" if dist.world > 1 else ""))
        model = AnomalyModel.from_config(cfg)
        trainer = Trainer(model, train_rows, val_rows, out_dir, dist, stop, options, digest, log, show_progress)
        if source is not None:
            model.mae.load_state_dict(source.mae.state_dict())
            trainer.begin_classifier_stage()
        trainer.run(resume)
        threshold, calibration = calibrate(model, [sources[i] for i in val_ids], dist, stop, cfg.train.target_fpr)
        cfg.threshold = threshold
        cfg.training_summary = {
            "train_volumes": [str(images[i]) for i in train_ids],
            "validation_volumes": [str(images[i]) for i in val_ids],
            "train_slices": len(train_rows), "device": dist.device.type, "processes": dist.world,
            "train_seconds": round(trainer.seconds, 1), "stopped_by_time_budget": trainer.cut,
            "mae_from": None if mae_from is None else str(mae_from),
            "classifier_epoch_kept": trainer.best["epoch"] if trainer.best else len(trainer.history["classifier_loss"]),
            **calibration, "history": trainer.history,
        }
        if dist.is_main:
            save_model(model, out_dir)
            shutil.rmtree(out_dir / RECONSTRUCTION_DIR, ignore_errors=True)
        dist.barrier()
    log(f"threshold {threshold:.4f} (false-positive rate {calibration['validation_fpr']:.3f} on "
        f"{calibration['validation_slices']} held-out healthy slices); model written to {out_dir}")
    return model
