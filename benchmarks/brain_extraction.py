"""``--brain-mask auto`` against the 40 IXI brain masks: Dice and seconds per volume.

    python benchmarks/brain_extraction.py ../shared/data [--limit N] [--device cpu]

The IXI masks come from an automatic parcellation, not from manual tracing: Dice here measures
agreement between two automatic methods. Skips with a message (exit 0) when the data is absent.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from MAEAnomalyLib.core.runtime import resolve_device
from MAEAnomalyLib.data.brain import extract_brain, is_skull_stripped


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=os.environ.get("MAEANOMALY_DATA", "../shared/data"))
    parser.add_argument("--limit", type=int, help="only the first N volumes")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    images = sorted((Path(args.data) / "ixi-t1").glob("IXI*_T1.nii.gz"))[:args.limit]
    if not images:
        print(f"skipped: no IXI T1 volumes in {args.data}/ixi-t1")
        return 0
    device = resolve_device(args.device)
    extract_brain(sitk.ReadImage(str(images[0]), sitk.sitkFloat32), device)  # load the networks once
    scores, seconds = [], []
    for path in images:
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(path).replace("_T1", "_brainmask"))) > 0
        assert not is_skull_stripped(image), f"{path} would not be extracted under --brain-mask auto"
        start = time.perf_counter()
        mask = extract_brain(image, device)
        seconds.append(time.perf_counter() - start)
        assert mask.GetSize() == image.GetSize() and mask.GetOrigin() == image.GetOrigin()
        scores.append(dice(sitk.GetArrayFromImage(mask) > 0, truth))
        print(f"{path.name}: Dice {scores[-1]:.4f}, {seconds[-1]:.1f} s", flush=True)
    d = np.array(scores)
    print(f"{len(d)} volumes: Dice mean {d.mean():.4f}, median {np.median(d):.4f}, min {d.min():.4f} "
          f"({images[int(d.argmin())].name}); {np.mean(seconds):.1f} s per volume on {device.type} "
          f"({torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
