"""The self-test that runs inside Slicer ("Reload and Test", and ctest on the extension build machines).

The Extensions Index build machines have no torch, timm or monai: there the test checks what needs none
of them (the module's panel, its chart view, the parameter node across leaving the module) and skips the
scoring with a warning, as SlicerTotalSegmentator does. With them installed it trains a very small model
on generated heads and scores one in Slicer's process and in the background, leaving the module while
the background run goes on."""

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from .dependencies import installed_version
from .logic import BRAIN_MASK_NONE, MAEAnomalyLogic

NEEDED = ("torch", "timm", "monai")


def missingPackages() -> list:
    """The packages scoring needs that are not installed (checked without importing them)."""
    return [name for name in NEEDED if installed_version(name) is None]


class MAEAnomalyTest(ScriptedLoadableModuleTest):
    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_MAEAnomaly_ChartViewIsOurOwn()
        self.setUp()
        self.test_MAEAnomaly_ScoreGeneratedVolume()

    def test_MAEAnomaly_ChartViewIsOurOwn(self) -> None:
        """Another module's chart (here slicer.util.plot) never replaces the score chart in the panel."""
        logic = MAEAnomalyLogic()
        view = logic.plotViewNode()
        chart = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", "MAEAnomaly test chart")
        view.SetPlotChartNodeID(chart.GetID())
        slicer.util.plot(np.arange(10.0), show=True)  # selects its chart in every view that follows selection
        self.assertEqual(view.GetPlotChartNodeID(), chart.GetID())
        self.assertIs(view.GetParentLayoutNode(), logic.getParameterNode())

    def test_MAEAnomaly_ScoreGeneratedVolume(self) -> None:
        missing = missingPackages()
        if missing:
            logging.warning("MAEAnomaly self-test: scoring skipped, %s not installed (press Apply in the module "
                            "once to install them)", ", ".join(missing))
            return
        from MAEAnomalyLib.core.runtime import resolve_device
        from MAEAnomalyLib.data.synthetic import write_cohort
        from MAEAnomalyLib.methods.model_config import preset
        from MAEAnomalyLib.training import train

        with tempfile.TemporaryDirectory() as tmp:
            self.delayDisplay("Generating heads and training a very small model (about a minute)")
            healthy, lesioned = write_cohort(Path(tmp) / "data", healthy=4, lesioned=1, seed=0)
            cfg = preset("tiny")
            cfg.settings.mae_epochs, cfg.settings.classifier_epochs = 3, 1
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

            self.delayDisplay("Scoring in a background process, leaving the module while it runs")
            self._scoreFromThePanelAndLeave(volume, modelPath)
            table2 = logic.outputNode(volume, "scores", "vtkMRMLTableNode")
            self.assertEqual(table2.GetID(), table.GetID())
            np.testing.assert_allclose(logic.tableColumns(table2)["score"], logic.tableColumns(table)["score"],
                                       rtol=1e-5, atol=1e-6)

            chart = logic.createScoreChart(table)
            self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), 2)
            row = logic.jumpToMostAnomalous(table)
            red = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
            self.assertAlmostEqual(red.GetSliceToRAS().GetElement(2, 3),
                                   logic.tableColumns(table)["position_mm"][row], places=3)
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), voxels)
        self.delayDisplay("Test passed")

    def _scoreFromThePanelAndLeave(self, volume, modelPath: Path) -> None:
        """Apply in the panel, switch to another module, and check that the results still arrive."""
        slicer.util.selectModule("MAEAnomaly")
        widget = slicer.modules.maeanomaly.widgetRepresentation().self()
        parameters = widget._parameterNode
        parameters.inputVolume = volume
        parameters.brainMask = type(parameters.brainMask)(BRAIN_MASK_NONE)
        parameters.model, parameters.modelPath = "", str(modelPath)
        parameters.device = type(parameters.device)("cpu")
        widget.onApply()
        self.assertIsNotNone(widget._run, widget.ui.statusLabel.text)
        slicer.util.selectModule("Data")
        deadline = time.monotonic() + 300
        while widget._run is not None:
            self.assertLess(time.monotonic(), deadline, "the background run did not finish")
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertIs(widget._parameterNode, parameters)
        self.assertIsNotNone(parameters.scoreTable, widget.ui.statusLabel.text)
        self.assertIsNotNone(parameters.differenceVolume)
