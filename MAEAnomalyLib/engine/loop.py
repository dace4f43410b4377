"""The one loop that trains a stage of any method, with the pieces it calls: data loading, the epoch's
loss sums over ranks, checkpoints, and stop requests (SIGTERM, the time budget). A stage supplies its
optimisers and its step, so one stage may alternate two optimisers within a step; ``adamw_warmup_cosine``
and ``descend`` are the usual pair."""

from __future__ import annotations

import contextlib
import ctypes
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from ..core.errors import MAEAnomalyError
from .distributed import Dist, StopControl, shield_worker
from .samples import EpochBatches, Step, batches_per_epoch

LogFn = Callable[[str], None]
Optimisation = tuple[torch.optim.Optimizer, "torch.optim.lr_scheduler.LRScheduler | None"]
# (the wrapped module, the batch, where the step is, the stage's optimisers) -> (the loss, samples counted);
# the step does its own backward passes and optimiser steps
StepFn = Callable[[nn.Module, object, Step, list[Optimisation]], tuple[torch.Tensor, int]]


class TrainingInterrupted(MAEAnomalyError):
    """Training stopped on SIGTERM; a checkpoint (if any) allows ``--resume``."""


@dataclass
class RunOptions:
    """How to run training; none of these change the trained weights (except a time budget)."""

    cache_dir: Path | None = None  # default: <out>/slice_cache
    workers: int = 0  # DataLoader worker processes; 0 reads in the main process
    max_minutes: float | None = None  # stop both stages within this wall-clock budget
    compile: bool = False  # torch.compile the training step


@dataclass
class Progress:
    """Where training stands: everything a checkpoint restores besides weights and optimiser state."""

    stage: str = ""  # the stage under way ("" before the first)
    epoch: int = 0  # completed epochs of the stage
    batch: int = 0  # completed batches of the current epoch
    finished: bool = False  # the stage is over (a time budget can end it early)
    totals: list[float] = field(default_factory=lambda: [0.0, 0.0])  # epoch's loss sum and count, all ranks
    seconds: float = 0.0
    cut: list[str] = field(default_factory=list)  # stages ended early by the time budget
    history: dict[str, list[float]] = field(default_factory=dict)  # per-epoch figures, named by the stages
    best: dict | None = None  # what a stage keeps of its best epoch (its epoch, loss and weights)

    def begin(self, stage: str) -> None:
        self.stage, self.epoch, self.batch, self.finished, self.totals = stage, 0, 0, False, [0.0, 0.0]


@dataclass
class Stage:
    """One stage: the network it trains (DDP wraps it), its epochs, batch and data, its optimisers, and
    what one step and the end of an epoch do."""

    name: str
    net: nn.Module
    epochs: int
    batch: int
    data: Dataset
    # (the network, the stage's optimiser steps) -> its optimisers, each with its schedule (or None)
    optimizers: Callable[[nn.Module, int], list[Optimisation]]
    step: StepFn
    end_epoch: Callable[[float], str]  # validates and returns the line to log
    # False: the network is not wrapped in DDP, and the step averages its gradients over ranks itself
    # (``descend(..., run.dist)``); for steps that alternate optimisers over parts of the network, with
    # several forward passes per backward, which DDP cannot follow
    ddp: bool = True


@dataclass
class Run:
    """What every stage shares: the process's place in the job, stop requests, options, and output."""

    dist: Dist
    stop: StopControl
    options: RunOptions
    n_train: int
    warmup_fraction: float
    seed: int
    save: Callable[[Progress, list[Optimisation]], None]
    checkpoint_dir: Path
    log: LogFn = print
    show_progress: bool = True

    @property
    def device(self) -> torch.device:
        return self.dist.device


def release_freed_memory() -> None:
    """Hands freed heap back to the OS. glibc keeps it otherwise, so per-volume work would ratchet up the
    trainer's footprint, and forked DataLoader workers would share (and copy) the garbage."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then half-cosine decay to zero (as in MAE)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def adamw_warmup_cosine(net: nn.Module, lr: float, weight_decay: float, steps: int, warmup_fraction: float,
                        device: torch.device) -> list[Optimisation]:
    """AdamW (no decay on norms, biases, tokens and position embeddings) with warm-up and cosine decay."""
    def decays(name: str, p: torch.Tensor) -> bool:
        return p.ndim > 1 and "token" not in name and "pos_embed" not in name

    params = list(net.named_parameters())
    opt = torch.optim.AdamW([{"params": [p for n, p in params if decays(n, p)], "weight_decay": weight_decay},
                             {"params": [p for n, p in params if not decays(n, p)], "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    warmup = max(1, int(steps * warmup_fraction))
    return [(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, warmup)))]


def descend(objective: torch.Tensor, optimisation: Optimisation, averaged_over: Dist | None = None) -> None:
    """One optimiser step on ``objective``: gradients (averaged over the ranks of ``averaged_over``, for a
    stage without DDP), the step, the schedule."""
    opt, sched = optimisation
    opt.zero_grad(set_to_none=True)
    objective.backward()
    if averaged_over is not None:
        averaged_over.average_gradients(p for group in opt.param_groups for p in group["params"])
    opt.step()
    if sched is not None:
        sched.step()


def make_loader(data: Dataset, sampler: Sampler, workers: int, device: torch.device) -> DataLoader:
    """Batches from ``sampler``, read in ``workers`` processes shielded from the trainer's signals."""
    if workers:
        release_freed_memory()  # before the workers fork from this process
    return DataLoader(data, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
                      worker_init_fn=shield_worker if workers else None, prefetch_factor=4 if workers else None)


def rank_share(loss: torch.Tensor, n: int, size: int, world: int) -> torch.Tensor:
    """This rank's part of the global-batch mean: DDP averages over ranks, whose shares may differ
    (or be empty: zero weight)."""
    factor = n * world / size
    return loss if factor == 1 else loss * factor


class EpochSums:
    """The epoch's loss sum and sample count: kept per rank, folded into ``progress.totals`` over all
    ranks at the end of an epoch or before a checkpoint."""

    def __init__(self, dist: Dist, progress: Progress) -> None:
        self.dist, self.progress = dist, progress
        self.local = torch.zeros(2, dtype=torch.float64, device=dist.device)

    def add(self, loss: torch.Tensor, count: int) -> None:
        self.local[0] += loss.detach().double() * count
        self.local[1] += count

    def fold(self) -> None:
        summed = self.dist.sum(self.local.tolist())
        totals = self.progress.totals
        self.progress.totals = [totals[0] + summed[0], totals[1] + summed[1]]
        self.local.zero_()

    def epoch_mean(self) -> float:
        """Folds, returns the epoch's mean loss and starts the next epoch's sums."""
        self.fold()
        totals, self.progress.totals = self.progress.totals, [0.0, 0.0]
        return totals[0] / max(1.0, totals[1])


def train_stage(stage: Stage, run: Run, progress: Progress, resumed: dict | None, deadline: float | None) -> None:
    """Trains one stage from ``progress`` to its last epoch, a stop request or the deadline."""
    if progress.finished or progress.epoch >= stage.epochs:
        return
    net = stage.net.to(run.device)
    opts = stage.optimizers(net, stage.epochs * batches_per_epoch(run.n_train, stage.batch))
    if resumed is not None:
        for (opt, sched), opt_state, sched_state in zip(opts, resumed["optimizers"], resumed["schedulers"],
                                                        strict=True):
            opt.load_state_dict(opt_state)
            if sched is not None:
                sched.load_state_dict(sched_state)
    if stage.ddp:
        module = run.dist.wrap(net)
    else:
        run.dist.broadcast_state(net)  # what DDP does on wrapping: every rank starts from rank 0's weights
        module = net
    if run.options.compile:
        module = torch.compile(module)
    sampler = EpochBatches(run.n_train, stage.batch, run.seed, stage.name, stage.epochs,
                           (progress.epoch, progress.batch), run.dist.rows)
    sums = EpochSums(run.dist, progress)
    mark = time.perf_counter()
    bar = tqdm(total=len(sampler), desc=f"{stage.name} training", unit="batch", leave=False,
               disable=None if run.show_progress else True)
    net.train()
    for (step, _), batch in zip(sampler.steps(), make_loader(stage.data, sampler, run.options.workers, run.device),
                                strict=True):
        sums.add(*stage.step(module, batch, step, opts))
        progress.batch = step.batch + 1
        bar.update()
        epoch_done = progress.batch == sampler.per_epoch
        if epoch_done:
            mean = sums.epoch_mean()
            progress.epoch, progress.batch = progress.epoch + 1, 0
            message = stage.end_epoch(mean)
            progress.seconds, mark = progress.seconds + time.perf_counter() - mark, time.perf_counter()
            run.save(progress, opts)
            run.log(message)
            net.train()
        # The budget only counts once the stage has one full epoch, so that the model is usable.
        reason = run.stop.poll(deadline if progress.epoch >= 1 else None)
        if reason == StopControl.NONE:
            continue
        bar.close()
        if not epoch_done:
            sums.fold()
        progress.seconds += time.perf_counter() - mark
        stop_stage(reason, stage, run, progress, lambda: run.save(progress, opts), sampler.per_epoch)
        return
    bar.close()


def stop_stage(reason: int, stage: Stage, run: Run, progress: Progress, save: Callable[[], None],
               per_epoch: int) -> None:
    """Ends a stage early: on SIGTERM a checkpoint and TrainingInterrupted on every rank; on the time
    budget a checkpoint of the finished (shortened) stage."""
    if reason == StopControl.SIGNAL:
        save()
        run.dist.barrier()  # rank 0's checkpoint is complete before any rank exits
        raise TrainingInterrupted(
            f"stopped by SIGTERM in {stage.name} epoch {progress.epoch + 1}/{stage.epochs} after batch "
            f"{progress.batch} of {per_epoch}; checkpoint in {run.checkpoint_dir}; continue with --resume")
    progress.finished = True
    progress.cut.append(stage.name)
    save()
    run.log(f"time budget: {stage.name} stage ends after {progress.epoch} epochs and {progress.batch} batches "
            f"of {stage.epochs} epochs")
