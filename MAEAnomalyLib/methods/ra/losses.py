"""The terms of the Reversed Autoencoder's training objectives, as pure functions of tensors. Each returns
one value per sample (a batch's loss is their mean), so that a global batch split over ranks gives the
loss of the whole batch (``engine.loop.rank_share``). Their reductions are those of the authors'
``projects/23_ra_midl/RA_Trainer.py`` and ``optim/losses/image_losses.py`` (github ci-ber/RA)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z = μ + σ·ε, with ε ~ N(0, I) given (drawn per sample by ``samples``, not here)."""
    return mu + noise * torch.exp(0.5 * logvar)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) of each (N, D) code, summed over its dimensions: (N,)."""
    return -0.5 * (1 + logvar - logvar.exp() - mu.square()).sum(dim=1)


def squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The squared error of each image summed over its pixels: (N,) (the authors' "mse" reconstruction loss)."""
    return (output - target).square().flatten(1).sum(dim=1)


def exp_elbo(error: torch.Tensor, kl: torch.Tensor, scale: float, beta_rec: float, beta_neg: float) -> torch.Tensor:
    """exp(−2·scale·(β_rec·error + β_neg·KL)) per sample: the Soft-IntroVAE's soft term, large while the
    encoder gives reconstructions and fakes a code as likely as real images' (its own objective pushes it
    down: the encoder learns to tell them apart)."""
    return torch.exp(-2 * scale * (beta_rec * error + beta_neg * kl))


def reversed_loss(embeddings: Sequence[torch.Tensor], embeddings_rec: Sequence[torch.Tensor]) -> torch.Tensor:
    """The multi-scale reversed embedding loss: over the encoder's maps of an image and of its
    reconstruction, Σ_layers 0.5·MSE + (1 − cosine similarity of the flattened maps); (N,)."""
    total = torch.zeros(len(embeddings[0]), device=embeddings[0].device)
    for a, b in zip(embeddings, embeddings_rec, strict=True):
        a, b = a.flatten(1), b.flatten(1)
        total = total + 0.5 * (a - b).square().mean(dim=1) + (1 - F.cosine_similarity(a, b, dim=1))
    return total
