"""``maeanomaly demo``: generate a cohort, train ``tiny`` on its healthy volumes, score one lesioned
volume and evaluate on all of them, end to end and in a few minutes on a CPU."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from .errors import MAEAnomalyError

MARKER = ".maeanomaly-demo"


def prepare_folder(out: Path) -> None:
    """An empty ``out``, replacing only an earlier demo's output."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise MAEAnomalyError("exists and is not an earlier demo's output; choose another --out-dir", out)
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by 'maeanomaly demo'; safe to delete\n")


def run_demo(out: Path, healthy: int, device_name: str, quick: bool, log: Callable[[str], None],
             run_cli: Callable[[list[str]], int]) -> tuple[dict, float]:
    """Runs the four steps (``train`` and ``score`` through the command line itself, ``run_cli``);
    returns the evaluation metrics and the seconds taken."""
    from .data.synthetic import write_cohort
    from .evaluation import evaluate_cohort

    prepare_folder(out)
    start = time.perf_counter()
    log(f"1/4 generating a synthetic cohort in {out / 'data'}")
    healthy_paths, lesioned = write_cohort(out / "data", healthy=healthy, lesioned=3, seed=0)
    log("2/4 training the 'tiny' preset on the healthy volumes")
    train_args = ["train", "--preset", "tiny", "--out", str(out / "model"), "--device", device_name,
                  "--images", *[str(h[0]) for h in healthy_paths], "--masks", *[str(h[1]) for h in healthy_paths]]
    if quick:
        train_args += ["--mae-epochs", "3", "--classifier-epochs", "1"]
    run_cli(train_args)
    log("3/4 scoring a volume with a synthetic lesion")
    run_cli(["score", "--model", str(out / "model"), "--image", str(lesioned[0][0]), "--mask", str(lesioned[0][1]),
             "--out-dir", str(out / "scores"), "--device", device_name])
    log("4/4 evaluating on the lesioned volumes")
    metrics = evaluate_cohort(out / "model", [str(p[0]) for p in lesioned], [str(p[2]) for p in lesioned],
                              [str(p[1]) for p in lesioned], device_name)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics, time.perf_counter() - start
