"""Installing MAEAnomaly's Python dependencies inside Slicer, always after asking the user.

torch comes from the PyTorch extension's installer (it picks the CUDA build that fits the driver), with the
version the library needs. The other packages come from ``requirements.txt`` through pip with a constraints
file that pins every distribution already installed in Slicer's Python at its installed version (numpy,
scipy, SimpleITK, torch, ...), so that installing them (monai, timm) can never replace a package that Slicer,
the PyTorch extension or another extension installed: without the pins pip may downgrade Slicer's numpy for
an old monai, or fetch a PyPI torch (CPU-only on Windows). Nothing here imports Qt; the caller passes a
``confirm`` function.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

try:
    from packaging.requirements import InvalidRequirement, Requirement
except ImportError:  # every Slicer ships pip, which vendors packaging
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
try:
    from packaging.version import InvalidVersion, Version
except ImportError:
    from pip._vendor.packaging.version import InvalidVersion, Version

from MAEAnomalyLib.core.errors import MAEAnomalyError

ConfirmFn = Callable[[str], bool]

# What the library needs (pyproject.toml's torch requirement; a test keeps the two equal). 2.4.1 is the floor of
# monai 1.5, the first monai that allows numpy 2 (monai 1.4 needs numpy<2, which would replace Slicer's numpy).
TORCH_REQUIREMENT = Requirement("torch>=2.4.1")
# Distributions that are never replaced, even when a requirement asks for a newer version: the Python packages
# Slicer 5.10 itself installs (SuperBuild/External_python-*.cmake at v5.10.0, SimpleITK and VTK), which Slicer's
# own modules and every extension rely on, and torch, which only the PyTorch extension's installer changes.
PROTECTED = frozenset({
    "numpy", "scipy", "simpleitk", "vtk", "pip", "setuptools", "wheel", "packaging", "pyparsing", "pydicom",
    "pillow", "six", "retrying", "dicomweb-client", "chardet", "couchdb", "gitdb", "smmap", "gitpython",
    "cryptography", "pyjwt", "wrapt", "deprecated", "pycparser", "cffi", "pynacl", "python-dateutil",
    "typing-extensions", "pygithub", "certifi", "idna", "charset-normalizer", "urllib3", "requests", "torch"})

TORCH_PROMPT = (
    "MAEAnomaly needs PyTorch, which is not installed in Slicer's Python environment.\n\n"
    "Install it now with the PyTorch extension's installer? It chooses the build that fits your GPU "
    "driver (or a CPU build) and downloads up to a few GB, which can take several minutes.")
TORCH_UPDATE_PROMPT = (
    "MAEAnomaly needs PyTorch {required}, but Slicer has PyTorch {installed} (perhaps installed by another "
    "extension).\n\nUpdate it now with the PyTorch extension's installer? Other extensions that use PyTorch "
    "will use the new version too. Downloads up to a few GB.")
TORCH_DECLINED = ("PyTorch is not installed and its installation was declined; MAEAnomaly cannot score "
                  "without it (install it from the PyTorch Utils module, then press Apply again)")
TORCH_OLD_DECLINED = ("PyTorch {installed} is too old for MAEAnomaly (it needs {required}) and the update was "
                      "declined; update it in the PyTorch Utils module, then press Apply again")
TORCH_EXTENSION_MISSING = ("PyTorch is not installed and the PyTorch extension is missing; install the "
                           "'PyTorch' extension from the Extension Manager and restart Slicer")
TORCH_RESTART = "PyTorch was updated to {installed}; restart Slicer, then press Apply again"
PACKAGES_DECLINED = "required Python packages are missing and their installation was declined: {missing}"
PACKAGE_PROTECTED = ("MAEAnomaly needs {requirement}, but Slicer's Python has {name} {installed}, which is part "
                     "of Slicer (or of the PyTorch extension) and is never replaced; use a newer Slicer")
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


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, read from its metadata without importing it (importing
    torch takes seconds and locks its files on Windows)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_satisfied(requirement: Requirement) -> bool:
    """True when the installed distribution's version meets the requirement (without importing it)."""
    if requirement.marker is not None and not requirement.marker.evaluate():
        return True
    version = installed_version(requirement.name)
    return version is not None and requirement.specifier.contains(version, prereleases=True)


def torch_installed() -> bool:
    """Whether a torch that meets the library's requirement is installed."""
    version = installed_version("torch")
    return version is not None and TORCH_REQUIREMENT.specifier.contains(version, prereleases=True)


@dataclass
class DependencyPlan:
    """What is missing: a suitable torch (installed through the PyTorch extension) and other requirements."""

    torch_version: str | None  # the installed torch, None when there is none
    missing: list[Requirement] = field(default_factory=list)

    @property
    def torch_missing(self) -> bool:
        return self.torch_version is None

    @property
    def torch_outdated(self) -> bool:
        return (self.torch_version is not None
                and not TORCH_REQUIREMENT.specifier.contains(self.torch_version, prereleases=True))

    @property
    def complete(self) -> bool:
        return not self.torch_missing and not self.torch_outdated and not self.missing


_DETECT = "detect"


def plan_dependencies(requirements_path: str | Path, torch_version: str | None = _DETECT) -> DependencyPlan:
    """Compares the installed packages with ``requirements_path`` and torch with ``TORCH_REQUIREMENT``;
    ``torch_version`` (None: no torch) stands for the installed torch when given."""
    requirements = [r for r in load_requirements(requirements_path) if r.name.lower() != "torch"]
    version = installed_version("torch") if torch_version == _DETECT else torch_version
    return DependencyPlan(version, [r for r in requirements if not is_satisfied(r)])


@dataclass
class Installers:
    """What actually installs: PyTorch Utils' ``installTorch`` and ``slicer.util.pip_install`` in Slicer."""

    torch: Callable[[str], object] | None = None  # (version requirement) -> the torch module, or None
    pip: Callable[[list[str]], None] | None = None  # (pip install arguments)


def install_dependencies(plan: DependencyPlan, confirm: ConfirmFn, installers: Installers | None = None,
                         constraints_dir: str | Path | None = None) -> None:
    """Offers to install what ``plan`` lists; raises ``MAEAnomalyError`` with a one-line reason when the user
    declines, an installation fails, or Slicer must restart first. Nothing is installed without a
    ``confirm`` that returns True."""
    installers = installers or Installers()
    required = str(TORCH_REQUIREMENT.specifier)
    if plan.torch_missing or plan.torch_outdated:
        if plan.torch_missing and not confirm(TORCH_PROMPT):
            raise MAEAnomalyError(TORCH_DECLINED)
        if plan.torch_outdated and not confirm(TORCH_UPDATE_PROMPT.format(required=required,
                                                                          installed=plan.torch_version)):
            raise MAEAnomalyError(TORCH_OLD_DECLINED.format(required=required, installed=plan.torch_version))
        old_loaded = plan.torch_outdated and "torch" in sys.modules
        _install_torch(installers.torch or _pytorch_utils_installer(), required)
        if old_loaded:  # the old version stays loaded in this process until Slicer restarts
            raise MAEAnomalyError(TORCH_RESTART.format(installed=installed_version("torch")))
    if plan.missing:
        _install_requirements(plan.missing, confirm, installers.pip, constraints_dir)


def canonical_name(name: str) -> str:
    """A distribution name as pip compares it (PEP 503: case and runs of ``-_.`` do not matter)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions() -> list[tuple[str | None, str | None]]:
    """(name, version) of every distribution in this Python, in ``sys.path`` order (read from metadata)."""
    return [(dist.metadata["Name"], dist.version) for dist in importlib.metadata.distributions()]


def installed_constraints(distributions: Iterable[tuple[str | None, str | None]],
                          requirements: Iterable[Requirement] = ()) -> str:
    """A pip constraints file that keeps every installed distribution at its installed version (``name==version``,
    sorted), so that installing ``requirements`` changes nothing that is already there.

    Distributions without a name or a valid version are skipped; of duplicates the first counts (the one that
    ``import`` finds). The one exception is a requirement whose installed version fails it (an old monai from
    another extension): pinning it would make pip's resolution impossible, and upgrading it is what we ask for,
    so it is left unpinned. Slicer's own packages and torch (``PROTECTED``) are never unpinned: a requirement
    they fail raises ``MAEAnomalyError`` instead. A requirement that is not installed needs no pin.
    """
    applicable = [r for r in requirements if r.marker is None or r.marker.evaluate()]
    versions: dict[str, str] = {}
    seen: set[str] = set()
    for name, version in distributions:
        key = canonical_name(name) if name else ""
        if not key or key in seen:
            continue
        seen.add(key)
        if version and _valid_version(version):  # pip rejects a constraint whose version it cannot parse
            versions[key] = version
    for requirement in applicable:
        key = canonical_name(requirement.name)
        version = versions.get(key)
        if version is None or requirement.specifier.contains(version, prereleases=True):
            continue
        if key in PROTECTED:
            raise MAEAnomalyError(PACKAGE_PROTECTED.format(requirement=requirement, name=requirement.name,
                                                           installed=version))
        del versions[key]  # the upgrade we ask pip for
    return "".join(f"{name}=={version}\n" for name, version in sorted(versions.items()))


def _valid_version(version: str) -> bool:
    try:
        Version(version)
    except InvalidVersion:
        return False
    return True


def _pytorch_utils_installer() -> Callable[[str], object]:
    try:
        import PyTorchUtils  # the PyTorch extension's module, present when the extension is installed
    except ImportError:
        raise MAEAnomalyError(TORCH_EXTENSION_MISSING) from None
    # The user already agreed, so the installer does not ask a second time.
    return lambda requirement: PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=False, torchVersionRequirement=requirement)


def _install_torch(install: Callable[[str], object], requirement: str) -> None:
    try:
        torch = install(requirement)
    except MAEAnomalyError:
        raise
    except Exception as exc:  # the installer runs pip and light-the-torch, which raise many kinds of error
        raise MAEAnomalyError(PACKAGES_FAILED.format(reason=f"PyTorch: {_one_line(exc)}")) from None
    if torch is None:
        raise MAEAnomalyError(TORCH_DECLINED)


def _install_requirements(missing: list[Requirement], confirm: ConfirmFn,
                          pip: Callable[[list[str]], None] | None, constraints_dir: str | Path | None) -> None:
    names = ", ".join(str(r) for r in missing)
    # Before asking: a requirement that only replacing one of Slicer's own packages could meet is refused here.
    constraints_text = installed_constraints(installed_distributions(), missing)
    if not confirm(f"MAEAnomaly needs these Python packages, which are missing:\n\n{names}\n\n"
                   "Install them now with pip? This changes Slicer's Python environment; the packages already "
                   "installed (PyTorch, numpy and the rest of Slicer's) are kept as they are."):
        raise MAEAnomalyError(PACKAGES_DECLINED.format(missing=names))
    if pip is None:
        import slicer.util

        pip = slicer.util.pip_install
    with tempfile.TemporaryDirectory(dir=constraints_dir) as folder:
        constraints = Path(folder) / "constraints.txt"
        constraints.write_text(constraints_text, encoding="utf-8")
        try:
            pip([*(str(r) for r in missing), "-c", str(constraints)])
        except Exception as exc:
            raise MAEAnomalyError(PACKAGES_FAILED.format(reason=_one_line(exc))) from None
    logging.info("MAEAnomaly installed %s", names)


def _one_line(exc: BaseException) -> str:
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return text[:200]
