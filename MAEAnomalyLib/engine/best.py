"""Keeping the epoch of lowest validation loss: a stage remembers its network's weights when an epoch's
validation loss is the lowest so far (in ``progress.best``, which checkpoints carry), and loads them back
once the stage is over."""

from __future__ import annotations

from torch import nn

from .loop import Progress, Run


def remember_if_best(progress: Progress, net: nn.Module, loss: float) -> None:
    """Keeps a copy of ``net``'s weights when ``loss`` is the lowest validation loss so far."""
    if progress.best is None or loss < progress.best["loss"]:
        weights = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        progress.best = {"epoch": progress.epoch, "loss": loss, "weights": weights}


def restore_best(progress: Progress, net: nn.Module, run: Run, loss_name: str) -> None:
    """Loads the remembered weights into ``net`` (if any epoch was remembered) and says which epoch's."""
    best = progress.best
    if best is not None:
        net.load_state_dict(best["weights"])
        run.log(f"keeping the network of epoch {best['epoch']} (lowest {loss_name}, {best['loss']:.5f})")
