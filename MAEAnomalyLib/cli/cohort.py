"""``maeanomaly score --images``: the command-line side of scoring a cohort (checks, messages, exit codes)."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from ..core.errors import MAEAnomalyError

# 3: finished, some volumes failed (MAEAnomalyLib.scoring.cohort.SOME_FAILED); 130, 143: Ctrl-C, SIGTERM.
INTERRUPTED, TERMINATED = 130, 143


def check_single_volume_args(args: argparse.Namespace) -> None:
    """``--image`` scores one volume; the cohort's options would be silently ignored there."""
    for flag, value in (("--masks", args.masks), ("--workers", args.workers), ("--resume", args.resume or None)):
        if value is not None:
            raise MAEAnomalyError(f"{flag} goes with --images (a cohort); with --image give --mask")


def score_cohort_command(args: argparse.Namespace, log: Callable[[str], None],
                         terminated: type[BaseException]) -> int:
    """Scores the cohort; returns 0, 3 when some volumes failed, 130 or 143 when interrupted."""
    from ..core.runtime import resolve_device
    from ..core.shipped import resolve_model
    from ..data.inputs import expand_paths
    from ..engine.distributed import env_rank
    from ..scoring.cohort import CohortOptions, score_cohort, summary

    if args.mask:
        raise MAEAnomalyError("--mask goes with --image; with --images give --masks, paired in order")
    if args.brain_mask not in ("auto", "none"):
        raise MAEAnomalyError("--brain-mask PATH goes with --image; with --images give --masks, paired in order")
    if args.progress != "none":
        raise MAEAnomalyError("--progress lines goes with --image; a cohort shows a progress bar over volumes")
    workers = 2 if args.workers is None else args.workers
    if workers < 0:
        raise MAEAnomalyError(f"--workers {workers}: give 0 (prepare in the scoring process) or more")
    main_rank = env_rank() == 0
    options = CohortOptions(Path(args.out_dir), resolve_device(args.device), args.batch_size, workers, args.resume,
                            brain_mask=args.brain_mask)
    try:
        result = score_cohort(resolve_model(args.model), expand_paths(args.images), expand_paths(args.masks),
                              options, log)
    except (KeyboardInterrupt, terminated) as exc:
        if main_rank:
            log(f"maeanomaly: {'interrupted' if isinstance(exc, KeyboardInterrupt) else 'terminated (SIGTERM)'}; "
                f"finished volumes are complete in {args.out_dir}, the one in progress left nothing; "
                "run again with --resume to score the rest")
        return INTERRUPTED if isinstance(exc, KeyboardInterrupt) else TERMINATED
    # Everything is committed: a SIGTERM from here on (torchrun stops the other ranks as soon as one exits
    # non-zero) ends the process without claiming that nothing was written.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not main_rank:  # rank 0 alone carries the cohort's status, so no rank's exit races its summary
        return 0
    log(summary(result))
    print(f"cohort: {result.csv_path}", flush=True)
    return result.exit_code
