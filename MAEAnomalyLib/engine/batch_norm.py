"""Batch normalisation over the global batch, on any backend, for stages that run without DDP.

Under torchrun each rank holds a share of every global batch, so a plain ``BatchNorm2d`` normalises with
the statistics of that share and a two-process run trains another network than one process does.
``nn.SyncBatchNorm`` fixes that on GPUs only; this one sums the statistics of all ranks with a
differentiable all-reduce, so it also runs on CPU (gloo), and it leaves out the padding row that a rank
without a share runs with zero weight (``engine.samples.EpochBatches``): ``counted_rows`` names how many
rows of the batch count. One process takes the same path, so that one and several compute the statistics
alike (in float64); in evaluation it is ``BatchNorm2d`` with its running statistics.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

_COUNTED: contextvars.ContextVar[int | None] = contextvars.ContextVar("counted_rows", default=None)


@contextlib.contextmanager
def counted_rows(n: int) -> Iterator[None]:
    """Within it, only the first ``n`` rows of each batch enter the global statistics."""
    token = _COUNTED.set(n)
    try:
        yield
    finally:
        _COUNTED.reset(token)


def _several_ranks() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _Summed(torch.autograd.Function):
    """The sum of a tensor over ranks; its gradient is the sum of every rank's gradient (as SyncBatchNorm's)."""

    @staticmethod
    def forward(ctx: object, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return _Summed.apply(grad)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics (and running statistics) are those of the global batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        if self.momentum is None:
            raise ValueError("GlobalBatchNorm2d needs a momentum")
        n = _COUNTED.get()
        counted = x if n is None else x[:n]
        channels = x.shape[1]
        # Sums in float64 so that E[x²] − E[x]² loses nothing that the one-process two-pass variance keeps.
        local = torch.cat([counted.sum(dim=(0, 2, 3), dtype=torch.float64),
                           counted.square().sum(dim=(0, 2, 3), dtype=torch.float64),
                           torch.full((1,), counted.numel() / channels, dtype=torch.float64, device=x.device)])
        total = _Summed.apply(local) if _several_ranks() else local
        count = total[-1]
        mean = total[:channels] / count
        var = (total[channels:2 * channels] / count - mean.square()).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.lerp_(mean.to(x.dtype), self.momentum)
                self.running_var.lerp_(unbiased.to(x.dtype), self.momentum)
                self.num_batches_tracked.add_(1)
        shape = (1, channels, 1, 1)
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var.to(x.dtype) + self.eps).view(shape)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


@torch.no_grad()
def reestimate_running_statistics(net: nn.Module, batches: Iterable[object],
                                  forward: Callable[[object], object]) -> None:
    """Sets every batch norm's running statistics in ``net`` to the mean over ``batches`` of their batch
    statistics (``torch.optim.swa_utils.update_bn``'s cumulative average, kept as a per-batch momentum of
    1/k because ``GlobalBatchNorm2d`` takes only a number). Under torchrun every rank passes its share of
    each batch (``counted_rows``), as in training."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta, was_training = [m.momentum for m in norms], net.training
    for m in norms:
        m.reset_running_stats()
    net.train()
    try:
        for k, batch in enumerate(batches):
            for m in norms:
                m.momentum = 1 / (k + 1)
            forward(batch)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        net.train(was_training)
