"""Does storing a model's weights in half precision change what it says? Scores the T1 protocol's volumes
(the T1c of the six BraTS-2015 patients and the 10 IXI volumes the shipped model never saw, brain masks
given) with a float32 model and with copies of it whose weights are stored as float16 / bfloat16 (loaded as
float32), each volume prepared once and scored by every model (scoring is seeded per slice: the same masks
for every model). Prints, per storage dtype, the largest |difference| of the slice columns against float32,
the slice decisions (``abnormal`` at the stored threshold) and voxel decisions (the difference map at its
calibrated thresholds, plain and post-processed as ``evaluate`` counts them) that change.

    python benchmarks/compact_weights.py ../shared/data [--model models/brain-t1] [--dtypes float16,bfloat16]

``--model`` must hold float32 weights (the reference); the compact copies are written to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from MAEAnomalyLib.data.preprocessing import prepare
from MAEAnomalyLib.evaluation.voxels import stored_thresholds
from MAEAnomalyLib.methods import get
from MAEAnomalyLib.methods.model import compact_weights, load_model
from MAEAnomalyLib.scoring.scores import min_pixels, score_prepared
from MAEAnomalyLib.scoring.segmentation import label_components
from MAEAnomalyLib.scoring.voxel_maps import voxel_maps, voxel_mm3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_protocols import Split, ixi_volumes


def score_columns(cfg) -> list[str]:
    """``score``, the method's own columns and their position z-scores (``mae_l1_position``, ...)."""
    method = get(cfg.method)
    return ["score", *method.columns, *(f"{c}_position" for c in method.positioned if c != method.primary)]


def volumes(data: Path, ixi_limit: int | None) -> list[tuple[str, Path, Path]]:
    root = data / "brats2015"
    found = [(f"brats {c.name}", c / "t1c.nii.gz", c / "brainmask.nii.gz") for c in sorted(root.glob("pat*"))]
    images, masks = ixi_volumes(data)
    unseen = Split().ixi_train  # the T1 protocol's: the last volumes in sorted order are never trained on
    pairs = list(zip(images[unseen:], masks[unseen:], strict=True))[:ixi_limit]
    return found + [(f"ixi {p.name.split('_')[0]}", p, m) for p, m in pairs]


def decisions(result, cfg) -> dict[str, np.ndarray]:
    """The slice decisions and the difference map's voxel decisions (plain and +post) of a scored volume."""
    diff = voxel_maps(result, cfg.preprocess)["difference"]
    fg = result.prepared.foreground_input
    size = voxel_mm3(result)
    thresholds = stored_thresholds(cfg)["difference"]
    out = {"slices": np.asarray(result.table["abnormal"]).astype(bool)}
    if thresholds["off"] is not None:
        out["voxels"] = (diff >= thresholds["off"]) & fg
    if thresholds["on"] is not None:  # median_radius is 0 in the shipped model; compare as evaluate does
        called = (diff >= thresholds["on"]) & fg
        out["voxels+post"] = label_components(called, size, cfg.segmentation.min_component_mm3) > 0
    out["map"] = diff
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=os.environ.get("MAEANOMALY_DATA", "../shared/data"))
    parser.add_argument("--model", default="models/brain-t1", help="the float32 reference model directory")
    parser.add_argument("--dtypes", default="float16,bfloat16")
    parser.add_argument("--ixi", type=int, default=None, help="only the first N unseen IXI volumes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "ixi-t1").is_dir() or not (data / "brats2015").is_dir():
        print(f"skipped: no ixi-t1/ and brats2015/ in {data}")
        return 0
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    reference = load_model(args.model)
    if any(p.is_floating_point() and p.dtype != torch.float32  # batch norms also count batches (int64)
           for net in reference.networks.values() for p in net.state_dict().values()):
        raise SystemExit("the reference model must be float32")
    dtypes = [d for d in args.dtypes.split(",") if d]
    tmp = Path(tempfile.mkdtemp(prefix="compact_weights_"))
    models = {}
    for dtype in dtypes:
        copy = tmp / dtype
        shutil.copytree(args.model, copy)
        compact_weights(copy, dtype)
        models[dtype] = load_model(copy)
    cfg = reference.config
    columns = [c for c in score_columns(cfg) if c != "score"]
    stats = {d: {"max_abs": dict.fromkeys(["score", *columns], 0.0), "slices": 0, "slice_decisions_changed": 0,
                 "voxels": 0, "voxel_decisions_changed": 0, "voxels+post_changed": 0, "map_max_abs": 0.0,
                 "per_volume": {}} for d in dtypes}
    seconds = dict.fromkeys(["float32", *dtypes], 0.0)
    start_all = time.perf_counter()
    for name, image, mask in volumes(data, args.ixi):
        prepared = prepare(image, cfg.preprocess, mask, min_pixels=min_pixels(cfg))
        start = time.perf_counter()
        ref = score_prepared(reference, prepared, device)
        seconds["float32"] += time.perf_counter() - start
        ref_dec = decisions(ref, cfg)
        brain = ref.table["skipped"] == 0
        for dtype, model in models.items():
            start = time.perf_counter()
            got = score_prepared(model, prepared, device)
            seconds[dtype] += time.perf_counter() - start
            dec = decisions(got, cfg)
            s = stats[dtype]
            row = {}
            for col in ["score", *columns]:
                if col not in ref.table:
                    continue
                a, b = np.asarray(ref.table[col])[brain], np.asarray(got.table[col])[brain]
                both = np.isfinite(a) & np.isfinite(b)
                if not np.array_equal(np.isfinite(a), np.isfinite(b)):
                    raise SystemExit(f"{name}: {col} is finite in one model and not the other")
                delta = float(np.max(np.abs(a[both] - b[both]), initial=0.0))
                s["max_abs"][col] = max(s["max_abs"][col], delta)
                row[col] = delta
            changed = int((ref_dec["slices"] != dec["slices"]).sum())
            s["slices"] += int(brain.sum())
            s["slice_decisions_changed"] += changed
            fg = prepared.foreground_input
            s["voxels"] += int(fg.sum())
            v = int((ref_dec["voxels"] != dec["voxels"]).sum()) if "voxels" in ref_dec else 0
            vp = int((ref_dec["voxels+post"] != dec["voxels+post"]).sum()) if "voxels+post" in ref_dec else 0
            s["voxel_decisions_changed"] += v
            s["voxels+post_changed"] += vp
            m = float(np.max(np.abs(ref_dec["map"] - dec["map"])[fg], initial=0.0))
            s["map_max_abs"] = max(s["map_max_abs"], m)
            s["per_volume"][name] = {"max_abs_score": row["score"], "slice_decisions_changed": changed,
                                     "voxel_decisions_changed": v, "voxels+post_changed": vp,
                                     "called_voxels_float32": int(ref_dec["voxels"].sum()) if "voxels" in ref_dec
                                     else None}
            print(f"{name} [{dtype}]: max|d score| {row['score']:.2e}, max|d {columns[0]}| {row[columns[0]]:.2e}, "
                  f"slice decisions changed {changed}/{int(brain.sum())}, voxel decisions changed {v} (+post {vp}), "
                  f"max|d map| {m:.2e}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{len(volumes(data, args.ixi))} volumes; reference {args.model} (float32); "
          f"{time.perf_counter() - start_all:.0f} s in all, {torch.get_num_threads()} threads")
    print("| storage | max abs d score | " + " | ".join(f"d {c}" for c in columns) + " | slice decisions changed | "
          "voxel decisions changed | +post | max abs d map | scoring s |")
    print("|---" * (len(columns) + 7) + "|")
    for dtype in dtypes:
        s = stats[dtype]
        mx = s["max_abs"]
        print(f"| {dtype} | {mx['score']:.2e} | " + " | ".join(f"{mx[c]:.2e}" for c in columns) + " | "
              f"{s['slice_decisions_changed']} of {s['slices']} | {s['voxel_decisions_changed']} of {s['voxels']} | "
              f"{s['voxels+post_changed']} | {s['map_max_abs']:.2e} | {seconds[dtype]:.0f} |")
    print(f"float32 scoring: {seconds['float32']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"stats": stats, "seconds": seconds}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
