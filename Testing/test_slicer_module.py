"""The module file and its .ui agree, the module loads without torch, and dependencies are never installed
without the user's consent."""

from __future__ import annotations

import ast
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from MAEAnomalyLib.errors import MAEAnomalyError
from SlicerMAEAnomalyLib.dependencies import (
    PACKAGES_DECLINED,
    TORCH_DECLINED,
    TORCH_EXTENSION_MISSING,
    DependencyPlan,
    install_dependencies,
    is_satisfied,
    load_requirements,
    plan_dependencies,
)

ROOT = Path(__file__).resolve().parent.parent
MODULE_FILE = ROOT / "MAEAnomaly" / "MAEAnomaly.py"
UI_FILE = ROOT / "MAEAnomaly" / "Resources" / "UI" / "MAEAnomaly.ui"
REQUIREMENTS = ROOT / "MAEAnomaly" / "Resources" / "requirements.txt"
# Widget classes a parameter of each type may be bound to (see slicer.parameterNodeWrapper's connectors).
BINDABLE = {"vtkMRMLScalarVolumeNode": {"qMRMLNodeComboBox"}, "float": {"ctkSliderWidget", "QDoubleSpinBox"},
            "Device": {"QComboBox"}, "str": {"QLineEdit"}}
QT_CLASSES = {"QLabel", "QPushButton", "QProgressBar", "QComboBox", "QWidget"}
# Packages that Slicer itself provides, or that only exist inside Slicer.
PROVIDED = {"numpy", "SimpleITK", "slicer", "vtk", "qt", "ctk", "packaging", "pip", "PyTorchUtils", "torch"}
IMPORT_TO_DISTRIBUTION = {"sklearn": "scikit-learn"}


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def parameter_fields() -> dict[str, str]:
    """Field name -> annotated type name of the module's parameter node wrapper class."""
    cls = next(n for n in module_tree().body if isinstance(n, ast.ClassDef) and n.name == "MAEAnomalyParameterNode")
    fields = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign):
            annotation = stmt.annotation
            if isinstance(annotation, ast.Subscript):  # Annotated[float, ...]
                annotation = annotation.slice.elts[0]
            fields[stmt.target.id] = ast.unparse(annotation).split(".")[-1]
    return fields


def test_every_widget_used_in_python_is_in_the_ui_file() -> None:
    used = {node.attr for node in ast.walk(module_tree())
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}
    widgets = ui_widgets()
    assert used, "the module uses no widgets from its .ui file?"
    assert used <= set(widgets), f"not in {UI_FILE.name}: {sorted(used - set(widgets))}"
    assert {"applyButton", "cancelButton", "progressBar", "scoreTableView", "plotWidget", "mostAnomalousButton",
            "opacitySlider", "thresholdSlider", "modelPathLineEdit"} <= used


def test_ui_parameter_names_match_the_parameter_node() -> None:
    fields = parameter_fields()
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = (name, widget.get("class"))
    assert set(bound) <= set(fields), f"unknown parameters in the .ui file: {sorted(set(bound) - set(fields))}"
    assert {"inputVolume", "maskVolume", "device", "overlayOpacity", "displayThreshold"} <= set(bound)
    for parameter, (widget, widget_class) in bound.items():
        assert widget_class in BINDABLE[fields[parameter]], f"{widget} ({widget_class}) cannot show {parameter}"


def test_ui_declares_its_custom_widgets_and_is_valid() -> None:
    root = ET.parse(UI_FILE).getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert used - QT_CLASSES <= declared, f"undeclared custom widgets: {sorted(used - QT_CLASSES - declared)}"
    receivers = {c.findtext("receiver") for c in root.iter("connection")}
    mrml_widgets = {n for n, w in ui_widgets().items() if w.get("class", "").startswith("qMRML")
                    and w.get("class") != "qMRMLWidget"}
    assert mrml_widgets <= receivers, "every MRML widget must receive the scene"


def test_module_reexports_the_slicer_logic() -> None:
    imports = {alias.name for node in module_tree().body if isinstance(node, ast.ImportFrom)
               and node.module == "SlicerMAEAnomalyLib.logic" for alias in node.names}
    assert "MAEAnomalyLogic" in imports
    classes = {n.name for n in module_tree().body if isinstance(n, ast.ClassDef)}
    assert {"MAEAnomaly", "MAEAnomalyWidget", "MAEAnomalyTest"} <= classes


def test_module_and_logic_load_without_torch() -> None:
    """Slicer must load the module (to offer installing torch) before torch is installed."""
    top_level = {alias.name.split(".")[0] for node in module_tree().body if isinstance(node, ast.Import)
                 for alias in node.names}
    top_level |= {node.module.split(".")[0] for node in module_tree().body
                  if isinstance(node, ast.ImportFrom) and node.module}
    assert not top_level & {"torch", "timm", "monai"}
    pytest.importorskip("slicer")
    code = ("import sys; sys.path.insert(0, 'MAEAnomaly'); import SlicerMAEAnomalyLib.logic, "
            "SlicerMAEAnomalyLib.dependencies, SlicerMAEAnomalyLib.background; "
            "print(sorted(m for m in ('torch', 'timm', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def library_imports() -> set[str]:
    names = set()
    for path in [*(ROOT / "MAEAnomalyLib").rglob("*.py"), *(ROOT / "MAEAnomaly" / "SlicerMAEAnomalyLib").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_slicer_requirements_cover_the_library() -> None:
    requirements = load_requirements(REQUIREMENTS)
    names = {r.name.lower() for r in requirements}
    third_party = {n for n in library_imports() if n not in sys.stdlib_module_names and n != "MAEAnomalyLib"}
    needed = {IMPORT_TO_DISTRIBUTION.get(n, n).lower() for n in third_party - PROVIDED}
    assert needed <= names, f"missing from {REQUIREMENTS.name}: {sorted(needed - names)}"
    assert not names & {p.lower() for p in PROVIDED}, "never reinstall what Slicer or PyTorchUtils provides"
    assert all("==" not in str(r) for r in requirements), "pins conflict with other extensions"


def test_installed_environment_is_complete() -> None:
    plan = plan_dependencies(REQUIREMENTS)
    assert plan.complete, f"missing here: {plan.missing}"


def test_requirement_checks() -> None:
    from packaging.requirements import Requirement

    assert is_satisfied(Requirement("numpy>=1.0"))
    assert not is_satisfied(Requirement("numpy<1.0"))
    assert not is_satisfied(Requirement("maeanomaly-no-such-package>=1"))
    assert is_satisfied(Requirement("maeanomaly-no-such-package; python_version < '3'"))  # not for this Python


def test_nothing_is_installed_without_consent(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# test\nnumpy>=1\nmaeanomaly-no-such-package>=1.0\n")
    plan = plan_dependencies(requirements)
    assert not plan.torch_missing and [str(r) for r in plan.missing] == ["maeanomaly-no-such-package>=1.0"]
    prompts: list[str] = []

    def decline(text: str) -> bool:
        prompts.append(text)
        return False

    with pytest.raises(MAEAnomalyError) as info:
        install_dependencies(plan, decline)
    assert str(info.value) == PACKAGES_DECLINED.format(missing="maeanomaly-no-such-package>=1.0")
    assert len(prompts) == 1 and "maeanomaly-no-such-package" in prompts[0]
    assert not is_satisfied(plan.missing[0])


def test_torch_is_offered_and_declining_is_explained() -> None:
    prompts: list[str] = []
    plan = DependencyPlan(torch_missing=True, missing=[])
    with pytest.raises(MAEAnomalyError) as info:
        install_dependencies(plan, lambda text: prompts.append(text) or False)
    assert str(info.value) == TORCH_DECLINED and "\n" not in TORCH_DECLINED
    assert "PyTorch extension" in prompts[0]
    # Accepting without the PyTorch extension (a source checkout) says what to install.
    with pytest.raises(MAEAnomalyError) as info:
        install_dependencies(plan, lambda text: True)
    assert str(info.value) == TORCH_EXTENSION_MISSING
