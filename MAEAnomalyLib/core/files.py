"""Atomic output: every file is written beside its destination under a temporary name, checked (its
size, or what SimpleITK reads back), and a set of files is renamed into place only when all of them
were written whole. A failed write (full disk, file-size limit, no permission) ends in one line naming
the file, and nothing is committed. SIGTERM and SIGINT wait while a set is renamed, so that they never
leave it half renamed."""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import signal
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import MAEAnomalyError

_sets_committed = 0  # in this process; the CLI's SIGTERM message says whether any set was committed


@contextlib.contextmanager
def atomic_outputs() -> Iterator[AtomicWriter]:
    """Collects files written to temporary names and renames them all only if the block succeeds."""
    writer = AtomicWriter()
    try:
        yield writer
    except BaseException:
        writer.discard()
        raise
    writer.commit()


def write_failure(destination: str | Path, reason: object) -> MAEAnomalyError:
    """The one-line error for an output that could not be written whole."""
    text = (str(reason).strip().splitlines() or ["unknown error"])[0][:200]
    if isinstance(reason, OSError):
        # With an errno, its plain words; without one (numpy's short writes), the likely cause.
        text = (os.strerror(reason.errno) if reason.errno is not None
                else f"{text}: the disk is full or a file-size limit was reached")
    return MAEAnomalyError(f"cannot write ({text}); nothing was written", destination)


def _resolved(path: str | Path) -> Path:
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):  # RuntimeError: Python before 3.13 on a link loop
        raise write_failure(path, "Too many levels of symbolic links") from None


def refuse_inputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path | None], flag: str) -> None:
    """Raises when an output path is one of the inputs (after symlinks and relative parts are resolved)."""
    # realpath, unlike resolve(strict), never raises on a link loop among the inputs: such an input cannot be
    # written through, and reading it names the loop (its volume's row in a cohort).
    guarded = {Path(os.path.realpath(p)) for p in inputs if p is not None}
    for path in outputs:
        if _resolved(path) in guarded:
            raise MAEAnomalyError(f"output would overwrite an input file; choose another {flag}", path)


def check_gzip_stream(path: Path) -> None:
    """ITK reads a truncated .gz silently (the missing voxels become zeros); decompressing it all detects it."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (EOFError, OSError, zlib.error) as exc:
        raise MAEAnomalyError(f"cannot read image (damaged or truncated compressed file: {exc})", path) from None


def _same_image(written: sitk.Image, path: Path) -> bool:
    if path.name.lower().endswith(".gz"):
        check_gzip_stream(path)
    back = sitk.ReadImage(str(path))
    return (back.GetSize() == written.GetSize() and back.GetPixelID() == written.GetPixelID()
            and np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(written)))


@contextlib.contextmanager
def _folders_locked(folders: Iterable[Path]) -> Iterator[None]:
    """Holds an exclusive lock on each folder (``flock`` on the folder itself, so no lock file is left),
    so that two runs committing sets of files into one folder take turns and never mix their sets."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; each file is still whole
        yield
        return
    handles = []
    try:
        for folder in sorted({str(f) for f in folders}):  # one order everywhere: no deadlock
            handles.append(os.open(folder, os.O_RDONLY))
            fcntl.flock(handles[-1], fcntl.LOCK_EX)
        yield
    finally:
        for handle in handles:
            os.close(handle)


@contextlib.contextmanager
def one_run_at_a_time(lock_file: Path, folder: Path, flag: str) -> Iterator[None]:
    """Holds ``lock_file`` for a whole run, so that a second run writing into ``folder`` stops at once in one
    line instead of replacing this one's outputs under its table. A file of its own: the commits' locks
    are on the folders, which this process takes too. The file stays (removing it would race with a run
    that has just opened it). Windows has no such lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MAEAnomalyError(f"another maeanomaly run is writing into this folder; wait for it to end or "
                                  f"choose another {flag}", folder) from None
        yield
    finally:
        os.close(handle)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGTERM and SIGINT wait for the end of the block, then reach their handlers as usual, so that a set
    being renamed into place is renamed whole. Python runs signal handlers in the main thread only: in
    any other thread nothing can cut the block short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(signum)
        if handler is not None:  # None: set outside Python, which it cannot restore
            previous[signum] = handler
            signal.signal(signum, lambda number, _frame: arrived.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)  # the handler it would have reached (a Python one raises here)


def sets_committed() -> int:
    """How many sets of files this process has committed."""
    return _sets_committed


def file_digest(path: str | Path) -> tuple[int, str]:
    """A written file's size and SHA-256 digest, of a NUL and its bytes (as ``data.digest.content_digest``
    hashes a single file, so that records written before stay valid)."""
    digest = hashlib.sha256(b"\0")
    with Path(path).open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return Path(path).stat().st_size, digest.hexdigest()


class AtomicWriter:
    """Writes each output beside its destination under a temporary name; see ``atomic_outputs``."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []
        self._checks: list[Callable[[], Iterable[Path]]] = []
        self._made: list[Path] = []  # folders made for the set, removed with it when it is discarded

    def before_commit(self, check: Callable[[], Iterable[Path]]) -> None:
        """``check()`` runs while the folders are locked, before any rename: it may raise to commit
        nothing, and returns files to remove with the set (an earlier run's outputs that it replaces)."""
        self._checks.append(check)

    def digest(self, destination: str | Path) -> tuple[int, str]:
        """Size and SHA-256 of what is pending for ``destination`` (``file_digest``)."""
        return file_digest(next(tmp for tmp, d in self._pending if d == Path(destination)))

    def temp_path(self, destination: str | Path) -> Path:
        destination = Path(destination)
        try:
            self._made += [p for p in (destination.parent, *destination.parent.parents) if not p.exists()][::-1]
            destination.parent.mkdir(parents=True, exist_ok=True)
            suffix = "".join(destination.suffixes[-2:]) if destination.name.endswith(".nii.gz") else destination.suffix
            fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp" + suffix, dir=destination.parent)
        except OSError as exc:
            raise write_failure(destination, exc) from None
        os.close(fd)
        self._pending.append((Path(tmp), destination))
        return Path(tmp)

    def write_with(self, destination: str | Path, write: Callable[[Path], None], check: Callable[[Path], bool]
                   ) -> None:
        """Writes with ``write(temp)``, then commits only if ``check(temp)`` finds the file whole."""
        tmp = self.temp_path(destination)
        try:
            write(tmp)
            # Outputs follow the user's umask: mkstemp makes 0600, and so do some writers (safetensors).
            os.chmod(tmp, 0o666 & ~current_umask())
            whole = check(tmp)
        except (OSError, RuntimeError, ValueError, MAEAnomalyError) as exc:
            raise write_failure(destination, exc) from None
        if not whole:
            raise write_failure(destination, "the file on disk is not what was written")

    def write_image(self, image: sitk.Image, destination: str | Path) -> None:
        def write(tmp: Path) -> None:
            # ITK reports a short write as a warning only; the read-back below is what catches it.
            warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
            sitk.ProcessObject.SetGlobalWarningDisplay(False)
            try:
                sitk.WriteImage(image, str(tmp), useCompression=True)
            finally:
                sitk.ProcessObject.SetGlobalWarningDisplay(warnings)

        self.write_with(destination, write, lambda tmp: _same_image(image, tmp))

    def write_bytes(self, data: bytes, destination: str | Path) -> None:
        def write(tmp: Path) -> None:
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())

        self.write_with(destination, write, lambda tmp: tmp.stat().st_size == len(data))

    def write_text(self, text: str, destination: str | Path) -> None:
        self.write_bytes(text.encode("utf-8"), destination)

    def commit(self) -> None:
        global _sets_committed
        try:
            for _, destination in self._pending:  # before any rename: the set is committed whole or not at all
                if destination.is_dir():
                    raise write_failure(destination, "a folder is in the way")
            with _folders_locked(d.parent for _, d in self._pending):
                stale = [path for check in self._checks for path in check()]
                with signals_deferred():
                    try:
                        for tmp, destination in self._pending:
                            os.replace(tmp, destination)
                        for destination in stale:
                            destination.unlink(missing_ok=True)
                    except OSError as exc:
                        raise write_failure(destination, exc) from None
                    self._pending.clear()
                    _sets_committed += 1
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        for tmp, _ in self._pending:
            tmp.unlink(missing_ok=True)
        self._pending.clear()
        for folder in reversed(self._made):
            with contextlib.suppress(OSError):  # not empty: another run's files are there
                folder.rmdir()
        self._made.clear()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_write_failure(exc: OSError) -> bool:
    """A full disk, a quota or file-size limit, or no permission: the user's environment, not a bug."""
    return exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM)
