"""Masked autoencoder (He et al., 2022) for one-channel slices, built from timm blocks."""

from __future__ import annotations

import torch
from timm.layers import PatchEmbed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from .config import MAEConfig


class MaskedAutoencoder(nn.Module):
    """ViT encoder over the visible patches and a lighter ViT decoder that predicts every patch."""

    def __init__(self, cfg: MAEConfig, image_size: int) -> None:
        super().__init__()
        if image_size % cfg.patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of patch size {cfg.patch_size}")
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.grid = image_size // cfg.patch_size

        # Encoder
        self.patch_embed = PatchEmbed(image_size, cfg.patch_size, in_chans=1, embed_dim=cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.register_buffer("pos_embed", self._sincos(cfg.embed_dim), persistent=False)
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim)

        # Decoder
        self.decoder_embed = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", self._sincos(cfg.decoder_embed_dim), persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.mlp_ratio, qkv_bias=True)
            for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(cfg.decoder_embed_dim)
        self.decoder_pred = nn.Linear(cfg.decoder_embed_dim, cfg.patch_size**2)
        self._init_weights()

    def _sincos(self, dim: int) -> torch.Tensor:
        # Fixed 2D sin-cos embedding of the patch grid, with a zero slot for the class token.
        grid = build_sincos2d_pos_embed((self.grid, self.grid), dim)
        return torch.cat([torch.zeros(1, dim), grid], dim=0).unsqueeze(0)

    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> (N, L, p*p)"""
        p, g = self.patch_size, self.grid
        x = imgs.reshape(imgs.shape[0], g, p, g, p)
        return torch.einsum("nhpwq->nhwpq", x).reshape(imgs.shape[0], g * g, p * p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p) -> (N, 1, H, W)"""
        p, g = self.patch_size, self.grid
        x = torch.einsum("nhwpq->nhpwq", x.reshape(x.shape[0], g, g, p, p))
        return x.reshape(x.shape[0], 1, g * p, g * p)

    def random_masking(self, n: int, device: torch.device, generator: torch.Generator | None = None,
                       noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample random shuffle: indices to keep, the binary mask (1 = masked), and the unshuffle order.
        The shuffle sorts (n, L) uniform ``noise``, drawn from ``generator`` unless given."""
        length = self.num_patches
        keep = max(1, round(length * (1 - self.cfg.mask_ratio)))
        # The noise comes from a CPU generator so that runs are reproducible on any device.
        if noise is None:
            noise = torch.rand(n, length, generator=generator)
        noise = noise.to(device)
        shuffle = torch.argsort(noise, dim=1)
        restore = torch.argsort(shuffle, dim=1)
        mask = torch.ones(n, length, device=device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, restore)
        return shuffle[:, :keep], mask, restore

    def forward_encoder(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        n_mask = ids_restore.shape[1] + 1 - x.shape[1]
        tokens = torch.cat([x[:, 1:, :], self.mask_token.expand(x.shape[0], n_mask, -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1, :], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the masked patches only."""
        per_patch = ((pred.float() - self.patchify(imgs)) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (loss, predicted patches, mask)."""
        ids_keep, mask, ids_restore = self.random_masking(imgs.shape[0], imgs.device, generator)
        latent = self.forward_encoder(imgs, ids_keep)
        pred = self.forward_decoder(latent, ids_restore)
        return self.loss(imgs, pred, mask), pred, mask
