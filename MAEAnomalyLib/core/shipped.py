"""The models that ship with MAEAnomaly: ``models/<name>/`` beside the package (a checkout, the Slicer
extension), or the folder named by ``MAEANOMALY_MODELS``. Imports nothing heavy, so that the Slicer
widget can list them before torch is installed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import MAEAnomalyError

DEFAULT_MODEL = "brain-t1"
CARD = "MODEL_CARD.md"


@dataclass(frozen=True)
class ShippedModel:
    """A model directory that ships with the project, and the first line of its card."""

    name: str
    path: Path
    summary: str


def _beside_package() -> Path:
    return Path(__file__).resolve().parents[2] / "models"


def models_dir() -> Path:
    """Where the shipped models are."""
    override = os.environ.get("MAEANOMALY_MODELS")
    return Path(override) if override else _beside_package()


def shipped_file(*parts: str) -> Path:
    """A file that ships under ``models/`` without being a model (no ``config.json`` beside it, so that
    ``shipped_models`` does not list it): the LPIPS weights ``models/lpips/alex.safetensors``. Looked for in
    ``models_dir()``, then beside the package, where a checkout and the Slicer extension have it, since
    ``MAEANOMALY_MODELS`` may name a folder of one's own models only."""
    places = list(dict.fromkeys([models_dir().joinpath(*parts), _beside_package().joinpath(*parts)]))
    found = next((p for p in places if p.is_file()), None)
    if found is None:
        raise MAEAnomalyError(f"the shipped file {'/'.join(parts)} is missing (looked in "
                              f"{', '.join(str(p.parent) for p in places)}); reinstall MAEAnomaly or run "
                              "from a complete checkout")
    return found


def _summary(card: Path) -> str:
    try:
        lines = card.read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    # The card's first paragraph line after its title says what the model is for.
    return next((line.strip() for line in lines if line.strip() and not line.startswith("#")), "")


def shipped_models() -> list[ShippedModel]:
    """Every shipped model (a folder with ``config.json``), sorted by name."""
    root = models_dir()
    if not root.is_dir():
        return []
    return [ShippedModel(d.name, d, _summary(d / CARD))
            for d in sorted(root.iterdir()) if (d / "config.json").is_file()]


def resolve_model(model: str | Path | None) -> Path:
    """A model directory from a folder path, a shipped model's name, or None (the default model)."""
    if model is not None and (Path(model).exists() or os.sep in str(model) or "/" in str(model)):
        return Path(model)
    name = DEFAULT_MODEL if model is None else str(model)
    found = {m.name: m.path for m in shipped_models()}
    if name in found:
        return found[name]
    if model is None:
        raise MAEAnomalyError(f"no --model given and the default model '{name}' is not installed "
                              f"(looked in {models_dir()}); give --model DIR")
    known = ", ".join(sorted(found)) or "none installed"
    raise MAEAnomalyError(f"no model folder or shipped model named '{name}' (shipped models: {known})", str(model))
