"""What a setting may be: named choices, ranges, rules between settings, a size cap, and the options
that were removed. Model directories are untrusted input, so ``check_config`` runs before anything is
built from a ``config.json``; training settings are checked the same way before any work starts."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any


class RemovedSetting(ValueError):
    """A model directory sets an option that was tried, not adopted, and removed (docs/experiments.md)."""


# Options tried and removed, each with the value that meant "off": model directories written before
# their removal still load when they hold that value.
REMOVED: dict[tuple[str, str], Any] = {
    ("classifier", "members"): 1,
    ("classifier", "drop_path_rate"): 0.0,
    ("train", "classifier_ema"): 0.0,
    ("train", "classifier_shift"): 0.0,
    ("train", "reconstruction_variants"): 1,
}

# Settings that take one of a few names.
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("pseudo_abnormal", "beta_mode"): ("box", "pixel"),
    ("classifier", "head"): ("bce", "softmax"),
    ("classifier", "global_pool"): ("token", "avg", "max", "avgmax"),
    ("train", "classifier_selection"): ("last", "best_validation"),
}
_NETWORK = {"patch_size": (1, 257), "embed_dim": (1, 8193), "depth": (1, 129), "num_heads": (1, 257),
            "mlp_ratio": (0.25, 16.0001)}
# Settings that take a number in [low, high).
RANGES: dict[tuple[str, str], tuple[float, float]] = {
    ("preprocess", "image_size"): (8, 4097),
    ("preprocess", "lower_percentile"): (0, 100),
    ("preprocess", "upper_percentile"): (0, 100.0001),
    ("preprocess", "min_train_foreground"): (0, 1.0001),
    ("preprocess", "crop_margin"): (0, 1_000_000),
    **{("mae", k): v for k, v in _NETWORK.items()},
    ("mae", "decoder_embed_dim"): (1, 8193),
    ("mae", "decoder_depth"): (1, 129),
    ("mae", "decoder_num_heads"): (1, 257),
    ("mae", "mask_ratio"): (0.01, 0.99),
    **{("classifier", k): v for k, v in _NETWORK.items()},
    ("classifier", "label_smoothing"): (0, 1),
    ("pseudo_abnormal", "min_boxes"): (0, 1001),
    ("pseudo_abnormal", "max_boxes"): (1, 1001),
    ("pseudo_abnormal", "min_side"): (1, 100_000),
    ("pseudo_abnormal", "max_side"): (1, 100_000),
    ("pseudo_abnormal", "reference_size"): (1, 100_000),
    ("pseudo_abnormal", "beta_low"): (0, 1.0001),
    ("pseudo_abnormal", "beta_high"): (0, 1.0001),
    ("train", "mae_epochs"): (0, 1_000_001),
    ("train", "classifier_epochs"): (1, 1_000_001),
    ("train", "batch_size"): (1, 1_000_001),
    ("train", "classifier_batch_size"): (1, 1_000_001),
    ("train", "mae_lr"): (1e-12, 10),
    ("train", "classifier_lr"): (1e-12, 10),
    ("train", "mae_weight_decay"): (0, 100),
    ("train", "classifier_weight_decay"): (0, 100),
    ("train", "warmup_fraction"): (0, 1),
    ("train", "reconstruction_passes"): (1, 101),
    ("train", "score_reconstructions"): (1, 101),
    ("train", "validation_fraction"): (0.001, 1),
    ("train", "target_fpr"): (1e-6, 1),
    ("train", "seed"): (0, 2**63),
    ("segmentation", "target_fpr"): (1e-6, 1),
    ("segmentation", "median_radius"): (0, 6),
    ("segmentation", "smoothing_mm"): (0, 50),
    ("segmentation", "spread_floor"): (0, 10),
    ("segmentation", "min_component_mm3"): (0, 1e9),
}


def approximate_parameters(blocks: Sequence[tuple[int, int]]) -> int:
    """Parameters of transformer stacks given as (depth, width): about 12 width² per block."""
    return sum(12 * depth * width**2 for depth, width in blocks)


# Parameters of the largest preset (``paper``: encoder, decoder, classifier) times this: anything larger
# is refused before it is built.
SIZE_CAP_FACTOR = 10
_PAPER_PARAMETERS = approximate_parameters([(12, 768), (8, 512), (12, 768)])


def setting_problem(section: str, name: str, value: Any) -> str | None:
    """Why ``value`` cannot be ``section.name`` ("choose …" or "must be …"), or None when it can."""
    choices = CHOICES.get((section, name))
    if choices is not None and value not in choices:
        return f"choose {', '.join(choices[:-1])} or {choices[-1]}"
    bounds = RANGES.get((section, name))
    if bounds is not None and not (isinstance(value, (int, float)) and math.isfinite(value)
                                   and bounds[0] <= float(value) < bounds[1]):
        return f"must be at least {bounds[0]} and below {bounds[1]}"
    return None


def _type_problem(section: str, field: dataclasses.Field, value: Any) -> str | None:
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(str(field.type))
    if kind is None:
        return None
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    wanted = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[kind]
    return None if ok else f"{section}.{field.name} is {value!r}; it must be {wanted}"


def _relation_problems(cfg: Any) -> list[str]:
    p, mae, clf, pa = cfg.preprocess, cfg.mae, cfg.classifier, cfg.pseudo_abnormal
    problems = []
    if p.lower_percentile >= p.upper_percentile:
        problems.append(f"preprocess.lower_percentile ({p.lower_percentile}) must be below upper_percentile "
                        f"({p.upper_percentile})")
    for name, net in (("mae", mae), ("classifier", clf)):
        if p.image_size % net.patch_size:
            problems.append(f"preprocess.image_size ({p.image_size}) must be a multiple of {name}.patch_size "
                            f"({net.patch_size})")
        if net.embed_dim % net.num_heads:
            problems.append(f"{name}.embed_dim ({net.embed_dim}) must be a multiple of {name}.num_heads "
                            f"({net.num_heads})")
    if mae.decoder_embed_dim % mae.decoder_num_heads:
        problems.append(f"mae.decoder_embed_dim ({mae.decoder_embed_dim}) must be a multiple of "
                        f"mae.decoder_num_heads ({mae.decoder_num_heads})")
    if pa.min_boxes > pa.max_boxes or pa.min_side > pa.max_side or pa.beta_low > pa.beta_high:
        problems.append("pseudo_abnormal minimums must not exceed their maximums (boxes, sides, beta)")
    problems += _threshold_problems(cfg)
    voxel = getattr(cfg, "voxel_threshold", None)
    if voxel is not None and not (isinstance(voxel, (int, float)) and math.isfinite(voxel) and voxel >= 0):
        problems.append(f"voxel_threshold is {voxel!r}; it must be a number of at least 0")
    parameters = approximate_parameters([(mae.depth, mae.embed_dim), (mae.decoder_depth, mae.decoder_embed_dim),
                                         (clf.depth, clf.embed_dim)])
    if parameters > SIZE_CAP_FACTOR * _PAPER_PARAMETERS:
        problems.append(f"the networks would have about {parameters / 1e9:.1f} billion parameters, more than "
                        f"{SIZE_CAP_FACTOR} times the largest preset")
    return problems


def _finite_list(values: Any, length: int) -> bool:
    return (isinstance(values, list) and len(values) == length
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values))


def _threshold_problems(cfg: Any) -> list[str]:
    """The threshold is a probability, or with a position reference a z-score; the reference itself
    must hold a finite centre and a positive spread per bin for each column (see scoring.position)."""
    ref, threshold = cfg.position_reference, cfg.threshold
    number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold)
    if ref is None:
        if threshold is not None and not (number and 0 <= threshold <= 1):
            return [f"threshold is {threshold!r}; it must be a probability from 0 to 1"]
        return []
    if threshold is not None and not number:
        return [f"threshold is {threshold!r}; it must be a finite number"]
    bins = ref.get("bins") if isinstance(ref, dict) else None
    columns = ref.get("columns") if isinstance(ref, dict) else None
    if not (isinstance(bins, int) and 1 <= bins <= 1000 and isinstance(columns, dict)
            and set(columns) == {"probability", "mae_l1"}):
        return ["position_reference must hold 'bins' and 'columns' for probability and mae_l1"]
    for name, entry in columns.items():
        if not (isinstance(entry, dict) and entry.get("transform") in ("logit", "log")
                and _finite_list(entry.get("centre"), bins) and _finite_list(entry.get("spread"), bins)
                and all(v > 0 for v in entry["spread"])):
            return [f"position_reference column {name} needs a transform, {bins} finite centres and {bins} "
                    "positive spreads"]
    return []


def check_config(cfg: Any) -> None:
    """Raises ValueError naming the first setting of the wrong type, outside its choices or range, or at
    odds with another setting."""
    for section_field in dataclasses.fields(cfg):
        section = getattr(cfg, section_field.name)
        if not dataclasses.is_dataclass(section):
            continue
        for field in dataclasses.fields(section):
            problem = _type_problem(section_field.name, field, getattr(section, field.name))
            if problem is not None:
                raise ValueError(problem)
    for section, name in (*CHOICES, *RANGES):
        value = getattr(getattr(cfg, section), name)
        problem = setting_problem(section, name, value)
        if problem is not None:
            subject = "it " if problem.startswith("must") else ""  # "choose …" needs none
            raise ValueError(f"{section}.{name} is {value!r}; {subject}{problem}")
    problems = _relation_problems(cfg)
    if problems:
        raise ValueError(problems[0])


def without_removed(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` less the removed options that hold their old default; RemovedSetting for any other value."""
    data = dict(data)
    for (section, name), off in REMOVED.items():
        values = data.get(section)
        if not isinstance(values, dict) or name not in values:
            continue
        if values[name] != off:
            raise RemovedSetting(f"{section}.{name} is {values[name]!r}, a setting this version no longer supports "
                                 f"(tried and removed; see docs/experiments.md); only {off!r} loads")
        data[section] = {k: v for k, v in values.items() if k != name}
    return data
