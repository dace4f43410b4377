"""Anomaly classifier: a timm ViT that maps a difference image to one anomaly logit."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from .config import ClassifierConfig
from .mae import MaskedAutoencoder


def build_classifier(cfg: ClassifierConfig, image_size: int) -> VisionTransformer:
    """One input channel; one logit, or two when the reference code's 2-class loss is chosen."""
    return VisionTransformer(
        img_size=image_size, patch_size=cfg.patch_size, in_chans=1, num_classes=2 if cfg.head == "softmax" else 1,
        embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
        global_pool=cfg.global_pool, class_token=True,
    )


def init_classifier_from_mae(classifier: VisionTransformer, mae: MaskedAutoencoder) -> None:
    """Copies the MAE encoder (patch embedding, blocks, norm) into the classifier, as the reference code does."""
    if classifier.embed_dim != mae.cfg.embed_dim or len(classifier.blocks) != len(mae.blocks):
        raise ValueError("classifier and MAE encoder sizes differ; cannot initialise from the MAE")
    with torch.no_grad():
        classifier.patch_embed.load_state_dict(mae.patch_embed.state_dict())
        classifier.blocks.load_state_dict(mae.blocks.state_dict())
        # Pooled heads (timm) normalise after pooling, in ``fc_norm``, where the MAE's final norm belongs.
        final_norm = classifier.norm if classifier.global_pool == "token" else classifier.fc_norm
        final_norm.load_state_dict(mae.norm.state_dict())
        classifier.cls_token.copy_(mae.cls_token)
        classifier.pos_embed.copy_(mae.pos_embed)


def classifier_input(difference: torch.Tensor, foreground: torch.Tensor, cfg: ClassifierConfig) -> torch.Tensor:
    """The difference image |recon − original|, zeroed outside the foreground when ``cfg.masked_input``."""
    return difference * foreground.to(difference.dtype) if cfg.masked_input else difference


def anomaly_probability(logits: torch.Tensor) -> torch.Tensor:
    """Probability of the pseudo-abnormal class for either head."""
    if logits.shape[-1] == 2:
        return torch.softmax(logits.float(), dim=-1)[..., 1]
    return torch.sigmoid(logits.float()[..., 0])


def classifier_loss(logits: torch.Tensor, targets: torch.Tensor, cfg: ClassifierConfig) -> torch.Tensor:
    """The training loss of (N, classes) logits against 0/1 targets."""
    if cfg.head == "softmax":
        return F.cross_entropy(logits.float(), targets.long(), label_smoothing=cfg.label_smoothing)
    return F.binary_cross_entropy_with_logits(logits.float()[:, 0], targets)
