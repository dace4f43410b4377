"""Makes the extension's icon and screenshot from a scored generated volume, drawn by Slicer's own slice
logic (vtkMRMLSliceLogic from the slicer-core wheel), exactly as the slice views would show it.

    scripts/env.sh  # once, for the environment
    PYTHONPATH=.:MAEAnomaly python scripts/make_slicer_images.py [--model DIR] [--out Resources]

Without --model it trains the 'tiny' preset on generated heads first (a few minutes on a CPU).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import slicer
import torch
import vtk
from vtk.util import numpy_support

from SlicerMAEAnomalyLib.logic import MAEAnomalyLogic

ROOT = Path(__file__).resolve().parent.parent
VIEWS = (("Red", "Axial", "#f34a33"), ("Yellow", "Sagittal", "#edd54c"), ("Green", "Coronal", "#6eb04b"))
VIEW_PIXELS = 480
# A generated head whose lesion the 'tiny' model finds; the views are centred on the lesion.
SUBJECT_SEED = 5


def train_tiny(directory: Path) -> Path:
    from MAEAnomalyLib.core.runtime import resolve_device
    from MAEAnomalyLib.data.synthetic import write_cohort
    from MAEAnomalyLib.methods.model_config import preset
    from MAEAnomalyLib.training import train

    healthy, _ = write_cohort(directory / "data", healthy=10, lesioned=0, seed=0)
    model = directory / "model"
    train([h[0] for h in healthy], model, preset("tiny"), resolve_device("cpu"), masks=[h[1] for h in healthy],
          show_progress=False)
    return model


def load(scene: slicer.vtkMRMLScene, path: Path, class_name: str, name: str) -> slicer.vtkMRMLVolumeNode:
    volume = scene.AddNewNodeByClass(class_name, name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if not storage.ReadData(volume):
        raise SystemExit(f"cannot read {path}")
    return volume


def view_image(logic: slicer.vtkMRMLSliceLogic) -> np.ndarray:
    """The composited RGB image of one slice view, top row first."""
    producer = logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    nx, ny, _ = image.GetDimensions()
    rgba = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(ny, nx, -1)
    return rgba[::-1, :, :3]  # VTK's first row is the bottom one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a trained model directory (default: train 'tiny' now)")
    parser.add_argument("--out", type=Path, default=ROOT / "Resources")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="maeanomaly-images-"))
    try:
        model = args.model or train_tiny(work)
        from MAEAnomalyLib.data.synthetic import make_subject

        image_path, mask_path, label_path = make_subject(SUBJECT_SEED, lesion=True).write(work / "case", "case")

        scene = slicer.vtkMRMLScene()
        slicer.mrmlScene = scene
        colors = slicer.vtkMRMLColorLogic()
        colors.SetMRMLScene(scene)
        colors.AddDefaultColorNodes()
        app = slicer.vtkMRMLApplicationLogic()
        app.SetMRMLScene(scene)
        slice_logics = {}
        for name, orientation, _ in VIEWS:
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLScene(scene)
            logic.SetMRMLApplicationLogic(app)
            node = logic.AddSliceNode(name)
            node.SetOrientation(orientation)
            node.SetDimensions(VIEW_PIXELS, VIEW_PIXELS, 1)
            slice_logics[name] = logic

        volume = load(scene, image_path, "vtkMRMLScalarVolumeNode", "case")
        mask = load(scene, mask_path, "vtkMRMLLabelMapVolumeNode", "case brain mask")
        logic = MAEAnomalyLogic()
        table, difference = logic.process(volume, model, mask, device="cpu")
        logic.showResults(volume, difference)
        for view in slice_logics.values():
            view.FitSliceToAll()
        row = logic.mostAnomalousRow(table)
        # The axial view shows the most anomalous slice; the other two cross the lesion's centre.
        label = load(scene, label_path, "vtkMRMLLabelMapVolumeNode", "case lesion")
        matrix = vtk.vtkMatrix4x4()
        label.GetIJKToRASMatrix(matrix)
        k, j, i = np.argwhere(slicer.util.arrayFromVolume(label) > 0).mean(axis=0)
        r, a, _ = (slicer.util.arrayFromVTKMatrix(matrix) @ [i, j, k, 1.0])[:3]
        columns = logic.tableColumns(table)
        slicer.vtkMRMLSliceNode.JumpAllSlices(scene, r, a, float(columns["position_mm"][row]),
                                              slicer.vtkMRMLSliceNode.OffsetJumpSlice)
        images = {name: view_image(slice_logics[name]) for name, _, _ in VIEWS}
        args.out.mkdir(parents=True, exist_ok=True)
        write_screenshot(images, columns, logic.threshold(table), row, args.out / "Screenshot.png")
        icon = write_icon(images["Red"], args.out / "MAEAnomaly.png")
        module_icon = ROOT / "MAEAnomaly" / "Resources" / "Icons" / "MAEAnomaly.png"
        shutil.copyfile(icon, module_icon)
        print(f"wrote {args.out / 'Screenshot.png'}, {icon} and {module_icon}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_screenshot(images: dict[str, np.ndarray], columns: dict[str, np.ndarray], threshold: float, row: int,
                     path: Path) -> None:
    fig = plt.figure(figsize=(12, 6.6), dpi=100, facecolor="black")
    views = fig.add_gridspec(1, 3, wspace=0.02, left=0.01, right=0.99, top=0.95, bottom=0.38)
    for col, (name, orientation, color) in enumerate(VIEWS):
        ax = fig.add_subplot(views[0, col])
        ax.imshow(images[name], interpolation="nearest")
        ax.set_title(f"{name}: {orientation}", color="black", backgroundcolor=color, fontsize=10, loc="left")
        ax.axis("off")
    ax = fig.add_axes((0.06, 0.08, 0.92, 0.25))
    ax.set_facecolor("white")
    scored = columns["skipped"] == 0
    positions, scores = columns["position_mm"], columns["score"]
    ax.plot(positions[scored], scores[scored], "o-", ms=3, color="#1a66cc", label="anomaly score")
    ax.axhline(threshold, color="#d91a1a", ls="--", label=f"threshold {threshold:.3f}")
    ax.plot([positions[row]], [scores[row]], "o", ms=9, mfc="none", mec="#d91a1a", label="most anomalous slice")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("slice position, superior (mm)", color="white")
    ax.set_ylabel("score", color="white")
    ax.tick_params(colors="white")
    ax.legend(loc="upper left", fontsize=8)
    fig.savefig(path, facecolor=fig.get_facecolor())
    plt.close(fig)


def write_icon(axial: np.ndarray, path: Path) -> Path:
    """A 128 x 128 crop of the axial view around the head."""
    grey = axial.max(axis=2)
    ys, xs = np.nonzero(grey > 20)
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    half = max(ys.max() - ys.min(), xs.max() - xs.min()) // 2 + 4
    crop = axial[max(cy - half, 0):cy + half, max(cx - half, 0):cx + half]
    fig = plt.figure(figsize=(1.28, 1.28), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(crop, interpolation="lanczos")
    ax.axis("off")
    fig.savefig(path, transparent=False, facecolor="black")
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
