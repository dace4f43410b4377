"""Pickle-free storage of nested state (weights, optimizer state, RNG) as safetensors plus JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import MAEAnomalyError
from .io import AtomicWriter


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
