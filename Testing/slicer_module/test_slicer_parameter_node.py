"""The module's parameter node through Slicer 5.10.0's own ``parameterNodeWrapper`` (not a reading of the
annotations): it builds on a fresh node, on a node saved by an earlier scene and after a scene close, and
every parameter's default, set/unset and range behave as Slicer's serializers and validators make them."""

from __future__ import annotations

import enum
from pathlib import Path

import pytest


@pytest.fixture
def wrapper(slicer_python):
    from SlicerMAEAnomalyLib.parameters import MAEAnomalyParameterNode

    return MAEAnomalyParameterNode


@pytest.fixture
def logic(slicer_python):
    from SlicerMAEAnomalyLib.logic import MAEAnomalyLogic

    return MAEAnomalyLogic(slicer_python.vtkMRMLScene())


def declared_defaults(wrapper) -> dict:
    return {name: info.default.value for name, info in wrapper.allParameters.items()}


def test_the_wrapper_is_slicers_own(slicer_python, wrapper) -> None:
    import slicer_python as stand_ins

    source = Path(slicer_python.parameterNodeWrapper.__file__).resolve()
    assert source.is_relative_to(stand_ins.SLICER_PYTHON.resolve())
    assert set(wrapper.allParameters) >= {"inputVolume", "maskNode", "brainMask", "model", "displayThreshold"}


def test_a_fresh_parameter_node_gets_every_default(logic, wrapper) -> None:
    """Slicer writes every default on first use; a parameter no serializer can write stops the panel."""
    p = wrapper(logic.getParameterNode())
    for name, default in declared_defaults(wrapper).items():
        assert getattr(p, name) == default, name
    assert p.maskNode is None and p.inputVolume is None and p.scoreTable is None


def test_node_parameters_set_and_unset(slicer_python, logic, wrapper) -> None:
    scene = logic.scene
    p = wrapper(logic.getParameterNode())
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "head")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "brain")
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "scores")
    p.inputVolume = volume
    p.scoreTable = table
    for mask in (volume, segmentation, None):  # the mask may be either kind, or none
        p.maskNode = mask
        assert p.maskNode is mask
    p.inputVolume = None
    p.scoreTable = None
    assert p.inputVolume is None and p.scoreTable is None
    with pytest.raises(Exception, match="Value must be of type"):
        p.maskNode = table  # neither a volume nor a segmentation


def test_choices_and_ranges_behave(logic, wrapper) -> None:
    from SlicerMAEAnomalyLib.parameters import BrainMask, Device

    p = wrapper(logic.getParameterNode())
    for field, choices in (("device", Device), ("brainMask", BrainMask)):
        assert issubclass(choices, enum.Enum)
        for choice in choices:
            setattr(p, field, choice)
            assert getattr(p, field) is choice
    for field in ("overlayOpacity", "displayThreshold"):
        within = next(v for v in wrapper.allParameters[field].serializer.validators if hasattr(v, "maximum"))
        low, high = within.minimum, within.maximum
        setattr(p, field, high)
        assert getattr(p, field) == high
        with pytest.raises(ValueError):
            setattr(p, field, high + 1)
        with pytest.raises(ValueError):
            setattr(p, field, low - 1)
        assert getattr(p, field) == high  # a refused value leaves the parameter as it was
    p.model = ""
    p.modelPath = "/some/folder"
    assert (p.model, p.modelPath) == ("", "/some/folder")


def test_a_node_saved_by_an_earlier_scene_is_read_back(slicer_python, logic, wrapper, tmp_path: Path) -> None:
    """A scene saved with the module's parameters (and one saved before a parameter existed) opens with
    the saved values, the node references resolved, and defaults for what is missing."""
    from SlicerMAEAnomalyLib.parameters import BrainMask, Device

    scene = logic.scene
    p = wrapper(logic.getParameterNode())
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "head")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "brain")
    p.inputVolume, p.maskNode, p.brainMask = volume, segmentation, BrainMask.NODE
    p.device, p.displayThreshold = Device.CPU, 3.5
    logic.getParameterNode().UnsetParameter("overlayOpacity")  # as saved by an older version
    path = tmp_path / "scene.mrml"
    scene.SetURL(str(path))
    assert scene.Commit()

    reopened = slicer_python.vtkMRMLScene()
    reopened.SetURL(str(path))
    assert reopened.Connect()
    from SlicerMAEAnomalyLib.logic import MAEAnomalyLogic

    again = wrapper(MAEAnomalyLogic(reopened).getParameterNode())
    assert again.inputVolume.GetName() == "head" and again.maskNode.GetName() == "brain"
    assert again.maskNode.IsA("vtkMRMLSegmentationNode")
    assert (again.brainMask, again.device, again.displayThreshold) == (BrainMask.NODE, Device.CPU, 3.5)
    assert again.overlayOpacity == declared_defaults(wrapper)["overlayOpacity"]


def test_the_parameter_node_works_after_a_scene_close(slicer_python, logic, wrapper) -> None:
    scene = logic.scene
    p = wrapper(logic.getParameterNode())
    p.inputVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "head")
    p.displayThreshold = 4.0
    scene.Clear(0)  # File > Close scene: singletons stay, their parameters and references go
    p = wrapper(logic.getParameterNode())
    assert p.inputVolume is None
    p.inputVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "other")
    assert p.inputVolume.GetName() == "other"
    assert logic.getParameterNode().GetAttribute("ModuleName") == "MAEAnomaly"
