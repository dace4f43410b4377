"""Reversed Autoencoders: the losses by hand, the network's size, the two optimisers' steps, the anomaly map
on pairs whose answer is known, a scorer that ignores the batch, and the global batch norm under two ranks."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.data.synthetic import write_cohort
from MAEAnomalyLib.engine.batch_norm import GlobalBatchNorm2d, counted_rows, reestimate_running_statistics
from MAEAnomalyLib.engine.distributed import Dist, StopControl
from MAEAnomalyLib.engine.loop import Run, RunOptions, rank_share
from MAEAnomalyLib.methods import get
from MAEAnomalyLib.methods.base import TrainingData
from MAEAnomalyLib.methods.model import AnomalyModel, load_model, save_model
from MAEAnomalyLib.methods.model_config import preset
from MAEAnomalyLib.methods.ra.anomaly_map import anomaly_map, clahe, residual_map
from MAEAnomalyLib.methods.ra.config import approximate_parameters
from MAEAnomalyLib.methods.ra.losses import exp_elbo, kl_divergence, reparameterise, reversed_loss, squared_error
from MAEAnomalyLib.methods.ra.lpips import SpatialLPIPS, load_lpips
from MAEAnomalyLib.methods.ra.stages import RAStage
from MAEAnomalyLib.training.site import calibrate_site


def tiny_model(size: int = 32) -> AnomalyModel:
    torch.manual_seed(0)
    cfg = preset("tiny", "ra")
    cfg.preprocess.image_size = size
    return AnomalyModel.from_config(cfg)


def test_kl_reparameterisation_and_squared_error_by_hand() -> None:
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(2.0)]])
    # -1/2 [(1 + 0 - 1 - 1) + (1 + log 2 - 2 - 0)] = 1 - log(2)/2
    assert kl_divergence(mu, logvar).item() == pytest.approx(1 - math.log(2) / 2)
    assert kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4)).tolist() == [0.0, 0.0, 0.0]
    z = reparameterise(mu, logvar, torch.tensor([[2.0, 3.0]]))
    assert z[0].tolist() == pytest.approx([3.0, 3 * math.sqrt(2)])
    a, b = torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    b[0, 0, 0, 0], b[1] = 3.0, 1.0
    assert squared_error(a, b).tolist() == [9.0, 4.0]  # summed over pixels, one value per image


def test_exp_elbo_by_hand() -> None:
    # exp(-2 * 0.25 * (0.5 * 2 + 2 * 0.5)) = exp(-1)
    value = exp_elbo(torch.tensor([2.0]), torch.tensor([0.5]), scale=0.25, beta_rec=0.5, beta_neg=2.0)
    assert value.item() == pytest.approx(math.exp(-1))
    assert exp_elbo(torch.zeros(2), torch.zeros(2), 1.0, 0.5, 128.0).tolist() == [1.0, 1.0]


def test_reversed_loss_by_hand() -> None:
    # Layer 1: orthogonal (1, 0) and (0, 1): 0.5 * MSE 1 + (1 - cos 0) = 1.5. Layer 2: (1, 1) and (2, 2):
    # 0.5 * MSE 1 + (1 - cos 1) = 0.5. Sample 2 is the same image twice: 0.
    first = torch.tensor([[1.0, 0.0], [0.3, 0.7]]).view(2, 2, 1, 1)
    first_rec = torch.tensor([[0.0, 1.0], [0.3, 0.7]]).view(2, 2, 1, 1)
    second = torch.tensor([[1.0, 1.0], [0.2, 0.5]]).view(2, 1, 1, 2)
    second_rec = torch.tensor([[2.0, 2.0], [0.2, 0.5]]).view(2, 1, 1, 2)
    loss = reversed_loss([first, second], [first_rec, second_rec])
    assert loss.tolist() == pytest.approx([2.0, 0.0], abs=1e-6)


def test_the_paper_preset_has_the_authors_29_4_million_parameters() -> None:
    cfg = preset("paper", "ra")
    assert cfg.preprocess.image_size == 128 and cfg.train.batch_size == 8 and cfg.settings.lr == 5e-5
    net = AnomalyModel.from_config(cfg).ra
    count = sum(p.numel() for p in net.parameters())
    assert count == 29_430_785  # 29.4 M
    assert approximate_parameters(cfg.settings, 128) == count
    mu, logvar, embeddings = net.encoder(torch.rand(1, 1, 128, 128))
    assert mu.shape == logvar.shape == (1, 128)
    assert [tuple(e.shape[1:]) for e in embeddings] == [(64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8),
                                                         (512, 4, 4)]
    for name in ("tiny", "small"):
        small = preset(name, "ra")
        built = sum(p.numel() for p in AnomalyModel.from_config(small).ra.parameters())
        assert approximate_parameters(small.settings, small.preprocess.image_size) == built


def test_settings_that_cannot_build_are_refused() -> None:
    cfg = preset("tiny", "ra")
    cfg.preprocess.image_size = 40  # not a multiple of 2**4
    assert "multiple of 2 ** ra.stages" in get("ra").problems(cfg)[0]
    cfg.preprocess.image_size, cfg.settings.width, cfg.settings.max_width = 128, 4096, 4096
    assert "parameters" in get("ra").problems(cfg)[0]


def one_process_stage(model: AnomalyModel) -> RAStage:
    d = Dist()
    run = Run(d, StopControl(d), RunOptions(), n_train=4, warmup_fraction=0.0, seed=0,
              save=lambda progress, opts: None, checkpoint_dir=Path("."))
    return RAStage(model, TrainingData(None, None, None), run, None)


def test_each_optimiser_moves_only_its_own_network() -> None:
    model = tiny_model()
    stage, net = one_process_stage(model), model.ra.train()
    opts = stage.optimizers(net, 10)
    images, noise = torch.rand(4, 1, 32, 32), torch.randn(4, 6, model.config.settings.latent)

    def snapshot(part: torch.nn.Module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in part.parameters()]

    def moved(before: list[torch.Tensor], part: torch.nn.Module) -> bool:
        return any(not torch.equal(a, b) for a, b in zip(before, part.parameters(), strict=True))

    def share(loss: torch.Tensor) -> torch.Tensor:
        return rank_share(loss.mean(), 4, 4, 1)

    enc, dec = snapshot(net.encoder), snapshot(net.decoder)
    z = stage.encoder_step(net, images, noise, opts[0], share)
    assert moved(enc, net.encoder) and not moved(dec, net.decoder)
    enc = snapshot(net.encoder)
    error = stage.decoder_step(net, images, noise, z, opts[1], share)
    assert moved(dec, net.decoder) and not moved(enc, net.encoder)
    assert error.shape == (4,) and torch.isfinite(error).all()


def head(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A disk of foreground holding a smooth pattern that reaches 1, on a zero background."""
    i, j = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                          indexing="ij")
    fg = ((i - size / 2 + 0.5) ** 2 + (j - size / 2 + 0.5) ** 2 < (0.44 * size) ** 2)
    image = (0.5 + 0.25 * torch.sin(i / 3) * torch.cos(j / 4)) * fg
    image[14, 32] = 1.0  # the brightest pixel, away from the change below
    return image.view(1, 1, size, size), fg.view(1, 1, size, size)


@pytest.fixture(scope="module")
def lpips() -> SpatialLPIPS:
    return load_lpips()


def test_identical_images_give_a_zero_map(lpips: SpatialLPIPS) -> None:
    image, fg = head()
    assert torch.equal(anomaly_map(image, image, fg, 0.01, 8, lpips), torch.zeros_like(image))
    out = clahe(image)
    assert out.shape == image.shape and out.min() == 0 and out.max() == 1


def test_a_difference_inside_the_brain_shows_there_and_nowhere_far(lpips: SpatialLPIPS) -> None:
    image, fg = head()
    pseudo = image.clone()
    pseudo[..., 28:36, 28:36] += 0.3  # one 8×8 square in the middle of the brain, still within [0, 1]
    amap = anomaly_map(pseudo, image, fg, 0.01, 8, lpips)
    assert (amap[~fg] == 0).all()  # nothing outside the foreground
    assert (amap[..., 28:36, 28:36] > 0).all()  # every changed pixel
    assert amap.max() == amap[..., 28:36, 28:36].max()
    # CLAHE blends the mappings of the four nearest regions (8 px here): nothing moves farther than 1.5
    # regions from the square.
    far = torch.ones_like(fg)
    far[..., 16:48, 16:48] = False
    assert (amap[far] == 0).all()


def test_the_residual_map_is_the_clamped_difference_inside_the_brain() -> None:
    image, fg = head()
    pseudo = image.clone()
    pseudo[..., 28:36, 28:36] += 0.3
    pseudo[..., 24, 24] = 1.7  # beyond the slices' range: counted as 1
    expected = torch.zeros_like(image)
    expected[..., 28:36, 28:36] = 0.3
    expected[..., 24, 24] = 1 - image[..., 24, 24]
    torch.testing.assert_close(residual_map(pseudo, image, fg), expected * fg, rtol=0, atol=1e-6)
    assert residual_map(pseudo, image, torch.zeros_like(fg)).abs().sum() == 0


def test_the_residual_setting_makes_the_scorers_map_the_plain_residual() -> None:
    model = tiny_model()
    model.config.settings.anomaly_map = "residual"
    score = get("ra").scorer(model, torch.device("cpu"))
    torch.manual_seed(1)
    fg = torch.zeros(3, 1, 32, 32, dtype=torch.bool)
    fg[..., 4:28, 6:26] = True
    images = torch.rand(3, 1, 32, 32) * fg
    out = score(images, fg, torch.arange(3).numpy())
    with torch.inference_mode():
        pseudo = model.ra.eval().pseudo_healthy(images)
    torch.testing.assert_close(out.anomaly_map, (pseudo - images).abs() * fg)
    assert out.scores["ra_map_mean"] == pytest.approx(out.scores["ra_l1"], rel=1e-6)
    assert preset("small", "ra").settings.anomaly_map == "residual"  # chosen on synthetic lesions
    assert preset("paper", "ra").settings.anomaly_map == "perceptual"  # the authors'


def test_a_slice_scores_the_same_in_any_batch() -> None:
    model = tiny_model()
    score = get("ra").scorer(model, torch.device("cpu"))
    torch.manual_seed(1)
    images = torch.rand(5, 1, 32, 32)
    fg = torch.zeros(5, 1, 32, 32, dtype=torch.bool)
    fg[..., 4:28, 6:26] = True
    idx = torch.arange(10, 15).numpy()
    whole = score(images * fg, fg, idx)
    assert set(whole.scores) == {"ra_map_mean", "ra_l1"} and whole.anomaly_map.shape == images.shape
    assert (whole.anomaly_map[~fg] == 0).all()
    order = [3, 0, 4]
    part = score(images[order] * fg[order], fg[order], idx[order])
    single = score(images[1:2] * fg[1:2], fg[1:2], idx[1:2])
    for name in whole.scores:
        assert part.scores[name] == pytest.approx(whole.scores[name][order], rel=1e-5, abs=1e-7)
        assert single.scores[name] == pytest.approx(whole.scores[name][1:2], rel=1e-5, abs=1e-7)
    torch.testing.assert_close(part.anomaly_map, whole.anomaly_map[order], rtol=1e-5, atol=1e-6)


def test_running_statistics_are_those_of_the_given_batches_alone() -> None:
    """Fakes and reconstructions pass through RA's batch norms in training; the statistics evaluation uses
    must come from the real slices only: the mean of their batch means and unbiased batch variances."""
    norm = GlobalBatchNorm2d(3)
    net = torch.nn.Sequential(norm).eval()
    gen = torch.Generator().manual_seed(0)
    norm.train()(torch.randn(8, 3, 4, 4, generator=gen) * 10 + 5)  # what training left behind
    norm.eval()
    batches = [torch.randn(4, 3, 4, 4, generator=gen) * (k + 1) - k for k in range(3)]
    reestimate_running_statistics(net, batches, net)
    means = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches])
    variances = torch.stack([b.transpose(0, 1).flatten(1).var(dim=1) for b in batches])
    torch.testing.assert_close(norm.running_mean, means.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.running_var, variances.mean(0), rtol=1e-5, atol=1e-6)
    assert norm.momentum == 0.1 and not net.training


def _two_ranks(rank: int, store: str, out: str) -> None:
    """One rank of ``test_global_batch_norm_under_two_ranks_is_one_process_batch_norm``."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        d = Dist(rank=rank, world=2)
        results = {}
        for size in (5, 1):  # 1: rank 0 has no share and runs the first sample with zero weight
            x, weight = _batch(size)
            a, b = d.rows(size)
            rows = slice(a, b) if b > a else slice(0, 1)
            norm = GlobalBatchNorm2d(3)
            norm.weight.data.copy_(weight)
            local = x[rows].clone().requires_grad_(True)
            with counted_rows(b - a):
                y = norm(local)
            rank_share((y * y.detach().exp()).flatten(1).sum(dim=1).mean(), b - a, size, 2).backward()
            d.average_gradients(norm.parameters())
            results[size] = {"y": y.detach()[: b - a], "grad": norm.weight.grad, "mean": norm.running_mean,
                             "var": norm.running_var}
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(size)
    return torch.randn(size, 3, 4, 4, generator=gen) * 2 + 1, torch.rand(3, generator=gen) + 0.5


@pytest.mark.slow  # two processes
def test_global_batch_norm_under_two_ranks_is_one_process_batch_norm(tmp_path: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_two_ranks, args=(str(tmp_path / "store"), str(tmp_path / "out")), nprocs=2)
    ranks = [torch.load(tmp_path / f"out.{r}") for r in range(2)]
    for size in (5, 1):
        x, weight = _batch(size)
        norm = torch.nn.BatchNorm2d(3)
        norm.weight.data.copy_(weight)
        y = norm(x)
        (y * y.detach().exp()).flatten(1).sum(dim=1).mean().backward()
        torch.testing.assert_close(torch.cat([r[size]["y"] for r in ranks]), y.detach(), rtol=1e-5, atol=1e-5)
        for r in ranks:
            torch.testing.assert_close(r[size]["grad"], norm.weight.grad, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(r[size]["mean"], norm.running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(r[size]["var"], norm.running_var, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # scores three volumes four times
def test_calibrate_changes_the_maps_equalisation_and_nothing_the_networks_learned(tmp_path: Path) -> None:
    """The map's CLAHE settings shape scoring only, so ``calibrate --set`` may change them on a trained model
    (a random tiny one stands in: calibration never looks at how good the network is)."""
    healthy, _ = write_cohort(tmp_path / "data", healthy=3, lesioned=0, seed=3)
    model = tiny_model(64)
    model.config.threshold = 0.5
    save_model(model, tmp_path / "model")
    images, masks = [str(h[0]) for h in healthy], [str(h[1]) for h in healthy]
    same, coarser = tmp_path / "same", tmp_path / "coarser"
    for out, settings in ((same, []), (coarser, ["ra.clahe_tiles=4"])):
        calibrate_site(tmp_path / "model", images, masks, "none", out, torch.device("cpu"), target_fpr=0.2,
                       settings=settings)
    before, after = load_model(same), load_model(coarser)
    assert (before.config.settings.clahe_tiles, after.config.settings.clahe_tiles) == (8, 4)
    assert after.config.voxel_threshold != before.config.voxel_threshold  # the map changed, and its threshold
    assert all(torch.equal(a, b) for a, b in zip(before.ra.state_dict().values(), after.ra.state_dict().values(),
                                                  strict=True))
    with pytest.raises(MAEAnomalyError, match=r"\(and ra.anomaly_map, ra.clahe_clip, ra.clahe_tiles\)"):
        calibrate_site(tmp_path / "model", images, masks, "none", tmp_path / "wider", torch.device("cpu"),
                       settings=["ra.width=16"])
