"""MAEAnomaly: per-slice anomaly scores and a difference map for a volume, with a masked autoencoder and
a classifier (Georgescu, KES 2023). This file is the thin GUI; the Slicer work is in SlicerMAEAnomalyLib
beside it, and the method itself in the pure-Python library MAEAnomalyLib."""

import enum
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Installed, MAEAnomalyLib sits beside this file; in a source checkout (MAEAnomaly/ added to Slicer's module
# paths) it sits beside this file's folder instead.
_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "MAEAnomalyLib" / "__init__.py").is_file() and str(_CHECKOUT) not in sys.path:
    sys.path.append(str(_CHECKOUT))

from MAEAnomalyLib.errors import MAEAnomalyError  # noqa: E402
from SlicerMAEAnomalyLib.components import ComponentsPanel  # noqa: E402  (issue 19)
from SlicerMAEAnomalyLib.dependencies import install_dependencies, plan_dependencies  # noqa: E402
from SlicerMAEAnomalyLib.logic import MAEAnomalyLogic  # noqa: E402
from SlicerMAEAnomalyLib.results import (  # noqa: E402
    DEFAULT_DISPLAY_THRESHOLD,
    DEFAULT_OPACITY,
    ROLE_ATTRIBUTE,
    ROLE_DIFFERENCE,
    ROLE_SCORES,
)

__all__ = ["MAEAnomaly", "MAEAnomalyLogic", "MAEAnomalyTest", "MAEAnomalyWidget"]

MODEL_PATH_SETTING = "MAEAnomaly/ModelPath"
# Keep in step with EXTENSION_HOMEPAGE in the top-level CMakeLists.txt (a test checks it).
USER_GUIDE = "https://github.com/MAEAnomaly/SlicerMAEAnomaly/blob/main/docs/slicer.md"
POLL_INTERVAL_MS = 200


class MAEAnomaly(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MAE Anomaly"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []  # PyTorchUtils is needed only to install torch, and is looked up then
        self.parent.contributors = ["MAEAnomaly contributors"]
        self.parent.helpText = (
            "Scores every axial slice of a volume for anomalies with a model trained on healthy scans, and "
            f"shows where the reconstruction differs from the image. See the <a href='{USER_GUIDE}'>user guide</a>.")
        self.parent.acknowledgementText = (
            "Method: M.-I. Georgescu, 'Masked Autoencoders for Unsupervised Anomaly Detection in Medical Images', "
            "KES 2023.")


class Device(enum.Enum):
    """Where the scoring process runs; the values are the CLI's --device choices."""

    AUTO = "auto"
    CPU = "cpu"
    GPU = "cuda"

    def label(self) -> str:
        return {"auto": "Auto (GPU if available)", "cpu": "CPU", "cuda": "GPU (CUDA)"}[self.value]


@parameterNodeWrapper
class MAEAnomalyParameterNode:
    """The module's state, saved with the scene."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    maskVolume: slicer.vtkMRMLScalarVolumeNode
    modelPath: str = ""
    device: Device = Device.AUTO
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = DEFAULT_OPACITY
    displayThreshold: Annotated[float, WithinRange(0.0, 1.0)] = DEFAULT_DISPLAY_THRESHOLD
    scoreTable: slicer.vtkMRMLTableNode
    differenceVolume: slicer.vtkMRMLScalarVolumeNode


class MAEAnomalyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._chartTable = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MAEAnomaly.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MAEAnomalyLogic()
        self.ui.progressBar.hide()

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.inputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.thresholdSlider.connect("valueChanged(double)", self.onThresholdChanged)
        self.ui.mostAnomalousButton.connect("clicked(bool)", self.onJumpToMostAnomalous)
        self.ui.scoreTableView.connect("selectionChanged()", self.onTableSelectionChanged)
        self.componentsPanel = ComponentsPanel(self.ui.resultsCollapsibleButton.layout(), self.logic)  # issue 19
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.onCancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

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
        if not self._parameterNode.inputVolume:
            for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
                if not node.IsA("vtkMRMLLabelMapVolumeNode") and not node.GetAttribute(ROLE_ATTRIBUTE):
                    self._parameterNode.inputVolume = node
                    break
        if not self._parameterNode.modelPath:
            # The model folder is remembered between sessions, not only in the scene.
            self._parameterNode.modelPath = str(qt.QSettings().value(MODEL_PATH_SETTING, "") or "")

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self.updateGUI()

    def updateGUI(self, caller=None, event=None) -> None:
        """Parts of the GUI that ``connectGui`` does not cover: the model path, buttons and results."""
        p = self._parameterNode
        running = self._run is not None
        ready = bool(p and p.inputVolume and p.modelPath)
        self.ui.applyButton.enabled = ready and not running
        self.ui.applyButton.toolTip = ("Score every axial slice in a background process" if ready
                                       else "Select an input volume and a model folder")
        self.ui.cancelButton.enabled = running
        self.ui.progressBar.setVisible(running)
        if p and self.ui.modelPathLineEdit.currentPath != p.modelPath:
            self.ui.modelPathLineEdit.currentPath = p.modelPath
        table = p.scoreTable if p else None
        self.ui.resultsCollapsibleButton.enabled = table is not None
        self.ui.scoreTableView.setMRMLTableNode(table)
        self.ui.mostAnomalousButton.enabled = table is not None
        if table is not None and table is not self._chartTable:
            self.logic.plotViewNode().SetPlotChartNodeID(self.logic.createScoreChart(table).GetID())
        self._chartTable = table

    def onInputChanged(self, node) -> None:
        """Shows the results of an earlier run on the newly selected volume, if there are any."""
        self.componentsPanel.setInput(node)  # issue 19
        if self._parameterNode and node is not None:
            self._parameterNode.scoreTable = self.logic.outputNode(node, ROLE_SCORES, "vtkMRMLTableNode")
            self._parameterNode.differenceVolume = self.logic.outputNode(node, ROLE_DIFFERENCE,
                                                                          "vtkMRMLScalarVolumeNode")

    def onModelPathChanged(self, path: str) -> None:
        if self._parameterNode and self._parameterNode.modelPath != path:
            self._parameterNode.modelPath = path

    def showError(self, exc: BaseException) -> None:
        """Every failure reaches the user as one line; the traceback goes to the log for bug reports."""
        if isinstance(exc, MAEAnomalyError):
            message = str(exc)
        else:
            logging.exception("MAEAnomaly failed")
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
            message = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        self.ui.statusLabel.text = message
        slicer.util.errorDisplay(message, windowTitle="MAEAnomaly")

    def onApply(self) -> None:
        p = self._parameterNode
        try:
            with slicer.util.WaitCursor():
                plan = plan_dependencies(self.resourcePath("requirements.txt"))
            if not plan.complete:
                install_dependencies(plan, lambda text: slicer.util.confirmOkCancelDisplay(text, "MAEAnomaly"))
            self._run = self.logic.startProcessing(p.inputVolume, p.modelPath, p.maskVolume, p.device.value)
        except Exception as exc:
            self.showError(exc)
            return
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
        status = self._run.poll()
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
        self.logic.showResults(inputVolume, difference, p.overlayOpacity, p.displayThreshold)
        slicer.util.resetSliceViews()
        self.componentsPanel.setInput(inputVolume)  # issue 19
        row = self.logic.jumpToMostAnomalous(table)
        columns = self.logic.tableColumns(table)
        self.ui.statusLabel.text = (
            f"{len(columns['score'])} slices scored, {int(columns['abnormal'].sum())} at or above the threshold "
            f"{self.logic.threshold(table):.3f}; highest score {columns['score'][row]:.3f} at "
            f"S = {columns['position_mm'][row]:.1f} mm.")

    def onOpacityChanged(self, value: float) -> None:
        if self._parameterNode and self._parameterNode.differenceVolume:
            self.logic.setOverlayOpacity(value)

    def onThresholdChanged(self, value: float) -> None:
        if self._parameterNode and self._parameterNode.differenceVolume:
            self.logic.setDisplayThreshold(self._parameterNode.differenceVolume, value)

    def onJumpToMostAnomalous(self) -> None:
        if self._parameterNode and self._parameterNode.scoreTable:
            self.logic.jumpToMostAnomalous(self._parameterNode.scoreTable)

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


class MAEAnomalyTest(ScriptedLoadableModuleTest):
    """Trains a very small model on generated heads, then scores one in-process and in the background."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_MAEAnomaly_ScoreGeneratedVolume()

    def test_MAEAnomaly_ScoreGeneratedVolume(self) -> None:
        from SlicerMAEAnomalyLib.dependencies import torch_installed

        self.assertTrue(torch_installed(), "PyTorch is not installed: open the MAEAnomaly module and press "
                                           "Apply once to install the dependencies, then run the test again")
        from MAEAnomalyLib.config import preset
        from MAEAnomalyLib.data.synthetic import write_cohort
        from MAEAnomalyLib.runtime import resolve_device
        from MAEAnomalyLib.training import train

        with tempfile.TemporaryDirectory() as tmp:
            self.delayDisplay("Generating heads and training a very small model (about a minute)")
            healthy, lesioned = write_cohort(Path(tmp) / "data", healthy=4, lesioned=1, seed=0)
            cfg = preset("tiny")
            cfg.train.mae_epochs, cfg.train.classifier_epochs = 3, 1
            modelPath = Path(tmp) / "model"
            train([h[0] for h in healthy], modelPath, cfg, resolve_device("cpu"), masks=[h[1] for h in healthy],
                  log=logging.info, show_progress=False)

            volume = slicer.util.loadVolume(str(lesioned[0][0]))
            voxels = slicer.util.arrayFromVolume(volume).copy()
            logic = MAEAnomalyLogic()
            self.delayDisplay("Scoring in Slicer's process")
            table, difference = logic.process(volume, modelPath, device="cpu")
            self.assertEqual(table.GetNumberOfRows(), 40)  # the generated heads have 40 axial slices
            self.assertEqual(difference.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())

            self.delayDisplay("Scoring in a background process")
            run = logic.startProcessing(volume, modelPath, device="cpu")
            while not run.poll().finished:
                slicer.app.processEvents()
                time.sleep(0.05)
            table2, difference2 = logic.finishProcessing(run)
            self.assertEqual((table2.GetID(), difference2.GetID()), (table.GetID(), difference.GetID()))
            np.testing.assert_allclose(logic.tableColumns(table2)["score"], logic.tableColumns(table)["score"],
                                       rtol=1e-5, atol=1e-6)

            logic.showResults(volume, difference)
            chart = logic.createScoreChart(table)
            self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), 2)
            row = logic.jumpToMostAnomalous(table)
            red = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
            self.assertAlmostEqual(red.GetSliceToRAS().GetElement(2, 3),
                                   logic.tableColumns(table)["position_mm"][row], places=3)
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), voxels)
        self.delayDisplay("Test passed")
