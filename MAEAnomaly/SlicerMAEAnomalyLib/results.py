"""The result nodes of a scored volume: the score table, the difference volume shown over the input
in the slice views, the score chart, and navigation to a slice. Each output refers to its input volume,
so that scoring it again replaces the outputs instead of adding new ones."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.methods import get as get_method
from MAEAnomalyLib.methods import names as method_names
from MAEAnomalyLib.scoring.table import INTEGER_COLUMNS

from .volumes import vtk_image

MODULE_NAME = "MAEAnomaly"
# Every output points at its input volume through this reference, so re-running replaces it; MRML
# keeps references valid when a scene is saved and loaded again. The input itself is never touched.
INPUT_REFERENCE = "MAEAnomalyInput"
ROLE_ATTRIBUTE = "MAEAnomaly.Role"
THRESHOLD_ATTRIBUTE = "MAEAnomaly.Threshold"
# On the difference volume: the model's voxel threshold, where the display threshold starts (each model's
# map has its own scale: brain-t1's divided difference, the intensity method's normalised intensity).
VOXEL_THRESHOLD_ATTRIBUTE = "MAEAnomaly.VoxelThreshold"
ROLE_SCORES, ROLE_DIFFERENCE, ROLE_BRAIN_MASK = "scores", "difference", "brainMask"
ROLE_CHART, ROLE_SCORE_SERIES = "chart", "scoreSeries"
ROLE_THRESHOLD_TABLE, ROLE_THRESHOLD_SERIES = "thresholdTable", "thresholdSeries"
# The columns every method's table has, and each registered method's own (``Method.descriptions``).
COLUMN_DESCRIPTIONS = {
    "slice_index": "Axial slice number, inferior first",
    "position_mm": "Superior (S) coordinate of the slice centre",
    "score": "The thresholded anomaly score: the method's raw score, or with a position reference its z-score "
             "against healthy slices at the same height in the brain",
    "score_volume": "The score as a robust z-score against the other brain slices of this volume (needs no healthy "
                    "scans of the site)",
    "intensity_p995": "99.5th percentile of normalised intensity (non-learned baseline)",
    "foreground_fraction": "Share of the slice inside the foreground mask",
    "brain_position": "Height of the slice in the brain: 0 its lowest slice, 1 its highest",
    "abnormal": "1 where the score reaches the model's decision threshold",
    "skipped": "1 where the slice has no foreground and was not scored",
    **{name: text for method in method_names() for name, text in get_method(method).descriptions.items()},
}
# Iron runs from red to yellow: even the weakest shown difference stands out in colour from the grey
# anatomy (maps that start at black, like Inferno, would hide it). Slicer adds it to every scene.
COLOR_NODE_ID = "vtkMRMLColorTableNodeIron"
DEFAULT_OPACITY = 0.6
# Just above the shipped model's voxel threshold (2.14, the value 1 % of held-out healthy brain voxels
# reach), so healthy tissue stays mostly transparent. The map's unit: docs/outputs.md, *The anomaly map*.
DEFAULT_DISPLAY_THRESHOLD = 2.2
MAX_DISPLAY_THRESHOLD = 20.0


def _plot_column(series: slicer.vtkMRMLPlotSeriesNode, table: slicer.vtkMRMLTableNode, column: str,
                 marker: int, line: int, color: tuple[float, float, float]) -> None:
    """Plots ``column`` of ``table`` against the slice position."""
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName("position_mm")
    series.SetYColumnName(column)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetMarkerStyle(marker)
    series.SetLineStyle(line)
    series.SetColor(*color)


def fill_table(table: slicer.vtkMRMLTableNode, columns: Mapping[str, Sequence], integer_columns: Collection[str],
               descriptions: Mapping[str, str], units: Mapping[str, str]) -> None:
    """Replaces ``table``'s contents with one int or double column per entry, described and with units,
    titles as headers, and locks it (outputs are not edited by hand)."""
    contents = vtk.vtkTable()
    for name, values in columns.items():
        array = vtk.vtkIntArray() if name in integer_columns else vtk.vtkDoubleArray()
        array.SetName(name)
        array.SetNumberOfTuples(len(values))
        for k, value in enumerate(values):
            array.SetValue(k, int(value) if name in integer_columns else float(value))
        contents.AddColumn(array)
    table.SetAndObserveTable(contents)
    for name in columns:
        if name in descriptions:
            table.SetColumnDescription(name, descriptions[name])
        if name in units:
            table.SetColumnUnitLabel(name, units[name])
    table.SetUseColumnTitleAsColumnHeader(True)
    table.SetLocked(True)


def check_input_grid(image: sitk.Image, inputVolume: slicer.vtkMRMLScalarVolumeNode, what: str) -> None:
    """An output image must have exactly the input volume's voxel grid size."""
    dims = inputVolume.GetImageData().GetDimensions()
    if tuple(image.GetSize()) != tuple(dims):
        raise MAEAnomalyError(f"{what} size {image.GetSize()} differs from the input's {dims}", inputVolume.GetName())


class ResultNodes:
    """Output nodes of ``scene`` (the application's scene when None), found by input and role."""

    def __init__(self, scene: slicer.vtkMRMLScene | None = None) -> None:
        self._scene = scene

    @property
    def scene(self) -> slicer.vtkMRMLScene:
        return self._scene if self._scene is not None else slicer.mrmlScene

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
                     difference: sitk.Image, threshold: float, voxelThreshold: float | None = None
                     ) -> tuple[slicer.vtkMRMLTableNode, slicer.vtkMRMLScalarVolumeNode]:
        """Writes scores and a difference map on the input's grid into the input's output nodes,
        creating them on the first run and replacing their contents afterwards. ``voxelThreshold`` (the
        model's) is kept on the difference volume for the display threshold."""
        check_input_grid(difference, inputVolume, "difference map")
        name = inputVolume.GetName()
        table = self._output(inputVolume, ROLE_SCORES, "vtkMRMLTableNode", f"{name} anomaly scores")
        fill_table(table, columns, INTEGER_COLUMNS, COLUMN_DESCRIPTIONS, {"position_mm": "mm"})
        table.SetAttribute(THRESHOLD_ATTRIBUTE, repr(float(threshold)))

        diff = self._output(inputVolume, ROLE_DIFFERENCE, "vtkMRMLScalarVolumeNode", f"{name} anomaly difference")
        ijk_to_ras = vtk.vtkMatrix4x4()
        inputVolume.GetIJKToRASMatrix(ijk_to_ras)
        diff.SetIJKToRASMatrix(ijk_to_ras)
        diff.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
        diff.SetAndObserveImageData(vtk_image(sitk.GetArrayFromImage(difference).astype(np.float32)))
        diff.SetAttribute(VOXEL_THRESHOLD_ATTRIBUTE, "" if voxelThreshold is None else repr(float(voxelThreshold)))
        if diff.GetDisplayNode() is None:
            diff.CreateDefaultDisplayNodes()
        self._style_difference(diff)
        return table, diff

    @staticmethod
    def tableColumns(table: slicer.vtkMRMLTableNode) -> dict[str, np.ndarray]:
        """The score table as one numpy array per column."""
        contents = table.GetTable()
        return {contents.GetColumnName(k): numpy_support.vtk_to_numpy(contents.GetColumn(k)).copy()
                for k in range(contents.GetNumberOfColumns())}

    @staticmethod
    def voxelThreshold(difference: slicer.vtkMRMLScalarVolumeNode) -> float | None:
        """The voxel threshold of the model that made ``difference`` (None: a model without one)."""
        value = difference.GetAttribute(VOXEL_THRESHOLD_ATTRIBUTE)
        return float(value) if value else None

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

    def outputVolumeIDs(self) -> list[str]:
        """The IDs of every volume this module made (difference maps), which are never inputs."""
        return [node.GetID() for node in self._nodes("vtkMRMLScalarVolumeNode")
                if node.GetAttribute(ROLE_ATTRIBUTE) == ROLE_DIFFERENCE]

    def setOverlayOpacity(self, opacity: float) -> int:
        """The difference map's opacity in the slice views that show one of our difference maps as
        foreground; views showing anything else keep their opacity. Returns the number of views changed."""
        ours = set(self.outputVolumeIDs())
        changed = 0
        for composite in self._nodes("vtkMRMLSliceCompositeNode"):
            if composite.GetForegroundVolumeID() in ours:
                composite.SetForegroundOpacity(float(opacity))
                changed += 1
        return changed

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
        _plot_column(series, table, "score", slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle,
                     slicer.vtkMRMLPlotSeriesNode.LineStyleSolid, (0.1, 0.4, 0.8))

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
            fill_table(line, {"position_mm": np.array([positions.min(), positions.max()]),
                              "threshold": np.array([threshold, threshold])},
                       INTEGER_COLUMNS, COLUMN_DESCRIPTIONS, {"position_mm": "mm"})
            thresholdSeries = self._output(inputVolume, ROLE_THRESHOLD_SERIES, "vtkMRMLPlotSeriesNode",
                                           f"{name} threshold")
            _plot_column(thresholdSeries, line, "threshold", slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone,
                         slicer.vtkMRMLPlotSeriesNode.LineStyleDash, (0.85, 0.1, 0.1))
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
        if inputVolume is None:
            raise MAEAnomalyError("the scored volume is no longer in the scene", table.GetName())
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
