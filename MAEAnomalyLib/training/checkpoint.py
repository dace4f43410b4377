"""Training checkpoints: where training stands, the weights and the optimiser state, stored pickle-free
as safetensors plus JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import ModelConfig
from ..errors import MAEAnomalyError
from ..files import AtomicWriter
from ..model_io import AnomalyModel
from .loop import Progress


def flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replaces every tensor in a nested dict/list by {"__tensor__": key}, collecting it in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``flatten`` (dict keys keep their type: optimizer state is keyed by int)."""
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def save_state(state: dict[str, Any], directory: str | Path) -> None:
    """Writes ``state.safetensors`` and ``state.json`` in ``directory``, both or neither."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    structure = flatten(state, "s", tensors)
    writer = AtomicWriter()
    try:
        save_file(tensors, str(writer.temp_path(directory / "state.safetensors")))
        writer.write_text(json.dumps(structure), directory / "state.json")
    except BaseException:
        writer.discard()
        raise
    writer.commit()


def load_state(directory: str | Path) -> dict[str, Any]:
    """Reads a state written by ``save_state``."""
    directory = Path(directory)
    try:
        structure = json.loads((directory / "state.json").read_text())
        tensors = load_file(str(directory / "state.safetensors"))
    except (OSError, ValueError, SafetensorError) as exc:
        raise MAEAnomalyError(f"checkpoint is missing or damaged ({exc.__class__.__name__})", directory) from None
    return unflatten(structure, tensors)


def comparable(cfg: ModelConfig) -> dict:
    """The settings a checkpoint must share with a resumed run."""
    data = cfg.to_dict()
    for key in ("threshold", "versions", "training_summary"):
        data.pop(key)
    return data


def save_checkpoint(directory: Path, progress: Progress, model: AnomalyModel, data_digest: str,
                    opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR, world: int) -> None:
    """Writes where training stands, the weights and the optimiser state."""
    state = {"stage": progress.stage, "epoch": progress.epoch, "batch": progress.batch, "finished": progress.finished,
             "totals": progress.totals, "config": comparable(model.config), "data": data_digest,
             "mae": model.mae.state_dict(), "classifier": model.classifier.state_dict(),
             "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": progress.history,
             "seconds": progress.seconds, "cut": progress.cut, "world_size": world, "best": progress.best}
    save_state(state, directory)


def load_checkpoint(directory: Path, model: AnomalyModel, data_digest: str, is_main: bool
                    ) -> tuple[Progress, dict] | None:
    """Restores the weights into ``model``; returns the progress and the state (for the optimiser), or
    None when there is no checkpoint. A checkpoint of other settings or other volumes is refused."""
    if not (directory / "state.json").exists():
        return None
    state = load_state(directory)
    if state["config"] != comparable(model.config):
        raise MAEAnomalyError("checkpoint was made with other settings; start afresh without --resume", directory)
    if state.get("data") != data_digest:
        raise MAEAnomalyError("checkpoint was made with other training volumes; start afresh without --resume",
                              directory)
    model.mae.load_state_dict(state["mae"])
    model.classifier.load_state_dict(state["classifier"])
    progress = Progress(stage=state["stage"], epoch=state["epoch"], batch=state["batch"], finished=state["finished"],
                        totals=list(state["totals"]), seconds=state["seconds"], cut=state["cut"],
                        history=state["history"], best=state.get("best"))
    if not is_main:
        progress.totals = [0.0, 0.0]  # rank 0 carries the partial epoch's sums
    return progress, state
