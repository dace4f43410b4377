"""MAEAnomaly: per-slice anomaly scores and a difference map for a volume, with a masked autoencoder and
a classifier (Georgescu, KES 2023). This file registers the module and checks the Slicer version; the GUI
is in SlicerMAEAnomalyLib/widget.py beside it, and the method itself in the pure-Python library MAEAnomalyLib.

This file must import on every Slicer (Python 3.9 in Slicer 5.8), so that an older Slicer shows one clear
message instead of an import failure: nothing above the version check may use newer syntax.
"""

from __future__ import annotations

import sys
from pathlib import Path

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget

# Keep in step with the top-level CMakeLists.txt, README.md and docs/slicer.md (a test checks them).
MINIMUM_SLICER = (5, 10)
MINIMUM_PYTHON = (3, 10)  # what the library's code needs; Slicer 5.10 ships Python 3.12
# Keep in step with EXTENSION_HOMEPAGE in the top-level CMakeLists.txt (a test checks it).
USER_GUIDE = "https://github.com/MAEAnomaly/SlicerMAEAnomaly/blob/main/docs/slicer.md"


def unsupportedReason(slicerVersion=None, pythonVersion=None) -> str:
    """Why MAEAnomaly cannot run here, in one line, or "" when it can. The versions default to the
    running Slicer's (None outside the application) and Python's."""
    if slicerVersion is None:
        app = getattr(slicer, "app", None)
        slicerVersion = (app.majorVersion, app.minorVersion) if app is not None else None
    pythonVersion = tuple(pythonVersion or sys.version_info[:3])
    tooOld = pythonVersion[:2] < MINIMUM_PYTHON or (slicerVersion is not None
                                                    and tuple(slicerVersion)[:2] < MINIMUM_SLICER)
    if not tooOld:
        return ""
    here = "Slicer " + ".".join(str(v) for v in slicerVersion) if slicerVersion is not None else "a Slicer"
    python = ".".join(str(v) for v in pythonVersion)
    return (f"MAEAnomaly needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or later; this is {here} with "
            f"Python {python}. Install the current Slicer from https://download.slicer.org")


UNSUPPORTED = unsupportedReason()


class MAEAnomaly(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MAE Anomaly"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []  # PyTorchUtils is needed only to install torch, and is looked up then
        self.parent.contributors = ["MAEAnomaly contributors"]
        self.parent.helpText = (
            (f"<b>{UNSUPPORTED}</b><br>" if UNSUPPORTED else "")
            + "Scores every axial slice of a volume for anomalies with a model trained on healthy scans, and "
            f"shows where the reconstruction differs from the image. See the <a href='{USER_GUIDE}'>user guide</a>.")
        self.parent.acknowledgementText = (
            "Method: M.-I. Georgescu, 'Masked Autoencoders for Unsupervised Anomaly Detection in Medical Images', "
            "KES 2023.")
        if not UNSUPPORTED:
            # The bundled IXI sample in the Sample Data module, once the application has started.
            from SlicerMAEAnomalyLib.sampledata import registerSampleDataOnStartup

            registerSampleDataOnStartup()


if UNSUPPORTED:

    class MAEAnomalyWidget(ScriptedLoadableModuleWidget):
        """On a Slicer that is too old, the panel says so and does nothing else."""

        def setup(self) -> None:
            ScriptedLoadableModuleWidget.setup(self)
            import qt

            label = qt.QLabel(UNSUPPORTED)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.layout.addStretch(1)

else:
    # Installed, MAEAnomalyLib sits beside this file; in a source checkout (MAEAnomaly/ added to Slicer's
    # module paths) it sits beside this file's folder instead.
    _CHECKOUT = Path(__file__).resolve().parent.parent
    if (_CHECKOUT / "MAEAnomalyLib" / "__init__.py").is_file() and str(_CHECKOUT) not in sys.path:
        sys.path.append(str(_CHECKOUT))

    from SlicerMAEAnomalyLib.logic import MAEAnomalyLogic  # noqa: F401
    from SlicerMAEAnomalyLib.parameters import MAEAnomalyParameterNode  # noqa: F401
    from SlicerMAEAnomalyLib.selftest import MAEAnomalyTest  # noqa: F401
    from SlicerMAEAnomalyLib.widget import MAEAnomalyWidget  # noqa: F401
