"""The settings of MAEDiff and of its ablation pDDPM (torch-free).

MAEDiff (Xu, Wang and Du, "MAEDiff: Masked Autoencoder-enhanced Diffusion Models for Unsupervised Anomaly
Detection in Brain Images") builds on the patched diffusion model pDDPM (Behrendt et al., MIDL 2023). The
network, noise schedule, objective and patch sizes are pDDPM's (github FinnBehrendt/patched-Diffusion-
Models-UAD, ``configs/experiment/MIDL23_DDPM/DDPM_patched.yaml``; no licence: read for facts, nothing
taken); the MAE module and the overlapping test patches are MAEDiff's, whose sizes its paper does not give
(``docs/experiments.md`` records what was chosen and on what)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


def unet_channels(cfg: MAEDiffConfig) -> list[int]:
    """The U-Net's width at each level: pDDPM's multipliers (1, 2, 2), extended with 2s for more levels."""
    return [cfg.width] + [2 * cfg.width] * (cfg.levels - 1)


def approximate_parameters(cfg: MAEDiffConfig, image_size: int) -> int:
    """The network's parameters, roughly (within a factor of 2 of what is built), counted without building it:
    the 3×3 convolutions of the residual blocks, down and up (the up path's wider inputs: × 2.5), the middle
    block, and the MAE module's transformer blocks and cell embeddings."""
    channels = unet_channels(cfg)
    unet = sum(2 * 9 * c * c * cfg.res_blocks * 5 // 2 for c in channels) + 4 * 9 * channels[-1] ** 2
    if not cfg.mae:
        return unet
    cell_width = channels[-1] * (cfg.cell // 2 ** (cfg.levels - 1)) ** 2
    tokens = (image_size // cfg.cell) ** 2
    return unet + 12 * cfg.mae_dim**2 * (cfg.mae_depth + cfg.mae_decoder_depth) + 3 * cell_width * cfg.mae_dim \
        + 2 * tokens * cfg.mae_dim


# A config.json is untrusted: networks larger than this many times the paper preset's are refused unbuilt.
SIZE_CAP_FACTOR = 10


@dataclass
class MAEDiffConfig:
    """The method's section of ``config.json`` (``maediff``; ``pddpm`` for the ablation)."""

    CHOICES: ClassVar[dict] = {"selection": ("last", "best_validation")}
    RANGES: ClassVar[dict] = {"width": (1, 4097), "levels": (1, 8), "res_blocks": (1, 17), "norm_groups": (1, 4097),
                              "head_channels": (1, 4097), "timesteps": (2, 100_001), "test_step": (0, 100_000),
                              "patch": (1, 4097), "stride": (1, 4097), "cell": (1, 4097), "mae_dim": (1, 4097),
                              "mae_depth": (1, 65), "mae_decoder_depth": (1, 65), "mae_heads": (1, 257),
                              "epochs": (1, 1_000_001), "lr": (1e-12, 10)}

    # The U-Net (an OpenAI-style diffusion U-Net, MONAI's ``DiffusionModelUNet``): ``levels`` resolutions of
    # ``res_blocks`` residual blocks, attention only in the middle block (pDDPM: 128 wide, 3 levels, 3 blocks).
    width: int = 128
    levels: int = 3
    res_blocks: int = 3
    norm_groups: int = 32
    head_channels: int = 64
    # The forward process: T steps of the cosine schedule; the network predicts x₀ and is trained with L1.
    # Scoring noises each patch to ``test_step`` (0-based; pDDPM's 500 steps of 1000) and reconstructs it
    # in one network pass, without iterative sampling.
    timesteps: int = 1000
    test_step: int = 499
    # The upper-level patches (pDDPM: 48 px of a 96-px slice, on a grid with stride 48 in training). At
    # test time they may overlap with ``stride`` and are averaged (MAEDiff). The default is the patch: training
    # only ever noises patches of the stride-p grid, and off-grid test patches made the map worse on synthetic
    # lesions (voxel AUPRC 0.159 at s = p, 0.035 at p/2, 0.026 at p/4; docs/experiments.md).
    patch: int = 48
    stride: int = 48
    # The MAE module around the U-Net's middle block: the deepest feature map cut into cells of ``cell``
    # image pixels; the cells outside the noised patch (visible) are encoded alone, then decoded with
    # every cell; its output is added to the feature map. Off: pDDPM.
    mae: bool = True
    cell: int = 8
    mae_dim: int = 128
    mae_depth: int = 2
    mae_decoder_depth: int = 1
    mae_heads: int = 4
    epochs: int = 1600  # pDDPM's max_epochs
    lr: float = 1e-4  # Adam
    # "best_validation": keep the epoch of lowest L1 of the noised patches of the held-out healthy slices.
    selection: str = "best_validation"

    def problems(self, image_size: int | None = None) -> list[str]:
        """Why these settings cannot build, one line each (none: they can)."""
        problems = []
        channels = unet_channels(self)
        if any(c % self.norm_groups for c in channels):
            problems.append(f"maediff.norm_groups ({self.norm_groups}) must divide every U-Net width {channels}")
        if channels[-1] % self.head_channels:
            problems.append(f"maediff.head_channels ({self.head_channels}) must divide the middle block's width "
                            f"({channels[-1]})")
        if self.test_step >= self.timesteps:
            problems.append(f"maediff.test_step ({self.test_step}) must be below maediff.timesteps ({self.timesteps})")
        if self.mae_dim % self.mae_heads:
            problems.append(f"maediff.mae_heads ({self.mae_heads}) must divide maediff.mae_dim ({self.mae_dim})")
        down = 2 ** (self.levels - 1)  # the middle block's feature pixel, in image pixels
        if self.mae and self.cell % down:
            problems.append(f"maediff.cell ({self.cell}) must be a multiple of the middle block's pixel ({down} px)")
        for name in ("patch", "stride"):
            if self.mae and getattr(self, name) % self.cell:
                problems.append(f"maediff.{name} ({getattr(self, name)}) must be a multiple of maediff.cell "
                                f"({self.cell}), so that a patch covers whole cells")
        if image_size is not None:
            if image_size % down or (self.mae and image_size % self.cell):
                problems.append(f"preprocess.image_size ({image_size}) must be a multiple of "
                                f"{max(down, self.cell if self.mae else 1)}")
            if self.patch >= image_size:
                problems.append(f"maediff.patch ({self.patch}) must be smaller than preprocess.image_size "
                                f"({image_size})")
            cap = SIZE_CAP_FACTOR * approximate_parameters(MAEDiffConfig(), 96)
            if not problems and approximate_parameters(self, image_size) > cap:
                problems.append(f"the network would have more than {SIZE_CAP_FACTOR} times the parameters of the "
                                "paper preset")
        return problems


def preset(name: str, mae: bool = True) -> tuple[MAEDiffConfig, dict]:
    """The section for ``tiny`` (tests), ``small`` (CPU) or ``paper`` (pDDPM's sizes, for a GPU), and the
    shared settings it sets; ``mae=False`` gives pDDPM: no MAE module, test patches that do not overlap."""
    if name == "paper":  # 96-px slices (pDDPM's 192 px halved), 48-px patches
        cfg, shared = MAEDiffConfig(), {"image_size": 96, "batch_size": 32}
    elif name == "small":
        # pDDPM's shape at a quarter of its width and 64 px (the patch scaled by 2/3): 2.0 M parameters
        # (2.2 M with the MAE module). 30 epochs of 1,497 slices took 68 min at one thread, the other core
        # busy with another training (2026-12-05).
        cfg = MAEDiffConfig(width=32, norm_groups=8, head_channels=32, patch=32, stride=32, cell=8, mae_dim=64,
                            mae_heads=4, epochs=30)
        shared = {"image_size": 64, "batch_size": 16}
    elif name == "tiny":  # seconds on a CPU: tests and the demo
        cfg = MAEDiffConfig(width=8, levels=2, res_blocks=1, norm_groups=4, head_channels=8, patch=16, stride=8,
                            cell=4, mae_dim=16, mae_depth=1, mae_heads=2, epochs=2, lr=1e-3)
        shared = {"image_size": 32, "batch_size": 8}
    else:
        raise ValueError(f"unknown preset '{name}' (choose tiny, small or paper)")
    if not mae:
        cfg.mae, cfg.stride = False, cfg.patch
    return cfg, shared
