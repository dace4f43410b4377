"""The two stages of the method, each a ``Stage`` for ``loop.train_stage``: the MAE on healthy slices,
then the classifier on the differences of their reconstructions (label 0) and of pseudo-abnormal
reconstructions (label 1). ``run_stages`` runs both from wherever ``Progress`` stands."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import nn

from ...core.runtime import autocast
from ...core.runtime import seeded_generator as generator
from ...data.slice_cache import SliceRows
from ...engine.best import remember_if_best, restore_best
from ...engine.loop import (
    Optimisation,
    Progress,
    Run,
    Stage,
    TrainingInterrupted,
    adamw_warmup_cosine,
    descend,
    make_loader,
    rank_share,
    train_stage,
)
from ...engine.samples import ChunkBatches, Step
from ..base import TrainingData
from ..model import AnomalyModel
from .classifier import anomaly_probability, classifier_loss
from .networks import init_classifier_from_mae
from .reconstruction import reconstruct
from .samples import ClassifierSamples, MAESamples, ReconStore

RECONSTRUCTION_DIR = "reconstructions"
# Rough cost of a classifier epoch in MAE epochs (every patch, two inputs per slice); only used to
# split a time budget between the two stages.
CLASSIFIER_EPOCH_COST = 2.0


def _chunks_of_rank(run: Run, n: int, batch: int) -> list[int]:
    """Validation chunks of this rank (round-robin: each is evaluated whole, by one rank)."""
    return list(range(run.dist.rank, math.ceil(n / batch), run.dist.world))


class MAEStage:
    """Stage 1: the masked autoencoder, MSE on the masked patches of healthy slices."""

    def __init__(self, model: AnomalyModel, train: SliceRows, val: SliceRows, run: Run, progress: Progress) -> None:
        self.model, self.train, self.val, self.run, self.progress = model, train, val, run, progress
        self.tc, self.s = model.config.train, model.config.settings

    def stage(self) -> Stage:
        tc, s = self.tc, self.s
        data = MAESamples(self.train, tc.seed, "mae", tc.hflip)
        return Stage("mae", self.model.mae, s.mae_epochs, tc.batch_size, data,
                     lambda net, steps: adamw_warmup_cosine(net, s.mae_lr, s.mae_weight_decay, steps,
                                                            tc.warmup_fraction, self.run.device),
                     self.step, self.end_epoch)

    def step(self, module: nn.Module, images: torch.Tensor, step: Step, opts: list[Optimisation]
             ) -> tuple[torch.Tensor, int]:
        gen = generator(self.tc.seed, "mae-mask", step.epoch, step.batch)
        if step.a:
            # Skip the masking noise of the ranks before this one: CPU generators draw element by
            # element, so rank r then draws exactly its rows of the single-process noise.
            torch.rand(step.a, self.model.mae.num_patches, generator=gen)
        with autocast(self.run.device):
            loss, _, _ = module(images.to(self.run.device, non_blocking=True), gen)
        n = step.b - step.a
        descend(rank_share(loss, n, step.size, self.run.dist.world), opts[0])
        return loss, n

    def end_epoch(self, mean_loss: float) -> str:
        val_loss = self.validation()
        self.progress.history.setdefault("mae_loss", []).append(mean_loss)
        self.progress.history.setdefault("mae_val_loss", []).append(val_loss)
        return (f"MAE epoch {self.progress.epoch}/{self.s.mae_epochs}: loss {mean_loss:.5f}, "
                f"validation loss {val_loss:.5f}")

    @torch.no_grad()
    def validation(self) -> float:
        tc, run = self.tc, self.run
        mae = self.model.mae.eval()
        chunks = _chunks_of_rank(run, len(self.val), tc.batch_size)
        data = MAESamples(self.val, tc.seed, "mae-val", hflip=False)
        batches = make_loader(data, ChunkBatches(len(self.val), tc.batch_size, chunks), run.options.workers, run.device)
        total = 0.0
        for c, images in zip(chunks, batches, strict=True):
            with autocast(run.device):
                loss, _, _ = mae(images.to(run.device), generator(tc.seed, "mae-val-mask", c))
            total += loss.item() * len(images)
        return run.dist.sum([total])[0] / max(1, len(self.val))


class ClassifierStage:
    """Stage 2: the classifier, binary cross-entropy on negative and pseudo-abnormal difference images;
    with ``classifier_selection == "best_validation"`` it keeps the epoch of lowest validation loss."""

    def __init__(self, model: AnomalyModel, train: SliceRows, val: SliceRows, run: Run, progress: Progress,
                 out_dir: Path) -> None:
        self.model, self.run, self.progress, self.cfg = model, run, progress, model.config
        self.tc, self.s = model.config.train, model.config.settings
        self.train_data = ClassifierSamples(train, reconstruct_rows(model, "train", train, run, out_dir),
                                            self.s.pseudo_abnormal, self.s.classifier, self.tc.seed,
                                            "classifier", self.tc.hflip)
        self.val_data = ClassifierSamples(val, reconstruct_rows(model, "val", val, run, out_dir),
                                          self.s.pseudo_abnormal, self.s.classifier, self.tc.seed,
                                          "classifier-val", hflip=False)

    def stage(self) -> Stage:
        s = self.s
        return Stage("classifier", self.model.classifier, s.classifier_epochs, s.classifier_batch_size,
                     self.train_data,
                     lambda net, steps: adamw_warmup_cosine(net, s.classifier_lr, s.classifier_weight_decay, steps,
                                                            self.tc.warmup_fraction, self.run.device),
                     self.step, self.end_epoch)

    def inputs(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        negatives, positives = batch
        n = len(negatives)
        inputs = torch.cat([negatives, positives]).to(self.run.device, non_blocking=True)
        return inputs, torch.cat([torch.zeros(n), torch.ones(n)]).to(self.run.device)

    def step(self, module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], step: Step,
             opts: list[Optimisation]) -> tuple[torch.Tensor, int]:
        inputs, targets = self.inputs(batch)
        with autocast(self.run.device):
            loss = classifier_loss(module(inputs), targets, self.s.classifier)
        n = step.b - step.a
        descend(rank_share(loss, n, step.size, self.run.dist.world), opts[0])
        return loss, 2 * n

    def end_epoch(self, mean_loss: float) -> str:
        val_loss, val_acc = self.validation()
        history, progress = self.progress.history, self.progress
        history.setdefault("classifier_loss", []).append(mean_loss)
        history.setdefault("classifier_val_loss", []).append(val_loss)
        history.setdefault("classifier_val_accuracy", []).append(val_acc)
        if self.s.classifier_selection == "best_validation":
            remember_if_best(progress, self.model.classifier, val_loss)
        return (f"classifier epoch {progress.epoch}/{self.s.classifier_epochs}: loss {mean_loss:.4f}, "
                f"validation loss {val_loss:.4f}, validation accuracy {val_acc:.3f} (pseudo-abnormal)")

    @torch.no_grad()
    def validation(self) -> tuple[float, float]:
        """Loss and accuracy on held-out healthy volumes against their pseudo-abnormal versions."""
        run, n = self.run, len(self.val_data)
        clf = self.model.classifier.eval()
        chunks = _chunks_of_rank(run, n, self.tc.batch_size)
        total, correct = 0.0, 0.0
        sampler = ChunkBatches(n, self.tc.batch_size, chunks)
        for batch in make_loader(self.val_data, sampler, run.options.workers, run.device):
            inputs, targets = self.inputs(batch)
            with autocast(run.device):
                logits = clf(inputs)
            total += classifier_loss(logits, targets, self.s.classifier).item() * len(inputs)
            correct += float(((anomaly_probability(logits) >= 0.5).float() == targets).sum())
        total, correct = run.dist.sum([total, correct])
        return total / max(1, 2 * n), correct / max(1, 2 * n)


@torch.no_grad()
def reconstruct_rows(model: AnomalyModel, name: str, rows: SliceRows, run: Run, out_dir: Path) -> ReconStore:
    """Reconstructs every slice once into ``out/reconstructions`` (each rank its share)."""
    tc = model.config.train
    store = ReconStore(out_dir / RECONSTRUCTION_DIR, name, len(rows), tc.batch_size, run.dist.world)
    mae = model.mae.to(run.device).eval()
    chunks = store.chunks(run.dist.rank)
    batches = iter(make_loader(MAESamples(rows, tc.seed, name, hflip=False),
                               ChunkBatches(len(rows), tc.batch_size, chunks), run.options.workers, run.device))
    size, passes = model.config.preprocess.image_size, model.config.settings.reconstruction_passes

    def parts():
        # Equal rounds on every rank, so that the stop polls (collectives) pair up.
        for j in range(math.ceil(store.n_chunks / run.dist.world)):
            if j < len(chunks):
                images = next(batches).to(run.device)
                with autocast(run.device):
                    recon = reconstruct(mae, images, passes, generator(tc.seed, "recon", name, chunks[j]))
                yield recon.float().cpu().numpy()
            if run.stop.poll() == run.stop.SIGNAL:
                raise TrainingInterrupted("stopped by SIGTERM while reconstructing slices for the classifier; "
                                          "continue with --resume")

    store.write(run.dist.rank, parts(), (1, size, size))
    run.dist.barrier()
    return store


def begin_classifier(model: AnomalyModel, progress: Progress) -> None:
    """Moves on from the MAE (trained here, or taken from another model) to the classifier."""
    progress.begin("classifier")
    if model.config.settings.classifier.init_from_mae:
        init_classifier_from_mae(model.classifier, model.mae)


def run_stages(model: AnomalyModel, data: TrainingData, run: Run, progress: Progress, resumed: dict | None) -> None:
    """Trains what is left of both stages, then keeps the classifier ``classifier_selection`` asks for."""
    tc, train, val, out_dir = model.config.settings, data.train, data.val, data.work_dir
    if progress.stage in ("", "mae"):
        progress.stage = "mae"
        share = (tc.mae_epochs - progress.epoch) / max(1e-9, tc.mae_epochs - progress.epoch
                                                       + CLASSIFIER_EPOCH_COST * tc.classifier_epochs)
        remaining = run.stop.remaining()
        deadline = None if remaining is None else time.monotonic() + share * remaining
        train_stage(MAEStage(model, train, val, run, progress).stage(), run, progress, resumed, deadline)
        begin_classifier(model, progress)
        resumed = None
    if progress.finished or progress.epoch >= tc.classifier_epochs:
        keep_selected(model, run, progress)
        return
    classifier = ClassifierStage(model, train, val, run, progress, out_dir)
    train_stage(classifier.stage(), run, progress, resumed, run.stop.deadline)
    keep_selected(model, run, progress)


def keep_selected(model: AnomalyModel, run: Run, progress: Progress) -> None:
    """Keeps the best epoch's classifier when ``classifier_selection`` asks for it; the last step's otherwise."""
    if model.config.settings.classifier_selection == "best_validation":
        restore_best(progress, model.classifier, run, "validation loss")
