"""LPIPS v0.1 (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR
2018) with the AlexNet backbone, as its spatial map: what the ``lpips`` package's ``LPIPS(net="alex",
spatial=True)`` returns for ``normalize=True`` inputs, written afresh. The weights ship as
``models/lpips/alex.safetensors`` (``scripts/convert_lpips.py``; licences in ``models/lpips/``), loaded
without unpickling and without any download. The RA authors use the SqueezeNet backbone, which no offline
source we may redistribute offers (``docs/usage.md``, ``ra``)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...core.shipped import shipped_file
from .config import LPIPS_MIN_SIZE as MIN_SIZE

WEIGHTS = ("lpips", "alex.safetensors")
CHANNELS = (64, 192, 384, 256, 256)  # the five ReLU outputs LPIPS compares
# lpips's ScalingLayer: the [-1, 1] input recentred to ImageNet's channel statistics.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class SpatialLPIPS(nn.Module):
    """(a, b), each (N, 1, S, S) in [0, 1] → the LPIPS distance map (N, 1, S, S). Each image is scaled to
    [-1, 1] and broadcast over three channels (lpips's scaling layer broadcasts a one-channel image the same
    way); the five ReLU outputs of AlexNet's convolutions are unit-normalised over channels, their squared
    difference weighted per channel by the layer's linear head (a 1×1 convolution), upsampled bilinearly
    to S × S and summed over layers."""

    def __init__(self) -> None:
        super().__init__()
        shapes = ((3, 11, 4, 2), (CHANNELS[0], 5, 1, 2), (CHANNELS[1], 3, 1, 1), (CHANNELS[2], 3, 1, 1),
                  (CHANNELS[3], 3, 1, 1))
        self.convs = nn.ModuleList(nn.Conv2d(cin, cout, k, stride=s, padding=p)
                                   for (cin, k, s, p), cout in zip(shapes, CHANNELS, strict=True))
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """AlexNet's five ReLU outputs (max pooling 3×3, stride 2, after the first two)."""
        out = []
        for k, conv in enumerate(self.convs):
            if k in (1, 2):
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(conv(x))
            out.append(x)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n, size = len(a), a.shape[-2:]
        if min(size) < MIN_SIZE:
            raise ValueError(f"LPIPS (AlexNet) needs images of at least {MIN_SIZE} × {MIN_SIZE} pixels, not "
                             f"{size[0]} × {size[1]}")
        x = ((2 * torch.cat([a, b]).float() - 1) - self.shift) / self.scale  # (2N, 3, S, S)
        total = torch.zeros(n, 1, *size, device=a.device)
        for feats, head in zip(self.features(x), self.heads, strict=True):
            unit = feats / (feats.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            diff = (unit[:n] - unit[n:]).square()
            total = total + F.interpolate(head(diff), size=size, mode="bilinear", align_corners=False)
        return total


def load_lpips(path: Path | None = None) -> SpatialLPIPS:
    """The network with the shipped weights (float16 on disk, float32 here), frozen, in eval mode, on the CPU."""
    from safetensors.torch import load_file

    net = SpatialLPIPS()
    tensors = load_file(str(path or shipped_file(*WEIGHTS)))
    net.load_state_dict({k: v.float() for k, v in tensors.items()})
    return net.eval().requires_grad_(False)
