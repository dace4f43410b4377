"""The module's panel: a thin GUI over ``MAEAnomalyLogic``. Only the application runs this file (it needs
Qt); the self-test exercises it there, and everything it calls is tested on a bare MRML scene."""

from __future__ import annotations

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from MAEAnomalyLib.core.shipped import shipped_models

from .components import ComponentsPanel
from .dependencies import install_dependencies, plan_dependencies
from .logic import MAEAnomalyLogic
from .messages import reportingErrors, showError
from .parameters import BrainMask, MAEAnomalyParameterNode
from .results import MAX_DISPLAY_THRESHOLD, ROLE_ATTRIBUTE, ROLE_DIFFERENCE, ROLE_SCORES

MODEL_PATH_SETTING = "MAEAnomaly/ModelPath"
POLL_INTERVAL_MS = 200


class MAEAnomalyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._installing = False
        self._chartTable = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MAEAnomaly.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MAEAnomalyLogic()
        self.ui.progressBar.hide()
        for shipped in shipped_models():
            self.ui.modelComboBox.addItem(shipped.name, shipped.name)
            self.ui.modelComboBox.setItemData(self.ui.modelComboBox.count - 1, shipped.summary, qt.Qt.ToolTipRole)
        self.ui.modelComboBox.addItem("A folder of your own", "")

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.inputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.thresholdSlider.connect("valueChanged(double)", self.onThresholdChanged)
        self.ui.mostAnomalousButton.connect("clicked(bool)", self.onJumpToMostAnomalous)
        self.ui.scoreTableView.connect("selectionChanged()", self.onTableSelectionChanged)
        self.componentsPanel = ComponentsPanel(self.ui.resultsCollapsibleButton.layout(), self.logic)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Slicer closes or the module is reloaded: the scoring process tree must not outlive it."""
        self.onCancel()
        self.removeObservers()

    def onReload(self) -> None:
        """Slicer's Reload re-imports the module file only; the panel's own package is dropped first so that
        the re-import loads its edited code too (MAEAnomalyLib stays: a running job may use it)."""
        import sys

        for name in [m for m in sys.modules if m == __package__ or m.startswith(f"{__package__}.")]:
            del sys.modules[name]
        super().onReload()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # A run keeps going while the user works elsewhere, and its results still arrive: the parameter
        # node stays; only the GUI stops following it (as in Slicer's scripted-module template).
        self.disconnectGui()

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        # Closing the scene removes the plot view node too, so it is looked up (or made) again here.
        self.ui.plotWidget.setMRMLPlotViewNode(self.logic.plotViewNode())
        self.setParameterNode(MAEAnomalyParameterNode(self.logic.getParameterNode()))
        p = self._parameterNode
        if not p.inputVolume:
            for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
                if not node.IsA("vtkMRMLLabelMapVolumeNode") and not node.GetAttribute(ROLE_ATTRIBUTE):
                    p.inputVolume = node
                    break
        if p.model and p.model not in {m.name for m in shipped_models()}:
            p.model = ""  # that model is not installed here: fall back to a folder of the user's own
        if not p.modelPath:
            # The model folder is remembered between sessions, not only in the scene.
            p.modelPath = str(qt.QSettings().value(MODEL_PATH_SETTING, "") or "")

    def disconnectGui(self) -> None:
        if self._parameterNode and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)

    def setParameterNode(self, parameterNode) -> None:
        self.disconnectGui()
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self.updateGUI()

    def modelToUse(self) -> str:
        p = self._parameterNode
        return (p.model or p.modelPath) if p else ""

    def updateGUI(self, caller=None, event=None) -> None:
        """Parts of the GUI that ``connectGui`` does not cover: model, mask choice, buttons and results."""
        p = self._parameterNode
        busy = self._run is not None or self._installing
        maskReady = bool(p and (p.brainMask is not BrainMask.NODE or p.maskNode))
        ready = bool(p and p.inputVolume and self.modelToUse() and maskReady)
        self.ui.applyButton.enabled = ready and not busy
        self.ui.applyButton.toolTip = ("Score every axial slice in a background process" if ready
                                       else "Select an input volume, a mask (if chosen) and a model")
        self.ui.cancelButton.enabled = self._run is not None
        self.ui.progressBar.setVisible(self._run is not None)
        # The module's own difference maps are outputs, never inputs.
        self.ui.inputSelector.sortFilterProxyModel().hiddenNodeIDs = self.logic.outputVolumeIDs()
        if p:
            index = self.ui.modelComboBox.findData(p.model)
            self.ui.modelComboBox.setCurrentIndex(index if index >= 0 else self.ui.modelComboBox.count - 1)
            if self.ui.modelPathLineEdit.currentPath != p.modelPath:
                self.ui.modelPathLineEdit.currentPath = p.modelPath
            ownFolder = not p.model
            self.ui.modelPathLabel.setVisible(ownFolder)
            self.ui.modelPathLineEdit.setVisible(ownFolder)
            self.ui.maskLabel.setVisible(p.brainMask is BrainMask.NODE)
            self.ui.maskSelector.setVisible(p.brainMask is BrainMask.NODE)
        table = p.scoreTable if p else None
        self.ui.resultsCollapsibleButton.enabled = table is not None
        self.ui.mostAnomalousButton.enabled = table is not None
        if table is not self._chartTable:
            # Only on a change: setting a table makes qMRMLTableView emit selectionChanged(), and the views
            # would jump back to the selected row at every tick of a slider.
            self.ui.scoreTableView.setMRMLTableNode(table)
            if table is not None:
                self.logic.plotViewNode().SetPlotChartNodeID(self.logic.createScoreChart(table).GetID())
        self._chartTable = table

    @reportingErrors
    def onInputChanged(self, node) -> None:
        """Shows the results of an earlier run on the newly selected volume, if there are any."""
        if self._parameterNode and node is not None:
            self._parameterNode.scoreTable = self.logic.outputNode(node, ROLE_SCORES, "vtkMRMLTableNode")
            self._parameterNode.differenceVolume = self.logic.outputNode(node, ROLE_DIFFERENCE,
                                                                          "vtkMRMLScalarVolumeNode")
            self.componentsPanel.setInput(node)

    @reportingErrors
    def onModelChanged(self, index: int) -> None:
        name = self.ui.modelComboBox.itemData(index) or ""
        if self._parameterNode and self._parameterNode.model != name:
            self._parameterNode.model = name

    @reportingErrors
    def onModelPathChanged(self, path: str) -> None:
        if self._parameterNode and self._parameterNode.modelPath != path:
            self._parameterNode.modelPath = path

    def showError(self, exc: BaseException) -> None:
        """Every failure reaches the user as one line, in a dialog and in the status line."""
        self.ui.statusLabel.text = showError(exc)

    @staticmethod
    def confirm(text: str) -> bool:
        """A question asked during the wait cursor shows the normal one."""
        qt.QApplication.setOverrideCursor(qt.QCursor(qt.Qt.ArrowCursor))
        try:
            return slicer.util.confirmOkCancelDisplay(text, "MAEAnomaly")
        finally:
            qt.QApplication.restoreOverrideCursor()

    @reportingErrors
    def onApply(self) -> None:
        p = self._parameterNode
        if self._run is not None or self._installing or p is None:
            return
        # Installing takes minutes and processes events: a second click must not start a second install.
        self._installing = True
        self.updateGUI()
        try:
            with slicer.util.WaitCursor():
                plan = plan_dependencies(self.resourcePath("requirements.txt"))
                if not plan.complete:
                    self.ui.statusLabel.text = "Installing MAEAnomaly's Python packages..."
                    install_dependencies(plan, self.confirm)
                maskNode = p.maskNode if p.brainMask is BrainMask.NODE else None
                brainMask = None if maskNode is not None else p.brainMask.value
                self._run = self.logic.startProcessing(p.inputVolume, self.modelToUse(), maskNode, p.device.value,
                                                       brainMask=brainMask)
        except Exception as exc:
            self.showError(exc)
            return
        finally:
            self._installing = False
            self.updateGUI()
        if not p.model:
            qt.QSettings().setValue(MODEL_PATH_SETTING, p.modelPath)
            self.ui.modelPathLineEdit.addCurrentPathToHistory()
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = f"Scoring {p.inputVolume.GetName()}..."
        self._timer.start()
        self.updateGUI()

    def onPoll(self) -> None:
        if self._run is None:
            self._timer.stop()
            return
        try:
            status = self._run.poll()
        except Exception as exc:  # the run cannot be followed: stop it rather than fail at every tick
            self.onCancel()
            self.showError(exc)
            return
        self.ui.progressBar.value = round(100 * status.progress)
        if not status.finished:
            return
        self._timer.stop()
        run, self._run = self._run, None
        try:
            table, difference = self.logic.finishProcessing(run)
            self.showResults(table, difference)
        except Exception as exc:
            self.showError(exc)
        self.updateGUI()

    @reportingErrors
    def onCancel(self) -> None:
        if self._run is None:
            return
        self._timer.stop()
        run, self._run = self._run, None
        run.cancel()
        self.ui.statusLabel.text = "Scoring cancelled."
        self.updateGUI()

    def showResults(self, table, difference) -> None:
        p = self._parameterNode
        inputVolume = self.logic.inputVolumeOf(table)
        self._chartTable = None  # a re-run keeps the table node, but the chart must follow its new contents
        p.differenceVolume = difference
        p.scoreTable = table
        voxel = self.logic.voxelThreshold(difference)
        if voxel is not None:  # the map's scale is the model's: start where the model calls a voxel anomalous
            p.displayThreshold = min(voxel, MAX_DISPLAY_THRESHOLD)
        self.logic.showResults(inputVolume, difference, p.overlayOpacity, p.displayThreshold)
        self.componentsPanel.setInput(inputVolume)
        slicer.util.resetSliceViews()
        row = self.logic.jumpToMostAnomalous(table)
        columns = self.logic.tableColumns(table)
        self.ui.statusLabel.text = (
            f"{len(columns['score'])} slices scored, {int(columns['abnormal'].sum())} at or above the threshold "
            f"{self.logic.threshold(table):.3f}; highest score {columns['score'][row]:.3f} at "
            f"S = {columns['position_mm'][row]:.1f} mm.")

    @reportingErrors
    def onOpacityChanged(self, value: float) -> None:
        if self._parameterNode and self._parameterNode.differenceVolume:
            self.logic.setOverlayOpacity(value)

    @reportingErrors
    def onThresholdChanged(self, value: float) -> None:
        if self._parameterNode and self._parameterNode.differenceVolume:
            self.logic.setDisplayThreshold(self._parameterNode.differenceVolume, value)

    @reportingErrors
    def onJumpToMostAnomalous(self) -> None:
        if self._parameterNode and self._parameterNode.scoreTable:
            self.logic.jumpToMostAnomalous(self._parameterNode.scoreTable)

    @reportingErrors
    def onTableSelectionChanged(self) -> None:
        table = self._parameterNode.scoreTable if self._parameterNode else None
        indexes = self.ui.scoreTableView.selectionModel().selectedIndexes()
        if table is None or not indexes:
            return
        # Map the view's row (which the user may have sorted) to the table's row.
        sourceIndex = self.ui.scoreTableView.sortFilterProxyModel().mapToSource(indexes[0])
        model = self.ui.scoreTableView.tableModel()
        # Column titles are the header (see MAEAnomalyLogic), so model rows are table rows where the
        # mapping method is not wrapped for Python.
        toTableRow = getattr(model, "mrmlTableRowIndex", lambda index: index.row())
        row = toTableRow(sourceIndex)
        if row >= 0:
            self.logic.jumpToRow(table, row)
