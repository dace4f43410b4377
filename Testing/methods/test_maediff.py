"""MAEDiff and its pDDPM ablation, piece by piece: the noising touches only the chosen patch, the patches
put back together restore a slice exactly, the MAE module's encoder sees only the visible cells, the
schedule is the cosine formula, and a slice scores the same in any batch."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from training_runs import ROOT, child_env, train_command

from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.data.synthetic import write_cohort
from MAEAnomalyLib.methods import get
from MAEAnomalyLib.methods.maediff.config import MAEDiffConfig, preset
from MAEAnomalyLib.methods.maediff.network import PatchDiffusionUNet
from MAEAnomalyLib.methods.maediff.patches import make_scheduler, noise_patch, origins, patch_masks, stitch
from MAEAnomalyLib.methods.maediff.scorer import make_scorer, patches_per_slice
from MAEAnomalyLib.methods.model import AnomalyModel, load_model
from MAEAnomalyLib.methods.model_config import preset as model_preset
from MAEAnomalyLib.training.site import calibrate_site


def test_patches_cover_the_slice_and_their_count_follows_the_stride() -> None:
    assert origins(64, 32, 16) == [(y, x) for y in (0, 16, 32) for x in (0, 16, 32)]
    assert origins(64, 32, 32) == [(0, 0), (0, 32), (32, 0), (32, 32)]
    assert origins(40, 16, 16) == [(y, x) for y in (0, 16, 24) for x in (0, 16, 24)]  # a last one flush
    for size, patch, stride in ((64, 32, 16), (96, 48, 16), (96, 48, 48), (40, 16, 16)):
        assert patch_masks(size, patch, origins(size, patch, stride)).amax(dim=0).min() == 1  # every pixel
    assert patches_per_slice(96, 48, 16) == ((96 - 48) // 16 + 1) ** 2 == 16


def test_noising_changes_only_the_chosen_patch() -> None:
    scheduler = make_scheduler(1000)
    x0 = torch.rand(2, 1, 32, 32) * 2 - 1
    mask = patch_masks(32, 16, [(0, 16), (16, 0)])
    t = torch.tensor([499, 10])
    noisy = noise_patch(scheduler, x0, torch.randn(2, 1, 32, 32), t, mask)
    assert torch.equal(noisy[mask == 0], x0[mask == 0])
    assert (noisy[mask == 1] != x0[mask == 1]).all()


def test_the_test_step_is_the_cosine_schedule() -> None:
    scheduler = make_scheduler(1000)
    s = 0.008  # Nichol and Dhariwal's offset, MONAI's default

    def f(t: float) -> float:
        return math.cos((t / 1000 + s) / (1 + s) * math.pi / 2) ** 2

    step = 499  # 0-based: the 500th of 1000 steps, pDDPM's test_timesteps
    alpha_bar = f(step + 1) / f(0)
    assert float(scheduler.alphas_cumprod[step]) == pytest.approx(alpha_bar, rel=1e-5)
    x0, noise = torch.full((1, 1, 4, 4), 0.5), torch.full((1, 1, 4, 4), -1.0)
    noisy = noise_patch(scheduler, x0, noise, torch.tensor([step]), torch.ones(1, 1, 4, 4))
    expected = math.sqrt(alpha_bar) * 0.5 - math.sqrt(1 - alpha_bar)
    assert torch.allclose(noisy, torch.full_like(noisy, expected), atol=1e-5)


def test_stitching_restores_the_slice_when_each_patch_is_predicted_exactly() -> None:
    x0 = torch.rand(3, 1, 64, 64)
    masks = patch_masks(64, 32, origins(64, 32, 16))
    # Each patch's prediction is right inside its patch and wrong everywhere else.
    predictions = torch.where(masks[None] > 0, x0[:, None], torch.randn(3, len(masks), 1, 64, 64))
    assert torch.allclose(stitch(predictions, masks), x0, atol=1e-6)


def tiny_net(mae: bool = True) -> tuple[PatchDiffusionUNet, int]:
    cfg, shared = preset("tiny", mae=mae)
    torch.manual_seed(0)
    return PatchDiffusionUNet(cfg, shared["image_size"]).eval(), shared["image_size"]


def test_the_mae_encoder_sees_only_the_visible_cells() -> None:
    net, size = tiny_net()
    mae = net.mae
    mask = patch_masks(size, 16, [(8, 8)])
    visible = net.visible_cells(mask)
    assert int((~visible).sum()) == (16 // 4) ** 2  # the patch's cells of 4 px, all of them hidden
    down = net.down
    features = torch.randn(1, mae.embed.in_features // mae.cell**2, size // down, size // down)
    hidden = torch.nn.functional.interpolate(mask, scale_factor=1 / down) > 0  # the patch on the feature map
    changed_inside = torch.where(hidden, torch.randn_like(features), features)
    changed_outside = torch.where(hidden, features, torch.randn_like(features))
    with torch.no_grad():
        encoded = mae.encode(features, visible)
        assert torch.equal(mae.encode(changed_inside, visible), encoded)  # nothing of the patch leaks in
        assert not torch.allclose(mae.encode(changed_outside, visible), encoded)


def test_pddpm_has_no_mae_module_and_patches_that_do_not_overlap() -> None:
    cfg, shared = get("pddpm").preset("small")
    assert not cfg.mae and cfg.stride == cfg.patch
    assert patches_per_slice(shared["image_size"], cfg.patch, cfg.stride) == 4
    net, _ = tiny_net(mae=False)
    assert net.mae is None and not any("mae" in name for name, _ in net.named_parameters())


@pytest.mark.parametrize("method", ["maediff", "pddpm"])
def test_a_slice_scores_the_same_in_any_batch(method: str) -> None:
    torch.manual_seed(0)
    cfg = model_preset("tiny", method)
    model = AnomalyModel.from_config(cfg)
    score = make_scorer(model, torch.device("cpu"))
    size = cfg.preprocess.image_size
    images = torch.rand(4, 1, size, size)
    fg = torch.zeros(4, 1, size, size)
    fg[..., 4:28, 4:28] = 1
    idx = np.array([5, 6, 7, 8])
    together = score(images * fg, fg, idx)
    alone = score(images[2:3] * fg[2:3], fg[2:3], idx[2:3])
    np.testing.assert_allclose(alone.scores[f"{method}_l1"], together.scores[f"{method}_l1"][2:3], rtol=1e-5)
    assert torch.allclose(alone.anomaly_map, together.anomaly_map[2:3], atol=1e-6)
    assert (together.anomaly_map[fg == 0] == 0).all() and together.anomaly_map.amax() > 0


def test_settings_that_cannot_build_or_are_too_large_are_refused_unbuilt() -> None:
    cfg, shared = preset("small")
    size = shared["image_size"]
    assert cfg.problems(size) == []
    cfg.stride = 12  # not whole cells of 8 px
    assert any("maediff.stride (12) must be a multiple of maediff.cell" in p for p in cfg.problems(size))
    cfg, _ = preset("small")
    cfg.test_step = 1000
    assert any("test_step (1000) must be below" in p for p in cfg.problems(size))
    huge = MAEDiffConfig(width=4096, norm_groups=32, head_channels=64)
    assert huge.problems(96) == ["the network would have more than 10 times the parameters of the paper preset"]


@pytest.mark.slow  # trains a model
def test_calibrate_changes_the_test_stride_of_a_trained_model(tmp_path: Path) -> None:
    healthy, _ = write_cohort(tmp_path / "data", healthy=4, lesioned=0, seed=3)
    cohort = {"images": [h[0] for h in healthy], "masks": [h[1] for h in healthy]}
    trained = tmp_path / "model"
    done = subprocess.run(train_command("maediff", cohort, trained), capture_output=True, encoding="utf-8",
                          cwd=ROOT, env=child_env(), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    images, masks = [str(p) for p in cohort["images"]], [str(p) for p in cohort["masks"]]
    same, finer = tmp_path / "same", tmp_path / "finer"
    for out, settings in ((same, []), (finer, ["maediff.stride=4"])):
        calibrate_site(trained, images, masks, "none", out, torch.device("cpu"), target_fpr=0.2, settings=settings)
    before, after = load_model(same), load_model(finer)
    assert (before.config.settings.stride, after.config.settings.stride) == (8, 4)
    assert after.config.threshold != before.config.threshold  # recomputed from the new stride's scores
    for name in before.networks:
        assert all(torch.equal(a, b) for a, b in zip(before.networks[name].state_dict().values(),
                                                      after.networks[name].state_dict().values(), strict=True))
    with pytest.raises(MAEAnomalyError, match="calibrate changes segmentation settings only"):
        calibrate_site(trained, images, masks, "none", tmp_path / "wider", torch.device("cpu"),
                       settings=["maediff.width=16"])
