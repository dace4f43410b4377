"""The method's one training stage, on the shared engine: each step updates the encoder, then the decoder,
each with its own Adam, as the authors' ``projects/23_ra_midl/RA_Trainer.py`` (github ci-ber/RA) does.

The stage runs without DDP (``Stage.ddp``): a step passes through the encoder and the decoder several
times and steps two optimisers, which DDP's one forward, one backward cannot follow; the step averages
its gradients over ranks itself and its batch norms use the global batch (``engine.batch_norm``), so
that two processes train what one trains. Every random number (flips, the fakes' codes, the
reparameterisation noise) is drawn per sample from (seed, purpose, epoch, position).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import islice

import torch
from torch import nn
from torch.utils.data import Dataset

from ...core.runtime import seeded_generator as generator
from ...data.slice_cache import SliceRows
from ...engine.batch_norm import counted_rows, reestimate_running_statistics
from ...engine.best import remember_if_best, restore_best
from ...engine.loop import Optimisation, Progress, Run, Stage, descend, make_loader, rank_share, train_stage
from ...engine.samples import ChunkBatches, EpochBatches, Item, Step
from ..base import TrainingData
from ..model import AnomalyModel
from .losses import exp_elbo, kl_divergence, reparameterise, reversed_loss, squared_error
from .network import ReversedAutoencoder

# Standard normal draws per sample: the fake's code, then the reparameterisation noise of E(x), E(rec)
# and E(fake) in the encoder's step, and of E(rec) and E(fake) in the decoder's.
FAKE, REAL, REC_E, FAKE_E, REC_D, FAKE_D = range(6)
Share = Callable[[torch.Tensor], torch.Tensor]  # per-sample objective -> this rank's share of the batch's


class RASamples(Dataset):
    """Slices (flipped left-right with probability 1/2 when ``hflip``), each with its normal draws."""

    def __init__(self, rows: SliceRows, seed: int, purpose: str, hflip: bool, latent: int) -> None:
        self.rows, self.seed, self.purpose, self.hflip, self.latent = rows, seed, purpose, hflip, latent

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: Item) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, position, index = item
        image = self.rows.read(index)
        gen = generator(self.seed, self.purpose, epoch, position)
        if self.hflip and bool(torch.rand(1, generator=gen) < 0.5):
            image = image.flip(-1)
        return image, torch.randn(6, self.latent, generator=gen)


def trainable(net: nn.Module, flag: bool) -> None:
    """Whether ``net``'s parameters get gradients: each step freezes the network it does not train, as
    RA_Trainer.py does (its gradients would be computed for nothing)."""
    for p in net.parameters():
        p.requires_grad_(flag)


class RAStage:
    """The encoder and decoder steps of the Soft-IntroVAE with the reversed embedding loss."""

    def __init__(self, model: AnomalyModel, data: TrainingData, run: Run, progress: Progress) -> None:
        self.model, self.data, self.run, self.progress = model, data, run, progress
        self.tc, self.s = model.config.train, model.config.settings
        self.scale = 1 / model.config.preprocess.image_size ** 2  # per pixel, as RA_Trainer.py's 1/128²

    def stage(self) -> Stage:
        data = RASamples(self.data.train, self.tc.seed, "ra", self.tc.hflip, self.s.latent)
        return Stage("ra", self.model.ra, self.s.epochs, self.tc.batch_size, data, self.optimizers, self.step,
                     self.end_epoch, ddp=False)

    def optimizers(self, net: ReversedAutoencoder, steps: int) -> list[Optimisation]:
        # A constant rate: RA_Trainer.py's MultiStepLR is stepped with the validation loss as its epoch,
        # which (as we read torch's closed form) never passes its milestone, epoch 100.
        return [(torch.optim.Adam(net.encoder.parameters(), lr=self.s.lr), None),
                (torch.optim.Adam(net.decoder.parameters(), lr=self.s.lr), None)]

    def step(self, net: ReversedAutoencoder, batch: tuple[torch.Tensor, torch.Tensor], step: Step,
             opts: list[Optimisation]) -> tuple[torch.Tensor, int]:
        images, noise = (t.to(self.run.device, non_blocking=True) for t in batch)
        n = step.b - step.a

        def share(per_sample: torch.Tensor) -> torch.Tensor:
            return rank_share(per_sample.mean(), n, step.size, self.run.dist.world)

        # float32 throughout (no autocast): the exp-ELBO's exponent holds sums over every pixel and
        # 128 × the KL, which half precision would round coarsely before they are scaled down.
        with counted_rows(n):
            z = self.encoder_step(net, images, noise, opts[0], share)
            error = self.decoder_step(net, images, noise, z, opts[1], share)
        return error.mean() * self.scale, n  # the reconstruction's mean squared error per pixel

    def encoder_step(self, net: ReversedAutoencoder, x: torch.Tensor, noise: torch.Tensor, opt: Optimisation,
                     share: Share) -> torch.Tensor:
        """scale·(β_rec·‖rec − x‖² + β_kl·KL) + w·(exp-ELBO(rec) + exp-ELBO(fake)) + w_r·L_reversed; returns z."""
        s, scale = self.s, self.scale
        trainable(net.encoder, True)
        trainable(net.decoder, False)
        with torch.no_grad():
            fake = net.decoder(noise[:, FAKE])
        mu, logvar, embeddings = net.encoder(x)
        z = reparameterise(mu, logvar, noise[:, REAL])
        rec = net.decoder(z)
        # One pass of the encoder over the detached reconstruction serves both the reversed loss and the
        # exp-ELBO (the authors run it twice: the same values, one batch-norm running update more).
        mu_r, logvar_r, embeddings_rec = net.encoder(rec.detach())
        rec_rec = net.decoder(reparameterise(mu_r, logvar_r, noise[:, REC_E]))
        mu_f, logvar_f, _ = net.encoder(fake)
        rec_fake = net.decoder(reparameterise(mu_f, logvar_f, noise[:, FAKE_E]))
        real = scale * (s.beta_rec * squared_error(rec, x) + s.beta_kl * kl_divergence(mu, logvar))
        # The reconstruction is not detached in its own exp-ELBO, as in RA_Trainer.py.
        soft = (exp_elbo(squared_error(rec_rec, rec), kl_divergence(mu_r, logvar_r), scale, s.beta_rec, s.beta_neg)
                + exp_elbo(squared_error(rec_fake, fake), kl_divergence(mu_f, logvar_f), scale, s.beta_rec,
                           s.beta_neg))
        objective = real + s.exp_elbo_weight * soft + s.reversed_weight * reversed_loss(embeddings, embeddings_rec)
        descend(share(objective), opt, self.run.dist)
        return z.detach()

    def decoder_step(self, net: ReversedAutoencoder, x: torch.Tensor, noise: torch.Tensor, z: torch.Tensor,
                     opt: Optimisation, share: Share) -> torch.Tensor:
        """scale·(β_rec·‖D(z) − x‖² + β_kl/2·(KL(E(rec)) + KL(E(fake))) + γ_r·β_rec/2·(cycle errors));
        returns each sample's reconstruction error."""
        s, scale = self.s, self.scale
        trainable(net.encoder, False)
        trainable(net.decoder, True)
        fake = net.decoder(noise[:, FAKE])
        rec = net.decoder(z)  # the code of the encoder's step, taken before the encoder moved
        error = squared_error(rec, x)
        mu_r, logvar_r, _ = net.encoder(rec)
        mu_f, logvar_f, _ = net.encoder(fake)
        objective = scale * (s.beta_rec * error + 0.5 * s.beta_kl * (kl_divergence(mu_r, logvar_r)
                                                                     + kl_divergence(mu_f, logvar_f)))
        if s.gamma_r > 0:  # 1e-8 by default: kept for fidelity, it costs two decoder passes
            rec_rec = net.decoder(reparameterise(mu_r, logvar_r, noise[:, REC_D]).detach())
            rec_fake = net.decoder(reparameterise(mu_f, logvar_f, noise[:, FAKE_D]).detach())
            cycle = squared_error(rec_rec, rec.detach()) + squared_error(rec_fake, fake.detach())
            objective = objective + scale * s.gamma_r * 0.5 * s.beta_rec * cycle
        descend(share(objective), opt, self.run.dist)
        return error.detach()

    def end_epoch(self, mean_loss: float) -> str:
        progress, s = self.progress, self.s
        val = self.validation()
        progress.history.setdefault("ra_loss", []).append(mean_loss)
        progress.history.setdefault("ra_val_mse", []).append(val)
        if s.selection == "best_validation":
            remember_if_best(progress, self.model.ra, val)
        return (f"RA epoch {progress.epoch}/{s.epochs}: reconstruction MSE {mean_loss:.5f}, "
                f"validation MSE {val:.5f}")

    @torch.no_grad()
    def validation(self) -> float:
        """The mean squared error per pixel of D(μ(x)) on the held-out healthy slices (RA_Trainer.py keeps
        the model of lowest validation MSE)."""
        run, rows, batch = self.run, self.data.val, self.tc.batch_size
        self.real_statistics()
        net = self.model.ra.eval()
        chunks = list(range(run.dist.rank, math.ceil(len(rows) / batch), run.dist.world))
        data = RASamples(rows, self.tc.seed, "ra-val", False, self.s.latent)
        total = 0.0
        for images, _ in make_loader(data, ChunkBatches(len(rows), batch, chunks), run.options.workers, run.device):
            images = images.to(run.device)
            total += float(squared_error(net.pseudo_healthy(images), images).sum())
        return run.dist.sum([total])[0] * self.scale / max(1, len(rows))

    @torch.no_grad()
    def real_statistics(self) -> None:
        """Re-estimates the batch norms' running statistics on real training slices alone. Training passes
        fakes and reconstructions through the same batch norms, which leaves running statistics that suit
        none of them (RA_Trainer.py keeps those): at epoch 18 of the small preset the held-out MSE was
        0.066 with them and 0.020 re-estimated (docs/experiments.md). Each rank passes its share of every
        batch, as in training, so that any number of ranks estimates what one does."""
        rows, batch = self.data.train, self.tc.batch_size
        plan = EpochBatches(len(rows), batch, self.tc.seed, "ra-statistics", 1, (0, 0), self.run.dist.rows)
        steps = list(islice(plan.steps(), max(1, STATISTICS_SLICES // batch)))
        shares, counted = [items for _, items in steps], [step.b - step.a for step, _ in steps]
        data = RASamples(rows, self.tc.seed, "ra-statistics", False, self.s.latent)
        loader = make_loader(data, shares, self.run.options.workers, self.run.device)
        net = self.model.ra

        def forward(pair: tuple[torch.Tensor, int]) -> None:
            with counted_rows(pair[1]):
                net.pseudo_healthy(pair[0].to(self.run.device))

        reestimate_running_statistics(net, zip((images for images, _ in loader), counted, strict=True), forward)


# Real slices the running statistics are re-estimated on (at most): 1024 at the paper's batch of 8 is
# 128 batches, a few per cent of an epoch's work.
STATISTICS_SLICES = 1024


def run_stage(model: AnomalyModel, data: TrainingData, run: Run, progress: Progress, resumed: dict | None) -> None:
    """Trains what is left of the stage, then keeps the network that ``selection`` asks for."""
    progress.stage = "ra"
    train_stage(RAStage(model, data, run, progress).stage(), run, progress, resumed, run.stop.deadline)
    trainable(model.ra, True)
    if model.config.settings.selection == "best_validation":
        restore_best(progress, model.ra, run, "validation MSE")
    elif progress.batch > 0:  # a time budget stopped the last epoch before its validation re-estimated them
        RAStage(model, data, run, progress).real_statistics()
