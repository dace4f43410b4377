"""Volume nodes to SimpleITK images and back: geometry in world coordinates (RAS in MRML, LPS in ITK),
including linear parent transforms, with the node's voxels copied, never written to."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from MAEAnomalyLib.core.errors import MAEAnomalyError

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def world_ijk_to_ras(volume: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """The 4x4 IJK-to-world-RAS matrix of a volume, including any linear parent transform."""
    local = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(local)
    matrix = _array_from_matrix(local)
    parent = volume.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise MAEAnomalyError("is under a non-linear transform; harden the transform first", volume.GetName())
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        matrix = _array_from_matrix(to_world) @ matrix
    return matrix


def _array_from_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _matrix_from_array(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def image_from_volume(volume: slicer.vtkMRMLVolumeNode, kind: str = "image") -> sitk.Image:
    """A float32 SimpleITK copy of a scalar volume node in world LPS coordinates (SimpleITK's convention)."""
    name = volume.GetName()
    data = volume.GetImageData()
    if data is None or data.GetPointData().GetScalars() is None:
        raise MAEAnomalyError(f"{kind} volume has no voxels", name)
    if data.GetNumberOfScalarComponents() != 1:
        raise MAEAnomalyError(
            f"{kind} has {data.GetNumberOfScalarComponents()} components per voxel; a scalar volume is needed", name)
    nx, ny, nz = data.GetDimensions()
    # numpy_support returns a view of the node's buffer; astype copies, so the node is never written to.
    values = numpy_support.vtk_to_numpy(data.GetPointData().GetScalars()).reshape(nz, ny, nx).astype(np.float32)
    if not np.isfinite(values).all():
        raise MAEAnomalyError(f"{kind} contains NaN or infinite voxels", name)
    if kind == "image" and values.size and values.min() == values.max():
        raise MAEAnomalyError(f"image is constant (every voxel is {float(values.min()):g})", name)
    if kind == "mask" and not (values > 0).any():
        raise MAEAnomalyError("mask is empty", name)
    image = sitk.GetImageFromArray(values)
    ijk_to_ras = world_ijk_to_ras(volume)
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    if np.any(spacing == 0):
        raise MAEAnomalyError(f"{kind} has zero voxel spacing", name)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((_RAS_TO_LPS @ (ijk_to_ras[:3, :3] / spacing)).ravel().tolist())
    image.SetOrigin((_RAS_TO_LPS @ ijk_to_ras[:3, 3]).tolist())
    return image


def ijk_to_ras_from_image(image: sitk.Image) -> np.ndarray:
    """The IJK-to-RAS matrix of a SimpleITK image (inverse of the geometry part of ``image_from_volume``)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = _RAS_TO_LPS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = _RAS_TO_LPS @ np.array(image.GetOrigin())
    return matrix


def vtk_image(array: np.ndarray) -> vtk.vtkImageData:
    """A vtkImageData holding a (Z, Y, X) array; origin and spacing stay 0 and 1 as MRML expects."""
    image = vtk.vtkImageData()
    nz, ny, nx = array.shape
    image.SetDimensions(nx, ny, nz)
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def import_labels(segmentation: slicer.vtkMRMLSegmentationNode, inputVolume: slicer.vtkMRMLScalarVolumeNode,
                  labels: np.ndarray, error: str) -> None:
    """Imports a (Z, Y, X) label array on ``inputVolume``'s voxel grid into ``segmentation``, both placed
    under the input's parent transform. The temporary label map gets that transform too: the import maps
    a label map from its own transform into the segmentation's, so one without it would be moved by the
    inverse transform, away from the input's voxels. Raises ``error`` when Slicer refuses the import."""
    scene = segmentation.GetScene()
    transform_id = inputVolume.GetTransformNodeID()
    segmentation.SetAndObserveTransformNodeID(transform_id)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        ijk_to_ras = vtk.vtkMatrix4x4()
        inputVolume.GetIJKToRASMatrix(ijk_to_ras)
        labelmap.SetIJKToRASMatrix(ijk_to_ras)
        labelmap.SetAndObserveTransformNodeID(transform_id)
        labelmap.SetAndObserveImageData(vtk_image(labels))
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation):
            raise MAEAnomalyError(error, inputVolume.GetName())
    finally:
        scene.RemoveNode(labelmap)


def mask_image(mask: slicer.vtkMRMLNode, reference: slicer.vtkMRMLScalarVolumeNode) -> sitk.Image:
    """A mask as a SimpleITK image: a volume node as it is, or a segmentation node (the way Slicer users
    keep brain masks) exported with all its segments onto the grid of ``reference``."""
    if not mask.IsA("vtkMRMLSegmentationNode"):
        return image_from_volume(mask, kind="mask")
    segment_ids = list(mask.GetSegmentation().GetSegmentIDs())
    if not segment_ids:
        raise MAEAnomalyError("mask is empty (the segmentation has no segments)", mask.GetName())
    scene = mask.GetScene()
    before = {scene.GetNthNode(k).GetID() for k in range(scene.GetNumberOfNodes())}
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{mask.GetName()} (mask)")
    try:
        # Export resamples every segment onto the reference's grid, including transforms between them.
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                mask, segment_ids, labelmap, reference, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY):
            raise MAEAnomalyError("cannot convert the segmentation to a label map", mask.GetName())
        labelmap.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
        labelmap.SetName(mask.GetName())  # so that every message names the node the user chose
        return image_from_volume(labelmap, kind="mask")
    finally:  # the label map and what the export made for it (display and colour nodes)
        added = [scene.GetNthNode(k) for k in range(scene.GetNumberOfNodes())]
        for node in added:
            if node.GetID() not in before:
                scene.RemoveNode(node)
