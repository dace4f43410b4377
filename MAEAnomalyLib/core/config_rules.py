"""The options that were tried, not adopted and removed: a model directory written before their removal
still loads when it holds the value that meant "off" (the rules of the settings that remain are in
their sections, ``core.config``)."""

from __future__ import annotations

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
    ("train", "appearance"): 0.0,
}

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
