"""Training checkpoints: where training stands, the weights and the optimiser state, stored pickle-free
as safetensors plus JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..core.errors import MAEAnomalyError
from ..core.files import atomic_outputs
from .loop import Optimisation, Progress


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


STATE_NAME = "state.safetensors"


def save_state(state: dict[str, Any], directory: str | Path) -> None:
    """Writes ``directory/state.safetensors``: the tensors, with the nested structure that holds them as
    JSON in the file's metadata. One file renamed into place, so that a kill at any moment leaves the
    previous checkpoint or the new one, never parts of both; temporaries of a killed save are removed."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(flatten(state, "s", tensors))
    for stale in directory.glob(f".{STATE_NAME}.*"):
        stale.unlink(missing_ok=True)
    with atomic_outputs() as writer:
        writer.write_with(directory / STATE_NAME, lambda tmp: save_file(tensors, str(tmp), {"state": structure}),
                          lambda tmp: _read(tmp)[0] == structure)


def _read(path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as fh:
        structure = (fh.metadata() or {})["state"]
        return structure, {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)


def has_state(directory: str | Path) -> bool:
    return (Path(directory) / STATE_NAME).is_file()


def load_state(directory: str | Path) -> dict[str, Any]:
    """Reads a state written by ``save_state``."""
    directory = Path(directory)
    if (directory / "state.json").exists():
        raise MAEAnomalyError("checkpoint is from an older version of MAEAnomaly; start afresh without --resume",
                              directory)
    try:
        structure, tensors = _read(directory / STATE_NAME)
        return unflatten(json.loads(structure), tensors)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise MAEAnomalyError(f"checkpoint is missing or damaged ({exc.__class__.__name__})", directory) from None


def save_checkpoint(directory: Path, progress: Progress, networks: dict[str, nn.Module], settings: dict,
                    data_digest: str, optimisations: list[Optimisation], world: int) -> None:
    """Writes where training stands, the weights of every network and the optimisers' state."""
    state = {"stage": progress.stage, "epoch": progress.epoch, "batch": progress.batch, "finished": progress.finished,
             "totals": progress.totals, "config": settings, "data": data_digest,
             "networks": {name: net.state_dict() for name, net in networks.items()},
             "optimizers": [opt.state_dict() for opt, _ in optimisations],
             "schedulers": [sched.state_dict() if sched is not None else {} for _, sched in optimisations],
             "history": progress.history, "seconds": progress.seconds, "cut": progress.cut, "world_size": world,
             "best": progress.best}
    save_state(state, directory)


def load_checkpoint(directory: Path, networks: dict[str, nn.Module], settings: dict, data_digest: str,
                    is_main: bool) -> tuple[Progress, dict] | None:
    """Restores the weights into ``networks``; returns the progress and the state (for the optimisers), or
    None when there is no checkpoint. A checkpoint of other settings or other volumes is refused."""
    if not has_state(directory) and not (directory / "state.json").exists():
        return None
    state = load_state(directory)
    if "networks" not in state:
        raise MAEAnomalyError("checkpoint is from an older version of MAEAnomaly; start afresh without --resume",
                              directory)
    if state["config"] != settings:
        raise MAEAnomalyError("checkpoint was made with other settings; start afresh without --resume", directory)
    if state.get("data") != data_digest:
        raise MAEAnomalyError("checkpoint was made with other training volumes; start afresh without --resume",
                              directory)
    for name, net in networks.items():
        net.load_state_dict(state["networks"][name])
    progress = Progress(stage=state["stage"], epoch=state["epoch"], batch=state["batch"], finished=state["finished"],
                        totals=list(state["totals"]), seconds=state["seconds"], cut=state["cut"],
                        history=state["history"], best=state.get("best"))
    if not is_main:
        progress.totals = [0.0, 0.0]  # rank 0 carries the partial epoch's sums
    return progress, state
