"""Anomaly components in the scene (issue 19): a segmentation node over the input with one segment per
component, named by rank and volume; a components table; jumping the slice views to a component's
centroid; and the widget's components section.

Both nodes refer to their input volume (``INPUT_REFERENCE``), so scoring it again replaces them; a
model without a voxel threshold removes them (they would describe an older run). Everything but
``ComponentsPanel`` needs MRML only, so it runs on a bare ``vtkMRMLScene``
(Testing/slicer_module/test_slicer_components.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
from vtk.util import numpy_support

from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.scoring.segmentation import COMPONENT_COLUMNS, read_components_csv

from .messages import reportingErrors
from .results import ResultNodes, check_input_grid, fill_table
from .volumes import import_labels

ROLE_SEGMENTATION, ROLE_COMPONENTS = "anomalySegmentation", "components"
INTEGER_COLUMNS = ("label", "voxels", "first_slice", "last_slice")
COLUMN_DESCRIPTIONS = {
    "label": "Component number, 1 the largest",
    "volume_ml": "Volume of the component",
    "first_slice": "First axial slice (slice_index of the score table, inferior first)",
    "last_slice": "Last axial slice",
    "centroid_r": "Centroid, right (RAS)", "centroid_a": "Centroid, anterior (RAS)",
    "centroid_s": "Centroid, superior (RAS)",
    "map_max": "Largest difference inside the component", "map_mean": "Mean difference inside the component",
}
COLUMN_UNITS = {"volume_mm3": "mm3", "volume_ml": "mL", **{f"centroid_{axis}": "mm" for axis in "raslp"},
                "centroid_lps_s": "mm"}
# Distinct colours for the first segments (largest first), then repeated.
PALETTE = ((0.0, 0.9, 1.0), (1.0, 0.85, 0.0), (0.2, 1.0, 0.3), (1.0, 0.3, 0.9), (1.0, 0.55, 0.1),
           (0.55, 0.55, 1.0))


def segmentName(row: Mapping) -> str:
    return f"Anomaly {int(row['label'])}: {row['volume_ml']:.2f} mL"


def componentNodes(nodes: ResultNodes, inputVolume: slicer.vtkMRMLNode
                   ) -> tuple[slicer.vtkMRMLSegmentationNode | None, slicer.vtkMRMLTableNode | None]:
    """The input's existing segmentation and components table, or None for each that is missing."""
    return (nodes.outputNode(inputVolume, ROLE_SEGMENTATION, "vtkMRMLSegmentationNode"),
            nodes.outputNode(inputVolume, ROLE_COMPONENTS, "vtkMRMLTableNode"))


def _fill_segmentation(nodes: ResultNodes, segmentation: slicer.vtkMRMLSegmentationNode,
                       inputVolume: slicer.vtkMRMLScalarVolumeNode, labels: sitk.Image, rows: list[dict]) -> None:
    segmentation.GetSegmentation().RemoveAllSegments()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
    segmentation.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
    if not rows:
        return
    # The label map lies on the input's voxel grid (its geometry is the input's world grid).
    import_labels(segmentation, inputVolume, sitk.GetArrayFromImage(labels).astype(np.int32),
                  "could not import the anomaly label map")
    byLabel = {int(r["label"]): r for r in rows}
    content = segmentation.GetSegmentation()
    for k in range(content.GetNumberOfSegments()):
        segment = content.GetNthSegment(k)
        row = byLabel[int(segment.GetLabelValue())]
        segment.SetName(segmentName(row))
        segment.SetColor(*PALETTE[(int(row["label"]) - 1) % len(PALETTE)])


def storeComponents(nodes: ResultNodes, inputVolume: slicer.vtkMRMLScalarVolumeNode, labels: sitk.Image | None,
                    rows: list[dict]) -> tuple[slicer.vtkMRMLSegmentationNode | None, slicer.vtkMRMLTableNode | None]:
    """The input's segmentation and components table from a label map on its grid and the component
    rows; created on the first run, refilled afterwards. ``labels`` None (the model has no voxel
    threshold) removes both."""
    if labels is None:
        for node in componentNodes(nodes, inputVolume):
            if node is not None:
                nodes.scene.RemoveNode(node)
        return None, None
    check_input_grid(labels, inputVolume, "anomaly label map")
    name = inputVolume.GetName()
    segmentation = nodes._output(inputVolume, ROLE_SEGMENTATION, "vtkMRMLSegmentationNode", f"{name} anomalies")
    if segmentation.GetDisplayNode() is None:
        segmentation.CreateDefaultDisplayNodes()
    _fill_segmentation(nodes, segmentation, inputVolume, labels, rows)
    segmentation.GetDisplayNode().SetVisibility2DFill(True)
    segmentation.GetDisplayNode().SetVisibility3D(False)  # the 3D view on request: showComponentsIn3D
    table = nodes._output(inputVolume, ROLE_COMPONENTS, "vtkMRMLTableNode", f"{name} anomaly components")
    fill_table(table, {name: [row[name] for row in rows] for name in COMPONENT_COLUMNS}, INTEGER_COLUMNS,
               COLUMN_DESCRIPTIONS, COLUMN_UNITS)
    return segmentation, table


def storeComponentsOfScores(nodes: ResultNodes, inputVolume: slicer.vtkMRMLScalarVolumeNode, scores
                            ) -> tuple[slicer.vtkMRMLSegmentationNode | None, slicer.vtkMRMLTableNode | None]:
    """``storeComponents`` for a ``VolumeScores`` scored in this process."""
    from MAEAnomalyLib.scoring.segmentation import segment

    found = segment(scores.difference, scores.prepared, scores.voxel_threshold, scores.segmentation)
    return storeComponents(nodes, inputVolume, None if found is None else found.labels,
                           [] if found is None else found.components)


def loadComponentFiles(nodes: ResultNodes, inputVolume: slicer.vtkMRMLScalarVolumeNode, outputs: Mapping[str, Path]
                       ) -> tuple[slicer.vtkMRMLSegmentationNode | None, slicer.vtkMRMLTableNode | None]:
    """``storeComponents`` from the files a background run wrote (none when the model has no voxel threshold)."""
    anomalies, components = Path(outputs["anomalies"]), Path(outputs["components"])
    if not anomalies.is_file():
        return storeComponents(nodes, inputVolume, None, [])
    return storeComponents(nodes, inputVolume, sitk.ReadImage(str(anomalies)), read_components_csv(str(components)))


def showComponentsIn3D(segmentation: slicer.vtkMRMLSegmentationNode, show: bool = True) -> None:
    """Shows the segments as surfaces in the 3D views (made from the label map on first use), or hides them."""
    if show:
        segmentation.CreateClosedSurfaceRepresentation()
    segmentation.GetDisplayNode().SetVisibility3D(bool(show))


def jumpToComponent(nodes: ResultNodes, table: slicer.vtkMRMLTableNode, row: int) -> tuple[float, float, float]:
    """Centres every slice view on the centroid of the component in ``row``; returns that RAS point."""
    contents = table.GetTable()
    if not 0 <= row < contents.GetNumberOfRows():
        raise MAEAnomalyError(f"row {row} is outside the components table (0..{contents.GetNumberOfRows() - 1})",
                              table.GetName())
    point = tuple(float(numpy_support.vtk_to_numpy(contents.GetColumnByName(c))[row])
                  for c in ("centroid_r", "centroid_a", "centroid_s"))
    slicer.vtkMRMLSliceNode.JumpAllSlices(nodes.scene, *point, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    return point


class ComponentsPanel:
    """The widget's components section, built in code under the results: a 'Show in 3D' check box and
    the components table; selecting a row jumps the slice views to that component's centroid."""

    def __init__(self, layout, nodes: ResultNodes) -> None:
        import qt

        self.nodes = nodes
        self.inputVolume = None
        self._table = None
        self.label = qt.QLabel("Anomaly components (largest first); select one to centre the views on it:")
        self.label.wordWrap = True
        self.show3D = qt.QCheckBox("Show the components in 3D")
        self.view = slicer.qMRMLTableView()
        self.view.setMRMLScene(slicer.mrmlScene)
        self.view.setMinimumHeight(120)
        for widget in (self.label, self.show3D, self.view):
            layout.addWidget(widget)
        self.show3D.connect("toggled(bool)", self.onShow3D)
        self.view.connect("selectionChanged()", self.onSelectionChanged)
        self.setInput(None)

    def setInput(self, inputVolume) -> None:
        """Shows the components of ``inputVolume`` (none: hidden)."""
        self.inputVolume = inputVolume
        segmentation, table = componentNodes(self.nodes, inputVolume) if inputVolume is not None else (None, None)
        if table is not self._table:  # setting a table makes the view emit selectionChanged(): only on a change
            self.view.setMRMLTableNode(table)
            self._table = table
        for widget in (self.label, self.show3D, self.view):
            widget.visible = table is not None
        if segmentation is not None:
            self.show3D.checked = bool(segmentation.GetDisplayNode().GetVisibility3D())
            rows = table.GetNumberOfRows()
            self.label.text = (f"{rows} anomaly component{'s' if rows != 1 else ''} (largest first); select one "
                               "to centre the views on it:" if rows else "No anomaly component at the voxel threshold.")

    @reportingErrors
    def onShow3D(self, show: bool) -> None:
        segmentation, _ = componentNodes(self.nodes, self.inputVolume) if self.inputVolume else (None, None)
        if segmentation is not None:
            showComponentsIn3D(segmentation, show)

    @reportingErrors
    def onSelectionChanged(self) -> None:
        _, table = componentNodes(self.nodes, self.inputVolume) if self.inputVolume else (None, None)
        indexes = self.view.selectionModel().selectedIndexes()
        if table is None or not indexes:
            return
        source = self.view.sortFilterProxyModel().mapToSource(indexes[0])
        toTableRow = getattr(self.view.tableModel(), "mrmlTableRowIndex", lambda index: index.row())
        row = toTableRow(source)
        if row >= 0:
            jumpToComponent(self.nodes, table, row)
