"""The library's packages import one another in one direction only, down the pipeline: core, data, engine,
methods, calibration, scoring, evaluation, training, cli. No cycle between packages, and none back up."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[2] / "MAEAnomalyLib"
ORDER = ("core", "data", "engine", "methods", "calibration", "scoring", "evaluation", "training", "cli")


def package_imports() -> dict[str, set[tuple[str, str]]]:
    """Package -> {(imported package, importing file)} over every import, lazy ones included."""
    found: dict[str, set[tuple[str, str]]] = {}
    for path in LIBRARY.rglob("*.py"):
        parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
        here = list(parts[:-1])  # the package a relative import starts from
        package = parts[1] if len(parts) > 2 else None
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = here[:len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("MAEAnomalyLib."):
                base = node.module.split(".")
            else:
                continue
            if package and len(base) > 1 and base[1] != package:
                found.setdefault(package, set()).add((base[1], str(path.relative_to(LIBRARY))))
    return found


def test_every_package_is_placed_in_the_order() -> None:
    packages = {p.name for p in LIBRARY.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(ORDER)


def test_packages_import_only_packages_before_them() -> None:
    wrong = sorted((importer, imported, file) for importer, edges in package_imports().items()
                   for imported, file in edges if ORDER.index(imported) >= ORDER.index(importer))
    assert not wrong, wrong


def test_no_loose_modules_beside_the_entry_points() -> None:
    loose = {p.name for p in LIBRARY.glob("*.py")}
    assert loose == {"__init__.py", "__main__.py"}
