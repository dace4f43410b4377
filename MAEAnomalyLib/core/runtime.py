"""Device choice, mixed precision, and generators seeded from what they serve (not from a running state)."""

from __future__ import annotations

import contextlib
import hashlib

import torch

from .errors import MAEAnomalyError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MAEAnomalyError("--device cuda was asked for, but torch sees no CUDA GPU")
    if name not in ("cpu", "cuda"):
        raise MAEAnomalyError(f"unknown device '{name}' (choose auto, cpu or cuda)")
    return torch.device(name)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPU; full precision on CPU, where bf16 is rarely faster."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def derived_seed(*parts: object) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def seeded_generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded from ``parts`` (e.g. seed, purpose, epoch, position, slice)."""
    return torch.Generator().manual_seed(derived_seed(*parts))
