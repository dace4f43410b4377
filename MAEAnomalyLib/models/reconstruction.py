"""Reconstruction as in the paper: mask at random, paste visible patches back, average several passes."""

from __future__ import annotations

import torch

from .mae import MaskedAutoencoder


@torch.no_grad()
def reconstruct_samples(mae: MaskedAutoencoder, images: torch.Tensor, passes: int, samples: int,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """``samples`` independent reconstructions, (samples, N, 1, H, W), each the average of ``passes``
    masked passes; all ``samples * passes`` passes of (N, 1, H, W) images run in one batch.

    In each pass the visible patches are the original pixels and the masked ones the decoder's
    prediction, so every patch is predicted in about ``passes * mask_ratio`` of the passes.
    """
    n = images.shape[0]
    tiled = images.repeat(samples * passes, 1, 1, 1)
    ids_keep, mask, ids_restore = mae.random_masking(tiled.shape[0], tiled.device, generator)
    pred = mae.forward_decoder(mae.forward_encoder(tiled, ids_keep), ids_restore).float()
    original = mae.patchify(tiled.float())
    m = mask.unsqueeze(-1)
    pasted = mae.unpatchify(pred * m + original * (1 - m))
    return pasted.reshape(samples, passes, n, *images.shape[1:]).mean(dim=1)


def reconstruct(mae: MaskedAutoencoder, images: torch.Tensor, passes: int = 4,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One reconstruction (N, 1, H, W) of (N, 1, H, W) images: the average of ``passes`` masked passes."""
    return reconstruct_samples(mae, images, passes, 1, generator)[0]
