"""The Reversed Autoencoder's anomaly map: |CLAHE(x_ph) − CLAHE(x)| weighted by two smoothed LPIPS maps
(``perceptual_weight``), inside the foreground, after the authors' ``projects/23_ra_midl/DownstreamEvaluator.py``
(github ci-ber/RA). They equalise with scikit-image's ``equalize_adapthist``; neither it nor another CLAHE
is among our dependencies, so ``clahe`` is a plain one with its defaults."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from .lpips import SpatialLPIPS


def stretch(images: torch.Tensor) -> torch.Tensor:
    """Each (N, 1, H, W) image's range mapped to [0, 1] (zero where it is constant)."""
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    span = images.amax(dim=(1, 2, 3), keepdim=True) - low
    return torch.where(span > 0, (images - low) / span.clamp_min(1e-12), torch.zeros_like(images))


def clahe(images: torch.Tensor, tiles: int = 8, clip: float = 0.01, bins: int = 256) -> torch.Tensor:
    """Contrast-limited adaptive histogram equalisation of each (N, 1, H, W) image, as scikit-image's
    ``equalize_adapthist`` does by default: the image stretched to [0, 1] and cut into ``bins`` grey levels;
    a ``tiles`` × ``tiles`` grid of regions, each with its histogram clipped at ``clip`` × its pixels (at
    least 1) and the excess spread over every level, its cumulative histogram mapping grey levels; each
    pixel mapped by the bilinear blend of its four nearest regions' mappings; the result stretched to
    [0, 1]. (Theirs places the regions half a region in and clips iteratively; the maps differ a little.)"""
    n, _, h, w = images.shape
    th, tw = math.ceil(h / tiles), math.ceil(w / tiles)
    levels = (stretch(images.float()) * (bins - 1)).round().long()  # (N, 1, H, W)
    # Regions cover the image; a side that does not divide is padded by repeating its edge.
    padded = F.pad(levels.float(), (0, tiles * tw - w, 0, tiles * th - h), mode="replicate").long()
    regions = padded.view(n, tiles, th, tiles, tw).permute(0, 1, 3, 2, 4).reshape(n, tiles * tiles, th * tw)
    hist = torch.zeros(n, tiles * tiles, bins, device=images.device).scatter_add_(
        2, regions, torch.ones(regions.shape, device=images.device))
    limit = max(1.0, clip * th * tw)
    excess = (hist - limit).clamp_min(0).sum(dim=2, keepdim=True)
    mapping = (hist.clamp_max(limit) + excess / bins).cumsum(dim=2) / (th * tw)  # (N, regions, bins) in [0, 1]

    def nearest(size: int, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For each pixel along a side: the regions before and after its position among region centres,
        and its weight on the latter (constant beyond the first and last centres)."""
        at = ((torch.arange(size, device=images.device) + 0.5) / step - 0.5).clamp(0, tiles - 1)
        before = at.floor().long()
        return before, (before + 1).clamp_max(tiles - 1), at - before

    y0, y1, wy = nearest(h, th)
    x0, x1, wx = nearest(w, tw)
    flat = mapping.flatten(1)

    def mapped(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        index = (rows[:, None] * tiles + cols[None, :]) * bins + levels[:, 0]  # (N, H, W)
        return flat.gather(1, index.flatten(1)).view(n, 1, h, w)

    wy, wx = wy[:, None], wx[None, :]
    out = ((1 - wy) * (1 - wx) * mapped(y0, x0) + (1 - wy) * wx * mapped(y0, x1)
           + wy * (1 - wx) * mapped(y1, x0) + wy * wx * mapped(y1, x1))
    return stretch(out)


def gaussian_smooth(maps: torch.Tensor, sigma: float = 2.0, truncate: float = 4.0) -> torch.Tensor:
    """Each (N, 1, H, W) map filtered in its plane by scipy.ndimage's ``gaussian_filter`` (``sigma`` pixels,
    edges mirrored), the smoothing the authors use; the maps come back on their device and in their dtype."""
    smoothed = gaussian_filter(maps.detach().cpu().double().numpy(), sigma=(0, 0, sigma, sigma), truncate=truncate)
    return torch.from_numpy(smoothed).to(device=maps.device, dtype=maps.dtype)


def perceptual_weight(pseudo_healthy: torch.Tensor, images: torch.Tensor, equalised_pseudo: torch.Tensor,
                      equalised: torch.Tensor, lpips: SpatialLPIPS) -> torch.Tensor:
    """S1·S2, as the authors weight the residual: S1 the LPIPS spatial map of (x_ph, x), S2 that of their
    CLAHE images, each smoothed by a Gaussian of σ = 2 pixels. Their LPIPS has the SqueezeNet backbone; ours
    AlexNet's (``lpips``: the one whose weights we may ship)."""
    s1 = gaussian_smooth(lpips(pseudo_healthy, images))
    s2 = gaussian_smooth(lpips(equalised_pseudo, equalised))
    return s1 * s2


def anomaly_map(pseudo_healthy: torch.Tensor, images: torch.Tensor, foreground: torch.Tensor, clip: float,
                tiles: int, lpips: SpatialLPIPS) -> torch.Tensor:
    """|CLAHE(x_ph) − CLAHE(x)| × the perceptual weight, zero outside the foreground; both images clamped to
    [0, 1] first, as the authors' evaluator does. The equalisation and LPIPS see the whole slice, background
    too."""
    x_ph, x = pseudo_healthy.float().clamp(0, 1), images.float().clamp(0, 1)
    eq_ph, eq = clahe(x_ph, tiles, clip), clahe(x, tiles, clip)
    residual = (eq_ph - eq).abs()
    return residual * perceptual_weight(x_ph, x, eq_ph, eq, lpips) * foreground.to(residual.dtype)


def residual_map(pseudo_healthy: torch.Tensor, images: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """|x_ph − x| inside the foreground, both clamped to [0, 1]: the map with neither equalisation nor
    perceptual weighting (``ra.anomaly_map=residual``)."""
    residual = (pseudo_healthy.float().clamp(0, 1) - images.float().clamp(0, 1)).abs()
    return residual * foreground.to(residual.dtype)
