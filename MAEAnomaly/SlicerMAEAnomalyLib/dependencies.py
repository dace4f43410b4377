"""Installing MAEAnomaly's Python dependencies inside Slicer, always after asking the user.

torch comes from the PyTorch extension's installer (it picks the CUDA build that fits the driver); the
other packages come from ``requirements.txt`` through ``slicer.packaging.pip_ensure`` (recent Slicer
versions) or else ``slicer.util.pip_install``. Nothing here imports Qt; the caller passes a ``confirm`` function.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

try:
    from packaging.requirements import InvalidRequirement, Requirement
except ImportError:  # every Slicer ships pip, which vendors packaging
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement

from MAEAnomalyLib.errors import MAEAnomalyError

ConfirmFn = Callable[[str], bool]

TORCH_PROMPT = (
    "MAEAnomaly needs PyTorch, which is not installed in Slicer's Python environment.\n\n"
    "Install it now with the PyTorch extension's installer? It chooses the build that fits your GPU "
    "driver (or a CPU build) and downloads up to a few GB, which can take several minutes.")
TORCH_DECLINED = ("PyTorch is not installed and its installation was declined; MAEAnomaly cannot score "
                  "without it (install it from the PyTorch Utils module, then press Apply again)")
TORCH_EXTENSION_MISSING = ("PyTorch is not installed and the PyTorch extension is missing; install the "
                           "'PyTorch' extension from the Extension Manager and restart Slicer")
PACKAGES_DECLINED = "required Python packages are missing and their installation was declined: {missing}"
PACKAGES_FAILED = ("installing Python packages failed ({reason}); check the network connection and the "
                   "Python console for pip's log, then press Apply again")


def load_requirements(path: str | Path) -> list[Requirement]:
    """Requirements from a requirements.txt (comments, blank lines and pip options are skipped)."""
    requirements = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            requirements.append(Requirement(line))
        except InvalidRequirement as exc:
            raise MAEAnomalyError(f"invalid requirement '{line}' ({exc})", path) from None
    return requirements


def is_satisfied(requirement: Requirement) -> bool:
    """True when the installed distribution's version meets the requirement (without importing it)."""
    if requirement.marker is not None and not requirement.marker.evaluate():
        return True
    try:
        version = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return requirement.specifier.contains(version, prereleases=True)


def torch_installed() -> bool:
    """Checked without importing torch, which takes seconds and locks its files on Windows."""
    return importlib.util.find_spec("torch") is not None


@dataclass
class DependencyPlan:
    """What is missing: torch (installed through the PyTorch extension) and other requirements."""

    torch_missing: bool
    missing: list[Requirement]

    @property
    def complete(self) -> bool:
        return not self.torch_missing and not self.missing


def plan_dependencies(requirements_path: str | Path) -> DependencyPlan:
    """Compares the installed packages with ``requirements_path``."""
    requirements = [r for r in load_requirements(requirements_path) if r.name.lower() != "torch"]
    return DependencyPlan(not torch_installed(), [r for r in requirements if not is_satisfied(r)])


def install_dependencies(plan: DependencyPlan, confirm: ConfirmFn) -> None:
    """Offers to install what ``plan`` lists; raises ``MAEAnomalyError`` with a one-line reason when the user
    declines or an installation fails. Nothing is installed without a ``confirm`` that returns True."""
    if plan.torch_missing:
        if not confirm(TORCH_PROMPT):
            raise MAEAnomalyError(TORCH_DECLINED)
        _install_torch()
    if plan.missing:
        _install_requirements(plan.missing, confirm)


def _install_torch() -> None:
    try:
        import PyTorchUtils  # the PyTorch extension's module, present when the extension is installed
    except ImportError:
        raise MAEAnomalyError(TORCH_EXTENSION_MISSING) from None
    try:
        # The user already agreed above, so the installer does not ask a second time.
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
    except Exception as exc:  # the installer runs pip and light-the-torch, which raise many kinds of error
        raise MAEAnomalyError(PACKAGES_FAILED.format(reason=f"PyTorch: {_one_line(exc)}")) from None
    if torch is None:
        raise MAEAnomalyError(TORCH_DECLINED)


def _install_requirements(missing: list[Requirement], confirm: ConfirmFn) -> None:
    names = ", ".join(str(r) for r in missing)
    try:
        from slicer import packaging as slicer_packaging  # recent Slicer versions only
    except ImportError:
        slicer_packaging = None
    if slicer_packaging is not None and hasattr(slicer_packaging, "pip_ensure"):
        try:
            # pip_ensure shows its own confirmation listing the packages, then a progress dialog.
            slicer_packaging.pip_ensure(missing, requester="MAEAnomaly")
        except RuntimeError as exc:
            if "declined" in str(exc).lower():
                raise MAEAnomalyError(PACKAGES_DECLINED.format(missing=names)) from None
            raise MAEAnomalyError(PACKAGES_FAILED.format(reason=_one_line(exc))) from None
        except Exception as exc:  # subprocess.CalledProcessError and friends
            raise MAEAnomalyError(PACKAGES_FAILED.format(reason=_one_line(exc))) from None
        return
    if not confirm(f"MAEAnomaly needs these Python packages, which are missing:\n\n{names}\n\n"
                   "Install them now with pip? This changes Slicer's Python environment."):
        raise MAEAnomalyError(PACKAGES_DECLINED.format(missing=names))
    import slicer.util

    try:
        slicer.util.pip_install([str(r) for r in missing])
    except Exception as exc:
        raise MAEAnomalyError(PACKAGES_FAILED.format(reason=_one_line(exc))) from None
    logging.info("MAEAnomaly installed %s", names)


def _one_line(exc: BaseException) -> str:
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return text[:200]
