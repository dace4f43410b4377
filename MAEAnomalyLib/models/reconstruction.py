"""Reconstruction as in the paper: mask at random, paste visible patches back, average several passes."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .mae import MaskedAutoencoder


@torch.no_grad()
def reconstruct_samples(mae: MaskedAutoencoder, images: torch.Tensor, passes: int, samples: int,
                        generator: torch.Generator | None = None,
                        per_image: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """``samples`` independent reconstructions, (samples, N, 1, H, W), each the average of ``passes``
    masked passes; all ``samples * passes`` passes of (N, 1, H, W) images run in one batch.

    In each pass the visible patches are the original pixels and the masked ones the decoder's
    prediction, so every patch is predicted in about ``passes * mask_ratio`` of the passes. With
    ``per_image`` (one generator per image) each image's masks come from its own generator, so they do
    not depend on which other images share the batch; else all come from ``generator``.
    """
    n = images.shape[0]
    tiled = images.repeat(samples * passes, 1, 1, 1)
    noise = None
    if per_image is not None:
        # Row t * n + j of the tiled batch is pass t of image j.
        noise = torch.stack([torch.rand(samples * passes, mae.num_patches, generator=g) for g in per_image], dim=1)
        noise = noise.flatten(0, 1)
    ids_keep, mask, ids_restore = mae.random_masking(tiled.shape[0], tiled.device, generator, noise)
    pred = mae.forward_decoder(mae.forward_encoder(tiled, ids_keep), ids_restore).float()
    original = mae.patchify(tiled.float())
    m = mask.unsqueeze(-1)
    pasted = mae.unpatchify(pred * m + original * (1 - m))
    return pasted.reshape(samples, passes, n, *images.shape[1:]).mean(dim=1)


def reconstruct(mae: MaskedAutoencoder, images: torch.Tensor, passes: int = 4,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One reconstruction (N, 1, H, W) of (N, 1, H, W) images: the average of ``passes`` masked passes."""
    return reconstruct_samples(mae, images, passes, 1, generator)[0]
