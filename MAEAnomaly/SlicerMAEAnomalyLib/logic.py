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

from MAEAnomalyLib.data.io import check_same_grid
from MAEAnomalyLib.errors import MAEAnomalyError
from MAEAnomalyLib.scoring.table import read_table_csv

from .background import JobStatus, ScoringJob
from .components import loadComponentFiles, storeComponentsOfScores  # issue 19
from .results import MODULE_NAME, ResultNodes
from .volumes import image_from_volume

ProgressFn = Callable[[float], None]


def model_threshold(model_path: str | Path) -> float:
    """The decision threshold stored in a model directory, read without importing torch."""
    from MAEAnomalyLib.config import ModelConfig

    path = Path(model_path) / "config.json"
    try:
        threshold = ModelConfig.from_dict(json.loads(path.read_text())).threshold
    except (OSError, ValueError, TypeError) as exc:
        raise MAEAnomalyError(f"cannot read the model's threshold ({exc})", path) from None
    return float("inf") if threshold is None else float(threshold)


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
        """Stops the process and removes its temporary files."""
        self.job.cancel()
        shutil.rmtree(self.workDir, ignore_errors=True)


class MAEAnomalyLogic(ResultNodes):
    """Scores volume nodes, stores the results as nodes (``ResultNodes``), and shows them in the slice views."""

    def __init__(self, scene: slicer.vtkMRMLScene | None = None) -> None:
        super().__init__(scene)
        self._model_key: tuple[str, float] | None = None
        self._model = None

    # Parameters -------------------------------------------------------------------------------------

    def getParameterNode(self) -> slicer.vtkMRMLScriptedModuleNode:
        """The module's singleton parameter node, saved with the scene (created on first use)."""
        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(MODULE_NAME)
            node.SetName(self.scene.GenerateUniqueName(MODULE_NAME))
            node.SetAttribute("ModuleName", MODULE_NAME)
            node = self.scene.AddNode(node)
        return node

    def plotViewNode(self) -> slicer.vtkMRMLPlotViewNode:
        """The plot view shown inside the module panel (not part of the view layout)."""
        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLPlotViewNode")
        if node is None:
            node = slicer.vtkMRMLPlotViewNode()
            node.SetSingletonTag(MODULE_NAME)
            node.SetLayoutName(MODULE_NAME)
            node.SetName(f"{MODULE_NAME} plot view")
            node = self.scene.AddNode(node)
        return node

    # Scoring ----------------------------------------------------------------------------------------

    def process(self, inputVolume: slicer.vtkMRMLScalarVolumeNode, modelPath: str | Path,
                maskVolume: slicer.vtkMRMLScalarVolumeNode | None = None, progress: ProgressFn | None = None,
                device: str = "auto") -> tuple[slicer.vtkMRMLTableNode, slicer.vtkMRMLScalarVolumeNode]:
        """Scores every axial slice of ``inputVolume`` in this process (blocking; the widget uses
        ``startProcessing`` instead) and returns the score table and the difference volume."""
        from MAEAnomalyLib.runtime import resolve_device
        from MAEAnomalyLib.scoring.scores import score_image

        image, mask = self._input_images(inputVolume, maskVolume)
        model = self._load_model(modelPath)
        scores = score_image(model, image, mask, device=resolve_device(device), progress=progress,
                             source=inputVolume.GetName())
        storeComponentsOfScores(self, inputVolume, scores)  # issue 19: segmentation node and components table
        return self.storeResults(inputVolume, scores.table, scores.difference, scores.threshold)

    def _input_images(self, inputVolume: slicer.vtkMRMLScalarVolumeNode,
                      maskVolume: slicer.vtkMRMLScalarVolumeNode | None) -> tuple[sitk.Image, sitk.Image | None]:
        if inputVolume is None:
            raise MAEAnomalyError("no input volume selected")
        image = image_from_volume(inputVolume)
        mask = None
        if maskVolume is not None:
            mask = image_from_volume(maskVolume, kind="mask")
            check_same_grid(image, mask, maskVolume.GetName(), "mask")
        return image, mask

    def _load_model(self, modelPath: str | Path):
        """Loads a model directory, reusing the last one while its config.json is unchanged."""
        from MAEAnomalyLib.model_io import load_model

        config = Path(modelPath) / "config.json"
        key = (str(Path(modelPath).resolve()), config.stat().st_mtime if config.is_file() else -1.0)
        if key != self._model_key:
            self._model, self._model_key = load_model(modelPath), key
        return self._model

    def startProcessing(self, inputVolume: slicer.vtkMRMLScalarVolumeNode, modelPath: str | Path,
                        maskVolume: slicer.vtkMRMLScalarVolumeNode | None = None,
                        device: str = "auto") -> ScoringRun:
        """Starts scoring in a separate process running the library's CLI; see ``ScoringRun``."""
        from MAEAnomalyLib.data.io import volume_name

        image, mask = self._input_images(inputVolume, maskVolume)
        workDir = Path(tempfile.mkdtemp(prefix="maeanomaly-"))
        try:
            imagePath = workDir / "input.nrrd"
            sitk.WriteImage(image, str(imagePath))
            args = ["--model", str(modelPath), "--image", str(imagePath), "--out-dir", str(workDir / "out"),
                    "--device", device]
            names = {str(imagePath): inputVolume.GetName()}
            if mask is not None:
                maskPath = workDir / "mask.nrrd"
                sitk.WriteImage(mask, str(maskPath))
                args += ["--mask", str(maskPath)]
                names[str(maskPath)] = maskVolume.GetName()
            job = ScoringJob(args)
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
        """Loads a finished run's CSV and difference map into nodes (as ``process`` does), or raises its
        one-line error; the temporary files are removed either way."""
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
            difference = sitk.ReadImage(str(run.outputs["difference"]), sitk.sitkFloat32)
            table = read_table_csv(run.outputs["scores"])
            loadComponentFiles(self, inputVolume, run.outputs)  # issue 19: segmentation node and components table
            return self.storeResults(inputVolume, table, difference, model_threshold(run.modelPath))
        finally:
            shutil.rmtree(run.workDir, ignore_errors=True)
