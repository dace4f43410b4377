"""The method's one training stage, on the shared engine (as pDDPM trains, read in its
``src/models/DDPM_2D_patched.py``): one patch of each slice, from the grid whose stride is the patch, is
taken forward to a random step while the rest of the slice stays clean; the network predicts the clean
slice and the loss is the L1 error inside the patch. Every random number (flip, patch, step, noise) is
drawn per sample from (seed, purpose, epoch, position), so resumed and two-process runs equal one run."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import Dataset

from ...core.runtime import autocast
from ...core.runtime import seeded_generator as generator
from ...data.slice_cache import SliceRows
from ...engine.best import remember_if_best, restore_best
from ...engine.loop import Optimisation, Progress, Run, Stage, descend, make_loader, rank_share, train_stage
from ...engine.samples import ChunkBatches, Item, Step
from ..base import TrainingData, masked_mean
from ..model import AnomalyModel
from .config import MAEDiffConfig
from .patches import make_scheduler, noise_patch, origins, patch_masks


class PatchSamples(Dataset):
    """Slices in [-1, 1] (flipped left-right with probability 1/2 when ``hflip``), each with the patch to
    noise, its step and its noise. ``step`` fixes the step (validation: the test step)."""

    def __init__(self, rows: SliceRows, s: MAEDiffConfig, size: int, seed: int, purpose: str, hflip: bool,
                 step: int | None = None) -> None:
        self.rows, self.s, self.seed, self.purpose, self.hflip, self.step = rows, s, seed, purpose, hflip, step
        self.masks = patch_masks(size, s.patch, origins(size, s.patch, s.patch))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: Item) -> tuple[torch.Tensor, ...]:
        epoch, position, index = item
        image = self.rows.read(index) * 2 - 1
        gen = generator(self.seed, self.purpose, epoch, position)
        if self.hflip and bool(torch.rand(1, generator=gen) < 0.5):
            image = image.flip(-1)
        mask = self.masks[int(torch.randint(len(self.masks), (1,), generator=gen))]
        t = torch.randint(self.s.timesteps, (), generator=gen) if self.step is None else torch.tensor(self.step)
        return image, mask, t, torch.randn(image.shape, generator=gen)


def patch_l1(prediction: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each sample's mean absolute error inside its patch: (N,)."""
    return masked_mean((prediction - x0).abs(), mask)


class PatchStage:
    """Trains the U-Net (with or without the MAE module) to undo the noise of one patch."""

    def __init__(self, model: AnomalyModel, data: TrainingData, run: Run, progress: Progress) -> None:
        self.model, self.data, self.run, self.progress = model, data, run, progress
        self.tc, self.s = model.config.train, model.config.settings
        self.size = model.config.preprocess.image_size
        self.scheduler = make_scheduler(self.s.timesteps)

    def stage(self) -> Stage:
        data = PatchSamples(self.data.train, self.s, self.size, self.tc.seed, "diffusion", self.tc.hflip)
        return Stage("diffusion", self.model.unet, self.s.epochs, self.tc.batch_size, data, self.optimizers,
                     self.step, self.end_epoch)

    def optimizers(self, net: nn.Module, steps: int) -> list[Optimisation]:
        return [(torch.optim.Adam(net.parameters(), lr=self.s.lr), None)]  # pDDPM: Adam, a constant rate

    def loss(self, net: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x0, mask, t, noise = (b.to(self.run.device, non_blocking=True) for b in batch)
        with autocast(self.run.device):
            prediction = net(noise_patch(self.scheduler, x0, noise, t, mask), t, mask)
        return patch_l1(prediction.float(), x0, mask)

    def step(self, net: nn.Module, batch: tuple[torch.Tensor, ...], step: Step, opts: list[Optimisation]
             ) -> tuple[torch.Tensor, int]:
        loss, n = self.loss(net, batch).mean(), step.b - step.a
        descend(rank_share(loss, n, step.size, self.run.dist.world), opts[0])
        return loss.detach(), n

    def end_epoch(self, mean_loss: float) -> str:
        progress, s = self.progress, self.s
        val = self.validation()
        progress.history.setdefault("diffusion_loss", []).append(mean_loss)
        progress.history.setdefault("diffusion_val_l1", []).append(val)
        if s.selection == "best_validation":
            remember_if_best(progress, self.model.unet, val)
        return f"diffusion epoch {progress.epoch}/{s.epochs}: L1 {mean_loss:.5f}, validation L1 {val:.5f}"

    @torch.no_grad()
    def validation(self) -> float:
        """The patch L1 on the held-out healthy slices, one grid patch each, noised to the test step (the
        same patches and noise every epoch)."""
        run, rows, batch = self.run, self.data.val, self.tc.batch_size
        net = self.model.unet.eval()
        chunks = list(range(run.dist.rank, math.ceil(len(rows) / batch), run.dist.world))
        data = PatchSamples(rows, self.s, self.size, self.tc.seed, "diffusion-val", False, self.s.test_step)
        total = 0.0
        for samples in make_loader(data, ChunkBatches(len(rows), batch, chunks), run.options.workers,
                                   run.device):
            total += float(self.loss(net, samples).sum())
        return run.dist.sum([total])[0] / max(1, len(rows))


def run_stage(model: AnomalyModel, data: TrainingData, run: Run, progress: Progress, resumed: dict | None) -> None:
    """Trains what is left of the stage, then keeps the network that ``selection`` asks for."""
    progress.stage = "diffusion"
    train_stage(PatchStage(model, data, run, progress).stage(), run, progress, resumed, run.stop.deadline)
    if model.config.settings.selection == "best_validation":
        restore_best(progress, model.unet, run, "validation L1")
