"""The settings of Reversed Autoencoders (torch-free): the network's widths, the training losses' weights
and the anomaly map. Defaults are the authors' (github ci-ber/RA, GPL-3.0: read for facts, no code taken):
the network of ``model_zoo/ra.py`` as ``projects/23_ra_midl/configs/fast_mri/ra.yaml`` builds it, the
losses of ``projects/23_ra_midl/RA_Trainer.py`` and the map of ``projects/23_ra_midl/DownstreamEvaluator.py``."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import ClassVar


def stage_widths(width: int, max_width: int, stages: int) -> list[int]:
    """The encoder's channels after each of its ``stages`` poolings: doubling from ``width``, capped."""
    return [min(width * 2**i, max_width) for i in range(stages)]


def approximate_parameters(cfg: RAConfig, image_size: int) -> int:
    """The networks' parameters, counted from the sizes without building them (exact for ``network``)."""
    widths = stage_widths(cfg.width, cfg.max_width, cfg.stages)

    def block(i: int, o: int) -> int:  # two 3×3 convolutions, two norms, a 1×1 shortcut when widths differ
        return 9 * i * o + 9 * o * o + 4 * o + (i * o if i != o else 0)

    flat = widths[-1] * (image_size // 2**cfg.stages) ** 2
    encoder = 25 * widths[0] + 2 * widths[0] + sum(block(i, o) for i, o in pairwise(widths))
    encoder += block(widths[-1], widths[-1]) + flat * 2 * cfg.latent + 2 * cfg.latent
    decoder = cfg.latent * flat + flat + block(widths[-1], widths[-1])
    decoder += sum(block(i, o) for i, o in pairwise(widths[::-1]))
    decoder += block(widths[0], widths[0]) + 25 * widths[0] + 1
    return encoder + decoder


@dataclass
class RAConfig:
    """The method's section of ``config.json`` (``ra``)."""

    CHOICES: ClassVar[dict] = {"selection": ("last", "best_validation"), "anomaly_map": ("perceptual", "residual")}
    RANGES: ClassVar[dict] = {"width": (1, 4097), "max_width": (1, 4097), "stages": (1, 11), "latent": (1, 65537),
                              "epochs": (1, 1_000_001), "lr": (1e-12, 10), "beta_rec": (0, 1e6), "beta_kl": (0, 1e6),
                              "beta_neg": (0, 1e6), "gamma_r": (0, 1e6), "exp_elbo_weight": (0, 1e6),
                              "reversed_weight": (0, 1e6), "clahe_clip": (0, 1.0001), "clahe_tiles": (1, 257)}

    # Encoder: a 5×5 convolution to ``width`` channels, then ``stages`` poolings (residual blocks between
    # them double the width up to ``max_width``), a last residual block and a linear layer to the mean and
    # log-variance of a ``latent``-dimensional code; the decoder mirrors it (ra.yaml: 64…512, 128).
    width: int = 64
    max_width: int = 512
    stages: int = 5
    latent: int = 128
    epochs: int = 1500  # ra.yaml (nr_epochs; its early stopping after 500 epochs without progress is not kept)
    lr: float = 5e-5  # Adam, one for the encoder and one for the decoder (RA_Trainer.py, ra.yaml)
    # The losses' weights (RA_Trainer.py): the reconstruction's and the KL's in the ELBO, the KL's inside
    # the exp-ELBO of reconstructions and fakes, the decoder's small cycle term, the exp-ELBO term's and
    # the reversed embedding loss's in the encoder's objective.
    beta_rec: float = 0.5
    beta_kl: float = 1.0
    beta_neg: float = 128.0
    gamma_r: float = 1e-8
    exp_elbo_weight: float = 0.25
    reversed_weight: float = 0.005
    # "best_validation": keep the epoch of lowest reconstruction error on the held-out healthy slices, as
    # RA_Trainer.py keeps its best model; "last": the last epoch's.
    selection: str = "best_validation"
    # The map's contrast-limited adaptive histogram equalisation: scikit-image's defaults, which
    # DownstreamEvaluator.py uses (clip limit 0.01, tiles of 1/8 of the side). The map's LPIPS weighting
    # has no settings (σ = 2 px, the shipped AlexNet LPIPS: ``anomaly_map``).
    clahe_clip: float = 0.01
    clahe_tiles: int = 8
    # "perceptual": the authors' map above; "residual": |x_ph − x| alone, without equalisation or LPIPS
    # weighting (the small preset's: docs/experiments.md).
    anomaly_map: str = "perceptual"

    def problems(self, image_size: int | None = None) -> list[str]:
        problems = []
        if self.width > self.max_width:
            problems.append(f"ra.width ({self.width}) must not exceed ra.max_width ({self.max_width})")
        if image_size is not None and image_size % 2**self.stages:
            problems.append(f"preprocess.image_size ({image_size}) must be a multiple of 2 ** ra.stages "
                            f"({2**self.stages})")
        if image_size is not None and image_size < LPIPS_MIN_SIZE:
            problems.append(f"preprocess.image_size ({image_size}) must be at least {LPIPS_MIN_SIZE}, the "
                            "smallest slice the map's LPIPS network (AlexNet) takes")
        if image_size is not None and image_size < self.clahe_tiles:
            problems.append(f"preprocess.image_size ({image_size}) must be at least ra.clahe_tiles "
                            f"({self.clahe_tiles})")
        if not problems and image_size is not None and (
                approximate_parameters(self, image_size) > SIZE_CAP_FACTOR * approximate_parameters(RAConfig(), 128)):
            problems.append(f"the networks would have more than {SIZE_CAP_FACTOR} times the parameters of the "
                            "paper preset")
        return problems


# The smallest side the map's LPIPS AlexNet takes (``lpips``): its 11×11 stride-4 convolution and two 3×3
# stride-2 poolings leave nothing of a smaller slice.
LPIPS_MIN_SIZE = 31

# A config.json is untrusted: networks larger than this many times the paper preset's are refused unbuilt.
SIZE_CAP_FACTOR = 10


def preset(name: str) -> tuple[RAConfig, dict]:
    """The section for ``tiny`` (tests, demo), ``small`` (CPU) or ``paper`` (the authors' network, 128 px),
    and the shared settings that preset sets."""
    if name == "paper":  # 29.4 M parameters at 128 px; batches of 8 (ra.yaml)
        return RAConfig(), {"image_size": 128, "batch_size": 8}
    if name == "tiny":
        # Widths 8…32 and a 32-d code train in seconds on a CPU; four poolings leave the paper's 4×4 deepest
        # map at 64 px (2×2 at the tests' 32 px: a 1×1 map would leave each batch norm there the batch
        # alone to normalise over, and training then amplifies rounding so much that one thread and two
        # part after two epochs). The Soft-IntroVAE's own learning rate (2e-4, noted in ra.yaml) for the
        # few epochs a test or the demo has.
        cfg = RAConfig(width=8, max_width=32, stages=4, latent=32, epochs=20, lr=2e-4)
        return cfg, {"image_size": 64, "batch_size": 16}
    if name == "small":
        # The paper's 128 px (and the other methods' small presets', so that their maps compare), at an
        # eighth of its widths (8…128): 1.8 M parameters. Keeping the resolution and thinning the
        # network, rather than halving the slice to 64 px, keeps the map's detail, which is what the
        # method localises with; the cost sits in the few full-resolution layers, which are 8 wide. 15
        # epochs took 71 min at one thread (the other core busy) on brain-t1's 30 volumes, at the
        # Soft-IntroVAE's own lr, 2e-4, which reached a lower held-out MSE than the authors' 5e-5 in those
        # epochs. Its map is the plain residual. Both were chosen on healthy or synthetic data
        # (docs/experiments.md).
        cfg = RAConfig(width=8, max_width=128, epochs=15, lr=2e-4, anomaly_map="residual")
        return cfg, {"image_size": 128, "batch_size": 8}
    raise ValueError(f"unknown preset '{name}' (choose tiny, small or paper)")
