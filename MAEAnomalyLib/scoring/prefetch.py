"""Reading and preparing a cohort's volumes ahead, in worker processes of our own, while the main
process scores the ones already prepared.

Not torch's DataLoader: a prepared volume comes back over a socket as plain pickle (its arrays sent
out of band, no copy), never through shared memory, so a file-size limit or a full ``/dev/shm`` cannot
drop it; a worker that dies (the OOM killer, a ``kill -9``) costs only the volume it held, which gets
its error row, while the other workers (or, when none is left, the main process) prepare the rest;
and workers die with the main process, even when it is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

import SimpleITK as sitk
import torch

from ..core.errors import MAEAnomalyError
from ..data.preprocessing import PreparedVolume
from ..methods.model_config import ModelConfig
from .outputs import prepare_for_scoring

PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class Volume:
    """One input of the cohort: its place in the list, paths, and output name."""

    index: int
    image: str
    mask: str | None
    name: str


@dataclass
class Prepared:
    """A volume made ready for the networks, or the one-line reason it could not be."""

    volume: Volume
    prepared: PreparedVolume | None
    error: str | None
    seconds: float  # spent reading and preparing it (in whichever process did)
    brain_mask: sitk.Image | None = None  # extracted by --brain-mask auto, written with the outputs


def one_line(exc: BaseException, path: str) -> str:
    """A volume's error as one line naming its file; an unexpected error says that it was unexpected."""
    if isinstance(exc, MAEAnomalyError):
        text = str(exc) if exc.path else f"{path}: {exc}"
    else:
        text = f"{path}: unexpected {exc.__class__.__name__}: {exc}"
    return " ".join(text.split())[:500]


def prepare(volume: Volume, config: ModelConfig, brain_mask: str = "auto") -> Prepared:
    """``volume`` read and prepared by ``prepare_for_scoring`` (an error is returned, not raised, so that
    one bad volume does not end the run); a volume without a mask gets its ``brain_mask``."""
    start = time.perf_counter()
    mask = None
    try:
        prepared, foreground = prepare_for_scoring(volume.image, volume.mask or brain_mask, config)
        mask = foreground.extracted_mask
        error = None
    except Exception as exc:  # any failure of one volume is that volume's row, not the cohort's end
        prepared, error = None, one_line(exc, volume.image)
    return Prepared(volume, prepared, error, time.perf_counter() - start, mask)


def _send(sock: socket.socket, item: object) -> None:
    """``item`` pickled with its large buffers (arrays, images) sent as they are, after their sizes."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(item, protocol=5, buffer_callback=buffers.append)
    parts = [memoryview(head), *(b.raw() for b in buffers)]
    sock.sendall(struct.pack(f"<Q{len(parts)}Q", len(parts), *(p.nbytes for p in parts)))
    for part in parts:
        sock.sendall(part)


def _exactly(sock: socket.socket, size: int) -> bytearray:
    """``size`` bytes, into a writable buffer (arrays unpickled onto it stay writable); EOFError when
    the other end closes first."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError("connection closed")
        got += n
    return buffer


def _receive(sock: socket.socket) -> object:
    (count,) = struct.unpack("<Q", _exactly(sock, 8))
    sizes = struct.unpack(f"<{count}Q", _exactly(sock, 8 * count))
    head, *buffers = (_exactly(sock, size) for size in sizes)
    return pickle.loads(head, buffers=buffers)


def die_with_parent(parent_pid: int) -> None:
    """Ends this process when ``parent_pid`` ends, also by SIGKILL: the kernel's parent-death signal on
    Linux, else a thread that watches the parent."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # the parent ended before the signal was asked for
                    os._exit(1)
                return
    parent = multiprocessing.parent_process()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            # POSIX re-parents an orphan (its parent id changes); Windows keeps the id, so ask the handle.
            gone = not parent.is_alive() if os.name == "nt" and parent is not None else os.getppid() != parent_pid
            if gone:
                os._exit(1)

    threading.Thread(target=watch, name="parent watchdog", daemon=True).start()


def _work(sock: socket.socket, parent_pid: int, config: ModelConfig, brain_mask: str) -> None:
    """A worker: prepares each volume it is sent and sends it back, until told to stop (``None``)."""
    die_with_parent(parent_pid)
    # As the DataLoader's workers: one thread. A fork inherits OpenMP's pool in a state that hangs the
    # first parallel region, and the workers together already use the cores.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: the main process stops and ends its workers itself. A
    # SIGTERM ends a worker at once (a fork inherited the main process's handler, which would unwind).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Keep the garbage collector off the objects inherited by fork: collecting them would write to every
    # page that holds them and so copy the main process's heap into each worker.
    gc.freeze()
    while (volume := _receive(sock)) is not None:
        item = prepare(volume, config, brain_mask)
        try:
            _send(sock, item)
        except (pickle.PicklingError, TypeError, ValueError) as exc:  # never a half-sent message
            _send(sock, Prepared(volume, None, one_line(exc, volume.image), item.seconds))


@dataclass
class _Worker:
    process: BaseProcess
    sock: socket.socket
    volume: Volume | None = None  # the one it is preparing


def _death(process: BaseProcess, volume: Volume) -> Prepared:
    """The error of the volume that a dead worker held, in one line, with how the worker ended."""
    process.kill()  # already dead, or (its connection broken) as good as
    process.join(5)
    code = process.exitcode
    if code is not None and code < 0:
        how = f"killed by {signal.Signals(-code).name}" if -code in signal.valid_signals() else f"signal {-code}"
    else:
        how = f"exit code {code}"
    return Prepared(volume, None, f"{volume.image}: the worker process preparing it ended unexpectedly ({how}; "
                    "out of memory?)", 0.0)


def _assign(worker: _Worker, todo: deque[Volume]) -> None:
    """Sends the worker the next volume, which stays to do when the worker is gone."""
    volume = todo.popleft()
    try:
        _send(worker.sock, volume)
    except OSError:
        todo.appendleft(volume)
        return
    worker.volume = volume


def _stop(pool: list[_Worker]) -> None:
    """Ends every worker: an idle one is told to, a busy one (also after an interruption) is killed."""
    for worker in pool:
        with contextlib.suppress(OSError):
            if worker.volume is None:
                _send(worker.sock, None)
            else:
                worker.process.kill()
    deadline = time.monotonic() + 5
    for worker in pool:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.sock.close()


def prefetched(volumes: Sequence[Volume], config: ModelConfig, workers: int, brain_mask: str = "auto"
               ) -> Iterator[Prepared]:
    """The volumes prepared, each once: in the order they are ready, by ``workers`` processes running
    ahead (each one volume ahead of the scoring), or one by one in this process when ``workers`` is 0.
    A volume whose worker died gets its error; the rest go on (in this process when no worker is left)."""
    todo = deque(volumes)
    pool: list[_Worker] = []
    context = multiprocessing.get_context()  # as the DataLoader's: fork on Linux, spawn elsewhere
    try:
        for _ in range(min(workers, len(todo))):
            mine, theirs = socket.socketpair()
            process = context.Process(target=_work, args=(theirs, os.getpid(), config, brain_mask),
                                      name="maeanomaly prefetch", daemon=True)
            process.start()
            theirs.close()  # before the next fork: the worker's end is then its alone, so its death is EOF here
            pool.append(_Worker(process, mine))
        for worker in pool:
            if todo:
                _assign(worker, todo)
        while busy := [w for w in pool if w.volume is not None]:
            ready = set(wait([w.sock for w in busy] + [w.process.sentinel for w in busy]))
            for worker in busy:
                if worker.sock not in ready and worker.process.sentinel not in ready:
                    continue
                try:
                    item = _receive(worker.sock)
                except (EOFError, OSError):  # died before or while sending its volume
                    pool.remove(worker)
                    worker.sock.close()
                    yield _death(worker.process, worker.volume)
                    continue
                worker.volume = None
                if todo and worker.process.is_alive():  # the next one is prepared while this one is scored
                    _assign(worker, todo)
                yield item
        while todo:
            yield prepare(todo.popleft(), config, brain_mask)
    finally:
        _stop(pool)
