"""The Slicer logic on a real MRML scene (slicer-core wheel): geometry, scoring into nodes, the slice-view
display read back from vtkMRMLSliceLogic, the chart, navigation, and the background process."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
from scipy.ndimage import maximum_filter, minimum_filter  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from MAEAnomalyLib.cli.main import main as cli_main  # noqa: E402
from MAEAnomalyLib.core.errors import MAEAnomalyError  # noqa: E402
from MAEAnomalyLib.data.synthetic import make_subject  # noqa: E402
from MAEAnomalyLib.scoring.table import SCORE_COLUMNS, read_table_csv  # noqa: E402
from SlicerMAEAnomalyLib.logic import MAEAnomalyLogic  # noqa: E402
from SlicerMAEAnomalyLib.results import INPUT_REFERENCE  # noqa: E402
from SlicerMAEAnomalyLib.volumes import ijk_to_ras_from_image, image_from_volume, world_ijk_to_ras  # noqa: E402

pytestmark = pytest.mark.slow  # trains models or drives a real MRML scene end to end

VIEWS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
DISPLAY_THRESHOLD = 0.1
_LOGICS: list = []  # a colour or slice logic removes its nodes from the scene when it is deleted


def new_scene() -> slicer.vtkMRMLScene:
    """A scene with the default colour tables, as the application sets it up."""
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    _LOGICS.append(colors)
    return scene


def add_slice_views(scene: slicer.vtkMRMLScene) -> dict[str, slicer.vtkMRMLSliceLogic]:
    app_logic = slicer.vtkMRMLApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logics = {}
    for name, orientation in VIEWS.items():
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        logic.AddSliceNode(name).SetOrientation(orientation)
        logics[name] = logic
    _LOGICS.append(app_logic)
    return logics


def load_volume(scene: slicer.vtkMRMLScene, path: Path, name: str) -> slicer.vtkMRMLScalarVolumeNode:
    """Reads a file through a storage node, as Slicer's 'Add data' does."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(volume)
    volume.SetAndObserveStorageNodeID(storage.GetID())
    return volume


def matrix(volume: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


# Geometry -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sagittal", "oblique"])
def test_ijk_to_ras_round_trips_through_simpleitk(kind: str) -> None:
    scene = new_scene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", kind)
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5, 6, 7)).astype(np.float32)
    slicer.util.updateVolumeFromArray(volume, values)
    if kind == "sagittal":  # i -> anterior, j -> inferior, k -> right, like a sagittal acquisition
        directions = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    else:
        directions = rotation((1.0, 2.0, 0.5), 27.0)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = directions @ np.diag([0.9, 1.3, 2.7])
    ijk_to_ras[:3, 3] = [12.5, -40.25, 7.0]
    volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))

    image = image_from_volume(volume)
    np.testing.assert_allclose(ijk_to_ras_from_image(image), ijk_to_ras, rtol=0, atol=1e-12)
    # SimpleITK's LPS point of a voxel is the node's RAS point with x and y negated, and the voxel agrees.
    for ijk in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:
        ras = ijk_to_ras @ [*ijk, 1.0]
        lps = image.TransformIndexToPhysicalPoint(ijk)
        np.testing.assert_allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-9)
        assert image.GetPixel(ijk) == values[ijk[2], ijk[1], ijk[0]]


def test_nrrd_geometry_read_by_slicer_matches_simpleitk(tmp_path: Path) -> None:
    """An oblique NRRD read through Slicer's storage node converts back to the file's exact geometry."""
    image = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
    image.SetSpacing((0.8, 1.1, 3.0))
    image.SetOrigin((5.0, -7.5, 20.0))
    image.SetDirection(rotation((0.3, -1.0, 2.0), 40.0).ravel().tolist())
    sitk.WriteImage(image, str(tmp_path / "oblique.nrrd"))
    volume = load_volume(new_scene(), tmp_path / "oblique.nrrd", "oblique")
    back = image_from_volume(volume)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_parent_linear_transform_is_applied() -> None:
    scene = new_scene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    slicer.util.updateVolumeFromArray(volume, np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    shift = np.eye(4)
    shift[:3, :3] = rotation((0, 0, 1), 90)
    shift[:3, 3] = [1.0, 2.0, 3.0]
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    np.testing.assert_allclose(world_ijk_to_ras(volume), shift @ matrix(volume), atol=1e-12)
    np.testing.assert_allclose(ijk_to_ras_from_image(image_from_volume(volume)), shift @ matrix(volume), atol=1e-12)


def test_constant_volume_is_one_line_error() -> None:
    volume = new_scene().AddNewNodeByClass("vtkMRMLScalarVolumeNode", "flat")
    slicer.util.updateVolumeFromArray(volume, np.full((2, 3, 4), 7, np.int16))
    with pytest.raises(MAEAnomalyError, match=r"^flat: image is constant \(every voxel is 7\)$"):
        image_from_volume(volume)


def test_mask_on_another_grid_is_one_line_error(tiny_model_dir: Path) -> None:
    scene = new_scene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "image")
    slicer.util.updateVolumeFromArray(volume, np.random.default_rng(0).random((8, 16, 16), dtype=np.float32))
    mask = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "brain")
    slicer.util.updateVolumeFromArray(mask, np.ones((8, 16, 17), np.uint8))
    with pytest.raises(MAEAnomalyError) as info:
        MAEAnomalyLogic().process(volume, tiny_model_dir, mask, device="cpu")
    assert str(info.value).startswith("brain: mask grid differs from the image grid (size")
    assert "\n" not in str(info.value)


def test_parameter_and_plot_view_nodes_are_scene_singletons() -> None:
    scene = new_scene()
    logic = MAEAnomalyLogic()
    node = logic.getParameterNode()
    assert node.GetSingletonTag() == "MAEAnomaly" and node.GetAttribute("ModuleName") == "MAEAnomaly"
    assert MAEAnomalyLogic().getParameterNode() is node
    assert scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode") == 1
    view = logic.plotViewNode()
    assert MAEAnomalyLogic().plotViewNode() is view and scene.GetNumberOfNodesByClass("vtkMRMLPlotViewNode") == 1


# Scoring a sagittally stored volume ---------------------------------------------------------------


@dataclass
class Scored:
    scene: slicer.vtkMRMLScene
    views: dict
    logic: MAEAnomalyLogic
    volume: slicer.vtkMRMLScalarVolumeNode
    voxels_before: np.ndarray
    matrix_before: np.ndarray
    table: slicer.vtkMRMLTableNode
    difference: slicer.vtkMRMLScalarVolumeNode
    image_path: Path
    model: Path
    progress: list[float]


@pytest.fixture(scope="module")
def scored(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Scored:
    """A lesioned subject stored sagittally (PSR), read as NIfTI through a storage node and scored."""
    directory = tmp_path_factory.mktemp("slicer")
    image_path = make_subject(7, lesion=True, orientation="PSR").write(directory, "sagittal")[0]
    scene = new_scene()
    views = add_slice_views(scene)
    volume = load_volume(scene, image_path, "sagittal")
    voxels_before = slicer.util.arrayFromVolume(volume).copy()
    matrix_before = matrix(volume)
    logic = MAEAnomalyLogic()
    progress: list[float] = []
    table, difference = logic.process(volume, tiny_model_dir, progress=progress.append, device="cpu")
    return Scored(scene, views, logic, volume, voxels_before, matrix_before, table, difference, image_path,
                  tiny_model_dir, progress)


def test_table_has_one_row_per_true_axial_slice(scored: Scored) -> None:
    ijk_to_ras = matrix(scored.volume)
    superior_axis = int(np.argmax(np.abs(ijk_to_ras[2, :3])))  # the voxel axis that runs along S
    dims = scored.volume.GetImageData().GetDimensions()
    columns = scored.logic.tableColumns(scored.table)
    assert list(columns) == list(SCORE_COLUMNS)
    assert scored.table.GetNumberOfRows() == dims[superior_axis] != dims[0]
    # Inferior first, at the S coordinates of the slice centres.
    centre = (np.array(dims) - 1) / 2.0
    expected = []
    for k in range(dims[superior_axis]):
        index = centre.copy()
        index[superior_axis] = k
        expected.append((ijk_to_ras @ [*index, 1.0])[2])
    np.testing.assert_allclose(columns["position_mm"], np.sort(expected), atol=1e-6)
    assert scored.progress and scored.progress[-1] == pytest.approx(1.0)


def test_table_and_difference_match_the_cli(scored: Scored, tmp_path: Path) -> None:
    assert cli_main(["score", "--model", str(scored.model), "--image", str(scored.image_path),
                     "--brain-mask", "none", "--out-dir", str(tmp_path), "--device", "cpu"]) == 0
    csv_columns = read_table_csv(tmp_path / "sagittal_scores.csv")
    columns = scored.logic.tableColumns(scored.table)
    assert list(csv_columns) == list(columns)
    for name in SCORE_COLUMNS:
        if name in ("slice_index", "abnormal", "skipped"):
            np.testing.assert_array_equal(columns[name], csv_columns[name], err_msg=name)
        else:  # the CSV keeps 9 significant digits
            np.testing.assert_allclose(columns[name], csv_columns[name], rtol=1e-8, atol=1e-12, err_msg=name)
    assert columns["abnormal"].sum() > 0, "the lesion should push some slices over the threshold"
    # Slicer's reader may store a left-handed (PSR) file with another voxel order, so the maps are compared
    # in world space: the node's grid has exactly the file's voxel centres, and nearest neighbour is exact.
    cli_difference = sitk.ReadImage(str(tmp_path / "sagittal_diff.nii.gz"))
    on_node_grid = sitk.Resample(cli_difference, image_from_volume(scored.difference), sitk.Transform(),
                                 sitk.sitkNearestNeighbor, -1.0)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(scored.difference),
                               sitk.GetArrayFromImage(on_node_grid), atol=1e-6)


def test_difference_volume_has_the_input_geometry(scored: Scored) -> None:
    np.testing.assert_array_equal(matrix(scored.difference), matrix(scored.volume))
    assert scored.difference.GetImageData().GetDimensions() == scored.volume.GetImageData().GetDimensions()
    assert scored.difference.GetNodeReference(INPUT_REFERENCE) is scored.volume
    assert slicer.util.arrayFromVolume(scored.difference).max() > 0


def test_input_volume_is_unchanged(scored: Scored) -> None:
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(scored.volume), scored.voxels_before)
    np.testing.assert_array_equal(matrix(scored.volume), scored.matrix_before)
    assert scored.volume.GetNodeReference(INPUT_REFERENCE) is None


def test_second_call_replaces_outputs(scored: Scored) -> None:
    classes = ("vtkMRMLTableNode", "vtkMRMLScalarVolumeNode", "vtkMRMLScalarVolumeDisplayNode",
               "vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode")
    scored.logic.createScoreChart(scored.table)
    counts = {c: scored.scene.GetNumberOfNodesByClass(c) for c in classes}
    table, difference = scored.logic.process(scored.volume, scored.model, device="cpu")
    chart = scored.logic.createScoreChart(table)
    assert (table.GetID(), difference.GetID()) == (scored.table.GetID(), scored.difference.GetID())
    assert {c: scored.scene.GetNumberOfNodesByClass(c) for c in classes} == counts
    assert chart.GetNumberOfPlotSeriesNodes() == 2


# Display, chart and navigation --------------------------------------------------------------------


def blended_rgb(logic: slicer.vtkMRMLSliceLogic) -> np.ndarray:
    """The slice view's composited image, exactly what the application draws."""
    producer = logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    nx, ny, _ = image.GetDimensions()
    rgba = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(ny, nx, -1)
    return rgba[..., :3].astype(int)


def difference_under_pixels(logic: slicer.vtkMRMLSliceLogic, difference: slicer.vtkMRMLScalarVolumeNode,
                            values: np.ndarray) -> np.ndarray:
    """For every pixel of the slice view, ``values`` (a Z, Y, X array on the difference grid) at the
    nearest voxel, or NaN outside the volume."""
    slice_node = logic.GetSliceNode()
    nx, ny, _ = slice_node.GetDimensions()
    ras_to_ijk = vtk.vtkMatrix4x4()
    difference.GetRASToIJKMatrix(ras_to_ijk)
    xy_to_ijk = slicer.util.arrayFromVTKMatrix(ras_to_ijk) @ slicer.util.arrayFromVTKMatrix(slice_node.GetXYToRAS())
    y, x = np.mgrid[0:ny, 0:nx]
    points = np.stack([x.ravel(), y.ravel(), np.zeros(x.size), np.ones(x.size)])
    ijk = np.rint((xy_to_ijk @ points)[:3]).astype(int)
    shape = values.shape[::-1]
    inside = np.all((ijk >= 0) & (ijk < np.array(shape)[:, None]), axis=0)
    out = np.full(x.size, np.nan)
    out[inside] = values[ijk[2, inside], ijk[1, inside], ijk[0, inside]]
    return out.reshape(ny, nx)


def test_show_results_sets_every_slice_view(scored: Scored) -> None:
    scored.logic.showResults(scored.volume, scored.difference, opacity=0.7, displayThreshold=DISPLAY_THRESHOLD)
    composites = [scored.views[name].GetSliceCompositeNode() for name in VIEWS]
    assert scored.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode") == 3
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == scored.volume.GetID()
        assert composite.GetForegroundVolumeID() == scored.difference.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.7)
    display = scored.difference.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeIron"
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(DISPLAY_THRESHOLD)


def test_overlay_is_coloured_exactly_where_the_difference_is_high(scored: Scored) -> None:
    logic = scored.logic
    logic.showResults(scored.volume, scored.difference, opacity=0.7, displayThreshold=DISPLAY_THRESHOLD)
    values = slicer.util.arrayFromVolume(scored.difference)
    # Slices are resampled with linear interpolation, so a pixel's value lies between its neighbours'.
    high = minimum_filter(values, size=3) >= DISPLAY_THRESHOLD
    possible = maximum_filter(values, size=3) >= DISPLAY_THRESHOLD
    # Look through the strongest difference (the lesion) in all three views.
    k, j, i = np.unravel_index(np.argmax(np.where(high, values, 0)), values.shape)
    ras = matrix(scored.difference) @ [i, j, k, 1.0]
    for name in VIEWS:
        scored.views[name].FitSliceToAll()
    slicer.vtkMRMLSliceNode.JumpAllSlices(scored.scene, *ras[:3], slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    for name in VIEWS:
        view = scored.views[name]
        rgb = blended_rgb(view)
        coloured = rgb.max(axis=2) - rgb.min(axis=2) > 0  # the input is shown in grey: R == G == B
        surely = difference_under_pixels(view, scored.difference, high.astype(float)) == 1
        maybe = difference_under_pixels(view, scored.difference, possible.astype(float)) == 1
        assert surely.sum() > 20, f"{name}: the view should cross high differences"
        assert coloured[surely].mean() > 0.99, name
        assert not coloured[~maybe].any(), f"{name}: colour where the difference map is low"
    logic.setOverlayOpacity(0.0)
    assert not any((np.ptp(blended_rgb(scored.views[n]), axis=2) > 0).any() for n in VIEWS)


def test_jump_to_row_moves_the_axial_view(scored: Scored) -> None:
    positions = scored.logic.tableColumns(scored.table)["position_mm"]
    for row in (0, len(positions) // 2):
        point = scored.logic.jumpToRow(scored.table, row)
        red = scored.views["Red"].GetSliceNode()
        assert red.GetSliceToRAS().GetElement(2, 3) == pytest.approx(positions[row])
        assert point[2] == pytest.approx(positions[row])
    with pytest.raises(MAEAnomalyError, match="outside the score table"):
        scored.logic.jumpToRow(scored.table, len(positions))
    columns = scored.logic.tableColumns(scored.table)
    row = scored.logic.jumpToMostAnomalous(scored.table)
    assert columns["score"][row] == columns["score"][columns["skipped"] == 0].max()
    assert scored.views["Red"].GetSliceNode().GetSliceToRAS().GetElement(2, 3) == pytest.approx(positions[row])


def test_chart_plots_score_against_position_with_threshold(scored: Scored) -> None:
    chart = scored.logic.createScoreChart(scored.table)
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    score, line = chart.GetNthPlotSeriesNode(0), chart.GetNthPlotSeriesNode(1)
    assert score.GetTableNode() is scored.table
    assert (score.GetXColumnName(), score.GetYColumnName()) == ("position_mm", "score")
    threshold = scored.logic.threshold(scored.table)
    assert np.isfinite(threshold)  # a z-score for a model with a position reference
    line_values = scored.logic.tableColumns(line.GetTableNode())
    np.testing.assert_allclose(line_values["threshold"], [threshold, threshold])
    positions = scored.logic.tableColumns(scored.table)["position_mm"]
    np.testing.assert_allclose(line_values["position_mm"], [positions.min(), positions.max()])
    assert line.GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleDash


# The background process ---------------------------------------------------------------------------


def wait(run, timeout: float = 180.0) -> list[float]:
    seen = []
    deadline = time.monotonic() + timeout
    while not (status := run.poll()).finished:
        seen.append(status.progress)
        assert time.monotonic() < deadline, "the scoring process did not finish"
        time.sleep(0.05)
    return seen


def test_background_run_gives_the_same_nodes_and_values(scored: Scored, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the child shares the CI machine's two cores
    before = scored.logic.tableColumns(scored.table)
    count = scored.scene.GetNumberOfNodes()
    run = scored.logic.startProcessing(scored.volume, scored.model, device="cpu")
    assert run.imagePath.exists()
    progress = wait(run)
    assert progress == sorted(progress)
    table, difference = scored.logic.finishProcessing(run)
    assert not run.workDir.exists()
    assert (table.GetID(), difference.GetID()) == (scored.table.GetID(), scored.difference.GetID())
    assert scored.scene.GetNumberOfNodes() == count
    after = scored.logic.tableColumns(table)
    for name in SCORE_COLUMNS:  # the child may use another thread count, so float sums may differ slightly
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(scored.volume), scored.voxels_before)


def test_background_run_can_be_cancelled(scored: Scored) -> None:
    run = scored.logic.startProcessing(scored.volume, scored.model, device="cpu")
    time.sleep(0.5)
    run.cancel()
    assert run.poll().finished and not run.workDir.exists()
    assert run.job.error == "scoring was cancelled"
    with pytest.raises(MAEAnomalyError, match=r"^scoring was cancelled$"):
        scored.logic.finishProcessing(run)


def test_background_error_reaches_the_user_as_one_line(scored: Scored, tmp_path: Path) -> None:
    missing = tmp_path / "no-model-here"
    run = scored.logic.startProcessing(scored.volume, missing, device="cpu")
    wait(run)
    assert run.job.returncode == 2
    with pytest.raises(MAEAnomalyError) as info:
        scored.logic.finishProcessing(run)
    assert str(info.value) == f"{missing}: model directory not found"


def test_empty_mask_is_refused_naming_the_mask_node(scored: Scored) -> None:
    """Both paths refuse an empty mask before any work starts, naming the node the user chose."""
    mask = scored.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "empty brain mask")
    mask.CopyOrientation(scored.volume)
    slicer.util.updateVolumeFromArray(mask, np.zeros_like(scored.voxels_before, dtype=np.uint8))
    with pytest.raises(MAEAnomalyError) as background:
        scored.logic.startProcessing(scored.volume, scored.model, mask, device="cpu")
    with pytest.raises(MAEAnomalyError) as in_process:
        scored.logic.process(scored.volume, scored.model, mask, device="cpu")
    assert str(background.value) == str(in_process.value) == "empty brain mask: mask is empty"


def test_background_errors_name_the_selected_volume(scored: Scored) -> None:
    """The CLI reads a temporary copy; an error only it detects must name the user's volume instead."""
    thin = scored.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "thin slab")
    slicer.util.updateVolumeFromArray(thin, np.random.default_rng(0).random((12, 4, 5)).astype(np.float32))
    run = scored.logic.startProcessing(thin, scored.model, device="cpu")
    wait(run)
    with pytest.raises(MAEAnomalyError) as info:
        scored.logic.finishProcessing(run)
    assert str(info.value).startswith("thin slab: axial slices are 5x4 voxels, smaller than one 8x8 patch")
    assert "\n" not in str(info.value)
