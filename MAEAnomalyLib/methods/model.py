"""Model directories: ``config.json`` (``model_config``) plus one ``NAME.safetensors`` for each network the
model's method declares (none for a method that trains nothing).

Loading validates everything and never unpickles anything. Weights are written as float32 unless a
compact storage dtype (float16 or bfloat16) is asked for explicitly; half-precision weights load as
float32, so the model always runs in float32. ``config.json`` records each weights file's SHA-256
(``weights_sha256``, beside the settings: a record of the files, not a setting), so that a file of another
model of the same preset is refused on loading; models saved before the record existed load as before.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save_file
from torch import nn

from ..core.config_rules import RemovedSetting
from ..core.errors import MAEAnomalyError
from ..core.files import AtomicWriter, atomic_outputs
from . import get
from .model_config import DIGESTS_KEY, FORMAT_VERSION, ModelConfig

CONFIG_NAME = "config.json"
_PICKLE_MAGICS = (b"\x80", b"PK\x03\x04")  # raw pickle protocol 2+, torch.save zip archive
# Storage dtypes of float32 parameters: what a model directory may hold, and what loads as float32.
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class AnomalyModel:
    """A trained (or in-training) model: its config and its method's networks (``model.mae`` reads
    ``model.networks["mae"]``)."""

    config: ModelConfig
    networks: dict[str, nn.Module] = field(default_factory=dict)
    # The SHA-256 that config.json records for each weights file loaded (checked); empty for older models.
    weights_sha256: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: ModelConfig) -> AnomalyModel:
        return cls(config, get(config.method).networks(config))

    def __getattr__(self, name: str) -> nn.Module:
        networks = self.__dict__.get("networks", {})
        if name in networks:
            return networks[name]
        raise AttributeError(f"{type(self).__name__} of method {self.config.method} has no network '{name}'")

    def to(self, device: torch.device) -> AnomalyModel:
        for net in self.networks.values():
            net.to(device)
        return self

    def eval(self) -> AnomalyModel:
        for net in self.networks.values():
            net.eval()
        return self


def library_versions() -> dict[str, str]:
    import monai
    import SimpleITK
    import timm

    from .. import __version__

    return {"maeanomaly": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "monai": monai.__version__, "SimpleITK": SimpleITK.Version_VersionString(),
            "python": platform.python_version()}


def storage_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``float32``, ``float16`` or ``bfloat16`` (a name or a torch dtype); anything else is an error."""
    found = STORAGE_DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if found not in STORAGE_DTYPES.values():
        raise MAEAnomalyError(f"unknown weight storage dtype {dtype} (choose {', '.join(STORAGE_DTYPES)})")
    return found


def stored_state(net: nn.Module, dtype: str | torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A network's tensors as they are written: float32 ones cast to ``dtype``, the rest unchanged.
    Refuses a cast that makes a finite value infinite (float16 ends at 65504)."""
    dtype = storage_dtype(dtype)
    state = {}
    for key, value in net.state_dict().items():
        value = value.detach().cpu()
        if value.dtype == torch.float32 and dtype != torch.float32:
            cast = value.to(dtype)
            if not bool(torch.isfinite(cast).all()) and bool(torch.isfinite(value).all()):
                raise MAEAnomalyError(f"{key} has values out of the range of {dtype}; store the model as float32")
            value = cast
        state[key] = value.contiguous()
    return state


def config_json(config: ModelConfig, digests: dict[str, str]) -> str:
    """The text of ``config.json``: the settings and the SHA-256 of each weights file."""
    return json.dumps({**config.to_dict(), DIGESTS_KEY: digests}, indent=2) + "\n"


def _weights(model: AnomalyModel, dtype: torch.dtype) -> dict[str, dict[str, torch.Tensor]]:
    return {name: stored_state(net, dtype) for name, net in model.networks.items()}


def _write_weights(writer: AtomicWriter, states: dict[str, dict[str, torch.Tensor]], directory: Path,
                   dtype: torch.dtype) -> dict[str, str]:
    """Writes the weights files; returns the SHA-256 of each, of the bytes read back from disk."""
    # One key: safetensors writes its metadata in hash order, and two keys would make the bytes (and so the
    # recorded digests) differ between two saves of the same weights.
    metadata = ({"format_version": str(FORMAT_VERSION)} if dtype == torch.float32
                else {"stored_as": str(dtype).removeprefix("torch.")})  # loads as float32
    digests: dict[str, str] = {}

    def whole(tmp: Path, file: str, state: dict[str, torch.Tensor]) -> bool:
        data = tmp.read_bytes()
        digests[file] = hashlib.sha256(data).hexdigest()
        return _same_tensors(load(data), state)

    for name, state in states.items():
        file = f"{name}.safetensors"
        writer.write_with(directory / file, lambda tmp, state=state: save_file(state, str(tmp), metadata=metadata),
                          lambda tmp, file=file, state=state: whole(tmp, file, state))
    return digests


def save_model(model: AnomalyModel, directory: str | Path, dtype: str | torch.dtype = torch.float32) -> None:
    """Writes the model directory; every file appears at once, or none does. ``dtype`` (float16 or
    bfloat16) stores the float32 weights compactly, rounded; they load as float32."""
    directory = Path(directory)
    dtype = storage_dtype(dtype)
    states = _weights(model, dtype)  # before anything is written: a cast out of range writes nothing
    model.config.format_version = FORMAT_VERSION
    model.config.versions = library_versions()
    with atomic_outputs() as writer:
        model.weights_sha256 = _write_weights(writer, states, directory, dtype)
        writer.write_text(config_json(model.config, model.weights_sha256), directory / CONFIG_NAME)


def compact_weights(directory: str | Path, dtype: str | torch.dtype = torch.float16) -> None:
    """Rewrites a model directory's weights in ``dtype`` (rounded), in place; in ``config.json`` only the
    weights' digests change. Compare the compact model's scores with the float32 ones before shipping it
    (models/README.md)."""
    directory = Path(directory)
    dtype = storage_dtype(dtype)
    states = _weights(load_model(directory), dtype)
    data = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))  # every setting as it was
    with atomic_outputs() as writer:
        data[DIGESTS_KEY] = _write_weights(writer, states, directory, dtype)
        writer.write_text(json.dumps(data, indent=2) + "\n", directory / CONFIG_NAME)


def _same_tensors(read: dict[str, torch.Tensor], written: dict[str, torch.Tensor]) -> bool:
    return read.keys() == written.keys() and all(torch.equal(read[k], written[k]) for k in written)


def _half_of_float32(stored: torch.dtype, expected: torch.dtype) -> bool:
    return expected == torch.float32 and stored in (torch.float16, torch.bfloat16)


def _looks_like_pickle(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(4)
    return any(head.startswith(magic) for magic in _PICKLE_MAGICS)


def is_model_dir(folder: Path) -> bool:
    """A model directory's config.json (a JSON object with a format version): another tool's config.json
    alone is not a model."""
    try:
        data = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "format_version" in data


def load_config(directory: str | Path) -> ModelConfig:
    """Reads and checks ``config.json`` of a model directory."""
    return _read_config(directory)[0]


def _read_config(directory: str | Path) -> tuple[ModelConfig, dict[str, str]]:
    """The checked settings of ``config.json`` and the SHA-256 it records for each weights file."""
    directory = Path(directory)
    if not directory.exists():
        raise MAEAnomalyError("model directory not found", directory)
    if directory.is_file():
        if _looks_like_pickle(directory):
            raise MAEAnomalyError(
                "is a pickle file; models are directories of config.json and .safetensors files "
                "(pickles are never loaded)", directory)
        raise MAEAnomalyError("is a file, not a model directory", directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise MAEAnomalyError(f"not a model directory (no {CONFIG_NAME})", directory)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise MAEAnomalyError("model is damaged: config.json is not valid JSON", path) from None
    if not isinstance(data, dict):
        raise MAEAnomalyError("model is damaged: config.json does not hold an object", path)
    version = data.get("format_version")
    if version not in (1, FORMAT_VERSION):  # format 1: written before methods were plug-ins
        raise MAEAnomalyError(
            f"model format {version} is incompatible with this version of MAEAnomaly (format {FORMAT_VERSION})", path)
    digests = data.pop(DIGESTS_KEY, {})
    if not (isinstance(digests, dict) and all(isinstance(k, str) and k.endswith(".safetensors") for k in digests)
            and all(isinstance(v, str) and _SHA256.fullmatch(v) for v in digests.values())):
        raise MAEAnomalyError(f"model is damaged: {DIGESTS_KEY} must map weights files to SHA-256 digests", path)
    try:
        return ModelConfig.from_dict(data), digests
    except RemovedSetting as exc:
        raise MAEAnomalyError(f"model cannot be loaded: {exc}", path) from None
    except (TypeError, ValueError) as exc:
        raise MAEAnomalyError(f"model is damaged: {exc}", path) from None


def _read_weights(path: Path, digest: str | None) -> tuple[dict[str, torch.Tensor], bool]:
    """The tensors of a weights file and whether its SHA-256 is ``digest`` (True without one). With a
    digest the bytes are read once, hashed and parsed (hashing brain-t1's 23 MB takes about 12 ms of a
    50-ms load); without, they are mapped as before."""
    try:
        if digest is None:
            return load_file(str(path)), True
        data = path.read_bytes()
        return load(data), hashlib.sha256(data).hexdigest() == digest
    except (SafetensorError, OSError, ValueError) as exc:
        raise MAEAnomalyError(f"model is damaged: unreadable weights ({exc})", path) from None


def load_model(directory: str | Path) -> AnomalyModel:
    """Loads a model directory for scoring; every tensor must match the config exactly."""
    directory = Path(directory)
    config, digests = _read_config(directory)
    if config.threshold is None:
        raise MAEAnomalyError("model has no calibrated threshold (training did not finish)", directory)
    try:
        model = AnomalyModel.from_config(config)
    except (ValueError, TypeError) as exc:
        raise MAEAnomalyError(f"model is damaged: {exc}", directory / CONFIG_NAME) from None
    model.weights_sha256 = digests
    unexpected = set(digests) - {f"{n}.safetensors" for n in model.networks}
    if unexpected:
        raise MAEAnomalyError(f"model is damaged: {DIGESTS_KEY} names {sorted(unexpected)[0]}, not a network of "
                              f"method {config.method}", directory / CONFIG_NAME)
    for name, net in model.networks.items():
        path = directory / f"{name}.safetensors"
        if not path.is_file():
            raise MAEAnomalyError("model is damaged: weights file is missing", path)
        state, recorded = _read_weights(path, digests.get(path.name))
        expected = net.state_dict()
        if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
            raise MAEAnomalyError("model is damaged: weights do not match config.json", path)
        wrong = next((k for k in expected if state[k].dtype != expected[k].dtype
                      and not _half_of_float32(state[k].dtype, expected[k].dtype)), None)
        if wrong is not None:
            raise MAEAnomalyError(f"model is damaged: {wrong} is stored as {state[wrong].dtype}, not "
                                  f"{expected[wrong].dtype}", path)
        if not all(bool(torch.isfinite(v).all()) for v in state.values()):
            raise MAEAnomalyError("model is damaged: weights contain NaN or infinite values", path)
        if not recorded:  # checked last: a fault above says more about the file than its digest does
            raise MAEAnomalyError("weights do not match config.json: the file's SHA-256 differs from the one "
                                  "recorded when the model was saved (a file of another model?)", path)
        # Compact storage: half-precision weights become float32 (exactly: every half value is a float32).
        state = {k: v.to(expected[k].dtype) for k, v in state.items()}
        net.load_state_dict(state)
    return model.eval()
