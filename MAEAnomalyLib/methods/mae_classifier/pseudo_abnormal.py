"""Pseudo-abnormal module (paper, Sec. 3.3): scale the intensity of random boxes of a reconstruction."""

from __future__ import annotations

import torch

from .config import PseudoAbnormalConfig


def _randint(low: int, high: int, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """n integers uniform on [low, high], inclusive."""
    return torch.randint(low, high + 1, (n,), generator=generator)


def box_masks(n: int, size: int, cfg: PseudoAbnormalConfig, generator: torch.Generator | None = None,
              foreground: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws k ~ U{min_boxes..max_boxes} boxes per image, sides scaled from ``reference_size``.

    Boxes lie anywhere in the image (paper), or, with ``cfg.in_foreground`` and a (n, size, size)
    ``foreground``, are centred on a foreground pixel so that none falls on empty background.
    Returns (box_index, count): box_index is (n, size, size) int, 0 outside every box and b+1 inside
    box b (later boxes drawn over earlier ones); count is (n,) the number of boxes drawn.
    """
    scale = size / cfg.reference_size
    lo = max(1, round(cfg.min_side * scale))
    hi = min(size, max(lo, round(cfg.max_side * scale)))
    counts = _randint(cfg.min_boxes, cfg.max_boxes, n, generator)
    index = torch.zeros(n, size, size, dtype=torch.long)
    coords = torch.arange(size)
    for i in range(n):
        k = int(counts[i])
        h, w = _randint(lo, hi, k, generator), _randint(lo, hi, k, generator)
        centres = None
        if cfg.in_foreground and foreground is not None and foreground[i].any():
            centres = torch.nonzero(foreground[i])
        for b in range(k):
            hb, wb = int(h[b]), int(w[b])
            if centres is None:
                y0 = int(torch.randint(0, size - hb + 1, (1,), generator=generator))
                x0 = int(torch.randint(0, size - wb + 1, (1,), generator=generator))
            else:
                cy, cx = centres[int(torch.randint(0, len(centres), (1,), generator=generator))].tolist()
                y0, x0 = min(max(0, cy - hb // 2), size - hb), min(max(0, cx - wb // 2), size - wb)
            rows = (coords >= y0) & (coords < y0 + hb)
            cols = (coords >= x0) & (coords < x0 + wb)
            index[i][rows[:, None] & cols[None, :]] = b + 1
    return index, counts


def make_pseudo_abnormal(recon: torch.Tensor, cfg: PseudoAbnormalConfig, generator: torch.Generator | None = None,
                         foreground: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multiplies each box of (N, 1, S, S) reconstructions by β ~ U(beta_low, beta_high).

    With ``beta_mode == "box"`` one β serves a whole box (paper); with ``"pixel"`` each pixel draws
    its own (the paper's ablation). Returns (altered, box_index) with box_index as in ``box_masks``.
    """
    n, _, size, _ = recon.shape
    index, _ = box_masks(n, size, cfg, generator, None if foreground is None else foreground[:, 0].cpu())
    span = cfg.beta_high - cfg.beta_low
    if cfg.beta_mode == "box":
        betas = cfg.beta_low + span * torch.rand(n, cfg.max_boxes + 1, generator=generator)
        factor = torch.gather(betas, 1, index.view(n, -1)).view(n, size, size)
    elif cfg.beta_mode == "pixel":
        factor = cfg.beta_low + span * torch.rand(n, size, size, generator=generator)
    else:
        raise ValueError(f"unknown beta_mode '{cfg.beta_mode}' (choose box or pixel)")
    factor = torch.where(index > 0, factor, torch.ones_like(factor)).to(recon.device, recon.dtype)
    return recon * factor.unsqueeze(1), index.to(recon.device)
