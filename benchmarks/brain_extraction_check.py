"""The limits of ``--brain-mask auto``'s plausibility check and of the skull-stripped test, measured on real
volumes so that they keep a margin from every real brain.

    python benchmarks/brain_extraction_check.py ../shared/data [--every 5] [--device cpu]

Runs deepbet (``extract_brain``) on every ``--every``-th IXI head, the bundled sample and the six brats2015
T1c and FLAIR volumes, prints each mask's measures (``brain_measures``: volume, pieces, longest side, fill of
its bounding box, contrast with its surroundings) and whether ``implausible_brain`` refuses it; then checks
that every IXI head with its brain mask applied, every brats2015 volume and the sample pass
``is_skull_stripped``. Exit 1 if a real brain is refused. Skips with a message (exit 0) without the data.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MAEAnomalyLib.core.runtime import resolve_device
from MAEAnomalyLib.data.brain import brain_measures, extract_brain, implausible_brain, is_skull_stripped

SAMPLE = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "IXI516-HH-2297_T1.nii.gz"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=os.environ.get("MAEANOMALY_DATA", "../shared/data"))
    parser.add_argument("--every", type=int, default=5, help="extract every N-th IXI head (default 5: 8 of 40)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    data = Path(args.data)
    heads = sorted((data / "ixi-t1").glob("IXI*_T1.nii.gz"))
    brats = [path for kind in ("t1c", "flair") for path in sorted((data / "brats2015").glob(f"pat*/{kind}.nii.gz"))]
    if not heads:
        print(f"skipped: no IXI T1 volumes in {data}/ixi-t1")
        return 0
    device = resolve_device(args.device)
    refused, rows = 0, []
    for path in [*heads[::args.every], SAMPLE, *brats]:
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
        start = time.perf_counter()
        mask = sitk.GetArrayFromImage(extract_brain(image, device))
        seconds = time.perf_counter() - start
        array = sitk.GetArrayViewFromImage(image)
        m = brain_measures(mask, array, image.GetSpacing())
        problem = implausible_brain(mask, array, image.GetSpacing())
        refused += problem is not None
        rows.append(m)
        print(f"{path.parent.name}/{path.name}: {m['litres']:.3f} L, {m['pieces']:.0f} piece(s), largest "
              f"{m['largest']:.3f}, longest side {m['extent_mm']:.0f} mm, fill {m['fill']:.3f}, contrast "
              f"{m['contrast']:.3f}, {seconds:.1f} s: {problem or 'accepted'}", flush=True)
    for key in rows[0]:
        values = np.array([r[key] for r in rows])
        print(f"{key}: {values.min():.3f} to {values.max():.3f}")
    stripped = [sitk.Mask(sitk.ReadImage(str(p), sitk.sitkFloat32),
                          sitk.ReadImage(str(p).replace("_T1", "_brainmask"))) for p in heads]
    stripped += [sitk.ReadImage(str(p), sitk.sitkFloat32) for p in brats]
    missed = sum(not is_skull_stripped(image) for image in stripped)
    print(f"skull-stripped: {len(stripped) - missed} of {len(stripped)} recognised (IXI masked, brats2015)")
    print(f"{refused} of {len(rows)} real brains refused")
    return int(refused > 0 or missed > 0)


if __name__ == "__main__":
    sys.exit(main())
