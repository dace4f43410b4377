"""The masked autoencoder, reconstruction, the pseudo-abnormal module and the classifier."""

from __future__ import annotations

import pytest
import torch

from MAEAnomalyLib.methods.mae_classifier.config import PseudoAbnormalConfig
from MAEAnomalyLib.methods.mae_classifier.networks import MaskedAutoencoder, build_classifier, init_classifier_from_mae
from MAEAnomalyLib.methods.mae_classifier.pseudo_abnormal import box_masks, make_pseudo_abnormal
from MAEAnomalyLib.methods.mae_classifier.reconstruction import (
    MaskedPasses,
    masked_passes,
    reconstruct,
    reconstruct_samples,
)
from MAEAnomalyLib.methods.model_config import preset


@pytest.fixture
def mae() -> MaskedAutoencoder:
    torch.manual_seed(0)
    cfg = preset("tiny")
    return MaskedAutoencoder(cfg.settings.mae, cfg.preprocess.image_size).eval()


def test_masking_keeps_a_quarter_of_patches(mae: MaskedAutoencoder) -> None:
    ids_keep, mask, _ = mae.random_masking(3, torch.device("cpu"), torch.Generator().manual_seed(1))
    assert mae.num_patches == 64
    assert ids_keep.shape == (3, 16)
    assert torch.equal(mask.sum(dim=1), torch.full((3,), 48.0))
    for i in range(3):  # the kept indices are exactly the unmasked patches
        assert torch.equal(torch.sort(ids_keep[i]).values, torch.nonzero(mask[i] == 0)[:, 0])
    latent = mae.forward_encoder(torch.rand(3, 1, 64, 64), ids_keep)
    assert latent.shape == (3, 1 + 16, mae.cfg.embed_dim)  # the encoder sees only visible patches


def test_patchify_round_trip(mae: MaskedAutoencoder) -> None:
    images = torch.rand(2, 1, 64, 64)
    assert torch.equal(mae.unpatchify(mae.patchify(images)), images)
    # patch 0 is the top-left 8x8 block, in row-major order
    assert torch.equal(mae.patchify(images)[0, 0], images[0, 0, :8, :8].reshape(-1))


def test_loss_ignores_visible_patches(mae: MaskedAutoencoder) -> None:
    images = torch.rand(2, 1, 64, 64)
    _, mask, _ = mae.random_masking(2, torch.device("cpu"), torch.Generator().manual_seed(2))
    pred = torch.rand(2, 64, 64)
    changed = pred.clone()
    changed[mask == 0] += 5.0  # only visible patches change
    assert mae.loss(images, pred, mask) == pytest.approx(mae.loss(images, changed, mask).item())
    changed[mask == 1] += 1.0  # a masked patch changes: the loss must move
    assert mae.loss(images, changed, mask) > mae.loss(images, pred, mask) + 0.5


def test_loss_is_mse_over_masked_patches(mae: MaskedAutoencoder) -> None:
    images = torch.zeros(1, 1, 64, 64)
    mask = torch.zeros(1, 64)
    mask[0, :16] = 1
    pred = torch.zeros(1, 64, 64)
    pred[0, :16] = 2.0
    assert mae.loss(images, pred, mask).item() == pytest.approx(4.0)


def test_reconstruction_pastes_visible_patches(mae: MaskedAutoencoder) -> None:
    images = torch.rand(4, 1, 64, 64)
    gen = torch.Generator().manual_seed(3)
    recon = reconstruct(mae, images, passes=1, generator=gen)
    _, mask, _ = mae.random_masking(4, torch.device("cpu"), torch.Generator().manual_seed(3))
    visible = mae.unpatchify((1 - mask).unsqueeze(-1).expand(-1, -1, 64)).bool()
    assert torch.equal(recon[visible], images[visible])
    assert not torch.allclose(recon[~visible], images[~visible])


def test_reconstruction_averages_passes_reproducibly(mae: MaskedAutoencoder) -> None:
    images = torch.rand(3, 1, 64, 64)
    a = reconstruct(mae, images, passes=4, generator=torch.Generator().manual_seed(5))
    b = reconstruct(mae, images, passes=4, generator=torch.Generator().manual_seed(5))
    c = reconstruct(mae, images, passes=4, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # the average of 4 passes is the mean of 4 single-pass reconstructions with the same masks
    single = reconstruct(mae, images.repeat(4, 1, 1, 1), passes=1, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(single.reshape(4, 3, 1, 64, 64).mean(dim=0), a, atol=1e-6)


def test_reconstruction_samples_use_independent_masks(mae: MaskedAutoencoder) -> None:
    images = torch.rand(3, 1, 64, 64)
    samples = reconstruct_samples(mae, images, passes=2, samples=3, generator=torch.Generator().manual_seed(5))
    assert samples.shape == (3, 3, 1, 64, 64)
    assert not torch.allclose(samples[0], samples[1]) and not torch.allclose(samples[1], samples[2])
    # the 3 samples of 2 passes draw the same 6 masks as one reconstruction of 6 passes
    six = reconstruct(mae, images, passes=6, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(samples.mean(dim=0), six, atol=1e-6)
    one = reconstruct_samples(mae, images, passes=4, samples=1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(one[0], reconstruct(mae, images, passes=4, generator=torch.Generator().manual_seed(5)))


def test_prediction_spread_is_taken_over_the_passes_that_masked_each_pixel() -> None:
    # Three passes of one 1x3 image: pixel 0 masked in passes 0 and 2 (predictions 1 and 3), pixel 1 in
    # pass 1 only, pixel 2 never. Pass 1's prediction of pixel 0 (9) was not used and must not count.
    predictions = torch.tensor([[1.0, 7.0, 7.0], [9.0, 4.0, 7.0], [3.0, 7.0, 7.0]]).reshape(3, 1, 1, 1, 3)
    masks = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 0]]).reshape(3, 1, 1, 1, 3)
    spread = MaskedPasses(torch.zeros(1, 1, 1, 3), predictions, masks).spread()
    assert spread.flatten().tolist() == [1.0, 0.0, 0.0]


def test_masked_passes_give_the_reconstruction_and_the_spread_of_one_set_of_passes(mae: MaskedAutoencoder) -> None:
    images = torch.rand(2, 1, 64, 64)
    run = masked_passes(mae, images, 8, torch.Generator().manual_seed(5))
    assert torch.equal(run.pasted().mean(dim=0), reconstruct(mae, images, 8, torch.Generator().manual_seed(5)))
    spread = run.spread()
    assert spread.shape == images.shape and (spread >= 0).all() and spread.max() > 0
    # any pixel: the population standard deviation of the predictions of the passes that masked it
    masked = run.masks[:, 1, 0, 10, 20].bool()
    assert masked.sum() > 1
    expected = run.predictions[masked, 1, 0, 10, 20].std(unbiased=False)
    assert spread[1, 0, 10, 20].item() == pytest.approx(expected.item(), abs=1e-6)


def test_pseudo_abnormal_changes_exactly_its_boxes() -> None:
    cfg = PseudoAbnormalConfig()
    recon = torch.rand(6, 1, 64, 64) + 0.5
    altered, index = make_pseudo_abnormal(recon, cfg, torch.Generator().manual_seed(0))
    inside = (index > 0).unsqueeze(1)
    assert torch.equal(altered[~inside], recon[~inside])
    ratio = altered / recon
    assert (ratio[inside] <= 1.0).all() and (ratio[inside] >= 0.0).all()
    assert (ratio[inside] < 1.0).all()  # every box pixel changed (β < 1 almost surely)
    for i in range(6):  # one β per box
        for b in index[i].unique():
            if b == 0:
                continue
            values = ratio[i, 0][index[i] == b]
            assert torch.allclose(values, values[0].expand_as(values), atol=1e-5)


def test_pseudo_abnormal_pixel_mode_draws_per_pixel() -> None:
    cfg = PseudoAbnormalConfig(beta_mode="pixel")
    recon = torch.ones(2, 1, 64, 64)
    altered, index = make_pseudo_abnormal(recon, cfg, torch.Generator().manual_seed(0))
    box = altered[0, 0][index[0] == index[0].max()]
    assert box.std() > 0.1


def test_boxes_follow_the_paper_ranges() -> None:
    cfg = PseudoAbnormalConfig()
    index, counts = box_masks(200, 224, cfg, torch.Generator().manual_seed(0))
    assert counts.min() >= 1 and counts.max() <= 10
    assert set(counts.tolist()) == set(range(1, 11))
    # the last-drawn box is never covered: its sides lie in 10..40 px at 224 px
    for i in range(200):
        rows, cols = torch.nonzero(index[i] == counts[i], as_tuple=True)
        assert 10 <= rows.max() - rows.min() + 1 <= 40
        assert 10 <= cols.max() - cols.min() + 1 <= 40
    small, _ = box_masks(200, 64, cfg, torch.Generator().manual_seed(0))  # scaled to 3..11 px at 64 px
    for i in range(200):
        rows, _ = torch.nonzero(small[i] == small[i].max(), as_tuple=True)
        assert 3 <= rows.max() - rows.min() + 1 <= 11


def test_classifier_has_one_channel_and_one_logit(mae: MaskedAutoencoder) -> None:
    cfg = preset("tiny")
    clf = build_classifier(cfg.settings.classifier, 64)
    assert clf(torch.rand(2, 1, 64, 64)).shape == (2, 1)
    init_classifier_from_mae(clf, mae)
    assert torch.equal(clf.blocks[0].attn.qkv.weight, mae.blocks[0].attn.qkv.weight)
    assert torch.equal(clf.patch_embed.proj.weight, mae.patch_embed.proj.weight)
    cfg.settings.classifier.head = "softmax"
    assert build_classifier(cfg.settings.classifier, 64)(torch.rand(2, 1, 64, 64)).shape == (2, 2)


@pytest.mark.parametrize("pool", ["avg", "max", "avgmax"])
def test_pooled_classifier_reads_every_patch_and_takes_the_mae_norm(mae: MaskedAutoencoder, pool: str) -> None:
    cfg = preset("tiny")
    cfg.settings.classifier.global_pool = pool
    torch.manual_seed(0)
    clf = build_classifier(cfg.settings.classifier, 64).eval()
    x = torch.zeros(1, 1, 64, 64)
    corner = x.clone()
    corner[..., :8, :8] = 5.0  # one patch changed
    assert clf(x).shape == (1, 1) and not torch.equal(clf(x), clf(corner))
    with torch.no_grad():
        mae.norm.weight.uniform_(0.5, 1.5)
    init_classifier_from_mae(clf, mae)
    assert torch.equal(clf.fc_norm.weight, mae.norm.weight)


def test_boxes_in_foreground_are_centred_on_it() -> None:
    cfg = PseudoAbnormalConfig(in_foreground=True)
    foreground = torch.zeros(50, 64, 64, dtype=torch.bool)
    foreground[:, 40:50, 5:15] = True  # a small off-centre foreground
    index, counts = box_masks(50, 64, cfg, torch.Generator().manual_seed(0), foreground)
    for i in range(50):
        rows, cols = torch.nonzero(index[i] == counts[i], as_tuple=True)  # the last box is never covered
        cy, cx = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
        assert 40 - 6 <= cy <= 50 + 6 and 5 - 6 <= cx <= 15 + 6
        assert (index[i] > 0)[foreground[i]].any()


def test_each_box_is_scaled_by_one_beta_of_its_own() -> None:
    """Paper, Sec. 3.3: every box is multiplied by a single β ~ U(0, 1), drawn for that box."""
    cfg = PseudoAbnormalConfig(min_boxes=3, max_boxes=6)
    recon = torch.full((8, 1, 64, 64), 0.5)
    altered, index = make_pseudo_abnormal(recon, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(altered[index.unsqueeze(1) == 0], recon[index.unsqueeze(1) == 0])  # outside: untouched
    for i in range(len(recon)):
        betas = []
        for b in index[i].unique().tolist():
            if b == 0:
                continue
            factors = altered[i, 0][index[i] == b] / 0.5
            assert torch.allclose(factors, factors[0].expand_as(factors)), "a box has more than one beta"
            betas.append(float(factors[0]))
        assert all(0.0 <= beta <= 1.0 for beta in betas)
        assert len(set(betas)) == len(betas) >= 2, "boxes of one image share their beta"
