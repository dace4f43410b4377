"""The module class and its panel through Slicer 5.10.0's own ``ScriptedLoadableModule``, ``util`` and
``parameterNodeWrapper`` (with stand-ins only for Qt and the application, see ``slicer_python.py``): what the
Extensions Index's generic ``test_widgetRepresentation`` runs (make the module, its widget, ``setup()``,
``enter()``), that its .ui bindings are accepted by Slicer's GUI connectors, that a parameter change does not
make the table views jump, and that every slot's error reaches the user in a dialog."""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_FILE = ROOT / "MAEAnomaly" / "MAEAnomaly.py"


@pytest.fixture
def panel(slicer_app, monkeypatch: pytest.MonkeyPatch):
    """The module and its widget, made and set up as Slicer makes them when the module is first shown."""
    import qt
    import slicer

    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(
        maeanomaly=types.SimpleNamespace(path=str(MODULE_FILE))), raising=False)
    spec = importlib.util.spec_from_file_location("MAEAnomaly", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "MAEAnomaly", module)
    spec.loader.exec_module(module)
    moduleParent = qt.QObject()
    moduleParent.path = str(MODULE_FILE)
    module.MAEAnomaly(moduleParent)
    parentWidget = slicer.qMRMLWidget()
    parentWidget.results["layout"] = qt.QVBoxLayout()
    widget = module.MAEAnomalyWidget(parentWidget)
    widget.parent.isEntered = True
    widget.setup()
    widget.enter()
    yield types.SimpleNamespace(module=module, moduleParent=moduleParent, widget=widget, ui=widget.ui)
    widget.exit()
    widget.cleanup()


def test_the_module_and_its_panel_start(panel, slicer_app) -> None:
    """Fails where Slicer's wrapper cannot write a parameter's default (the panel never starts)."""
    import slicer

    assert panel.moduleParent.title == "MAE Anomaly" and "Quantification" in panel.moduleParent.categories
    assert "MAEAnomaly" in slicer.selfTests
    p = panel.widget._parameterNode
    assert p is not None and p.maskNode is None
    assert panel.ui.applyButton.enabled is False  # nothing to score yet
    panel.widget.exit()
    panel.widget.enter()
    assert panel.widget._parameterNode.parameterNode is panel.widget.logic.getParameterNode()


def test_the_ui_bindings_use_slicers_connectors(panel) -> None:
    """Slicer's connectors accepted every bound widget and set the node selectors' types from the
    parameters (a mask may be a volume or a segmentation)."""
    from SlicerMAEAnomalyLib.results import MAX_DISPLAY_THRESHOLD

    ui = panel.ui
    assert list(ui.inputSelector.nodeTypes) == ["vtkMRMLScalarVolumeNode"]
    assert sorted(ui.maskSelector.nodeTypes) == ["vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode"]
    assert (ui.opacitySlider.minimum, ui.opacitySlider.maximum) == (0.0, 1.0)
    assert (ui.thresholdSlider.minimum, ui.thresholdSlider.maximum) == (0.0, MAX_DISPLAY_THRESHOLD)
    assert ui.brainMaskComboBox.items[0][0] == "Automatic brain extraction"


def test_selecting_an_input_enables_apply(panel, slicer_app) -> None:
    import slicer

    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "head")
    panel.widget._parameterNode.inputVolume = volume
    assert panel.ui.applyButton.enabled is True


def store_results(panel, name: str = "head"):
    """Score-shaped results for a new volume without a model (enough for everything that shows them)."""
    import slicer

    from MAEAnomalyLib.scoring.table import SCORE_COLUMNS
    from SlicerMAEAnomalyLib.volumes import image_from_volume

    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(volume, np.random.default_rng(0).random((6, 8, 8)).astype(np.float32))
    columns = {column: np.linspace(0.0, 1.0, 6) for column in SCORE_COLUMNS}
    columns["slice_index"] = np.arange(6)
    columns["abnormal"] = columns["skipped"] = np.zeros(6, int)
    table, difference = panel.widget.logic.storeResults(volume, columns, image_from_volume(volume), 0.5)
    return volume, table, difference


def test_parameter_changes_do_not_reset_the_table_views(panel, slicer_app) -> None:
    """qMRMLTableView emits selectionChanged() whenever its table is set, and the panel then jumps to the
    selected row: the table is set only when it changes, not at every tick of a slider."""
    volume, table, difference = store_results(panel)
    p = panel.widget._parameterNode
    p.inputVolume = volume
    p.scoreTable, p.differenceVolume = table, difference
    view = panel.ui.scoreTableView
    before, before_components = view.count_of("setMRMLTableNode"), panel.widget.componentsPanel.view.count_of(
        "setMRMLTableNode")
    for value in np.linspace(0.1, 0.9, 9):
        p.overlayOpacity = float(value)
        p.displayThreshold = float(value)
    assert view.count_of("setMRMLTableNode") == before
    assert panel.widget.componentsPanel.view.count_of("setMRMLTableNode") == before_components
    _, otherTable, _ = store_results(panel, "other")
    p.scoreTable = otherTable
    assert view.count_of("setMRMLTableNode") == before + 1


def select(view, index) -> None:
    """What qMRMLTableView answers once the user selected the row of ``index``."""
    view.selectionModel().results["selectedIndexes"] = [index]
    view.sortFilterProxyModel().results["mapToSource"] = index
    view.tableModel().results["mrmlTableRowIndex"] = index.row()


@pytest.fixture
def dialogs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The messages of the error dialogs Slicer's ``errorDisplay`` shows."""
    import slicer

    shown: list[str] = []
    real = slicer.util.errorDisplay

    def errorDisplay(text, *args, **kwargs):
        shown.append(text)
        return real(text, *args, **kwargs)

    monkeypatch.setattr(slicer.util, "errorDisplay", errorDisplay)
    return shown


def test_every_slot_shows_its_error_in_a_dialog(panel, slicer_app, dialogs, caplog) -> None:
    """Jump to most anomalous, a table selection and the components panel, after the input was deleted."""
    import slicer

    volume, table, difference = store_results(panel)
    p = panel.widget._parameterNode
    p.inputVolume = volume
    p.scoreTable, p.differenceVolume = table, difference
    panel.widget.componentsPanel.setInput(volume)
    # The scored volume goes, its table stays selected: jumping has no slice geometry to go to.
    slicer.mrmlScene.RemoveNode(volume)
    with caplog.at_level(logging.ERROR):
        panel.ui.mostAnomalousButton.emit("clicked(bool)", False)
        assert len(dialogs) == 1 and "no longer in the scene" in dialogs[0]
        index = types.SimpleNamespace(row=lambda: 0)
        view = panel.ui.scoreTableView
        select(view, index)
        view.emit("selectionChanged()")
        assert len(dialogs) == 2 and "no longer in the scene" in dialogs[1]
        # The components panel: a selection outside its (here empty) table.
        import SimpleITK as sitk

        from SlicerMAEAnomalyLib.components import storeComponents

        volume2, _, _ = store_results(panel, "second")
        labels = sitk.Image(*volume2.GetImageData().GetDimensions(), sitk.sitkUInt8)
        labels.SetSpacing(volume2.GetSpacing())
        labels.SetOrigin(volume2.GetOrigin())
        storeComponents(panel.widget.logic, volume2, labels, [])
        components = panel.widget.componentsPanel
        components.setInput(volume2)
        select(components.view, index)
        components.view.emit("selectionChanged()")
        assert len(dialogs) == 3 and "outside the components table" in dialogs[2]
    assert all(record.levelname == "ERROR" for record in caplog.records)


def test_every_connected_slot_reports_its_errors() -> None:
    """A slot Qt calls must show its error (an exception escaping a slot only reaches the console)."""
    import ast

    for path in (ROOT / "MAEAnomaly" / "SlicerMAEAnomalyLib" / "widget.py",
                 ROOT / "MAEAnomaly" / "SlicerMAEAnomalyLib" / "components.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        connected = {call.args[1].attr for call in ast.walk(tree) if isinstance(call, ast.Call)
                     and isinstance(call.func, ast.Attribute) and call.func.attr == "connect"
                     and len(call.args) == 2 and isinstance(call.args[1], ast.Attribute)}
        methods = {f.name: f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
        assert connected, path
        for name in connected - {"onPoll"}:  # onPoll stops the run on an error instead (see widget.py)
            decorators = {ast.unparse(d) for d in methods[name].decorator_list}
            assert "reportingErrors" in decorators, f"{path.name}: {name} does not report its errors"


def test_reload_reloads_the_panels_package(panel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slicer's Reload re-imports the module file; our package must be re-imported with it."""
    import slicer

    kept = {name: module for name, module in sys.modules.items() if name.startswith("SlicerMAEAnomalyLib")}
    cached_then = []
    monkeypatch.setattr(slicer.util, "reloadScriptedModule", lambda name: cached_then.append(
        (name, sorted(m for m in sys.modules if m.startswith("SlicerMAEAnomalyLib")))))
    try:
        panel.widget.onReload()
    finally:
        sys.modules.update(kept)  # the other tests hold the classes of these modules
    assert cached_then == [("MAEAnomaly", [])]
    assert "MAEAnomalyLib.core.errors" in sys.modules


def test_the_display_threshold_starts_at_the_model_s_voxel_threshold(panel, slicer_app) -> None:
    """Each model's map has its own scale (brain-t1's divided difference, the intensity method's normalised
    intensity): after a run the overlay threshold is the model's voxel threshold, not a fixed number."""
    from SlicerMAEAnomalyLib.volumes import image_from_volume

    volume, table, _ = store_results(panel)
    columns = panel.widget.logic.tableColumns(table)
    p = panel.widget._parameterNode
    p.inputVolume = volume
    for voxel in (0.83, 2.14):
        _, difference = panel.widget.logic.storeResults(volume, columns, image_from_volume(volume), 0.5, voxel)
        p.displayThreshold = 5.0  # where the user left it for the previous model
        panel.widget.showResults(table, difference)
        assert p.displayThreshold == pytest.approx(voxel)
        assert panel.widget.logic.voxelThreshold(difference) == pytest.approx(voxel)
    # A model without a voxel threshold leaves the user's display threshold alone.
    _, difference = panel.widget.logic.storeResults(volume, columns, image_from_volume(volume), 0.5)
    p.displayThreshold = 3.0
    panel.widget.showResults(table, difference)
    assert p.displayThreshold == 3.0 and panel.widget.logic.voxelThreshold(difference) is None
