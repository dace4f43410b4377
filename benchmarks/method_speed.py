"""Seconds to score one 240×240×155 volume, for any registered method and preset, with randomly initialised
weights (speed does not depend on training), and what a setting costs (e.g. MAEDiff's test stride).

    PYTHONPATH=. "$(bash scripts/env.sh)/bin/python" benchmarks/method_speed.py --methods maediff,pddpm \
        --preset small [--vary maediff.stride=8,16,32] [--device cpu]

Each row scores the generated skull-stripped head of ``speed.py`` (``score_image``: preparation, every
network pass, the map on the input grid) once to warm up and then ``--repeats`` times; the table gives the
fastest. ``passes/slice`` is how many images the networks took per scored slice (counted by forward hooks on them).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import generated_volume, load_average, machine, preset, print_table

from MAEAnomalyLib.methods.model import AnomalyModel
from MAEAnomalyLib.methods.model_config import apply_overrides
from MAEAnomalyLib.scoring.scores import score_image


def variants(methods: list[str], vary: str | None) -> list[tuple[str, list[str]]]:
    """(method, settings) for each row: every method as its preset has it, and each value of ``vary`` for
    the methods whose section it names."""
    if not vary:
        return [(m, []) for m in methods]
    key, _, values = vary.partition("=")
    section = key.split(".")[0]
    rows = []
    for m in methods:
        names = [key.replace(section, m, 1)] if section in (m, "METHOD") else []
        rows += [(m, [f"{names[0]}={v}"]) for v in values.split(",")] if names else [(m, [])]
    return rows


def count_images(model: AnomalyModel) -> list[int]:
    """A one-item list that counts the images every network of ``model`` takes from now on."""
    seen = [0]

    def hook(module: torch.nn.Module, inputs: tuple, output: object) -> None:
        seen[0] += len(inputs[0])

    for net in model.networks.values():
        # A network run only through another method (RA's pseudo_healthy) is counted at its first part.
        called = type(net).forward is not torch.nn.Module.forward
        (net if called else next(net.children())).register_forward_hook(hook)
    return seen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="maediff,pddpm")
    p.add_argument("--preset", default="small")
    p.add_argument("--vary", help="SECTION.FIELD=V1,V2,... (METHOD.FIELD for every method listed)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    device = torch.device(args.device)
    image = generated_volume()
    print(f"{machine(device)}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load before: {load_average()}")
    rows = []
    for method, settings in variants(args.methods.split(","), args.vary):
        cfg = preset(args.preset, method)
        apply_overrides(cfg, settings)
        torch.manual_seed(0)
        model = AnomalyModel.from_config(cfg)
        seen = count_images(model)
        score_image(model, image, device=device)  # warm-up
        passes, seen[0] = seen[0], 0
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = score_image(model, image, device=device)
            times.append(time.perf_counter() - start)
        scored = int((result.table["skipped"] == 0).sum())
        rows.append({"method": method, "preset": args.preset, "settings": " ".join(settings) or "preset",
                     "passes/slice": passes / max(1, scored),
                     "slices scored": scored, "s/volume": min(times)})
    print_table(rows)
    print(f"load after: {load_average()}")


if __name__ == "__main__":
    main()
