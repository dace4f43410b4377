"""Anomaly components in a real MRML scene (slicer-core wheel): the segmentation node and the components
table, replaced on a re-run, removed for a model without voxel threshold, and the jump to a centroid."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
from vtk.util import numpy_support  # noqa: E402

from MAEAnomalyLib.core.config import PreprocessConfig, SegmentationConfig  # noqa: E402
from MAEAnomalyLib.data.io import from_canonical  # noqa: E402
from MAEAnomalyLib.data.preprocessing import prepare_image  # noqa: E402
from MAEAnomalyLib.data.synthetic import make_subject  # noqa: E402
from MAEAnomalyLib.scoring.segmentation import segment  # noqa: E402
from SlicerMAEAnomalyLib.components import (  # noqa: E402
    componentNodes,
    jumpToComponent,
    showComponentsIn3D,
    storeComponents,
)
from SlicerMAEAnomalyLib.logic import MAEAnomalyLogic  # noqa: E402
from SlicerMAEAnomalyLib.results import INPUT_REFERENCE  # noqa: E402
from SlicerMAEAnomalyLib.volumes import image_from_volume  # noqa: E402

pytestmark = pytest.mark.slow  # a real MRML scene and a background scoring process


def _scene_with_volume(tmp_path: Path, orientation: str = "PSR"):
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    subject = make_subject(11, lesion=True, orientation=orientation)
    image_path, mask_path, _ = subject.write(tmp_path, "head")
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "head")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(image_path))
    assert storage.ReadData(volume)
    return scene, volume, subject, image_path, mask_path


def _two_components(volume, subject):
    """Two balls in the brain of the volume as Slicer holds it, segmented as ``score`` does."""
    image = image_from_volume(volume)
    prepared = prepare_image(image, PreprocessConfig(image_size=64), subject.brain_mask)
    fg = prepared.foreground_input
    z, y, x = np.indices(fg.shape)
    centre = np.round(np.argwhere(fg).mean(axis=0)).astype(int)
    values = np.where(fg, 0.1, 0.0).astype(np.float32)
    for offset, radius in (((0, 0, -9), 4.0), ((2, 0, 9), 2.6)):
        c = centre + np.array(offset)
        values[((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= radius ** 2] = 0.8
    return segment(from_canonical(values, image), prepared, 0.5, SegmentationConfig(median_radius=0))


def _segment_voxels(segmentation_node, k: int) -> int:
    segment = segmentation_node.GetSegmentation().GetNthSegment(k)
    labelmap = segment.GetRepresentation("Binary labelmap")
    values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
    return int((values == segment.GetLabelValue()).sum())


def test_components_become_a_segmentation_and_a_table_replaced_on_rerun(tmp_path):
    scene, volume, subject, *_ = _scene_with_volume(tmp_path)
    before = slicer.util.arrayFromVolume(volume).copy()
    logic = MAEAnomalyLogic(scene)
    found = _two_components(volume, subject)
    seg, table = storeComponents(logic, volume, found.labels, found.components)
    content = seg.GetSegmentation()
    assert content.GetNumberOfSegments() == 2
    names = [content.GetNthSegment(k).GetName() for k in range(2)]
    assert names == [f"Anomaly {r['label']}: {r['volume_ml']:.2f} mL" for r in found.components]
    assert [_segment_voxels(seg, k) for k in range(2)] == [r["voxels"] for r in found.components]
    assert seg.GetNodeReference(INPUT_REFERENCE) is volume and table.GetNodeReference(INPUT_REFERENCE) is volume
    assert table.GetNumberOfRows() == 2 and table.GetCellText(0, 0) == "1"
    assert seg.GetDisplayNode().GetVisibility2DFill() and not seg.GetDisplayNode().GetVisibility3D()
    # The segments sit where the components are: the segment's voxel at the first centroid is set.
    labelmap = content.GetNthSegment(0).GetRepresentation("Binary labelmap")
    ras_to_ijk = vtk.vtkMatrix4x4()
    labelmap.GetWorldToImageMatrix(ras_to_ijk)
    row = found.components[0]
    ijk = ras_to_ijk.MultiplyPoint((row["centroid_r"], row["centroid_a"], row["centroid_s"], 1.0))[:3]
    assert labelmap.GetScalarComponentAsDouble(*(round(c) for c in ijk), 0) == content.GetNthSegment(0).GetLabelValue()

    # A re-run refills the same nodes; the input is untouched.
    again, againTable = storeComponents(logic, volume, found.labels, found.components)
    assert (again.GetID(), againTable.GetID()) == (seg.GetID(), table.GetID())
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0  # the temporary one is gone
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)

    showComponentsIn3D(seg, True)
    assert seg.GetDisplayNode().GetVisibility3D()

    # Jumping centres the slice views on the component's centroid.
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    red.SetOrientationToAxial()
    point = jumpToComponent(logic, table, 1)
    assert point == pytest.approx((found.components[1]["centroid_r"], found.components[1]["centroid_a"],
                                   found.components[1]["centroid_s"]))
    slice_to_ras = red.GetSliceToRAS()
    assert [slice_to_ras.GetElement(i, 3) for i in range(3)] == pytest.approx(point, abs=1e-6)

    # A model without voxel threshold: the stale nodes go.
    assert storeComponents(logic, volume, None, []) == (None, None)
    assert componentNodes(logic, volume) == (None, None)


def _model_with_voxel_threshold(tmp_path: Path, source: Path, value: float) -> Path:
    model = tmp_path / "model"
    shutil.copytree(source, model)
    config = json.loads((model / "config.json").read_text())
    config["voxel_threshold"] = value
    (model / "config.json").write_text(json.dumps(config))
    return model


def test_scoring_in_process_and_in_the_background_gives_the_same_components(tmp_path, untrained_model_dir):
    scene, volume, _, _, _ = _scene_with_volume(tmp_path, "LPS")
    model = _model_with_voxel_threshold(tmp_path, untrained_model_dir, 0.4)
    logic = MAEAnomalyLogic(scene)
    logic.process(volume, model, device="cpu")
    seg, table = componentNodes(logic, volume)
    assert seg is not None and table.GetNumberOfRows() == seg.GetSegmentation().GetNumberOfSegments() > 0
    first = [float(table.GetCellText(r, 2)) for r in range(table.GetNumberOfRows())]  # volume_mm3

    run = logic.startProcessing(volume, model, device="cpu")
    deadline = time.time() + 300
    while not run.poll().finished and time.time() < deadline:
        time.sleep(0.2)
    logic.finishProcessing(run)
    seg2, table2 = componentNodes(logic, volume)
    assert (seg2.GetID(), table2.GetID()) == (seg.GetID(), table.GetID())
    assert [float(table2.GetCellText(r, 2)) for r in range(table2.GetNumberOfRows())] == pytest.approx(first)
