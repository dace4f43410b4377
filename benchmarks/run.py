#!/usr/bin/env python3
"""Every registered method through each benchmark protocol: one JSON and one Markdown table per protocol.

    PYTHONPATH=. python benchmarks/run.py [DATA_DIR] [--work DIR] [--out DIR] [--methods A,B]
        [--protocols t1,paper] [--contrasts t1,flair] [--preset small] [--max-minutes M] [--set M.F=V ...]
        [--t1-model METHOD=MODEL ...]

The protocols (../shared/data/README.md):
  t1     IXI-trained models (mae_classifier: the shipped brain-t1; other methods: trained on the first 30
         IXI T1 with their brain masks) tested on the native T1 and the T1c of the brats2018 cases and on the
         brats2015 T1c; false positives (slices flagged, voxels called) on the last 10 IXI volumes.
  paper  each method trained on the tumour-free slices of the first 14 brats2018 cases (sorted; --labels
         leaves the tumour slices out), tested on every slice of the last 6, per --contrasts (t1 is the
         native T1; flair is also tested on the brats2015 cases).
Models are trained by `python -m MAEAnomalyLib train` in a subprocess into WORK/models/NAME-KEY, KEY from
(method, protocol, contrast, preset, --set items, training files and their sizes); an interrupted
training continues with --resume; its output goes to WORK/models/NAME-KEY.log. A model that --max-minutes
cut short is trained again by a run with a larger budget or none. Evaluations are cached in
WORK/evaluations by (the model's config.json SHA-256, test set, evaluation code), so a rerun with
everything cached only writes the tables. Without the data folder it says so and exits 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]  # runs without PYTHONPATH too

import run_protocols as rp  # noqa: E402

from MAEAnomalyLib.core.shipped import models_dir  # noqa: E402
from MAEAnomalyLib.methods import names as method_names  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", default=os.environ.get("MAEANOMALY_DATA", str(ROOT.parent / "shared" / "data")),
                   metavar="DATA_DIR", help="folder with brats2018/, brats2015/, ixi-t1/ (default: $MAEANOMALY_DATA)")
    p.add_argument("--work", default=str(ROOT / "benchmark_runs" / "work"), help="models, logs and cached evaluations")
    p.add_argument("--out", default=str(ROOT / "benchmark_runs" / "results"), help="folder for PROTOCOL.json/.md")
    p.add_argument("--methods", help="comma-separated registered methods (default: all)")
    p.add_argument("--protocols", default="t1,paper", help="comma-separated, of: " + ", ".join(rp.PROTOCOLS))
    p.add_argument("--contrasts", default="t1,flair", help="paper protocol, of: " + ", ".join(rp.CONTRASTS))
    p.add_argument("--preset", default="small", help="preset of every trained model (default: small)")
    p.add_argument("--max-minutes", type=float, help="time budget of each training (train --max-minutes)")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.FIELD=VALUE", help="passed to train")
    p.add_argument("--t1-model", action="append", default=[], metavar="METHOD=MODEL",
                   help="T1 protocol: evaluate MODEL (a folder or shipped name) for METHOD instead of its shipped "
                        "model or one trained here, e.g. a model trained with other settings")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=32, help="slices per batch when evaluating")
    p.add_argument("--paper-cases", default="14,6", metavar="TRAIN,TEST", help="brats2018 cases (default: 14,6)")
    p.add_argument("--ixi-volumes", default="30,10", metavar="TRAIN,UNSEEN", help="IXI T1 volumes (default: 30,10)")
    args = p.parse_args(argv)
    registered = method_names()
    args.methods = args.methods.split(",") if args.methods else registered
    args.protocols, args.contrasts = args.protocols.split(","), args.contrasts.split(",")
    for given, allowed, what in ((args.methods, registered, "method"), (args.protocols, rp.PROTOCOLS, "protocol"),
                                 (args.contrasts, rp.CONTRASTS, "contrast")):
        for name in given:
            if name not in allowed:
                p.error(f"unknown {what} '{name}' (choose from {', '.join(allowed)})")
    try:
        (a, b), (c, d) = (map(int, v.split(",")) for v in (args.paper_cases, args.ixi_volumes))
    except ValueError:
        p.error("--paper-cases and --ixi-volumes take two counts, e.g. 14,6")
    args.split = rp.Split(a, b, c, d)
    pairs = [item.partition("=") for item in args.t1_model]
    if any(not sep or name not in registered for name, sep, _ in pairs):
        p.error("--t1-model takes METHOD=MODEL with a registered method, e.g. mae_classifier=models/mine")
    args.t1_model = {name: model for name, _, model in pairs}
    return args


def say(message: str) -> None:
    print(message, flush=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.data, self.work = args, Path(args.data), Path(args.work)
        self.code = rp.source_digest(ROOT / "MAEAnomalyLib" / "evaluation")
        self.done, self.total, self.failed = 0, 0, []

    def model_dir(self, job: rp.Job) -> Path:
        if job.shipped:
            from MAEAnomalyLib.core.shipped import resolve_model

            return resolve_model(job.shipped)
        a = self.args
        key = rp.cache_key(job.method, job.protocol, job.contrast, a.preset, a.set, job.train.files(), self.data)
        return self.work / "models" / f"{job.name}-{key}"

    def step(self, text: str) -> None:
        self.done += 1
        say(f"[{self.done}/{self.total}] {text} ({self.total - self.done} steps left after this)")

    def train(self, job: rp.Job, out: Path) -> bool:
        a, t = self.args, job.train
        resume = out.exists()
        self.step(f"{'resuming' if resume else 'training'} {job.method} ({job.protocol}, {job.contrast}) on "
                  f"{t.name}: {len(t.images)} volumes -> {out}")
        cmd = [sys.executable, "-m", "MAEAnomalyLib", "train", "--method", job.method, "--preset", a.preset,
               "--images", *map(str, t.images), "--masks", *map(str, t.masks),
               *(["--labels", *map(str, t.labels)] if t.labels else []), "--out", str(out),
               "--cache-dir", str(self.work / "slice_cache"), "--device", a.device,
               *[x for s in a.set for x in ("--set", s)], *(["--resume"] if resume else []),
               *(["--max-minutes", str(a.max_minutes)] if a.max_minutes is not None else [])]
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out.parent / f"{out.name}.key.json", json.dumps(
            {"method": job.method, "protocol": job.protocol, "contrast": job.contrast, "preset": a.preset,
             "set": a.set, "max_minutes": a.max_minutes, "files": rp._described(t.files(), self.data)},
            indent=1) + "\n")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        log = out.parent / f"{out.name}.log"
        start = time.perf_counter()
        with log.open("a") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
        if code or not (out / "config.json").exists():
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            self.failed.append(f"training {job.name} failed (exit {code}); log {log}")
            say(f"  training failed (exit {code}); last lines of {log}:\n    " + "\n    ".join(tail))
            return False
        say(f"  trained in {time.perf_counter() - start:.0f} s")
        return True

    def cut_short(self, out: Path) -> bool:
        """Whether a cached model was cut short by a smaller time budget than this run's (None: no budget);
        such a model is trained again, the cut one moved to NAME-KEY.cut."""
        summary = json.loads((out / "config.json").read_text()).get("training_summary") or {}
        key = out.parent / f"{out.name}.key.json"
        budget = json.loads(key.read_text()).get("max_minutes") if key.exists() else None
        if not summary.get("stopped_by_time_budget") or budget is None:
            return False
        return self.args.max_minutes is None or self.args.max_minutes > budget

    def evaluate(self, job: rp.Job, model_dir: Path, volumes: rp.Volumes) -> dict:
        key = rp.evaluation_key(sha256(model_dir / "config.json"), volumes, self.data, self.code)
        path = self.work / "evaluations" / f"{job.name}-{key}.json"
        if path.exists():
            self.step(f"cached: {job.method} ({job.protocol}, {job.contrast}) on {volumes.name}")
            return json.loads(path.read_text())
        self.step(f"evaluating {job.method} ({job.protocol}, {job.contrast}) on {volumes.name}")
        start = time.perf_counter()
        if volumes.labels is None:
            metrics = healthy_false_positives(model_dir, volumes, self.args.device, self.args.batch_size)
        else:
            from MAEAnomalyLib.evaluation.cohort import evaluate_cohort

            metrics = evaluate_cohort(model_dir, [str(p) for p in volumes.images], [str(p) for p in volumes.labels],
                                      [str(p) for p in volumes.masks], self.args.device, self.args.batch_size)
        seconds = time.perf_counter() - start
        result = {"method": job.method, "protocol": job.protocol, "contrast": job.contrast, "test_set": volumes.name,
                  "kind": "labelled" if volumes.labels else "healthy", "volumes": len(volumes.images),
                  "model": str(model_dir), "model_config_sha256": sha256(model_dir / "config.json"),
                  "seconds": round(seconds, 1), "seconds_per_volume": seconds / len(volumes.images),
                  "metrics": metrics}
        write_atomic(path, json.dumps(result, indent=1, default=float) + "\n")
        say(f"  {seconds:.0f} s, {seconds / len(volumes.images):.1f} s per volume")
        return result

    def protocol(self, protocol: str) -> dict:
        a, start, failed = self.args, time.perf_counter(), len(self.failed)
        jobs, skipped = rp.protocol_jobs(protocol, self.data, a.methods, a.contrasts, a.split, a.t1_model)
        for line in skipped:
            say(f"skipped: {line}")
        dirs = [self.model_dir(job) for job in jobs]
        to_train = [d for job, d in zip(jobs, dirs, strict=True)
                    if not job.shipped and (not (d / "config.json").exists() or self.cut_short(d))]
        evaluations = sum(len(job.tests) for job in jobs)
        self.done, self.total = 0, len(to_train) + evaluations
        say(f"protocol {protocol}: {len(jobs)} models ({len(to_train)} to train, {len(jobs) - len(to_train)} "
            f"shipped or cached), {evaluations} evaluations (cached ones are reused)")
        models, results = [], []
        for job, out in zip(jobs, dirs, strict=True):
            if out in to_train and (out / "config.json").exists():
                say(f"{out.name}: cut short by a smaller time budget; training it again (kept as {out.name}.cut)")
                shutil.rmtree(out.with_name(out.name + ".cut"), ignore_errors=True)
                out.rename(out.with_name(out.name + ".cut"))
            if out in to_train and not self.train(job, out):
                self.total -= len(job.tests)
                continue
            models.append(model_row(job, out))
            results += [self.evaluate(job, out, volumes) for volumes in job.tests]
        return {"protocol": protocol, "command": " ".join(["benchmarks/run.py", *sys.argv[1:]]),
                "data": str(self.data), "preset": a.preset, "set": a.set, "split": vars(a.split),
                "max_minutes": a.max_minutes, "wall_seconds": time.perf_counter() - start, "cpus": os.cpu_count(),
                "models": models, "results": results, "skipped": skipped + self.failed[failed:]}


def model_row(job: rp.Job, out: Path) -> dict:
    cfg = json.loads((out / "config.json").read_text())
    summary = cfg.get("training_summary") or {}
    # resolve_model decided what job.shipped named: a shipped model lies in models_dir(); anything else is a
    # folder given with --t1-model, which has no model card.
    shipped = bool(job.shipped) and out.parent.resolve() == models_dir().resolve()
    label = f"{'shipped' if shipped else 'given'} {job.shipped}" if job.shipped else out.name
    trained_on = job.train.name if job.train else "IXI T1 (see its model card)" if shipped \
        else "IXI T1 (its config.json)"
    return {"method": job.method, "contrast": job.contrast, "model": label, "path": str(out),
            "preset": cfg.get("preset"), "trained_on": trained_on,
            "train_slices": summary.get("train_slices"), "train_seconds": summary.get("train_seconds"),
            "stopped_by_time_budget": summary.get("stopped_by_time_budget"), "threshold": cfg.get("threshold")}


def healthy_false_positives(model_dir: Path, volumes: rp.Volumes, device_name: str, batch_size: int) -> dict:
    """Unseen healthy volumes: the share of their brain slices flagged (abnormal == 1) and the brain volume
    called in each one's anomaly segmentation (every voxel called is a false positive)."""
    import numpy as np

    from MAEAnomalyLib.core.runtime import resolve_device
    from MAEAnomalyLib.data.preprocessing import prepare
    from MAEAnomalyLib.evaluation.voxels import CohortVoxels
    from MAEAnomalyLib.methods.model import load_model
    from MAEAnomalyLib.scoring.scores import min_pixels, score_prepared

    model = load_model(model_dir)
    device = resolve_device(device_name)
    model.to(device)
    voxels = CohortVoxels(model.config)
    flagged, total, per_volume = 0, 0, []
    for image, mask in zip(volumes.images, volumes.masks, strict=True):
        prepared = prepare(image, model.config.preprocess, mask, min_pixels=min_pixels(model.config))
        result = score_prepared(model, prepared, device, batch_size)
        voxels.add_lesion(result, np.zeros(prepared.foreground_input.shape, dtype=bool))
        usable = result.table["skipped"] == 0
        calls = np.asarray(result.table["abnormal"])[usable].astype(bool)
        flagged, total = flagged + int(calls.sum()), total + int(usable.sum())
        per_volume.append({"volume": str(image), "slices": int(usable.sum()), "flagged": int(calls.sum())})
    return {"volumes": len(volumes.images), "slices": total, "flagged_slices": flagged,
            "false_positive_rate": flagged / max(1, total), "per_volume": per_volume,
            "volumes_with_a_flagged_slice": sum(v["flagged"] > 0 for v in per_volume),
            "target_fpr": model.config.calibration.target_fpr,
            "voxel_false_positive_ml": {row: m.false_positive_ml for row, m in voxels.evaluation.maps.items()
                                        if m.threshold is not None}}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    data = Path(args.data)
    if not any((data / d).is_dir() for d in ("brats2018", "brats2015", "ixi-t1")):
        say(f"skipped: no real data at {data} (pass DATA_DIR or set MAEANOMALY_DATA)")
        return 0
    runner, out = Runner(args), Path(args.out)
    start = time.perf_counter()
    for protocol in args.protocols:
        report = runner.protocol(protocol)
        write_atomic(out / f"{protocol}.json", json.dumps(report, indent=1, default=float) + "\n")
        table = rp.markdown(report)
        write_atomic(out / f"{protocol}.md", table)
        say(f"wrote {out / protocol}.json and .md\n\n{table}")
    say(f"done in {time.perf_counter() - start:.0f} s" + (f"; {len(runner.failed)} failed" if runner.failed else ""))
    return 1 if runner.failed else 0


if __name__ == "__main__":
    sys.exit(main())
