"""The module's state, saved with the scene: the parameter node wrapper and the choices it holds."""

# No "from __future__ import annotations": the parameter node wrapper reads the annotations as types.
import enum
from typing import Annotated, Union

import slicer
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper

from MAEAnomalyLib.core.shipped import DEFAULT_MODEL

from .logic import BRAIN_MASK_AUTO, BRAIN_MASK_NONE
from .results import DEFAULT_DISPLAY_THRESHOLD, DEFAULT_OPACITY, MAX_DISPLAY_THRESHOLD


class Device(enum.Enum):
    """Where the scoring process runs; the values are the CLI's --device choices."""

    AUTO = "auto"
    CPU = "cpu"
    GPU = "cuda"

    def label(self) -> str:
        return {"auto": "Auto (GPU if available)", "cpu": "CPU", "cuda": "GPU (CUDA)"}[self.value]


class BrainMask(enum.Enum):
    """Which voxels are scored; the first two values are the CLI's --brain-mask choices."""

    AUTO = BRAIN_MASK_AUTO
    NONE = BRAIN_MASK_NONE
    NODE = "node"

    def label(self) -> str:
        return {BRAIN_MASK_AUTO: "Automatic brain extraction", BRAIN_MASK_NONE: "Head foreground (no extraction)",
                "node": "A mask or segmentation from the scene"}[self.value]


@parameterNodeWrapper
class MAEAnomalyParameterNode:
    """The module's state, saved with the scene."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    brainMask: BrainMask = BrainMask.AUTO
    # None must be one of the union's types: Slicer writes the default (None) into a fresh node, and its
    # union serializer refuses a value none of the union's types can write.
    maskNode: Union[slicer.vtkMRMLScalarVolumeNode, slicer.vtkMRMLSegmentationNode, None]  # noqa: UP007
    model: str = DEFAULT_MODEL  # a shipped model's name, or "" for the folder in modelPath
    modelPath: str = ""
    device: Device = Device.AUTO
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = DEFAULT_OPACITY
    displayThreshold: Annotated[float, WithinRange(0.0, MAX_DISPLAY_THRESHOLD)] = DEFAULT_DISPLAY_THRESHOLD
    scoreTable: slicer.vtkMRMLTableNode
    differenceVolume: slicer.vtkMRMLScalarVolumeNode
