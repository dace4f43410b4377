"""Rewrites MAEANOMALYLIB_PYTHON_SCRIPTS in MAEAnomaly/CMakeLists.txt from the files under MAEAnomalyLib/
(run after adding or moving a library file; Testing/slicer_module/test_slicer_packaging.py checks the list)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    cmake = ROOT / "MAEAnomaly" / "CMakeLists.txt"
    files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "MAEAnomalyLib").rglob("*.py"))
    listing = "set(MAEANOMALYLIB_PYTHON_SCRIPTS\n" + "".join(f"  {f}\n" for f in files) + "  )"
    text = re.sub(r"set\(MAEANOMALYLIB_PYTHON_SCRIPTS\n.*?\n  \)", listing, cmake.read_text(), flags=re.S)
    cmake.write_text(text)


if __name__ == "__main__":
    main()
