"""Slicer 5.10.0's own Python layer (``../shared/slicer-5.10``) over the slicer-core wheel, for tests.

slicer-core gives a real MRML scene and ``slicer.util``, but not ``slicer.parameterNodeWrapper``,
``slicer.ScriptedLoadableModule`` or ``slicer.i18n``: those are loaded from Slicer's own sources, so that the
module's parameter node, logic and widget run through Slicer's code rather than our idea of it. Only what
needs a GUI is stood in for: ``qt`` and ``ctk`` (and Slicer's Qt widget classes such as
``slicer.qMRMLNodeComboBox``) become modules of recording widgets, and ``slicer.app`` an application object
that translates nothing and connects nothing. Everything here skips cleanly when slicer-core or the folder
is absent.
"""

from __future__ import annotations

import inspect
import os
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# MAEANOMALY_SLICER_PYTHON may point elsewhere; by default shared/ sits beside the checkout.
SLICER_PYTHON = Path(os.environ.get("MAEANOMALY_SLICER_PYTHON")
                     or ROOT.parent / "shared" / "slicer-5.10" / "Base" / "Python" / "slicer")
# Slicer's Qt widget classes that Slicer's GUI connectors and our .ui file name (slicer-core has none).
SLICER_QT_CLASSES = ("qMRMLNodeComboBox", "qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget",
                     "qMRMLWidget", "qMRMLTableView", "qMRMLPlotWidget", "qMRMLSegmentsTableView",
                     "qSlicerWidget")


class Signal:
    """A Qt signal: ``connect``/``disconnect``/``emit`` on a list of slots."""

    def __init__(self) -> None:
        self.slots: list = []

    def connect(self, slot) -> None:
        self.slots.append(slot)

    def disconnect(self, slot=None) -> None:
        self.slots = [s for s in self.slots if slot is not None and s != slot]

    def emit(self, *args) -> None:
        """Calls each slot with as many of the arguments as it takes, as PythonQt does."""
        for slot in list(self.slots):
            try:
                parameters = inspect.signature(slot).parameters.values()
            except (TypeError, ValueError):
                slot(*args)
                continue
            if any(p.kind is p.VAR_POSITIONAL for p in parameters):
                slot(*args)
            else:
                slot(*args[:sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)])


class QtMeta(type):
    """Class-level enum values (``qt.QMessageBox.Ok``, ``qt.QFile.ReadOnly``) are their own names."""

    def __getattr__(cls, name: str) -> str:
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"


class QtStandIn(metaclass=QtMeta):
    """Any Qt object: accepts any constructor arguments, keeps assigned properties, and records every call
    of a method it does not define (``calls`` holds ``(name, args)``). Such a method returns the same
    ``QtValue`` each time (so that ``view.sortFilterProxyModel().hiddenNodeIDs = ...`` works); signals
    (``valueChanged``, ...) are real attributes."""

    def __init__(self, *args, **kwargs) -> None:
        self.__dict__["calls"] = []
        self.__dict__["_properties"] = {}
        self.__dict__["_signals"] = {}
        self.__dict__["results"] = {}

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name.endswith("Changed") or name in ("clicked", "timeout", "triggered", "toggled"):
            return self._signals.setdefault(name, Signal())

        def method(*args, **kwargs):
            self.calls.append((name, args))
            if name not in self.results:
                self.results[name] = QtValue()
            return self.results[name]

        return method

    def connect(self, signature: str, slot) -> None:
        """PythonQt's ``widget.connect("valueChanged(double)", slot)``."""
        self._signals.setdefault(signature.split("(")[0], Signal()).connect(slot)

    def emit(self, signature: str, *args) -> None:
        """What Qt does when the user acts: the slots connected to ``signature`` run."""
        self._signals.setdefault(signature.split("(")[0], Signal()).emit(*args)

    def property(self, name: str):
        return self._properties.get(name)

    def setProperty(self, name: str, value) -> None:
        self._properties[name] = value

    def findChildren(self, *args) -> list:
        return []

    def children(self) -> list:
        return self.__dict__.get("_children", [])

    def count_of(self, name: str) -> int:
        """How many times the method ``name`` was called."""
        return sum(1 for called, _ in self.calls if called == name)


class QtValue(QtStandIn):
    """What an unknown method returns: an empty value (false, no items) that still takes calls."""

    def __bool__(self) -> bool:
        return False

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


class QComboBox(QtStandIn):
    """A combo box with items, which Slicer's enum connector and the model choice read back."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        self.__dict__["items"] = []
        self.__dict__["currentIndex"] = -1

    @property
    def count(self) -> int:
        return len(self.items)

    def clear(self) -> None:
        self.items.clear()
        self.currentIndex = -1

    def addItem(self, text: str, data=None) -> None:
        self.items.append((text, data))
        if self.currentIndex < 0:
            self.currentIndex = 0

    def itemData(self, index: int):
        return self.items[index][1] if 0 <= index < len(self.items) else None

    def findData(self, data) -> int:
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    def setCurrentIndex(self, index: int) -> None:
        if index != self.currentIndex:
            self.currentIndex = index
            self.currentIndexChanged.emit(index)


class QtEnums:
    """``qt.Qt``: every enum value is its own name."""

    def __getattr__(self, name: str) -> str:
        if name.startswith("__"):
            raise AttributeError(name)
        return name


class QFile(QtStandIn):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = str(path)

    def exists(self) -> bool:
        return os.path.isfile(self.path)


def widget_class(name: str) -> type:
    """The stand-in class of a widget class named in a .ui file (qt, ctk or Slicer's own)."""
    import slicer

    if name.startswith(("qMRML", "qSlicer")):
        if not hasattr(slicer, name):
            setattr(slicer, name, type(name, (QtStandIn,), {}))
        return getattr(slicer, name)
    return getattr(sys.modules["ctk" if name.startswith("ctk") else "qt"], name)


class QUiLoader(QtStandIn):
    """Qt's .ui loader: a tree of stand-in widgets with the file's class, name and string properties."""

    def load(self, qfile: QFile) -> QtStandIn:
        import xml.etree.ElementTree as ET

        widgets = []
        for element in ET.parse(qfile.path).getroot().iter("widget"):
            widget = widget_class(element.get("class"))()
            widget.name = element.get("name")
            for prop in element.findall("property"):
                if prop.find("string") is not None:
                    widget.setProperty(prop.get("name"), prop.find("string").text)
            widgets.append(widget)
        root = widgets[0]  # the file's top widget; every other one is found as its child
        root.__dict__["_children"] = widgets[1:]
        return root


def qt_module(name: str, special: dict[str, type]) -> types.ModuleType:
    """A module whose every attribute is a class (made on first use), so that Slicer's connectors can
    compare ``type(widget)`` with ``qt.QComboBox`` and subclass ``qt.QColor``."""
    module = types.ModuleType(name)
    module.__dict__.update(special)

    def __getattr__(attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        cls = type(attribute, (QtStandIn,), {})
        setattr(module, attribute, cls)
        return cls

    module.__getattr__ = __getattr__
    return module


QT_SPECIAL = {"QComboBox": QComboBox, "QFile": QFile, "QUiLoader": QUiLoader, "Qt": QtEnums()}


class Application(QtStandIn):
    """``slicer.app``: Slicer 5.10, no translation, no module manager work."""

    majorVersion, minorVersion = 5, 10

    def translate(self, context: str, text: str) -> str:
        return text

    def moduleManager(self) -> QtStandIn:
        return QtStandIn()


def load() -> types.ModuleType:
    """Puts Slicer 5.10's ``parameterNodeWrapper``, ``ScriptedLoadableModule`` and ``i18n`` under the
    slicer-core ``slicer`` package (and the Qt stand-ins in ``sys.modules``); returns ``slicer``."""
    import slicer

    if not (SLICER_PYTHON / "parameterNodeWrapper" / "__init__.py").is_file():
        raise FileNotFoundError(SLICER_PYTHON)
    for name in ("qt", "ctk"):
        if name not in sys.modules:
            sys.modules[name] = qt_module(name, QT_SPECIAL if name == "qt" else {})
    for name in SLICER_QT_CLASSES:
        if not hasattr(slicer, name):
            setattr(slicer, name, type(name, (QtStandIn,), {}))
    if str(SLICER_PYTHON) not in slicer.__path__:
        # After slicer-core's own folder, so its util and MRML stay; only what it lacks comes from Slicer.
        slicer.__path__.append(str(SLICER_PYTHON))
    import slicer.i18n
    import slicer.parameterNodeWrapper
    import slicer.ScriptedLoadableModule

    for module in (slicer.parameterNodeWrapper, slicer.ScriptedLoadableModule, slicer.i18n):
        if not Path(module.__file__).resolve().is_relative_to(SLICER_PYTHON.resolve()):
            raise ImportError(f"{module.__name__} came from {module.__file__}, not from Slicer 5.10's sources")
    return slicer
