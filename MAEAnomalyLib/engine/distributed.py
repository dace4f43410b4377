"""Data-parallel training under ``torchrun``: the process group, rank-aware helpers, and stop requests
(SIGTERM, time budget) that every rank agrees on.

One process is the special case ``world == 1``, where every collective is a no-op, so the training
code has a single path.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..core.errors import MAEAnomalyError

# Collectives wait this long for the slowest rank (volume preparation and calibration are done in
# lock-step rounds, so no single wait should come near it).
TIMEOUT = datetime.timedelta(minutes=60)


@dataclass
class Dist:
    """This process's place in the job; ``world == 1`` without torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # Host-side collectives (flags, sums, barriers) run over gloo, also when the model's gradients go over NCCL.
    cpu_group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.cpu_group)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks, in float64."""
        tensor = torch.tensor(list(values), dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(tensor, group=self.cpu_group)
        return tensor.tolist()

    def max(self, value: int) -> int:
        tensor = torch.tensor([value], dtype=torch.int64)
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return int(tensor.item())

    def gather(self, values: np.ndarray) -> list[np.ndarray]:
        """Every rank's 1D array, in rank order, on every rank."""
        values = np.array(values).ravel()  # a writable copy, as torch.from_numpy wants
        if self.world == 1:
            return [values]
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([values.size]), group=self.cpu_group)
        longest = max(int(s) for s in sizes)
        mine = torch.from_numpy(values)
        padded = torch.zeros(longest, dtype=mine.dtype)
        padded[:values.size] = mine
        parts = [torch.zeros_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded, group=self.cpu_group)
        return [p[:int(s)].numpy() for p, s in zip(parts, sizes, strict=True)]

    def wrap(self, module: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``module`` when there are several ranks."""
        if self.world == 1:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def average_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Averages the gradients of ``params`` over ranks, as DDP does, for a stage without DDP (one that
        alternates optimisers over parts of a network, which DDP's one forward, one backward cannot follow)."""
        params = list(params)
        if self.world == 1 or not params:
            return
        for p in params:  # the same layout on every rank, even where a gradient is missing
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)  # the default group: NCCL for CUDA tensors, gloo for CPU ones
        flat /= self.world
        for p, part in zip(params, flat.split([p.numel() for p in params]), strict=True):
            p.grad.copy_(part.view_as(p.grad))

    def broadcast_state(self, module: nn.Module) -> None:
        """Every rank takes rank 0's parameters and buffers, as DDP does when it wraps a module."""
        if self.world > 1:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def rows(self, batch: int) -> tuple[int, int]:
        """This rank's contiguous share [a, b) of a global batch of ``batch`` samples."""
        return self.rank * batch // self.world, (self.rank + 1) * batch // self.world


def env_rank() -> int:
    """The global rank torchrun gives this process (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[Dist]:
    """Joins the process group torchrun describes (or one already set up by the caller)."""
    owned = False
    if not dist.is_initialized():
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            yield Dist(device=device)
            return
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise MAEAnomalyError(f"local rank {local} has no GPU (torch sees {torch.cuda.device_count()}); "
                                      "start as many processes per node as there are GPUs")
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        owned = True
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
        if device.type == "cuda":
            device = torch.device("cuda", local)
        cpu_group = dist.new_group(backend="gloo", timeout=TIMEOUT) if dist.get_backend() != "gloo" else None
        yield Dist(rank, world, local, device, cpu_group)
    finally:
        if owned:
            dist.destroy_process_group()


class StopControl:
    """Stop requests that take effect at the next batch boundary on every rank at once.

    SIGTERM (from a scheduler, or torchrun passing it on) only sets a flag, so that the loop can
    finish its batch and write a checkpoint; a time budget stops a stage at its deadline. Every poll
    is a collective, so all ranks stop after the same batch even when only one was signalled.
    """

    NONE, BUDGET, SIGNAL = 0, 1, 2

    def __init__(self, dist_: Dist, max_minutes: float | None = None) -> None:
        self.dist = dist_
        self.start = time.monotonic()
        self.deadline = None if max_minutes is None else self.start + 60.0 * max_minutes
        self.signalled = False
        self._previous: Any = None

    def __enter__(self) -> StopControl:
        # Python only lets the main thread install handlers (Slicer may train from another one).
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = True

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def poll(self, deadline: float | None = None) -> int:
        """NONE, BUDGET (``deadline`` passed) or SIGNAL, the same on every rank."""
        local = self.NONE
        if self.signalled:
            local = self.SIGNAL
        elif deadline is not None and time.monotonic() >= deadline:
            local = self.BUDGET
        return self.dist.max(local)


def shield_worker(_worker_id: int) -> None:
    """DataLoader worker init: leave the process group, so that a SIGTERM (or Ctrl-C) sent to the whole
    group reaches only the training process, which stops cleanly and ends its workers itself."""
    os.setpgrp()
    # Keep the garbage collector off the objects inherited from the trainer: collecting them would
    # write to every page that holds them and so copy the trainer's heap into each worker.
    gc.freeze()
