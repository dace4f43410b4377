"""The Slicer module's logic: volume nodes in, a score table, a difference map and a chart out.

It needs MRML (``slicer`` and ``vtk``) but no ``slicer.app`` and no Qt, so it runs on a bare
``vtkMRMLScene`` from the slicer-core wheel as well as inside the application. torch is imported only
when scoring runs in this process, so that the module loads (and can offer to install torch) without it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk
import slicer

from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.data.io import check_same_grid
from MAEAnomalyLib.scoring.table import read_table_csv

from .background import JobStatus, ScoringJob
from .components import loadComponentFiles, storeComponentsOfScores
from .results import MODULE_NAME, ROLE_BRAIN_MASK, ResultNodes
from .volumes import image_from_volume, mask_image

ProgressFn = Callable[[float], None]
# ``--brain-mask`` choices besides a mask file: extract the brain (deepbet), or the head's foreground.
BRAIN_MASK_AUTO, BRAIN_MASK_NONE = "auto", "none"


def work_directory() -> Path:
    """A new folder for one run's files: under Slicer's temporary folder in the application (which the
    user can set in the application settings), else under the system's."""
    try:
        from slicer import app  # noqa: F401  (only the Slicer application provides slicer.app)
    except ImportError:
        return Path(tempfile.mkdtemp(prefix="maeanomaly-"))
    return Path(slicer.util.tempDirectory("MAEAnomaly-"))


def model_thresholds(model_path: str | Path) -> tuple[float, float | None]:
    """The slice and voxel thresholds stored in a model directory, read without importing torch."""
    from MAEAnomalyLib.methods.model_config import ModelConfig

    path = Path(model_path) / "config.json"
    try:
        config = ModelConfig.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise MAEAnomalyError(f"cannot read the model's threshold ({exc})", path) from None
    return (float("inf") if config.threshold is None else float(config.threshold)), config.voxel_threshold


def model_threshold(model_path: str | Path) -> float:
    """The decision threshold stored in a model directory, read without importing torch."""
    return model_thresholds(model_path)[0]


@dataclass
class ScoringRun:
    """A scoring run in a separate process, started by ``MAEAnomalyLogic.startProcessing``."""

    job: ScoringJob
    inputVolumeID: str
    modelPath: Path
    workDir: Path
    imagePath: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    # Temporary file -> node name, so that the CLI's messages name what the user selected.
    names: dict[str, str] = field(default_factory=dict)

    def poll(self) -> JobStatus:
        """Never blocks; call it from a timer until ``finished``, then ``finishProcessing``."""
        return self.job.poll()

    def cancel(self) -> None:
        """Stops the scoring process and every process it started, then removes the temporary files."""
        self.job.cancel()
        shutil.rmtree(self.workDir, ignore_errors=True)

    def reportedOutputs(self) -> dict[str, Path]:
        """The files the finished command reported (``kind: path`` lines), else the names it always uses."""
        reported = {kind: Path(path) for kind, path in self.job.outputs.items()}
        return {**self.outputs, **reported}


def score_arguments(modelPath: str | Path, imagePath: Path, outDir: Path, device: str,
                    brainMask: str | Path | None = None) -> list[str]:
    """The ``maeanomaly score`` arguments of a run (before ``--progress``). ``modelPath`` is a model folder
    or a shipped model's name; ``brainMask`` is ``auto``, ``none``, or a mask file; None scores the head's
    foreground, as ``process`` does without a mask (the panel always passes its choice)."""
    args = ["--model", str(modelPath), "--image", str(imagePath), "--out-dir", str(outDir), "--device", device]
    return [*args, "--brain-mask", "none" if brainMask is None else str(brainMask)]


class MAEAnomalyLogic(ResultNodes):
    """Scores volume nodes, stores the results as nodes (``ResultNodes``), and shows them in the slice views."""

    def __init__(self, scene: slicer.vtkMRMLScene | None = None) -> None:
        super().__init__(scene)
        self._model_key: tuple[str, float] | None = None
        self._model = None
        # The interpreter for background runs; None is PythonSlicer in the application, else this Python.
        self.pythonExecutable: str | None = None

    # Parameters -------------------------------------------------------------------------------------

    def getParameterNode(self) -> slicer.vtkMRMLScriptedModuleNode:
        """The module's singleton parameter node, saved with the scene (created on first use)."""
        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(MODULE_NAME)
            node.SetName(self.scene.GenerateUniqueName(MODULE_NAME))
            node = self.scene.AddNode(node)
        # Closing the scene keeps singleton nodes but clears their attributes; Slicer finds a module's
        # parameter node by this one.
        if node.GetAttribute("ModuleName") != MODULE_NAME:
            node.SetAttribute("ModuleName", MODULE_NAME)
        return node

    def plotViewNode(self) -> slicer.vtkMRMLPlotViewNode:
        """The plot view shown inside the module panel. It is no part of the view layout (its parent layout
        node is the parameter node) and ignores global chart selection, so ``slicer.util.plot()`` or
        another module never replaces the score chart in it."""
        owner = self.getParameterNode()
        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLPlotViewNode")
        if node is None:
            node = slicer.vtkMRMLPlotViewNode()
            node.SetSingletonTag(MODULE_NAME)
            node.SetLayoutName(MODULE_NAME)
            node.SetName(f"{MODULE_NAME} plot view")
            # Before adding: the layout manager makes a hidden plot widget for a view node that has no parent
            # layout node when it is added (qMRMLLayoutManager's node-added handling).
            node.SetAndObserveParentLayoutNodeID(owner.GetID())
            node = self.scene.AddNode(node)
        node.SetDoPropagatePlotChartSelection(False)
        if node.GetParentLayoutNode() is not owner:
            node.SetAndObserveParentLayoutNodeID(owner.GetID())
        return node

    # Scoring ----------------------------------------------------------------------------------------

    def process(self, inputVolume: slicer.vtkMRMLScalarVolumeNode, modelPath: str | Path,
                maskNode: slicer.vtkMRMLNode | None = None, progress: ProgressFn | None = None,
                device: str = "auto") -> tuple[slicer.vtkMRMLTableNode, slicer.vtkMRMLScalarVolumeNode]:
        """Scores every axial slice of ``inputVolume`` in this process (blocking; the widget uses
        ``startProcessing`` instead) with ``maskNode`` (a volume or segmentation) or else the automatic
        head foreground, and returns the score table and the difference volume."""
        from MAEAnomalyLib.core.runtime import resolve_device
        from MAEAnomalyLib.core.shipped import resolve_model
        from MAEAnomalyLib.scoring.scores import score_image

        image, mask = self._input_images(inputVolume, maskNode)
        model = self._load_model(resolve_model(modelPath))
        scores = score_image(model, image, mask, device=resolve_device(device), progress=progress,
                             source=inputVolume.GetName())
        storeComponentsOfScores(self, inputVolume, scores)  # the segmentation node and components table
        return self.storeResults(inputVolume, scores.table, scores.difference, scores.threshold)

    def _input_images(self, inputVolume: slicer.vtkMRMLScalarVolumeNode,
                      maskNode: slicer.vtkMRMLNode | None) -> tuple[sitk.Image, sitk.Image | None]:
        if inputVolume is None:
            raise MAEAnomalyError("no input volume selected")
        image = image_from_volume(inputVolume)
        mask = None
        if maskNode is not None:
            mask = mask_image(maskNode, inputVolume)
            check_same_grid(image, mask, maskNode.GetName(), "mask")
        return image, mask

    def _load_model(self, modelPath: str | Path):
        """Loads a model directory, reusing the last one while its config.json is unchanged."""
        from MAEAnomalyLib.methods.model import load_model

        config = Path(modelPath) / "config.json"
        key = (str(Path(modelPath).resolve()), config.stat().st_mtime if config.is_file() else -1.0)
        if key != self._model_key:
            self._model, self._model_key = load_model(modelPath), key
        return self._model

    def startProcessing(self, inputVolume: slicer.vtkMRMLScalarVolumeNode, modelPath: str | Path,
                        maskNode: slicer.vtkMRMLNode | None = None, device: str = "auto",
                        brainMask: str | None = None) -> ScoringRun:
        """Starts scoring in a separate process running the library's CLI; see ``ScoringRun``.
        ``maskNode`` (a volume or segmentation) is the mask when given; otherwise ``brainMask`` chooses
        between brain extraction (``auto``) and the head's foreground (``none``, also for None, as in
        ``process``)."""
        from MAEAnomalyLib.data.io import volume_name

        image, mask = self._input_images(inputVolume, maskNode)
        workDir = work_directory()
        try:
            imagePath = workDir / "input.nrrd"
            sitk.WriteImage(image, str(imagePath))
            names = {str(imagePath): inputVolume.GetName()}
            if mask is not None:
                brainMask = workDir / "mask.nrrd"
                sitk.WriteImage(mask, str(brainMask))
                names[str(brainMask)] = maskNode.GetName()
            args = score_arguments(modelPath, imagePath, workDir / "out", device, brainMask)
            job = ScoringJob(args, python=self.pythonExecutable)
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        name = volume_name(imagePath)
        out = workDir / "out"
        outputs = {"scores": out / f"{name}_scores.csv", "difference": out / f"{name}_diff.nii.gz",
                   "anomalies": out / f"{name}_anomalies.nii.gz", "components": out / f"{name}_components.csv"}
        return ScoringRun(job, inputVolume.GetID(), Path(modelPath), workDir, imagePath, outputs, names)

    def finishProcessing(self, run: ScoringRun
                         ) -> tuple[slicer.vtkMRMLTableNode, slicer.vtkMRMLScalarVolumeNode]:
        """Loads a finished run's CSV, difference map and extracted brain mask (if any) into nodes (as
        ``process`` does), or raises its one-line error; the temporary files are removed either way."""
        try:
            run.job.wait()
            if run.job.error is not None:
                message = run.job.error
                for path, name in run.names.items():
                    message = message.replace(path, name)
                raise MAEAnomalyError(message)
            inputVolume = self.scene.GetNodeByID(run.inputVolumeID)
            if inputVolume is None:
                raise MAEAnomalyError("the input volume was removed from the scene while it was being scored")
            outputs = run.reportedOutputs()
            difference = sitk.ReadImage(str(outputs["difference"]), sitk.sitkFloat32)
            table = read_table_csv(outputs["scores"])
            model = self._model_folder(run.modelPath)
            loadComponentFiles(self, inputVolume, outputs)  # the segmentation node and components table
            nodes = self.storeResults(inputVolume, table, difference, *model_thresholds(model))
            if "brain_mask" in outputs:
                self.storeBrainMask(inputVolume, sitk.ReadImage(str(outputs["brain_mask"])))
            return nodes
        finally:
            shutil.rmtree(run.workDir, ignore_errors=True)

    @staticmethod
    def _model_folder(model: str | Path) -> Path:
        from MAEAnomalyLib.core.shipped import resolve_model

        return resolve_model(model)

    # Brain mask -------------------------------------------------------------------------------------

    def storeBrainMask(self, inputVolume: slicer.vtkMRMLScalarVolumeNode,
                       mask: sitk.Image) -> slicer.vtkMRMLSegmentationNode:
        """Shows the brain mask that scoring extracted as the outline of a segmentation ("«volume» brain
        mask"), so that the user sees what was scored; a later run on the same volume replaces it."""
        from .volumes import import_labels

        dims = inputVolume.GetImageData().GetDimensions()
        if tuple(mask.GetSize()) != tuple(dims):
            raise MAEAnomalyError(f"brain mask size {mask.GetSize()} differs from the input's {dims}",
                                  inputVolume.GetName())
        segmentation = self._output(inputVolume, ROLE_BRAIN_MASK, "vtkMRMLSegmentationNode",
                                    f"{inputVolume.GetName()} brain mask")
        segmentation.GetSegmentation().RemoveAllSegments()
        # The mask lies on the input's voxel grid (the CLI writes it on the grid of the image it scored).
        import_labels(segmentation, inputVolume, (sitk.GetArrayFromImage(mask) > 0).astype("uint8"),
                      "cannot show the brain mask")
        segment = segmentation.GetSegmentation().GetNthSegment(0)
        if segment is not None:
            segment.SetName("brain")
            segment.SetColor(0.2, 0.8, 0.2)
        if segmentation.GetDisplayNode() is None:
            segmentation.CreateDefaultDisplayNodes()
        display = segmentation.GetDisplayNode()
        display.SetVisibility2DFill(False)  # an outline only: the difference map stays readable inside
        display.SetVisibility2DOutline(True)
        display.SetVisibility3D(False)
        return segmentation

    def brainMaskOf(self, inputVolume: slicer.vtkMRMLNode) -> slicer.vtkMRMLSegmentationNode | None:
        """The brain mask shown for ``inputVolume``'s last run, if scoring extracted one."""
        return self.outputNode(inputVolume, ROLE_BRAIN_MASK, "vtkMRMLSegmentationNode")

