"""``maeanomaly score --images``: every volume of a cohort scored with one loaded model, volumes
prepared ahead in worker processes, the cohort split across ranks under ``torchrun``, and
``cohort.csv`` written by rank 0 when all are done.

Each volume's outputs are those of ``score --image`` under a name unique in the cohort, committed
together with a record of the input and model they came from; ``--resume`` skips a volume whose
record matches and whose outputs all match their recorded size and SHA-256. A volume that cannot be
read, prepared, scored or written gets its error in ``cohort.csv`` and on stderr, and nothing else. One
run at a time writes into a folder.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk
import torch
import torch.distributed as torch_dist
from tqdm import tqdm

from ..core.errors import MAEAnomalyError
from ..core.files import atomic_outputs, one_run_at_a_time, refuse_inputs, write_failure
from ..data.inputs import pair
from ..engine.distributed import Dist, session
from ..methods.model import AnomalyModel, load_model
from .cohort_table import (
    COHORT_CSV,
    OK,
    RECORDS,
    RUN_LOCK,
    cohort_csv,
    failed_row,
    model_digest,
    output_names,
    outputs_intact,
    read_record,
    record_path,
    same_inputs,
    volume_record,
    volume_row,
)
from .outputs import output_paths, write_score_outputs
from .prefetch import Volume, one_line, prefetched
from .scores import VolumeScores, score_prepared
from .table import read_table_csv

SOME_FAILED = 3  # exit code: the cohort finished, but at least one volume failed (see cohort.csv)
Log = Callable[[str], None]
# Volumes per second even below one (tqdm's default switches to seconds per volume).
BAR = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]"


@dataclass
class CohortOptions:
    """How a cohort is scored; ``workers`` processes prepare volumes ahead (0: in the scoring process),
    ``writers`` threads write outputs while later volumes are scored (SimpleITK and zlib release the GIL)."""

    out_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 32
    workers: int = 2
    resume: bool = False
    show_progress: bool = True
    writers: int = 2
    brain_mask: str = "auto"  # for volumes without a mask: "auto" or "none" (see data.brain)


@dataclass
class CohortResult:
    """Counts over the whole cohort (on every rank); ``rows`` (rank 0 only) as in ``cohort.csv``."""

    csv_path: Path
    scored: int
    failed: int
    skipped: int
    rows: list[dict]
    # This process's seconds: waiting for a prepared volume, preparing (summed over workers), scoring, writing.
    seconds: dict[str, float]

    @property
    def exit_code(self) -> int:
        return SOME_FAILED if self.failed else 0


def cohort_volumes(images: Sequence[str], masks: Sequence[str] | None) -> list[Volume]:
    """The cohort's volumes in input order, masks paired (see ``data.inputs.pair``), each with its output name."""
    if not images:
        raise MAEAnomalyError("--images lists no volumes")
    masks = pair(images, masks, "--masks")  # by name where a folder was expanded
    names = output_names(images)
    return [Volume(i, str(image), masks[i] if masks else None, names[i]) for i, image in enumerate(images)]


def complete_row(volume: Volume, out_dir: Path, record: str) -> dict | None:
    """The volume's row if an earlier run finished it from this input and model and its outputs are all
    still as written, else None."""
    written = read_record(record_path(out_dir, volume.name))
    # Committed last, in the same set as every output, it lists each with its size and SHA-256.
    if written is None or not same_inputs(written, record) or not outputs_intact(written, out_dir):
        return None
    try:
        table = read_table_csv(output_paths(out_dir, volume.name)["scores"])
    except MAEAnomalyError:
        return None
    return volume_row(volume.image, volume.mask, volume.name, table)


def _write(result: VolumeScores, volume: Volume, record: str, out_dir: Path, brain_mask: sitk.Image | None
           ) -> tuple[dict, float]:
    """Writes a volume's outputs and then its record, all or none; returns its row and the seconds spent."""
    start = time.perf_counter()
    write_score_outputs(result, out_dir, volume.name, record, brain_mask=brain_mask)
    return volume_row(volume.image, volume.mask, volume.name, result.table), time.perf_counter() - start


def _score_share(model: AnomalyModel, share: list[Volume], records: dict[int, str], options: CohortOptions,
                 dist: Dist, log: Log, label: str) -> tuple[list[tuple[int, dict]], dict[str, float]]:
    """Scores this rank's volumes as they come out of the workers, while threads write the outputs of
    the ones before (so the device is not idle while PNG and NIfTI files are encoded); one row per volume."""
    seconds = dict.fromkeys(("waiting", "preparing", "scoring", "writing", "write wait"), 0.0)
    rows: list[tuple[int, dict]] = []
    bar = tqdm(total=len(share), desc=label, unit="vol", disable=not (options.show_progress and dist.is_main),
               file=sys.stderr, bar_format=BAR)

    def finish(volume: Volume, row: dict | None, error: str | None) -> None:
        if error is not None:
            row = failed_row(volume.image, volume.mask, volume.name, error)
            with tqdm.external_write_mode(file=sys.stderr):
                log(f"maeanomaly: error: {error}")
        rows.append((volume.index, row))
        bar.update()

    def collect(volume: Volume, written: Future) -> None:
        start = time.perf_counter()
        try:
            row, spent = written.result()
            seconds["writing"] += spent
            finish(volume, row, None)
        except Exception as exc:  # a full disk: this volume's row, not the run's end
            finish(volume, None, one_line(exc, volume.image))
        seconds["write wait"] += time.perf_counter() - start

    items = prefetched(share, model.config, options.workers, options.brain_mask)
    # Leaving the block waits for the writes under way, so an interruption never cuts one short.
    with bar, contextlib.closing(items), ThreadPoolExecutor(max(1, options.writers)) as writer:
        pending: deque[tuple[Volume, Future]] = deque()
        while True:
            start = time.perf_counter()
            item = next(items, None)
            seconds["waiting"] += time.perf_counter() - start
            if item is None:
                break
            seconds["preparing"] += item.seconds
            if item.error is not None:
                finish(item.volume, None, item.error)
                continue
            try:
                start = time.perf_counter()
                result = score_prepared(model, item.prepared, dist.device, options.batch_size)
                seconds["scoring"] += time.perf_counter() - start
            except Exception as exc:  # e.g. out of device memory: this volume's row
                finish(item.volume, None, one_line(exc, item.volume.image))
                continue
            record = records[item.volume.index]
            pending.append((item.volume, writer.submit(_write, result, item.volume, record, options.out_dir,
                                                       item.brain_mask)))
            while len(pending) > max(1, options.writers):
                collect(*pending.popleft())
        while pending:
            collect(*pending.popleft())
    return rows, seconds


def _one_writer(run: contextlib.ExitStack, out_dir: Path, dist: Dist) -> None:
    """Rank 0 holds the folder's run lock until the run ends (``cohort.csv`` must describe the files on
    disk); every rank stops when another run holds it."""
    refused = None
    if dist.is_main:
        try:
            run.enter_context(one_run_at_a_time(Path(out_dir) / RECORDS / RUN_LOCK, out_dir, "--out-dir"))
        except MAEAnomalyError as exc:
            refused = (exc.problem, exc.path)
    refused = _broadcast(refused, dist)
    if refused is not None:
        raise MAEAnomalyError(*refused)


def _broadcast(value: object, dist: Dist) -> object:
    """Rank 0's ``value`` on every rank."""
    if dist.world == 1:
        return value
    box = [value]
    torch_dist.broadcast_object_list(box, src=0, group=dist.cpu_group)
    return box[0]


def _gather(rows: list[tuple[int, dict]], dist: Dist) -> list[tuple[int, dict]]:
    """Every rank's rows on rank 0 (an empty list elsewhere)."""
    if dist.world == 1:
        return rows
    parts: list | None = [None] * dist.world if dist.is_main else None
    torch_dist.gather_object(rows, parts, dst=0, group=dist.cpu_group)
    return [row for part in parts or [] for row in part]


def score_cohort(model_dir: str | Path, images: Sequence[str], masks: Sequence[str] | None,
                 options: CohortOptions, log: Log = lambda message: print(message, file=sys.stderr, flush=True)
                 ) -> CohortResult:
    """Scores every volume (this rank's share under torchrun) and writes ``cohort.csv`` on rank 0."""
    model_dir, out_dir = Path(model_dir), Path(options.out_dir)
    volumes = cohort_volumes(images, masks)
    model = load_model(model_dir)
    digest = model_digest(model_dir)
    csv_path = out_dir / COHORT_CSV
    outputs = [p for v in volumes for p in output_paths(out_dir, v.name).values()]
    inputs = [*(v.image for v in volumes), *(v.mask for v in volumes), *model_dir.glob("*")]
    refuse_inputs([*outputs, csv_path], inputs, "--out-dir")
    if out_dir.exists() and not out_dir.is_dir():
        raise write_failure(out_dir, "a file is in the way of the output folder")
    records = {v.index: volume_record(v.image, v.mask, digest, options.brain_mask) for v in volumes}
    with session(options.device) as dist, contextlib.ExitStack() as run:
        _one_writer(run, out_dir, dist)
        model.to(dist.device)
        done: dict[int, dict] = {}
        if options.resume and dist.is_main:
            done = {v.index: row for v in volumes if (row := complete_row(v, out_dir, records[v.index]))}
        done = _broadcast(done, dist)  # also: no rank writes before rank 0 has looked
        pending = [v for v in volumes if v.index not in done]
        share = pending[dist.rank::dist.world]
        label = "scoring volumes" if dist.world == 1 else f"scoring volumes (rank 0: {len(share)} of {len(pending)})"
        rows, seconds = _score_share(model, share, records, options, dist, log, label)
        scored, failed = dist.sum([sum(r["status"] == OK for _, r in rows), sum(r["status"] != OK for _, r in rows)])
        everything = sorted([*done.items(), *_gather(rows, dist)], key=lambda item: item[0])
        table = [row for _, row in everything] if dist.is_main else []
        if dist.is_main:
            with atomic_outputs() as writer:
                writer.write_text(cohort_csv(table), csv_path)
        dist.barrier()  # every rank returns once cohort.csv is there
    return CohortResult(csv_path, int(scored), int(failed), len(done), table, seconds)


def summary(result: CohortResult) -> str:
    """The closing line: counts, and where the table is."""
    total = result.scored + result.failed + result.skipped
    return (f"{total} volumes: {result.scored} scored, {result.failed} failed, {result.skipped} skipped "
            f"(complete from an earlier run); table: {result.csv_path}")
