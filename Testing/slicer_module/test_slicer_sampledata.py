"""The bundled IXI sample in Slicer's Sample Data module (SlicerMAEAnomalyLib/sampledata.py): registered with
arguments Slicer 5.10 accepts, from the module's constructor once the application has started, pointing at
files whose checksum matches, in a source checkout and in the installed layout; and the files load into a
real MRML scene (slicer-core wheel) as a volume of the expected size."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import shutil
import struct
import sys
import types
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer")

from SlicerMAEAnomalyLib import sampledata  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DIR = ROOT / "Resources" / "SampleData"
SCRIPTED = "lib/Slicer-5.10/qt-scripted-modules"


# SampleData.SampleDataLogic.registerCustomSampleDataSource of Slicer 5.10, its parameters and defaults as in
# Modules/Scripted/SampleData/SampleData.py at tag v5.10.0 of github.com/Slicer/Slicer (commit
# a2b6d082be04274a849884fbb1e85634a9df90fb; unchanged on main to 2026-08). The slicer-core wheel has no
# SampleData module, so the tests bind the registered arguments to this signature and, as SampleDataSource
# does there, turn single values into one-element lists and require lists of one length.
def registerCustomSampleDataSource(category="Custom",
                                   sampleName=None, uris=None, fileNames=None, nodeNames=None,
                                   customDownloader=None, thumbnailFileName=None,
                                   loadFileTypes=None, loadFiles=None, loadFileProperties={},  # noqa: B006
                                   checksums=None,
                                   loadFileType=None):
    raise NotImplementedError


SIGNATURE = inspect.signature(registerCustomSampleDataSource)


def fake_sample_data(registered: dict) -> types.ModuleType:
    """A SampleData module whose SampleDataLogic records what is registered, per category."""

    def register(*args, **kwargs):
        bound = SIGNATURE.bind(*args, **kwargs)  # a TypeError for what Slicer 5.10 does not accept
        bound.apply_defaults()
        source = dict(bound.arguments)
        per_file = ("uris", "fileNames", "nodeNames", "loadFiles", "loadFileTypes", "checksums")
        if isinstance(source["uris"], str):
            source.update({name: [source[name]] for name in per_file})
        assert len({len(source[name]) for name in per_file if source[name] is not None}) == 1
        registered.setdefault(source["category"], []).append(source)

    module = types.ModuleType("SampleData")
    module.SampleDataLogic = types.SimpleNamespace(registerCustomSampleDataSource=register)
    return module


def uri_path(uri: str) -> Path:
    parsed = urllib.parse.urlparse(uri)
    assert parsed.scheme == "file" and not parsed.netloc, uri
    return Path(urllib.request.url2pathname(parsed.path))


def test_arguments_are_those_slicer_510_accepts() -> None:
    sources = sampledata.sampleDataSources()
    assert [s["fileNames"] for s in sources] == ["IXI516-HH-2297_T1.nii.gz", "IXI516-HH-2297_brainmask.nii.gz"]
    for source in sources:
        SIGNATURE.bind(**source)
        assert source["category"] == "MAEAnomaly"
        assert re.fullmatch(r"SHA256:[0-9a-f]{64}", source["checksums"])
        assert source["loadFileTypes"] == "VolumeFile"
        assert source["nodeNames"] == source["fileNames"].removesuffix(".nii.gz")
        assert uri_path(source["uris"]) == SAMPLE_DIR / source["fileNames"]  # in this checkout
    assert sources[1]["loadFileProperties"] == {"labelmap": True}  # the mask as a label map
    # The template's thumbnail size (Utilities/Templates/Modules/Scripted/TemplateKey.py: about 260x280).
    thumbnail = Path(sources[0]["thumbnailFileName"])
    data = thumbnail.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (260, 280)
    assert len(data) < 40_000


def test_files_match_the_registered_checksums(tmp_path: Path) -> None:
    """What SampleDataLogic.downloadFile does with the source: urllib fetches the URI into the cache and
    slicer.util's checksum of the copy must equal the registered one."""
    for source in sampledata.sampleDataSources():
        copy = tmp_path / source["fileNames"]
        urllib.request.urlretrieve(source["uris"], copy)
        algo, digest = slicer.util.extractAlgoAndDigest(source["checksums"])
        assert algo == "SHA256"
        assert slicer.util.computeChecksum(algo, str(copy)) == digest, source["fileNames"]


def test_installed_layout_is_found(tmp_path: Path) -> None:
    """Installed, the sample is in the module's Resources/SampleData, where MAEAnomaly/CMakeLists.txt copies
    it (Resources/SampleData/* of the repository to the same path under qt-scripted-modules)."""
    lib = tmp_path / SCRIPTED
    (lib / "SlicerMAEAnomalyLib").mkdir(parents=True)
    shutil.copy(sampledata.__file__, lib / "SlicerMAEAnomalyLib" / "sampledata.py")
    shutil.copytree(SAMPLE_DIR, lib / "Resources" / "SampleData")
    shutil.copytree(ROOT / "MAEAnomaly" / "Resources" / "Icons", lib / "Resources" / "Icons")
    spec = importlib.util.spec_from_file_location("installed_sampledata", lib / "SlicerMAEAnomalyLib" / "sampledata.py")
    installed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installed)
    sources = installed.sampleDataSources()
    folder = lib / "Resources" / "SampleData"
    assert [uri_path(s["uris"]) for s in sources] == [folder / s["fileNames"] for s in sources]
    assert sources[0]["thumbnailFileName"] == str(lib / "Resources" / "Icons" / sampledata.THUMBNAIL)
    # Without the files nothing is registered.
    shutil.rmtree(lib / "Resources" / "SampleData")
    assert installed.sampleFolder() is None and installed.sampleDataSources() == []


def test_registered_once_the_application_has_started(monkeypatch: pytest.MonkeyPatch) -> None:
    connections: list = []
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(connect=lambda *a: connections.append(a)),
                        raising=False)
    registered: dict = {}
    monkeypatch.setitem(sys.modules, "SampleData", fake_sample_data(registered))
    sampledata.registerSampleDataOnStartup()
    assert [signal for signal, _ in connections] == ["startupCompleted()"]
    assert registered == {}, "nothing is registered before startup has completed"
    connections[0][1]()
    assert [s["sampleName"] for s in registered["MAEAnomaly"]] == ["IXI516 healthy T1", "IXI516 brain mask"]
    # The module's constructor does it, past the version check (MAEAnomaly.py).
    tree = ast.parse((ROOT / "MAEAnomaly" / "MAEAnomaly.py").read_text("utf-8"))
    module_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MAEAnomaly")
    init = next(n for n in module_class.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assert "registerSampleDataOnStartup()" in ast.unparse(init)


def test_no_sample_data_module_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "SampleData", None)  # import SampleData raises ImportError
    sampledata.registerSampleData()
    monkeypatch.delattr(slicer, "app", raising=False)
    sampledata.registerSampleDataOnStartup()  # no application: nothing to connect to


def test_samples_load_into_a_real_scene(tmp_path: Path) -> None:
    """Read as Slicer's volume reader does, through a vtkMRMLVolumeArchetypeStorageNode, from the copy
    that Sample Data would make."""
    scene = slicer.vtkMRMLScene()
    sources = sampledata.sampleDataSources()
    nodes = []
    for source in sources:
        copy = tmp_path / source["fileNames"]
        urllib.request.urlretrieve(source["uris"], copy)
        label = source["loadFileProperties"].get("labelmap", False)
        node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode",
                                       source["nodeNames"])
        storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(copy))
        assert storage.ReadData(node), source["fileNames"]
        nodes.append(node)
    volume, mask = nodes
    for node in nodes:  # 120x120x90 voxels at 2 mm (Resources/SampleData/README.md)
        assert node.GetImageData().GetDimensions() == (120, 120, 90)
        assert node.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))
    low, high = volume.GetImageData().GetScalarRange()
    assert low >= 0 and high > 100
    voxels = slicer.util.arrayFromVolume(mask)
    assert set(map(int, set(voxels.ravel().tolist()))) == {0, 1} and voxels.mean() > 0.05
