"""The Slicer module's logic: volume nodes in, a score table, a difference map and a chart out.

It needs MRML (``slicer`` and ``vtk``) but no ``slicer.app`` and no Qt, so it runs on a bare
``vtkMRMLScene`` from the slicer-core wheel as well as inside the application. torch is imported only
when scoring runs in this process, so that the module loads (and can offer to install torch) without it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from .background import JobStatus, ScoringJob
from .errors import MAEAnomalyError
from .io import check_same_grid
from .score_table import INTEGER_COLUMNS, read_table_csv

MODULE_NAME = "MAEAnomaly"
# Every output points at its input volume through this reference, so re-running replaces it; MRML
# keeps references valid when a scene is saved and loaded again. The input itself is never touched.
INPUT_REFERENCE = "MAEAnomalyInput"
ROLE_ATTRIBUTE = "MAEAnomaly.Role"
THRESHOLD_ATTRIBUTE = "MAEAnomaly.Threshold"
ROLE_SCORES, ROLE_DIFFERENCE = "scores", "difference"
ROLE_CHART, ROLE_SCORE_SERIES = "chart", "scoreSeries"
ROLE_THRESHOLD_TABLE, ROLE_THRESHOLD_SERIES = "thresholdTable", "thresholdSeries"
COLUMN_DESCRIPTIONS = {
    "slice_index": "Axial slice number, inferior first",
    "position_mm": "Superior (S) coordinate of the slice centre",
    "score": "Anomaly probability from the classifier",
    "mae_l1": "Mean absolute reconstruction error in the foreground",
    "ssim": "Mean SSIM between slice and reconstruction in the foreground",
    "intensity_p995": "99.5th percentile of normalised intensity (non-learned baseline)",
    "foreground_fraction": "Share of the slice inside the foreground mask",
    "abnormal": "1 where the score reaches the model's decision threshold",
    "skipped": "1 where the slice has no foreground and was not scored",
}
# Iron runs from red to yellow: even the weakest shown difference stands out in colour from the grey
# anatomy (maps that start at black, like Inferno, would hide it). Slicer adds it to every scene.
COLOR_NODE_ID = "vtkMRMLColorTableNodeIron"
DEFAULT_OPACITY = 0.6
# Differences are in units of the normalised intensity range (0..1); healthy tissue stays mostly below.
DEFAULT_DISPLAY_THRESHOLD = 0.2
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

ProgressFn = Callable[[float], None]


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


def _vtk_image(array: np.ndarray) -> vtk.vtkImageData:
    """A vtkImageData holding a (Z, Y, X) array; origin and spacing stay 0 and 1 as MRML expects."""
    image = vtk.vtkImageData()
    nz, ny, nx = array.shape
    image.SetDimensions(nx, ny, nz)
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def model_threshold(model_path: str | Path) -> float:
    """The decision threshold stored in a model directory, read without importing torch."""
    from .config import ModelConfig

    path = Path(model_path) / "config.json"
    try:
        threshold = ModelConfig.from_dict(json.loads(path.read_text())).threshold
    except (OSError, ValueError, TypeError) as exc:
        raise MAEAnomalyError(f"cannot read the model's threshold ({exc})", path) from None
    return float("inf") if threshold is None else float(threshold)


@dataclass
class ScoringRun:
    """A scoring run in a separate process, started by ``MAEAnomalyLogic.startProcessing``."""

    job: ScoringJob
    inputVolumeID: str
    modelPath: Path
    workDir: Path
    imagePath: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    # Temporary file -> node name, so that the CLI's messages name what the user selected.
    names: dict[str, str] = field(default_factory=dict)

    def poll(self) -> JobStatus:
        """Never blocks; call it from a timer until ``finished``, then ``finishProcessing``."""
        return self.job.poll()

    def cancel(self) -> None:
        """Stops the process and removes its temporary files."""
        self.job.cancel()
        shutil.rmtree(self.workDir, ignore_errors=True)


class MAEAnomalyLogic:
    """Scores volume nodes, stores the results as nodes, and shows them in the slice views."""

    def __init__(self, scene: slicer.vtkMRMLScene | None = None) -> None:
        self._scene = scene
        self._model_key: tuple[str, float] | None = None
        self._model = None

    @property
    def scene(self) -> slicer.vtkMRMLScene:
        return self._scene if self._scene is not None else slicer.mrmlScene

    # Parameters -------------------------------------------------------------------------------------

    def getParameterNode(self) -> slicer.vtkMRMLScriptedModuleNode:
        """The module's singleton parameter node, saved with the scene (created on first use)."""
        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(MODULE_NAME)
            node.SetName(self.scene.GenerateUniqueName(MODULE_NAME))
            node.SetAttribute("ModuleName", MODULE_NAME)
            node = self.scene.AddNode(node)
        return node

    def plotViewNode(self) -> slicer.vtkMRMLPlotViewNode:
        """The plot view shown inside the module panel (not part of the view layout)."""
        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLPlotViewNode")
        if node is None:
            node = slicer.vtkMRMLPlotViewNode()
            node.SetSingletonTag(MODULE_NAME)
            node.SetLayoutName(MODULE_NAME)
            node.SetName(f"{MODULE_NAME} plot view")
            node = self.scene.AddNode(node)
        return node

    # Scoring ----------------------------------------------------------------------------------------

    def process(self, inputVolume: slicer.vtkMRMLScalarVolumeNode, modelPath: str | Path,
                maskVolume: slicer.vtkMRMLScalarVolumeNode | None = None, progress: ProgressFn | None = None,
                device: str = "auto") -> tuple[slicer.vtkMRMLTableNode, slicer.vtkMRMLScalarVolumeNode]:
        """Scores every axial slice of ``inputVolume`` in this process (blocking; the widget uses
        ``startProcessing`` instead) and returns the score table and the difference volume."""
        from .runtime import resolve_device
        from .scoring import score_image

        image, mask = self._input_images(inputVolume, maskVolume)
        model = self._load_model(modelPath)
        scores = score_image(model, image, mask, device=resolve_device(device), progress=progress,
                             source=inputVolume.GetName())
        return self.storeResults(inputVolume, scores.table, scores.difference, scores.threshold)

    def _input_images(self, inputVolume: slicer.vtkMRMLScalarVolumeNode,
                      maskVolume: slicer.vtkMRMLScalarVolumeNode | None) -> tuple[sitk.Image, sitk.Image | None]:
        if inputVolume is None:
            raise MAEAnomalyError("no input volume selected")
        image = image_from_volume(inputVolume)
        mask = None
        if maskVolume is not None:
            mask = image_from_volume(maskVolume, kind="mask")
            check_same_grid(image, mask, maskVolume.GetName(), "mask")
        return image, mask

    def _load_model(self, modelPath: str | Path):
        """Loads a model directory, reusing the last one while its config.json is unchanged."""
        from .model_io import load_model

        config = Path(modelPath) / "config.json"
        key = (str(Path(modelPath).resolve()), config.stat().st_mtime if config.is_file() else -1.0)
        if key != self._model_key:
            self._model, self._model_key = load_model(modelPath), key
        return self._model

    def startProcessing(self, inputVolume: slicer.vtkMRMLScalarVolumeNode, modelPath: str | Path,
                        maskVolume: slicer.vtkMRMLScalarVolumeNode | None = None,
                        device: str = "auto") -> ScoringRun:
        """Starts scoring in a separate process running the library's CLI; see ``ScoringRun``."""
        from .io import volume_name

        image, mask = self._input_images(inputVolume, maskVolume)
        workDir = Path(tempfile.mkdtemp(prefix="maeanomaly-"))
        try:
            imagePath = workDir / "input.nrrd"
            sitk.WriteImage(image, str(imagePath))
            args = ["--model", str(modelPath), "--image", str(imagePath), "--out-dir", str(workDir / "out"),
                    "--device", device]
            names = {str(imagePath): inputVolume.GetName()}
            if mask is not None:
                maskPath = workDir / "mask.nrrd"
                sitk.WriteImage(mask, str(maskPath))
                args += ["--mask", str(maskPath)]
                names[str(maskPath)] = maskVolume.GetName()
            job = ScoringJob(args)
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        name = volume_name(imagePath)
        out = workDir / "out"
        outputs = {"scores": out / f"{name}_scores.csv", "difference": out / f"{name}_diff.nii.gz"}
        return ScoringRun(job, inputVolume.GetID(), Path(modelPath), workDir, imagePath, outputs, names)

    def finishProcessing(self, run: ScoringRun
                         ) -> tuple[slicer.vtkMRMLTableNode, slicer.vtkMRMLScalarVolumeNode]:
        """Loads a finished run's CSV and difference map into nodes (as ``process`` does), or raises its
        one-line error; the temporary files are removed either way."""
        try:
            run.job.wait()
            if run.job.error is not None:
                message = run.job.error
                for path, name in run.names.items():
                    message = message.replace(path, name)
                raise MAEAnomalyError(message)
            inputVolume = self.scene.GetNodeByID(run.inputVolumeID)
            if inputVolume is None:
                raise MAEAnomalyError("the input volume was removed from the scene while it was being scored")
            difference = sitk.ReadImage(str(run.outputs["difference"]), sitk.sitkFloat32)
            table = read_table_csv(run.outputs["scores"])
            return self.storeResults(inputVolume, table, difference, model_threshold(run.modelPath))
        finally:
            shutil.rmtree(run.workDir, ignore_errors=True)

    # Result nodes -----------------------------------------------------------------------------------

    def _nodes(self, className: str) -> Iterator[slicer.vtkMRMLNode]:
        collection = self.scene.GetNodesByClass(className)
        for k in range(collection.GetNumberOfItems()):
            yield collection.GetItemAsObject(k)

    def outputNode(self, inputVolume: slicer.vtkMRMLNode, role: str,
                   className: str = "vtkMRMLNode") -> slicer.vtkMRMLNode | None:
        """The existing output with ``role`` for ``inputVolume``, or None."""
        for node in self._nodes(className):
            if (node.GetAttribute(ROLE_ATTRIBUTE) == role
                    and node.GetNodeReferenceID(INPUT_REFERENCE) == inputVolume.GetID()):
                return node
        return None

    def inputVolumeOf(self, output: slicer.vtkMRMLNode) -> slicer.vtkMRMLScalarVolumeNode | None:
        """The volume that an output node (table, difference map, chart) was computed from."""
        return output.GetNodeReference(INPUT_REFERENCE) if output is not None else None

    def _output(self, inputVolume: slicer.vtkMRMLNode, role: str, className: str, name: str) -> slicer.vtkMRMLNode:
        node = self.outputNode(inputVolume, role, className)
        if node is None:
            node = self.scene.AddNewNodeByClass(className, self.scene.GenerateUniqueName(name))
            node.SetAttribute(ROLE_ATTRIBUTE, role)
            node.SetNodeReferenceID(INPUT_REFERENCE, inputVolume.GetID())
        return node

    def storeResults(self, inputVolume: slicer.vtkMRMLScalarVolumeNode, columns: Mapping[str, np.ndarray],
                     difference: sitk.Image, threshold: float
                     ) -> tuple[slicer.vtkMRMLTableNode, slicer.vtkMRMLScalarVolumeNode]:
        """Writes scores and a difference map on the input's grid into the input's output nodes,
        creating them on the first run and replacing their contents afterwards."""
        dims = inputVolume.GetImageData().GetDimensions()
        if tuple(difference.GetSize()) != tuple(dims):
            raise MAEAnomalyError(f"difference map size {difference.GetSize()} differs from the input's {dims}",
                                  inputVolume.GetName())
        name = inputVolume.GetName()
        table = self._output(inputVolume, ROLE_SCORES, "vtkMRMLTableNode", f"{name} anomaly scores")
        self._fill_table(table, columns)
        table.SetAttribute(THRESHOLD_ATTRIBUTE, repr(float(threshold)))

        diff = self._output(inputVolume, ROLE_DIFFERENCE, "vtkMRMLScalarVolumeNode", f"{name} anomaly difference")
        ijk_to_ras = vtk.vtkMatrix4x4()
        inputVolume.GetIJKToRASMatrix(ijk_to_ras)
        diff.SetIJKToRASMatrix(ijk_to_ras)
        diff.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
        diff.SetAndObserveImageData(_vtk_image(sitk.GetArrayFromImage(difference).astype(np.float32)))
        if diff.GetDisplayNode() is None:
            diff.CreateDefaultDisplayNodes()
        self._style_difference(diff)
        return table, diff

    @staticmethod
    def _fill_table(table: slicer.vtkMRMLTableNode, columns: Mapping[str, np.ndarray]) -> None:
        contents = vtk.vtkTable()
        for name, values in columns.items():
            array = vtk.vtkIntArray() if name in INTEGER_COLUMNS else vtk.vtkDoubleArray()
            array.SetName(name)
            array.SetNumberOfTuples(len(values))
            for k, value in enumerate(values):
                array.SetValue(k, int(value) if name in INTEGER_COLUMNS else float(value))
            contents.AddColumn(array)
        table.SetAndObserveTable(contents)
        for name in columns:
            if name in COLUMN_DESCRIPTIONS:
                table.SetColumnDescription(name, COLUMN_DESCRIPTIONS[name])
        table.SetColumnUnitLabel("position_mm", "mm")
        if hasattr(table, "SetUseColumnTitleAsColumnHeader"):
            table.SetUseColumnTitleAsColumnHeader(True)
        else:  # Slicer before 5.9
            table.SetUseColumnNameAsColumnHeader(True)
        table.SetLocked(True)

    @staticmethod
    def tableColumns(table: slicer.vtkMRMLTableNode) -> dict[str, np.ndarray]:
        """The score table as one numpy array per column."""
        contents = table.GetTable()
        return {contents.GetColumnName(k): numpy_support.vtk_to_numpy(contents.GetColumn(k)).copy()
                for k in range(contents.GetNumberOfColumns())}

    @staticmethod
    def threshold(table: slicer.vtkMRMLTableNode) -> float:
        """The decision threshold the table's ``abnormal`` column was computed with."""
        value = table.GetAttribute(THRESHOLD_ATTRIBUTE)
        return float(value) if value is not None else float("inf")

    # Display ----------------------------------------------------------------------------------------

    def _color_node_id(self) -> str:
        if self.scene.GetNodeByID(COLOR_NODE_ID) is not None:
            return COLOR_NODE_ID
        # A bare scene (no colour logic ran): add the procedural Iron map under its usual ID.
        node = slicer.vtkMRMLColorTableNode()
        node.SetTypeToIron()
        node.SetSingletonTag(node.GetTypeAsString())
        node.SetName(node.GetTypeAsString())
        return self.scene.AddNode(node).GetID()

    def _style_difference(self, diff: slicer.vtkMRMLScalarVolumeNode,
                          displayThreshold: float = DEFAULT_DISPLAY_THRESHOLD) -> None:
        display = diff.GetDisplayNode()
        display.SetAndObserveColorNodeID(self._color_node_id())
        values = numpy_support.vtk_to_numpy(diff.GetImageData().GetPointData().GetScalars())
        positive = values[values > 0]
        top = float(np.percentile(positive, 99.9)) if positive.size else 1.0
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, max(top, displayThreshold * 2, 1e-6))
        self.setDisplayThreshold(diff, displayThreshold)

    @staticmethod
    def setDisplayThreshold(differenceVolume: slicer.vtkMRMLScalarVolumeNode, threshold: float) -> None:
        """Hides differences below ``threshold`` (they become transparent in the slice views)."""
        display = differenceVolume.GetDisplayNode()
        display.SetAutoThreshold(False)
        display.SetApplyThreshold(True)
        display.SetThreshold(float(threshold), float(np.finfo(np.float32).max))

    def setOverlayOpacity(self, opacity: float) -> None:
        """The difference map's opacity over the input in every slice view."""
        for composite in self._nodes("vtkMRMLSliceCompositeNode"):
            composite.SetForegroundOpacity(float(opacity))

    def showResults(self, inputVolume: slicer.vtkMRMLScalarVolumeNode,
                    differenceVolume: slicer.vtkMRMLScalarVolumeNode, opacity: float = DEFAULT_OPACITY,
                    displayThreshold: float = DEFAULT_DISPLAY_THRESHOLD) -> None:
        """Input as background and the colour-mapped difference map as foreground in every slice view."""
        if inputVolume.GetDisplayNode() is None:
            # Only volumes created by scripts lack one; loading a volume in Slicer always adds it.
            inputVolume.CreateDefaultDisplayNodes()
        self._style_difference(differenceVolume, displayThreshold)
        for composite in self._nodes("vtkMRMLSliceCompositeNode"):
            composite.SetBackgroundVolumeID(inputVolume.GetID())
            composite.SetForegroundVolumeID(differenceVolume.GetID())
            composite.SetForegroundOpacity(float(opacity))

    # Chart and navigation ---------------------------------------------------------------------------

    def createScoreChart(self, table: slicer.vtkMRMLTableNode) -> slicer.vtkMRMLPlotChartNode:
        """A chart of score against slice position with the decision threshold as a dashed line; calling
        it again for the same input updates the same chart."""
        inputVolume = self.inputVolumeOf(table)
        if inputVolume is None:
            raise MAEAnomalyError("the score table is not linked to an input volume", table.GetName())
        name = inputVolume.GetName()
        series = self._output(inputVolume, ROLE_SCORE_SERIES, "vtkMRMLPlotSeriesNode", f"{name} score")
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("position_mm")
        series.SetYColumnName("score")
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
        series.SetColor(0.1, 0.4, 0.8)

        chart = self._output(inputVolume, ROLE_CHART, "vtkMRMLPlotChartNode", f"{name} anomaly chart")
        chart.SetTitle(f"Anomaly score per axial slice: {name}")
        chart.SetXAxisTitle("Slice position, superior (mm)")
        chart.SetYAxisTitle("Anomaly score")
        chart.SetYAxisRangeAuto(False)
        chart.SetYAxisRange(0.0, 1.0)
        chart.RemoveAllPlotSeriesNodeIDs()
        chart.AddAndObservePlotSeriesNodeID(series.GetID())

        threshold = self.threshold(table)
        if np.isfinite(threshold):
            positions = self.tableColumns(table)["position_mm"]
            line = self._output(inputVolume, ROLE_THRESHOLD_TABLE, "vtkMRMLTableNode", f"{name} threshold")
            self._fill_table(line, {"position_mm": np.array([positions.min(), positions.max()]),
                                    "threshold": np.array([threshold, threshold])})
            thresholdSeries = self._output(inputVolume, ROLE_THRESHOLD_SERIES, "vtkMRMLPlotSeriesNode",
                                           f"{name} threshold")
            thresholdSeries.SetAndObserveTableNodeID(line.GetID())
            thresholdSeries.SetXColumnName("position_mm")
            thresholdSeries.SetYColumnName("threshold")
            thresholdSeries.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            thresholdSeries.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            thresholdSeries.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
            thresholdSeries.SetColor(0.85, 0.1, 0.1)
            chart.AddAndObservePlotSeriesNodeID(thresholdSeries.GetID())
        return chart

    def mostAnomalousRow(self, table: slicer.vtkMRMLTableNode) -> int:
        """The row of the highest-scoring slice that was scored (slices without foreground are skipped)."""
        columns = self.tableColumns(table)
        score = np.where(columns["skipped"] > 0, -np.inf, columns["score"])
        if not np.isfinite(score).any():
            raise MAEAnomalyError("no slice was scored (the foreground is empty)", table.GetName())
        return int(np.argmax(score))

    def jumpToRow(self, table: slicer.vtkMRMLTableNode, row: int) -> tuple[float, float, float]:
        """Moves every slice view (without panning) through the slice of ``row``: the volume's centre in R
        and A, the slice's position in S. Returns that RAS point."""
        positions = self.tableColumns(table)["position_mm"]
        if not 0 <= row < len(positions):
            raise MAEAnomalyError(f"row {row} is outside the score table (0..{len(positions) - 1})", table.GetName())
        inputVolume = self.inputVolumeOf(table)
        bounds = [0.0] * 6
        inputVolume.GetRASBounds(bounds)
        point = ((bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, float(positions[row]))
        slicer.vtkMRMLSliceNode.JumpAllSlices(self.scene, *point, slicer.vtkMRMLSliceNode.OffsetJumpSlice)
        return point

    def jumpToMostAnomalous(self, table: slicer.vtkMRMLTableNode) -> int:
        """Jumps the slice views to the highest-scoring slice and returns its row."""
        row = self.mostAnomalousRow(table)
        self.jumpToRow(table, row)
        return row
