"""Reconstruction as in the paper: mask at random, paste visible patches back, average several passes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .mae import MaskedAutoencoder


@dataclass
class MaskedPasses:
    """Masked passes of (N, 1, H, W) images, all in pixels: the originals (N, 1, H, W), and the decoder's
    predictions and the masks (1 = masked), each (passes, N, 1, H, W)."""

    images: torch.Tensor
    predictions: torch.Tensor
    masks: torch.Tensor

    def pasted(self) -> torch.Tensor:
        """Each pass with its visible patches the original pixels, as the paper reconstructs."""
        return self.predictions * self.masks + self.images * (1 - self.masks)

    def spread(self) -> torch.Tensor:
        """(N, 1, H, W): the standard deviation of the predictions over the passes that masked each
        pixel; zero where fewer than two did. Large where the MAE is unsure of healthy anatomy (edges)."""
        count = self.masks.sum(dim=0)
        counted = count.clamp(min=1)
        mean = (self.predictions * self.masks).sum(dim=0) / counted
        variance = (((self.predictions - mean) ** 2) * self.masks).sum(dim=0) / counted
        return torch.where(count > 1, variance.sqrt(), torch.zeros_like(variance))


@torch.no_grad()
def masked_passes(mae: MaskedAutoencoder, images: torch.Tensor, passes: int,
                  generator: torch.Generator | None = None,
                  per_image: Sequence[torch.Generator] | None = None) -> MaskedPasses:
    """``passes`` masked passes of (N, 1, H, W) images, run in one batch. With ``per_image`` (one
    generator per image) each image's masks come from its own generator, so they do not depend on which
    other images share the batch; else all come from ``generator``."""
    n = images.shape[0]
    tiled = images.repeat(passes, 1, 1, 1)
    noise = None
    if per_image is not None:
        # Row t * n + j of the tiled batch is pass t of image j.
        noise = torch.stack([torch.rand(passes, mae.num_patches, generator=g) for g in per_image], dim=1)
        noise = noise.flatten(0, 1)
    ids_keep, mask, ids_restore = mae.random_masking(tiled.shape[0], tiled.device, generator, noise)
    pred = mae.forward_decoder(mae.forward_encoder(tiled, ids_keep), ids_restore).float()
    masks = mae.unpatchify(mask.unsqueeze(-1).expand_as(pred).to(pred.dtype))
    shape = (passes, n, *images.shape[1:])
    return MaskedPasses(images.float(), mae.unpatchify(pred).reshape(shape), masks.reshape(shape))


def reconstruct_samples(mae: MaskedAutoencoder, images: torch.Tensor, passes: int, samples: int,
                        generator: torch.Generator | None = None,
                        per_image: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """``samples`` independent reconstructions, (samples, N, 1, H, W), each the average of ``passes``
    masked passes (``masked_passes``); every patch is predicted in about ``passes * mask_ratio`` of them."""
    return average_reconstructions(masked_passes(mae, images, samples * passes, generator, per_image), samples)


def average_reconstructions(run: MaskedPasses, samples: int) -> torch.Tensor:
    """(samples, N, 1, H, W): the pasted passes of ``run``, in ``samples`` consecutive groups, averaged."""
    pasted = run.pasted()
    return pasted.reshape(samples, pasted.shape[0] // samples, *pasted.shape[1:]).mean(dim=1)


def reconstruct(mae: MaskedAutoencoder, images: torch.Tensor, passes: int = 4,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One reconstruction (N, 1, H, W) of (N, 1, H, W) images: the average of ``passes`` masked passes."""
    return reconstruct_samples(mae, images, passes, 1, generator)[0]
