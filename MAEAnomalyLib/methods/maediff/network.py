"""The MAEDiff network: MONAI's diffusion U-Net with an MAE module before its middle block (MAEDiff's
Figure 2). The module cuts the deepest feature map into cells; the cells that lie wholly outside the
noised patch (visible) are encoded alone, then decoded together with every cell of the map, and the result
is added to the map. Without the module it is pDDPM's U-Net."""

from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from .config import MAEDiffConfig, unet_channels


class FeatureMAE(nn.Module):
    """A masked autoencoder over the ``grid`` × ``grid`` cells (``cell`` × ``cell`` feature pixels each) of a
    ``channels``-deep feature map."""

    def __init__(self, channels: int, cell: int, grid: int, dim: int, depth: int, decoder_depth: int,
                 heads: int) -> None:
        super().__init__()
        self.cell, self.grid = cell, grid
        tokens, width = grid * grid, channels * cell * cell
        self.embed = nn.Linear(width, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.encoder = nn.Sequential(*(Block(dim, heads, qkv_bias=True) for _ in range(depth)), nn.LayerNorm(dim))
        self.decoder_embed = nn.Linear(width, dim)  # every cell, noised or not, for the decoder
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.decoder = nn.Sequential(*(Block(dim, heads, qkv_bias=True) for _ in range(decoder_depth)),
                                     nn.LayerNorm(dim))
        self.head = nn.Linear(dim, width)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.decoder_pos_embed, std=0.02)
        nn.init.zeros_(self.head.weight)  # starts as the identity on the feature map: the U-Net alone
        nn.init.zeros_(self.head.bias)

    def cells(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, grid², C·cell²), row by row."""
        n, c, _, _ = features.shape
        g, k = self.grid, self.cell
        return features.reshape(n, c, g, k, g, k).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, c * k * k)

    def uncells(self, tokens: torch.Tensor, channels: int) -> torch.Tensor:
        n, g, k = tokens.shape[0], self.grid, self.cell
        return tokens.reshape(n, g, g, channels, k, k).permute(0, 3, 1, 4, 2, 5).reshape(n, channels, g * k, g * k)

    def encode(self, features: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """The encoder's tokens of the visible cells only: (N, V, dim). ``visible`` (N, grid²) holds the same
        number of True per row (a patch covers the same number of cells wherever it is)."""
        keep = visible.sum(dim=1)
        if (keep != keep[0]).any():
            raise ValueError("every slice of a batch must have the same number of visible cells")
        order = torch.argsort((~visible).to(torch.int8), dim=1, stable=True)[:, : int(keep[0])]
        tokens = self.embed(self.cells(features)) + self.pos_embed
        chosen = torch.gather(tokens, 1, order[..., None].expand(-1, -1, tokens.shape[-1]))
        return self.encoder(chosen)

    def forward(self, features: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        encoded = self.encode(features, visible)
        every = self.decoder_embed(self.cells(features)) + self.decoder_pos_embed
        decoded = self.decoder(torch.cat([encoded, every], dim=1))[:, encoded.shape[1]:]
        return features + self.uncells(self.head(decoded), features.shape[1])


class _MAEThenMiddle(nn.Module):
    """The U-Net's middle block, preceded by the MAE module; ``visible`` is set for each forward pass."""

    def __init__(self, mae: FeatureMAE, middle: nn.Module) -> None:
        super().__init__()
        self.mae, self.middle = mae, middle
        self.visible: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None = None
                ) -> torch.Tensor:
        assert self.visible is not None, "PatchDiffusionUNet sets the visible cells"
        return self.middle(hidden_states=self.mae(hidden_states, self.visible), temb=temb, context=context)


class PatchDiffusionUNet(nn.Module):
    """x_t (N, 1, S, S) in [-1, 1], the step t (N,), the noised patch (N, 1, S, S; 1 inside) -> x̂₀."""

    def __init__(self, cfg: MAEDiffConfig, image_size: int) -> None:
        super().__init__()
        channels = unet_channels(cfg)
        self.unet = DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1, num_res_blocks=cfg.res_blocks,
                                       channels=channels, attention_levels=[False] * cfg.levels,
                                       norm_num_groups=cfg.norm_groups, num_head_channels=cfg.head_channels)
        self.down = 2 ** (cfg.levels - 1)  # image pixels per feature pixel at the middle block
        self.cell = cfg.cell if cfg.mae else 0
        if cfg.mae:
            grid = image_size // cfg.cell
            self.unet.middle_block = _MAEThenMiddle(
                FeatureMAE(channels[-1], cfg.cell // self.down, grid, cfg.mae_dim, cfg.mae_depth,
                           cfg.mae_decoder_depth, cfg.mae_heads), self.unet.middle_block)

    @property
    def mae(self) -> FeatureMAE | None:
        middle = self.unet.middle_block
        return middle.mae if isinstance(middle, _MAEThenMiddle) else None

    def visible_cells(self, patch_mask: torch.Tensor) -> torch.Tensor:
        """(N, grid²): True for the cells with no noised pixel."""
        noised = nn.functional.max_pool2d(patch_mask.float(), self.cell)
        return noised.flatten(1) == 0

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        mae = self.unet.middle_block
        if not isinstance(mae, _MAEThenMiddle):
            return self.unet(x_t, t)
        mae.visible = self.visible_cells(patch_mask)
        try:
            return self.unet(x_t, t)
        finally:
            mae.visible = None
