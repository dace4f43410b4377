"""What the widget relies on, on a real MRML scene (slicer-core wheel) and without training: the parameter
node and the chart view across a scene close, overlay opacity, the input selector's exclusions, masks given
as segmentations, results that arrive after the user left the module, and the brain mask scoring reports."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from MAEAnomalyLib.core.errors import MAEAnomalyError  # noqa: E402
from MAEAnomalyLib.scoring.table import SCORE_COLUMNS, table_to_csv  # noqa: E402
from SlicerMAEAnomalyLib.background import ScoringJob  # noqa: E402
from SlicerMAEAnomalyLib.logic import MAEAnomalyLogic, model_threshold, score_arguments  # noqa: E402
from SlicerMAEAnomalyLib.volumes import image_from_volume, mask_image  # noqa: E402

_KEEP: list = []  # logics remove their nodes from the scene when they are deleted


def new_scene() -> slicer.vtkMRMLScene:
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    return scene


def head(scene: slicer.vtkMRMLScene, name: str = "head", shape: tuple[int, int, int] = (12, 32, 32)):
    """A bright noisy ball on a dark background."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    z, y, x = np.indices(shape)
    centre = (np.array(shape) - 1) / 2
    ball = ((z - centre[0]) / (shape[0] / 2)) ** 2 + ((y - centre[1]) / (shape[1] / 2.5)) ** 2 \
        + ((x - centre[2]) / (shape[2] / 2.5)) ** 2 < 1
    voxels = ball * 100 + np.random.default_rng(0).random(shape) * 20
    slicer.util.updateVolumeFromArray(volume, voxels.astype(np.float32))
    volume.SetSpacing(0.9, 1.1, 2.5)
    volume.SetOrigin(10.0, -20.0, 5.0)
    return volume


def store_fake_results(logic: MAEAnomalyLogic, volume) -> tuple:
    """Score-shaped results without a model: enough for everything that displays them."""
    rows = volume.GetImageData().GetDimensions()[2]
    columns = {name: np.linspace(0.0, 1.0, rows) for name in SCORE_COLUMNS}
    columns["slice_index"] = np.arange(rows)
    columns["abnormal"] = columns["skipped"] = np.zeros(rows, int)
    difference = image_from_volume(volume)
    return logic.storeResults(volume, columns, difference, 0.5)


def add_slice_views(scene: slicer.vtkMRMLScene) -> list:
    app_logic = slicer.vtkMRMLApplicationLogic()
    app_logic.SetMRMLScene(scene)
    views = []
    for name in ("Red", "Yellow", "Green"):
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        logic.AddSliceNode(name)
        views.append(logic)
    _KEEP.extend([app_logic, *views])
    return views


def test_parameter_node_and_chart_view_survive_a_scene_close() -> None:
    """Closing the scene keeps singleton nodes but resets them; the logic sets them up again."""
    scene = new_scene()
    logic = MAEAnomalyLogic(scene)
    node, view = logic.getParameterNode(), logic.plotViewNode()
    scene.Clear(0)
    assert node.GetAttribute("ModuleName") is None  # what a scene close does
    assert logic.getParameterNode() is node and node.GetAttribute("ModuleName") == "MAEAnomaly"
    assert logic.plotViewNode() is view
    assert not view.GetDoPropagatePlotChartSelection() and view.GetParentLayoutNode() is node


def test_chart_view_has_its_parent_when_it_is_added() -> None:
    """qMRMLLayoutManager makes a hidden plot widget for a plot view node that has no parent layout node at
    NodeAddedEvent: the parent must be set before the node enters the scene."""
    import vtk

    scene = new_scene()
    seen = []

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(caller, event, node) -> None:
        if node.IsA("vtkMRMLPlotViewNode"):
            seen.append(node.GetParentLayoutNode())

    scene.AddObserver(scene.NodeAddedEvent, onNodeAdded)
    logic = MAEAnomalyLogic()
    _KEEP.append(logic)
    view = logic.plotViewNode()
    assert seen == [logic.getParameterNode()] and view.GetParentLayoutNode() is logic.getParameterNode()


def test_chart_view_ignores_global_chart_selection() -> None:
    """slicer.util.plot() and other modules select their chart in every plot view that follows selection."""
    scene = new_scene()
    app_logic = slicer.vtkMRMLApplicationLogic()
    app_logic.SetMRMLScene(scene)
    _KEEP.append(app_logic)
    logic = MAEAnomalyLogic(scene)
    ours = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "ours")
    logic.plotViewNode().SetPlotChartNodeID(ours.GetID())
    layout_view = scene.AddNewNodeByClass("vtkMRMLPlotViewNode", "layout plot view")
    other = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "another module's chart")
    app_logic.GetSelectionNode().SetActivePlotChartID(other.GetID())
    app_logic.PropagatePlotChartSelection()
    assert layout_view.GetPlotChartNodeID() == other.GetID()  # the mechanism works on an ordinary view
    assert logic.plotViewNode().GetPlotChartNodeID() == ours.GetID()


def test_opacity_changes_only_views_showing_our_difference_map() -> None:
    scene = new_scene()
    views = add_slice_views(scene)
    volume = head(scene)
    logic = MAEAnomalyLogic(scene)
    _table, difference = store_fake_results(logic, volume)
    logic.showResults(volume, difference, opacity=0.6)
    elsewhere = views[2].GetSliceCompositeNode()
    elsewhere.SetForegroundVolumeID(head(scene, "other").GetID())
    elsewhere.SetForegroundOpacity(0.3)
    assert logic.setOverlayOpacity(0.9) == 2
    assert [v.GetSliceCompositeNode().GetForegroundOpacity() for v in views] == pytest.approx([0.9, 0.9, 0.3])


def test_difference_maps_are_never_offered_as_inputs() -> None:
    scene = new_scene()
    volume = head(scene)
    logic = MAEAnomalyLogic(scene)
    _table, difference = store_fake_results(logic, volume)
    assert logic.outputVolumeIDs() == [difference.GetID()]


def segmentation_from(scene, reference, voxels: np.ndarray, name: str = "brain segmentation"):
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    labelmap.CopyOrientation(reference)
    slicer.util.updateVolumeFromArray(labelmap, voxels.astype(np.uint8))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    scene.RemoveNode(labelmap)
    return segmentation


def test_segmentation_is_accepted_as_the_mask() -> None:
    """Slicer users keep brain masks as segmentations: every segment counts, on the input's grid."""
    scene = new_scene()
    volume = head(scene)
    brain = np.zeros((12, 32, 32), np.uint8)
    brain[2:10, 5:25, 6:20] = 1
    brain[4:6, 26:30, 26:30] = 2  # a second segment
    segmentation = segmentation_from(scene, volume, brain)
    count = scene.GetNumberOfNodes()
    mask = mask_image(segmentation, volume)
    assert scene.GetNumberOfNodes() == count, "the conversion leaves no node behind"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask) > 0, brain > 0)
    image = image_from_volume(volume)
    assert mask.GetSize() == image.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), image.GetOrigin())
    np.testing.assert_allclose(mask.GetDirection(), image.GetDirection())
    logic = MAEAnomalyLogic(scene)
    _, checked = logic._input_images(volume, segmentation)  # the same check both scoring paths run
    np.testing.assert_array_equal(sitk.GetArrayFromImage(checked) > 0, brain > 0)


def test_empty_segmentation_is_refused_naming_it() -> None:
    scene = new_scene()
    volume = head(scene)
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "nothing here")
    with pytest.raises(MAEAnomalyError, match=r"^nothing here: mask is empty \(the segmentation has no segments\)$"):
        mask_image(empty, volume)


@pytest.mark.slow  # a whole background run; the fast tier cancels its runs instead
def test_results_arrive_after_leaving_the_module(untrained_model_dir: Path) -> None:
    """The widget's exit() leaves the run and the parameter node alone; what it then calls when the run
    ends (finishProcessing, showResults) needs no widget state."""
    scene = new_scene()
    add_slice_views(scene)
    volume = head(scene, shape=(6, 32, 32))
    logic = MAEAnomalyLogic(scene)
    parameters = logic.getParameterNode()
    run = logic.startProcessing(volume, untrained_model_dir, device="cpu")
    deadline = time.monotonic() + 300
    while not run.poll().finished:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    table, difference = logic.finishProcessing(run)
    logic.showResults(volume, difference)
    assert table.GetNumberOfRows() == 6 and logic.getParameterNode() is parameters
    assert not run.workDir.exists()


def test_command_line_for_shipped_models_and_brain_masks(tmp_path: Path) -> None:
    image, out = tmp_path / "input.nrrd", tmp_path / "out"
    base = ["--image", str(image), "--out-dir", str(out), "--device", "cpu"]
    assert score_arguments("brain-t1", image, out, "cpu", "auto") == ["--model", "brain-t1", *base,
                                                                        "--brain-mask", "auto"]
    assert score_arguments(tmp_path / "m", image, out, "cpu", "none")[-2:] == ["--brain-mask", "none"]
    assert score_arguments("brain-t1", image, out, "cpu", tmp_path / "mask.nrrd")[-1] == str(tmp_path / "mask.nrrd")
    assert score_arguments("brain-t1", image, out, "cpu")[-2:] == ["--brain-mask", "none"]  # as process() does


def test_mask_node_becomes_a_mask_file_on_the_command_line(tmp_path: Path, untrained_model_dir: Path) -> None:
    scene = new_scene()
    volume = head(scene)
    brain = np.zeros((12, 32, 32), np.uint8)
    brain[2:10, 5:25, 6:20] = 1
    logic = MAEAnomalyLogic(scene)
    run = logic.startProcessing(volume, untrained_model_dir, segmentation_from(scene, volume, brain), device="cpu",
                                brainMask="auto")
    try:
        command = run.job.command
        mask_file = Path(command[command.index("--brain-mask") + 1])
        assert mask_file.parent == run.workDir and run.names[str(mask_file)] == "brain segmentation"
        assert command.count("--brain-mask") == 1
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(mask_file))) > 0, brain > 0)
    finally:
        run.cancel()


def test_reported_brain_mask_is_read_from_the_output_lines(tmp_path: Path) -> None:
    """``score`` prints ``kind: path`` lines on stdout; an extracted mask adds ``brain_mask: ...``."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'scores: /o/x_scores.csv'\necho 'brain_mask: /o/x_brainmask.nii.gz'\n"
                    "echo '12 slices scored' >&2\n")
    fake.chmod(0o755)
    job = ScoringJob([], python=str(fake))
    job.wait(60)
    assert job.returncode == 0 and job.error is None
    assert job.outputs == {"scores": "/o/x_scores.csv", "brain_mask": "/o/x_brainmask.nii.gz"}


def test_extracted_brain_mask_is_shown_as_an_outline() -> None:
    scene = new_scene()
    volume = head(scene)
    logic = MAEAnomalyLogic(scene)
    brain = np.zeros((12, 32, 32), np.uint8)
    brain[3:9, 8:24, 8:24] = 1
    mask = sitk.GetImageFromArray(brain)
    mask.CopyInformation(image_from_volume(volume))
    shown = logic.storeBrainMask(volume, mask)
    assert shown.GetName() == "head brain mask" and logic.brainMaskOf(volume) is shown
    display = shown.GetDisplayNode()
    assert display.GetVisibility2DOutline() and not display.GetVisibility2DFill()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask_image(shown, volume)), brain)
    brain[:] = 0
    brain[5:7, 10:12, 10:12] = 1
    mask2 = sitk.GetImageFromArray(brain)
    mask2.CopyInformation(mask)
    assert logic.storeBrainMask(volume, mask2) is shown and shown.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask_image(shown, volume)), brain)


FAKE_SCORE = """#!{python}
# Stands in for `maeanomaly score` with automatic brain extraction, as issue 17's contract describes it: its
# outputs in --out-dir and one `kind: path` line each on stdout, `brain_mask: ...` among them.
import shutil, sys
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("--out-dir") + 1])
out.mkdir(parents=True)
for kind, source in {prepared!r}.items():
    shutil.copy(source, out / Path(source).name)
    print(f"{{kind}}: {{out / Path(source).name}}")
"""


def test_finished_run_loads_the_reported_brain_mask(tmp_path: Path, untrained_model_dir: Path) -> None:
    scene = new_scene()
    volume = head(scene)
    grid = image_from_volume(volume)
    rows = volume.GetImageData().GetDimensions()[2]
    columns = {name: np.linspace(0.0, 1.0, rows) for name in SCORE_COLUMNS}
    columns["slice_index"] = np.arange(rows)
    columns["abnormal"] = columns["skipped"] = np.zeros(rows, int)
    prepared = {"scores": tmp_path / "input_scores.csv", "difference": tmp_path / "input_diff.nii.gz",
                "brain_mask": tmp_path / "input_brainmask.nii.gz"}
    prepared["scores"].write_text(table_to_csv(columns))
    sitk.WriteImage(grid, str(prepared["difference"]))
    brain = np.zeros((12, 32, 32), np.uint8)
    brain[3:9, 6:26, 6:26] = 1
    mask = sitk.GetImageFromArray(brain)
    mask.CopyInformation(grid)
    sitk.WriteImage(mask, str(prepared["brain_mask"]))
    fake = tmp_path / "PythonSlicer"
    fake.write_text(FAKE_SCORE.format(python=sys.executable, prepared={k: str(v) for k, v in prepared.items()}))
    fake.chmod(0o755)

    logic = MAEAnomalyLogic(scene)
    logic.pythonExecutable = str(fake)
    run = logic.startProcessing(volume, untrained_model_dir, device="cpu", brainMask="auto")
    table, difference = logic.finishProcessing(run)
    assert table.GetNumberOfRows() == rows and difference.GetImageData().GetDimensions() == (32, 32, 12)
    shown = logic.brainMaskOf(volume)
    assert shown is not None and shown.GetName() == "head brain mask"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask_image(shown, volume)), brain)
    assert not run.workDir.exists()


def test_shipped_model_is_used_by_name(tmp_path: Path, untrained_model_dir: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A shipped model's name (what the model selector offers) scores like its folder."""
    models = tmp_path / "models"
    shutil.copytree(untrained_model_dir, models / "brain-t1")
    (models / "brain-t1" / "MODEL_CARD.md").write_text("# brain-t1\n\nT1-weighted adult brains.\n")
    monkeypatch.setenv("MAEANOMALY_MODELS", str(models))
    scene = new_scene()
    volume = head(scene, shape=(6, 32, 32))
    logic = MAEAnomalyLogic(scene)
    by_name, _ = logic.process(volume, "brain-t1", device="cpu")
    scores_by_name = logic.tableColumns(by_name)["score"]
    by_folder, _ = logic.process(volume, models / "brain-t1", device="cpu")
    np.testing.assert_allclose(logic.tableColumns(by_folder)["score"], scores_by_name, rtol=1e-5)
    assert logic.threshold(by_name) == model_threshold(untrained_model_dir)  # read through the name
    with pytest.raises(MAEAnomalyError, match="no model folder or shipped model named 'brain-t2'"):
        logic.process(volume, "brain-t2", device="cpu")
