"""The Reversed Autoencoder's network: the Soft-IntroVAE encoder and decoder of the authors' ``model_zoo/ra.py``
(github ci-ber/RA), written afresh. The encoder also returns the maps after each of its poolings, the
embeddings that the reversed loss compares (``losses.reversed_loss``)."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from ...engine.batch_norm import GlobalBatchNorm2d
from .config import RAConfig, stage_widths


class ResidualBlock(nn.Module):
    """conv 3×3 → norm → LeakyReLU → conv 3×3 → norm, plus the input (through a 1×1 convolution when the
    width changes), then LeakyReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        # Only where the widths differ: the authors' test (``inc is not outc``) compares int objects, and
        # only this reading gives the 29.4 M parameters of their 128-px network.
        self.shortcut = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), GlobalBatchNorm2d(cout), nn.LeakyReLU(0.2),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), GlobalBatchNorm2d(cout))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class Encoder(nn.Module):
    """Image → (μ, log σ², the embeddings after each pooling, coarsest last)."""

    def __init__(self, widths: list[int], latent: int, image_size: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 5, padding=2, bias=False), GlobalBatchNorm2d(widths[0]),
                                  nn.LeakyReLU(0.2))
        self.blocks = nn.ModuleList(ResidualBlock(cin, cout) for cin, cout in pairwise(widths))
        self.pool = nn.AvgPool2d(2)
        self.last = ResidualBlock(widths[-1], widths[-1])
        side = image_size // 2 ** len(widths)
        self.fc = nn.Linear(widths[-1] * side * side, 2 * latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        y = self.pool(self.stem(x))
        embeddings = [y]
        for block in self.blocks:
            y = self.pool(block(y))
            embeddings.append(y)
        mu, logvar = self.fc(self.last(y).flatten(1)).chunk(2, dim=1)
        return mu, logvar, embeddings


class Decoder(nn.Module):
    """Code → image in [0, 1]: a linear layer to the encoder's last map, then residual blocks each followed
    by nearest-neighbour ×2 upsampling, a last block, a 5×5 convolution and a sigmoid."""

    def __init__(self, widths: list[int], latent: int, image_size: int) -> None:
        super().__init__()
        self.shape = (widths[-1], image_size // 2 ** len(widths), image_size // 2 ** len(widths))
        self.fc = nn.Sequential(nn.Linear(latent, self.shape[0] * self.shape[1] * self.shape[2]), nn.ReLU())
        steps, width = [], widths[-1]
        for out in widths[::-1]:
            steps += [ResidualBlock(width, out), nn.Upsample(scale_factor=2, mode="nearest")]
            width = out
        self.main = nn.Sequential(*steps, ResidualBlock(width, width), nn.Conv2d(width, 1, 5, padding=2), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(self.fc(z).view(len(z), *self.shape))


class ReversedAutoencoder(nn.Module):
    """The encoder and the decoder, each trained by its own optimiser (``stages``)."""

    def __init__(self, cfg: RAConfig, image_size: int) -> None:
        super().__init__()
        widths = stage_widths(cfg.width, cfg.max_width, cfg.stages)
        self.encoder = Encoder(widths, cfg.latent, image_size)
        self.decoder = Decoder(widths, cfg.latent, image_size)

    def pseudo_healthy(self, x: torch.Tensor) -> torch.Tensor:
        """D(μ(x)): the decoded mean code, not a sample, so that a slice's reconstruction is the same in
        any batch and on every run (the authors' evaluator decodes a sampled code)."""
        mu, _, _ = self.encoder(x)
        return self.decoder(mu)
