"""The pip constraints that keep Slicer's own packages (numpy, scipy, SimpleITK, torch, ...) as they are while
MAEAnomaly's requirements are installed, and the requirement floors that let pip resolve without replacing
Slicer 5.10's numpy (issue 26, item 3)."""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from MAEAnomalyLib.core.errors import MAEAnomalyError
from SlicerMAEAnomalyLib import dependencies
from SlicerMAEAnomalyLib.dependencies import TORCH_REQUIREMENT, DependencyPlan, Installers, install_dependencies

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "MAEAnomaly" / "Resources" / "requirements.txt"
# Slicer 5.10.0's versions (SuperBuild/External_python-*.cmake at tag v5.10.0): numpy and scipy, and the
# small pure-Python packages that Slicer ships and that the requirements' dependencies also use.
SLICER_5_10 = {"numpy": "2.0.2", "scipy": "1.13.1", "pip": "25.1.1", "setuptools": "80.9.0", "packaging": "25.0",
               "pyparsing": "3.2.3", "python-dateutil": "2.9.0.post0", "six": "1.17.0",
               "typing-extensions": "4.14.0"}
# A Slicer-like environment: Slicer's core, torch from the PyTorch extension, an old monai from another
# extension; duplicates (the first is the one that imports), a distribution without a version, and one whose
# version pip cannot parse.
INSTALLED = [("numpy", "2.0.2"), ("SciPy", "1.13.1"), ("SimpleITK", "2.4.1"), ("vtk", "9.4.2"),
             ("packaging", "25.0"), ("typing_extensions", "4.14.0"), ("torch", "2.5.1+cu121"), ("monai", "1.4.0"),
             ("numpy", "1.26.4"), ("broken-metadata", None), (None, "1.0"), ("odd", "not a version")]
PINNED = ("monai==1.4.0\nnumpy==2.0.2\npackaging==25.0\nscipy==1.13.1\nsimpleitk==2.4.1\ntorch==2.5.1+cu121\n"
          "typing-extensions==4.14.0\nvtk==9.4.2\n")


def torch_floor() -> str:
    return next(s.version for s in TORCH_REQUIREMENT.specifier if s.operator == ">=")


def test_every_installed_distribution_is_pinned_at_its_version() -> None:
    assert dependencies.installed_constraints(INSTALLED) == PINNED


def test_torch_stays_pinned_whatever_is_installed() -> None:
    text = dependencies.installed_constraints(INSTALLED, [Requirement("timm>=1.0"), Requirement("deepbet>=1.0.2")])
    assert "torch==2.5.1+cu121\n" in text.splitlines(keepends=True)
    with pytest.raises(MAEAnomalyError, match=r"torch>=2\.6.*torch 2\.5\.1\+cu121"):
        dependencies.installed_constraints(INSTALLED, [Requirement("torch>=2.6")])


def test_an_old_required_package_is_left_free_to_upgrade_and_the_rest_stays_pinned() -> None:
    """monai 1.4.0 (from another extension) fails monai>=1.5: pinning it would make the resolution impossible,
    and upgrading it is what is asked for. A requirement that is met, or not installed, changes nothing."""
    requirements = [Requirement("monai>=1.5"), Requirement("numpy>=1.24"), Requirement("timm>=1.0"),
                    Requirement("vtk>=99; python_version < '3'")]  # not for this Python: vtk stays pinned
    text = dependencies.installed_constraints(INSTALLED, requirements)
    assert text == PINNED.replace("monai==1.4.0\n", "")


@pytest.mark.parametrize("name", ["scipy", "SciPy", "SimpleITK", "numpy", "vtk", "typing_extensions"])
def test_slicer_s_own_packages_are_never_replaced(name: str) -> None:
    with pytest.raises(MAEAnomalyError) as info:
        dependencies.installed_constraints(INSTALLED, [Requirement(f"{name}>=100")])
    message = str(info.value)
    assert "\n" not in message and f"{name}>=100" in message and "never replaced" in message


def test_a_refused_requirement_is_refused_before_asking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dependencies, "installed_distributions", lambda: INSTALLED)
    prompts: list[str] = []
    pip_calls: list[list[str]] = []
    plan = DependencyPlan(torch_version="2.5.1+cu121", missing=[Requirement("scipy>=1.14")])
    with pytest.raises(MAEAnomalyError, match=r"scipy>=1\.14.*scipy 1\.13\.1"):
        install_dependencies(plan, lambda text: prompts.append(text) or True, Installers(pip=pip_calls.append))
    assert not prompts and not pip_calls


def test_the_installer_pins_this_python_s_packages(tmp_path: Path) -> None:
    """What pip gets in Slicer: the missing requirements and a constraints file with every installed
    distribution, numpy and torch included (before issue 26 it pinned torch only)."""
    calls: list[tuple[list[str], str]] = []

    def pip(args: list[str]) -> None:
        calls.append((args, Path(args[args.index("-c") + 1]).read_text(encoding="utf-8")))

    plan = DependencyPlan(torch_version=importlib.metadata.version("torch"),
                          missing=[Requirement("maeanomaly-no-such-package>=1")])
    install_dependencies(plan, lambda text: True, Installers(pip=pip), constraints_dir=tmp_path)
    (args, constraints), = calls
    assert args[0] == "maeanomaly-no-such-package>=1"
    lines = constraints.splitlines()
    for name in ("numpy", "scipy", "SimpleITK", "torch", "packaging"):
        assert f"{canonicalize_name(name)}=={importlib.metadata.version(name)}" in lines
    assert all(importlib.metadata.version(name) == version for name, version in (ln.split("==") for ln in lines))
    assert not list(tmp_path.iterdir()), "the constraints file is temporary"


def test_no_allowed_resolution_needs_numpy_1() -> None:
    """monai 1.4 requires numpy<2 (it would replace Slicer 5.10's numpy 2.0.2); 1.5 is the first that allows
    numpy 2, and it needs torch>=2.4.1, so the library's torch floor is that."""
    monai = next(r for r in dependencies.load_requirements(REQUIREMENTS) if r.name == "monai")
    assert not monai.specifier.contains("1.4.0") and monai.specifier.contains("1.5.0")
    assert not TORCH_REQUIREMENT.specifier.contains("2.4.0") and TORCH_REQUIREMENT.specifier.contains("2.4.1")


# --- slow tier: pip's real resolution against PyPI ---------------------------------------------------------

# What pip prints when it cannot reach the index (urllib3's and pip's own wording).
NETWORK_ERRORS = ("NewConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "Max retries exceeded",
                  "Could not fetch URL", "Temporary failure in name resolution", "Name or service not known",
                  "Network is unreachable", "ProxyError", "Connection refused")


def python_3_12() -> str | None:
    """A Python 3.12 (Slicer 5.10's) to make the venv with: MAEANOMALY_PYTHON312, this one, or one on PATH."""
    candidates = [os.environ.get("MAEANOMALY_PYTHON312"), sys.executable, shutil.which("python3.12"),
                  *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))]
    for candidate in filter(None, candidates):
        try:
            done = subprocess.run([candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 12)"],
                                  capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return candidate
    return None


def run_pip(python: Path, *args: str) -> subprocess.CompletedProcess:
    """pip in the venv; skips the test when pip's failure shows that the package index is unreachable."""
    done = subprocess.run([str(python), "-m", "pip", *args, "--timeout", "30", "--retries", "2",
                           "--disable-pip-version-check"], capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    network = [line.strip() for line in output.splitlines() if any(marker in line for marker in NETWORK_ERRORS)]
    if done.returncode != 0 and network:
        pytest.skip(f"the package index is unreachable: {network[-1][:200]}")
    assert done.returncode == 0, f"pip {' '.join(args[:2])} failed:\n{output[-4000:]}"
    return done


@pytest.mark.slow
def test_pip_keeps_slicer_5_10_s_numpy_and_scipy(tmp_path: Path) -> None:
    """In a Python 3.12 holding Slicer 5.10's numpy, scipy (and packaging, ...), the constraints that the
    installer writes, with torch as if installed at the library's floor (the oldest torch the PyTorch extension
    may leave), let pip resolve requirements.txt without replacing any of them (``--dry-run --report``: only
    metadata is fetched, no torch wheel). Before issue 26, with torch alone pinned (2.4.0), pip chose monai 1.4.0
    and numpy 1.26.4."""
    python312 = python_3_12()
    if python312 is None:
        pytest.skip("no Python 3.12 found (set MAEANOMALY_PYTHON312)")
    start = time.monotonic()
    subprocess.run([python312, "-m", "venv", str(tmp_path / "venv")], check=True, capture_output=True, timeout=300)
    python = tmp_path / "venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    run_pip(python, "install", "--quiet", *(f"{name}=={version}" for name, version in SLICER_5_10.items()))
    # The constraints, written by our module running in that Python from its installed distributions.
    script = ("import sys; from SlicerMAEAnomalyLib import dependencies as d; "
              "sys.stdout.write(d.installed_constraints(d.installed_distributions() + [('torch', sys.argv[2])], "
              "d.load_requirements(sys.argv[1])))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "MAEAnomaly")])}
    constraints = subprocess.run([str(python), "-c", script, str(REQUIREMENTS), torch_floor()], env=env, check=True,
                                 capture_output=True, text=True, timeout=120).stdout
    for name, version in SLICER_5_10.items():
        assert f"{name}=={version}" in constraints.splitlines()
    (tmp_path / "constraints.txt").write_text(constraints, encoding="utf-8")
    report = tmp_path / "report.json"
    run_pip(python, "install", "--dry-run", "--quiet", "--report", str(report), "-c", str(tmp_path / "constraints.txt"),
            "-r", str(REQUIREMENTS), str(TORCH_REQUIREMENT))
    elapsed = time.monotonic() - start
    print(f"venv, Slicer 5.10's packages and pip's dry run: {elapsed:.0f} s")
    chosen = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
              for item in json.loads(report.read_text(encoding="utf-8"))["install"]}
    replaced = {name: chosen[name] for name in SLICER_5_10 if name in chosen}
    assert not replaced, f"pip would replace Slicer 5.10's {replaced}"
    assert chosen["torch"] == torch_floor() and Requirement("monai>=1.5").specifier.contains(chosen["monai"])
    assert elapsed < 240, f"{elapsed:.0f} s: pip downloaded more than metadata"
