"""Results of an input under a linear transform (issue 26): the difference map, the anomaly components, the
brain-mask outline and the jump targets all sit at the input's world positions. Expected positions are
computed here from the input's IJK-to-RAS and the transform's matrix, never through the module's code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
from test_slicer_components import _model_with_voxel_threshold  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from MAEAnomalyLib.data.io import to_canonical  # noqa: E402
from MAEAnomalyLib.data.synthetic import make_subject  # noqa: E402
from MAEAnomalyLib.scoring.segmentation import component_rows  # noqa: E402
from SlicerMAEAnomalyLib.components import componentNodes, jumpToComponent, storeComponents  # noqa: E402
from SlicerMAEAnomalyLib.logic import MAEAnomalyLogic  # noqa: E402
from SlicerMAEAnomalyLib.volumes import image_from_volume  # noqa: E402

pytestmark = pytest.mark.slow  # a real MRML scene; one test scores in this process


def _array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _to_world(node) -> np.ndarray:
    """The node's parent transform to world as a 4x4 array (identity without one)."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return _array(matrix)


def _shift_and_rotation() -> np.ndarray:
    """50 mm to the right and 30 degrees about an oblique axis."""
    axis = np.array([0.3, 1.0, 0.2]) / np.linalg.norm([0.3, 1.0, 0.2])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(30.0)
    matrix = np.eye(4)
    matrix[:3, :3] = np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k
    matrix[:3, 3] = [50.0, 0.0, 0.0]
    return matrix


def _transformed_head(tmp_path: Path):
    """A sagittally stored head read through a storage node, under the shift-and-rotation transform.
    Returns the scene, the volume and its voxel-to-world matrix (local IJK-to-RAS, then the transform)."""
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    image_path = make_subject(11, lesion=True, orientation="PSR").write(tmp_path, "head")[0]
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "head")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(image_path))
    assert storage.ReadData(volume)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift and rotation")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(_shift_and_rotation()))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    local = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(local)
    return scene, volume, _shift_and_rotation() @ _array(local)


def _segment_world_points(segmentation, k: int) -> np.ndarray:
    """World RAS of the voxel centres of segment ``k``, from its binary labelmap's own geometry and the
    segmentation node's parent transform (what Slicer draws)."""
    segment = segmentation.GetSegmentation().GetNthSegment(k)
    labelmap = segment.GetRepresentation("Binary labelmap")
    extent = labelmap.GetExtent()
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(shape)
    ijk = np.argwhere(values == segment.GetLabelValue())[:, ::-1] + [extent[0], extent[2], extent[4]]
    image_to_node = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(image_to_node)
    points = np.c_[ijk, np.ones(len(ijk))].T
    return (_to_world(segmentation) @ _array(image_to_node) @ points)[:3].T


def _input_voxels_of(world: np.ndarray, voxel_to_world: np.ndarray) -> set[tuple[int, int, int]]:
    """The input's voxels (i, j, k) at world points that must be voxel centres of the input."""
    ijk = (np.linalg.inv(voxel_to_world) @ np.c_[world, np.ones(len(world))].T)[:3].T
    np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-3, err_msg="the segment is off the input's voxel grid")
    return {tuple(v) for v in np.round(ijk).astype(int)}


def _voxels(array: np.ndarray) -> set[tuple[int, int, int]]:
    """The (i, j, k) of a (Z, Y, X) array's set voxels."""
    return {tuple(v) for v in np.argwhere(array)[:, ::-1]}


def _slice_offset(scene) -> np.ndarray:
    node = scene.GetFirstNodeByClass("vtkMRMLSliceNode")
    return np.array([node.GetSliceToRAS().GetElement(i, 3) for i in range(3)])


def _check_segment(segmentation, k: int, voxels: np.ndarray, voxel_to_world: np.ndarray) -> np.ndarray:
    """Segment ``k`` covers exactly the input's ``voxels`` (a Z, Y, X mask) in world space; returns its
    world voxel centres. The centroids are compared first, so that a misplaced segment says by how much."""
    world = _segment_world_points(segmentation, k)
    ijk = np.argwhere(voxels)[:, ::-1]
    expected = (voxel_to_world @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T.mean(axis=0)
    np.testing.assert_allclose(world.mean(axis=0), expected, atol=1e-4, err_msg=f"world centroid of segment {k}")
    assert _input_voxels_of(world, voxel_to_world) == _voxels(voxels), f"segment {k}"
    return world


def test_components_sit_on_the_inputs_world_voxels(tmp_path: Path) -> None:
    scene, volume, voxel_to_world = _transformed_head(tmp_path)
    scene.AddNewNodeByClass("vtkMRMLSliceNode").SetLayoutName("Red")
    logic = MAEAnomalyLogic(scene)
    # Two balls on the input's voxels, with the geometry scoring gives them (the input's world grid).
    grid = image_from_volume(volume)
    z, y, x = np.indices(slicer.util.arrayFromVolume(volume).shape)
    centre = (np.array(z.shape) - 1) / 2
    labels = np.zeros(z.shape, np.int32)
    for label, offset, radius in ((1, (0, 0, -12), 6.0), (2, (4, 6, 10), 3.5)):
        c = centre + offset
        labels[((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= radius ** 2] = label
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(grid)
    canonical = to_canonical(image)
    rows = component_rows(sitk.GetArrayFromImage(canonical), np.ones(canonical.GetSize()[::-1]), canonical)

    segmentation, table = storeComponents(logic, volume, image, rows)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 2
    for k, row in enumerate(rows):
        world = _check_segment(segmentation, k, labels == row["label"], voxel_to_world)
        # The jump goes to the drawn segment's world centroid, and the slice views follow.
        point = jumpToComponent(logic, table, k)
        np.testing.assert_allclose(point, world.mean(axis=0), atol=1e-4)
        np.testing.assert_allclose(_slice_offset(scene), point, atol=1e-6)


def test_brain_mask_outline_sits_on_the_inputs_world_voxels(tmp_path: Path) -> None:
    scene, volume, voxel_to_world = _transformed_head(tmp_path)
    brain = np.zeros(slicer.util.arrayFromVolume(volume).shape, np.uint8)
    brain[10:30, 12:40, 15:45] = 1
    mask = sitk.GetImageFromArray(brain)
    mask.CopyInformation(image_from_volume(volume))  # the CLI writes it on the grid of the image it was given
    outline = MAEAnomalyLogic(scene).storeBrainMask(volume, mask)
    _check_segment(outline, 0, brain.astype(bool), voxel_to_world)


def test_scoring_a_transformed_input_puts_every_result_at_its_world_position(
        tmp_path: Path, untrained_model_dir: Path) -> None:
    scene, volume, voxel_to_world = _transformed_head(tmp_path)
    scene.AddNewNodeByClass("vtkMRMLSliceNode").SetLayoutName("Red")
    logic = MAEAnomalyLogic(scene)
    table, difference = logic.process(volume, _model_with_voxel_threshold(tmp_path, untrained_model_dir, 0.4),
                                      device="cpu")

    # The difference map's voxels are the input's voxels in world space.
    local = vtk.vtkMatrix4x4()
    difference.GetIJKToRASMatrix(local)
    np.testing.assert_allclose(_to_world(difference) @ _array(local), voxel_to_world, atol=1e-9)
    assert difference.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()

    # Every component is drawn on the input's voxels, around the world centroid in its table row.
    segmentation, components = componentNodes(logic, volume)
    count = segmentation.GetSegmentation().GetNumberOfSegments()
    assert count == components.GetNumberOfRows() > 0
    for k in range(min(count, 3)):
        world = _segment_world_points(segmentation, k)
        point = jumpToComponent(logic, components, k)
        np.testing.assert_allclose(point, world.mean(axis=0), atol=1e-4, err_msg=f"segment {k} vs its row")
        np.testing.assert_allclose(_slice_offset(scene), point, atol=1e-6)
        assert len(_input_voxels_of(world, voxel_to_world)) == int(components.GetCellText(k, 1))  # voxels

    # Slice rows: the world S of each slice centre; the jump keeps R and A at the volume's world centre.
    dims = np.array(volume.GetImageData().GetDimensions())
    superior = int(np.argmax(np.abs(voxel_to_world[2, :3])))
    centres = []
    for k in range(dims[superior]):
        index = (dims - 1) / 2.0
        index[superior] = k
        centres.append(voxel_to_world @ [*index, 1.0])
    centres = sorted(centres, key=lambda p: p[2])
    positions = logic.tableColumns(table)["position_mm"]
    np.testing.assert_allclose(positions, [p[2] for p in centres], atol=1e-6)
    middle = voxel_to_world @ [*((dims - 1) / 2.0), 1.0]
    for row in (0, len(positions) // 2):
        point = logic.jumpToRow(table, row)
        np.testing.assert_allclose(point, [middle[0], middle[1], positions[row]], atol=1e-6)
        assert _slice_offset(scene)[2] == pytest.approx(positions[row])
    row = logic.jumpToMostAnomalous(table)
    assert _slice_offset(scene)[2] == pytest.approx(positions[row])
