"""``maeanomaly demo``: the shipped model on real anatomy (a bundled healthy IXI T1 volume, and the same
volume with a synthetic lesion); ``demo --train`` instead generates a cohort, trains ``tiny`` on its
healthy volumes, scores one lesioned volume and evaluates on all of them, in a few minutes on a CPU."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ..core.errors import MAEAnomalyError

MARKER = ".maeanomaly-demo"


def prepare_folder(out: Path) -> None:
    """An empty ``out``, replacing only an earlier demo's output."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise MAEAnomalyError("exists and is not an earlier demo's output; choose another --out-dir", out)
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by 'maeanomaly demo'; safe to delete\n")


def run_demo_training(out: Path, healthy: int, device_name: str, quick: bool, log: Callable[[str], None],
             run_cli: Callable[[list[str]], int]) -> tuple[dict, float]:
    """Runs the four steps (``train`` and ``score`` through the command line itself, ``run_cli``);
    returns the evaluation metrics and the seconds taken."""
    from ..data.synthetic import write_cohort
    from ..evaluation.cohort import evaluate_cohort

    prepare_folder(out)
    start = time.perf_counter()
    log(f"1/4 generating a synthetic cohort in {out / 'data'}")
    healthy_paths, lesioned = write_cohort(out / "data", healthy=healthy, lesioned=3, seed=0)
    log("2/4 training the 'tiny' preset on the healthy volumes")
    train_args = ["train", "--preset", "tiny", "--out", str(out / "model"), "--device", device_name,
                  "--images", *[str(h[0]) for h in healthy_paths], "--masks", *[str(h[1]) for h in healthy_paths]]
    if quick:
        train_args += ["--mae-epochs", "3", "--classifier-epochs", "1"]
    run_cli(train_args)
    log("3/4 scoring a volume with a synthetic lesion")
    run_cli(["score", "--model", str(out / "model"), "--image", str(lesioned[0][0]), "--mask", str(lesioned[0][1]),
             "--out-dir", str(out / "scores"), "--device", device_name])
    log("4/4 evaluating on the lesioned volumes")
    metrics = evaluate_cohort(out / "model", [str(p[0]) for p in lesioned], [str(p[2]) for p in lesioned],
                              [str(p[1]) for p in lesioned], device_name)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics, time.perf_counter() - start


SAMPLE = "IXI516-HH-2297"


def sample_dir() -> Path:
    """The bundled IXI volume (Resources/SampleData, CC BY-SA 3.0: see its README)."""
    return Path(__file__).resolve().parents[2] / "Resources" / "SampleData"


def write_lesioned(image_path: Path, mask_path: Path, out: Path) -> tuple[Path, Path, list[int]]:
    """The volume with a synthetic lesion: a dark core in a bright rim (as a necrotic, enhancing
    tumour looks on T1c), 12 mm in radius, inside the brain; its label map; and the axial slices
    (inferior first, as in the score table) that hold it."""
    import numpy as np
    import SimpleITK as sitk

    from ..data.io import from_canonical, to_canonical

    image = sitk.ReadImage(str(image_path), sitk.sitkFloat32)
    volume = sitk.GetArrayFromImage(to_canonical(image))
    brain = sitk.GetArrayFromImage(to_canonical(sitk.ReadImage(str(mask_path)))) > 0
    spacing = np.array(to_canonical(image).GetSpacing()[::-1])  # (z, y, x) in mm
    zyx = np.argwhere(brain)
    # Above the ventricles and off the midline: in the centre of the right hemisphere's upper half.
    centre = np.array([np.percentile(zyx[:, 0], 65), zyx[:, 1].mean(), np.percentile(zyx[:, 2], 30)])
    grid = np.indices(volume.shape).transpose(1, 2, 3, 0)
    distance = np.linalg.norm((grid - centre) * spacing, axis=-1)
    inside = brain & (distance <= 12.0)
    values = volume[brain]
    lesioned = volume.copy()
    lesioned[inside & (distance > 8.0)] = np.percentile(values, 99.5) * 1.3
    lesioned[inside & (distance <= 8.0)] = np.percentile(values, 5) * 0.8
    paths = out / f"{SAMPLE}_synthetic_lesion.nii.gz", out / f"{SAMPLE}_synthetic_lesion_label.nii.gz"
    out.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(from_canonical(lesioned.astype(np.float32), image), str(paths[0]), useCompression=True)
    sitk.WriteImage(from_canonical(inside.astype(np.uint8), image), str(paths[1]), useCompression=True)
    return paths[0], paths[1], np.flatnonzero(inside.any(axis=(1, 2))).tolist()


def run_demo(out: Path, device_name: str, log: Callable[[str], None],
             run_cli: Callable[[list[str]], int]) -> tuple[dict, float]:
    """Scores the bundled healthy volume and its lesioned copy with the shipped model (through the
    command line itself, ``run_cli``); returns what the demo found and the seconds taken."""
    import numpy as np
    import SimpleITK as sitk

    from ..scoring.segmentation import read_components_csv
    from ..scoring.table import read_table_csv

    prepare_folder(out)
    start = time.perf_counter()
    image, mask = sample_dir() / f"{SAMPLE}_T1.nii.gz", sample_dir() / f"{SAMPLE}_brainmask.nii.gz"
    if not image.is_file():
        raise MAEAnomalyError("the bundled sample volume is missing; reinstall, or run 'maeanomaly demo --train'",
                              image)
    log(f"1/3 inserting a synthetic lesion into a copy of {image.name} (healthy; never seen by the model)")
    lesioned, label_path, lesion_slices = write_lesioned(image, mask, out / "data")
    found: dict = {}
    for step, (name, path) in enumerate((("healthy", image), ("synthetic lesion", lesioned)), start=2):
        log(f"{step}/3 scoring the {name} volume with the shipped model")
        run_cli(["score", "--image", str(path), "--brain-mask", str(mask), "--out-dir", str(out / "scores"),
                 "--device", device_name])
        table = read_table_csv(out / "scores" / f"{path.name[:-len('.nii.gz')]}_scores.csv")
        brain = table["skipped"] == 0
        components = read_components_csv(str(out / "scores" / f"{path.name[:-len('.nii.gz')]}_components.csv"))
        found[name] = {"brain_slices": int(brain.sum()), "flagged": int(table["abnormal"][brain].sum()),
                       "table": table, "components": len(components),
                       "components_ml": round(sum(c["volume_ml"] for c in components), 2)}
    # How much of the inserted lesion the anomaly segmentation outlines (both on the input's grid).
    label = sitk.ReadImage(str(label_path))
    truth = sitk.GetArrayFromImage(label) > 0
    anomalies = out / "scores" / f"{SAMPLE}_synthetic_lesion_anomalies.nii.gz"
    called = sitk.GetArrayFromImage(sitk.ReadImage(str(anomalies))) > 0
    found["synthetic lesion"].update({"lesion_ml": round(float(truth.sum() * np.prod(label.GetSpacing())) / 1000, 2),
                                      "lesion_outlined": round(float(called[truth].mean()), 3)})
    table = found["synthetic lesion"].pop("table")
    found["healthy"].pop("table")
    labelled = np.isin(table["slice_index"], lesion_slices)
    brain = table["skipped"] == 0
    order = np.argsort(-table["score"][brain], kind="stable")
    ranks = np.empty(len(order), dtype=int)
    ranks[order] = np.arange(1, len(order) + 1)
    lesion_ranks = sorted(ranks[labelled[brain]].tolist())
    found["synthetic lesion"].update({"lesion_slices": len(lesion_ranks), "lesion_slice_ranks": lesion_ranks,
                                      "lesion_slices_flagged": int(table["abnormal"][brain][labelled[brain]].sum())})
    (out / "demo.json").write_text(json.dumps(found, indent=2) + "\n")
    return found, time.perf_counter() - start
