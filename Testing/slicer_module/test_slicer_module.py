"""The module file and its .ui agree, the module loads without torch, and dependencies are never installed
without the user's consent."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from MAEAnomalyLib.core.errors import MAEAnomalyError
from SlicerMAEAnomalyLib.dependencies import (
    PACKAGES_DECLINED,
    TORCH_DECLINED,
    TORCH_EXTENSION_MISSING,
    TORCH_OLD_DECLINED,
    TORCH_REQUIREMENT,
    DependencyPlan,
    Installers,
    install_dependencies,
    is_satisfied,
    load_requirements,
    plan_dependencies,
)

ROOT = Path(__file__).resolve().parents[2]
MODULE_FILE = ROOT / "MAEAnomaly" / "MAEAnomaly.py"
WIDGET_FILE = ROOT / "MAEAnomaly" / "SlicerMAEAnomalyLib" / "widget.py"
PARAMETERS_FILE = ROOT / "MAEAnomaly" / "SlicerMAEAnomalyLib" / "parameters.py"
UI_FILE = ROOT / "MAEAnomaly" / "Resources" / "UI" / "MAEAnomaly.ui"
REQUIREMENTS = ROOT / "MAEAnomaly" / "Resources" / "requirements.txt"
# Widget classes a parameter of each type may be bound to (see slicer.parameterNodeWrapper's connectors).
BINDABLE = {"vtkMRMLScalarVolumeNode": {"qMRMLNodeComboBox"}, "float": {"ctkSliderWidget", "QDoubleSpinBox"},
            "Device": {"QComboBox"}, "BrainMask": {"QComboBox"}, "str": {"QLineEdit"},
            "Union[slicer.vtkMRMLScalarVolumeNode, slicer.vtkMRMLSegmentationNode, None]": {"qMRMLNodeComboBox"}}
QT_CLASSES = {"QLabel", "QPushButton", "QProgressBar", "QComboBox", "QWidget"}
# Packages that Slicer itself provides, or that only exist inside Slicer.
PROVIDED = {"numpy", "SimpleITK", "slicer", "vtk", "qt", "ctk", "packaging", "pip", "PyTorchUtils", "SampleData",
            "torch"}
IMPORT_TO_DISTRIBUTION = {"sklearn": "scikit-learn"}


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def widget_tree() -> ast.Module:
    return ast.parse(WIDGET_FILE.read_text(encoding="utf-8"))


def parameter_fields() -> dict[str, str]:
    """Field name -> annotated type name of the module's parameter node wrapper class."""
    tree = ast.parse(PARAMETERS_FILE.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MAEAnomalyParameterNode")
    fields = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign):
            annotation = stmt.annotation
            text = ast.unparse(annotation)
            if text.startswith("Annotated["):  # Annotated[float, ...]
                text = ast.unparse(annotation.slice.elts[0])
            fields[stmt.target.id] = text if text.startswith("Union[") else text.split(".")[-1]
    return fields


def test_every_widget_used_in_python_is_in_the_ui_file() -> None:
    used = {node.attr for node in ast.walk(widget_tree())
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
    assert {"inputVolume", "brainMask", "maskNode", "device", "overlayOpacity", "displayThreshold"} <= set(bound)
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


def test_module_file_exports_what_slicer_looks_up() -> None:
    """Slicer finds MAEAnomalyWidget, MAEAnomalyLogic and MAEAnomalyTest by name in the module file."""
    imported = {alias.name for node in ast.walk(module_tree()) if isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("SlicerMAEAnomalyLib") for alias in node.names}
    assert {"MAEAnomalyLogic", "MAEAnomalyWidget", "MAEAnomalyTest"} <= imported
    classes = {n.name for n in ast.walk(module_tree()) if isinstance(n, ast.ClassDef)}
    assert {"MAEAnomaly", "MAEAnomalyWidget"} <= classes  # the second: the panel on a too old Slicer


def test_module_and_logic_load_without_torch() -> None:
    """Slicer must load the module (to offer installing torch) before torch is installed."""
    top_level = set()
    for path in (MODULE_FILE, WIDGET_FILE, *(ROOT / "MAEAnomaly" / "SlicerMAEAnomalyLib").glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                top_level |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                top_level.add(node.module.split(".")[0])
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
    plan = DependencyPlan(torch_version=None)
    with pytest.raises(MAEAnomalyError) as info:
        install_dependencies(plan, lambda text: prompts.append(text) or False)
    assert str(info.value) == TORCH_DECLINED and "\n" not in TORCH_DECLINED
    assert "PyTorch extension" in prompts[0]
    # Accepting without the PyTorch extension (a source checkout) says what to install.
    with pytest.raises(MAEAnomalyError) as info:
        install_dependencies(plan, lambda text: True)
    assert str(info.value) == TORCH_EXTENSION_MISSING


def test_torch_requirement_is_the_library_s() -> None:
    # The dependencies list of pyproject.toml (tomllib is not in Python 3.10).
    torch = Requirement(re.search(r'^\s*"(torch[<>=!~][^"]*)",', (ROOT / "pyproject.toml").read_text("utf-8"), re.M)[1])
    assert str(torch.specifier) == str(TORCH_REQUIREMENT.specifier)


@pytest.mark.parametrize(("version", "missing", "outdated"), [
    (None, True, False), ("2.1.2+cu118", False, True), ("2.4.0", False, True), ("2.4.1", False, False),
    ("2.5.1+cu121", False, False)])
def test_dependency_plan_for_missing_old_and_good_torch(version: str | None, missing: bool, outdated: bool) -> None:
    plan = plan_dependencies(REQUIREMENTS, torch_version=version)
    assert (plan.torch_missing, plan.torch_outdated) == (missing, outdated)
    assert plan.complete == (not missing and not outdated and not plan.missing)


class Recorder:
    """Stands in for PyTorch Utils' installTorch and slicer.util.pip_install, which need the application."""

    def __init__(self) -> None:
        self.torch_requirements: list[str] = []
        self.pip_calls: list[tuple[list[str], str]] = []

    def torch(self, requirement: str) -> object:
        self.torch_requirements.append(requirement)
        return object()  # installTorch returns the torch module

    def pip(self, args: list[str]) -> None:
        constraints = Path(args[args.index("-c") + 1]).read_text(encoding="utf-8") if "-c" in args else ""
        self.pip_calls.append((args, constraints))


def test_missing_torch_is_installed_with_the_version_the_library_needs(tmp_path: Path) -> None:
    """installTorch gets the library's requirement; the other packages are installed with the torch that is
    then installed pinned (with everything else installed; see test_slicer_dependencies.py), so that pip
    cannot replace it."""
    recorder = Recorder()
    plan = DependencyPlan(torch_version=None, missing=[Requirement("monai>=1.5"), Requirement("timm>=1.0")])
    prompts: list[str] = []
    install_dependencies(plan, lambda text: prompts.append(text) or True, Installers(recorder.torch, recorder.pip),
                         constraints_dir=tmp_path)
    assert recorder.torch_requirements == [str(TORCH_REQUIREMENT.specifier)]
    (args, constraints), = recorder.pip_calls
    assert args[:2] == ["monai>=1.5", "timm>=1.0"] and args[2] == "-c"
    assert f"torch=={importlib.metadata.version('torch')}" in constraints.splitlines()
    assert not list(tmp_path.iterdir()), "the constraints file is temporary"
    assert len(prompts) == 2 and "(PyTorch, numpy" in prompts[1] and "kept as they are" in prompts[1]


def test_old_torch_is_updated_only_with_consent_and_asks_for_a_restart() -> None:
    recorder = Recorder()
    plan = DependencyPlan(torch_version="2.1.2", missing=[Requirement("monai>=1.5")])
    prompts: list[str] = []
    required = str(TORCH_REQUIREMENT.specifier)
    with pytest.raises(MAEAnomalyError) as info:
        install_dependencies(plan, lambda text: prompts.append(text) or False, Installers(recorder.torch, recorder.pip))
    assert str(info.value) == TORCH_OLD_DECLINED.format(installed="2.1.2", required=required)
    assert "2.1.2" in prompts[0] and required in prompts[0] and not recorder.torch_requirements
    # Accepted: updated to the library's requirement; torch is loaded in this process (as it may be in
    # Slicer), so the user is asked to restart before anything else is installed.
    with pytest.raises(MAEAnomalyError) as info:
        install_dependencies(plan, lambda text: True, Installers(recorder.torch, recorder.pip))
    assert str(info.value).startswith("PyTorch was updated to ") and "restart Slicer" in str(info.value)
    assert recorder.torch_requirements == [required] and not recorder.pip_calls


def test_good_torch_is_left_alone() -> None:
    recorder = Recorder()
    plan = DependencyPlan(torch_version="2.5.1+cu121", missing=[Requirement("timm>=1.0")])
    install_dependencies(plan, lambda text: True, Installers(recorder.torch, recorder.pip))
    assert not recorder.torch_requirements
    (_args, constraints), = recorder.pip_calls
    assert f"torch=={importlib.metadata.version('torch')}" in constraints.splitlines()


def test_the_default_display_threshold_hides_the_shipped_models_healthy_tissue_and_fits_the_slider() -> None:
    results = ROOT / "MAEAnomaly" / "SlicerMAEAnomalyLib" / "results.py"
    constants = {target.id: node.value.value for node in ast.parse(results.read_text()).body
                 if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                 for target in node.targets if isinstance(target, ast.Name)}
    default, top = constants["DEFAULT_DISPLAY_THRESHOLD"], constants["MAX_DISPLAY_THRESHOLD"]
    slider = {p.get("name"): p for p in ui_widgets()["thresholdSlider"].findall("property")}
    assert (float(slider["minimum"].find("double").text), float(slider["maximum"].find("double").text)) == (0, top)
    # Just above the value 1 % of held-out healthy brain voxels reach: the overlay starts nearly clear of
    # healthy tissue and shows all that the segmentation outlines once lowered a little.
    voxel_threshold = json.loads((ROOT / "models" / "brain-t1" / "config.json").read_text())["voxel_threshold"]
    assert voxel_threshold < default < 1.1 * voxel_threshold
