"""The bundled IXI sample in Slicer's Sample Data module, under the category "MAEAnomaly", registered the way
Slicer 5.10's scripted-module template does it (Utilities/Templates/Modules/Scripted/TemplateKey.py: a
``registerSampleData`` connected to ``startupCompleted()``, calling
``SampleData.SampleDataLogic.registerCustomSampleDataSource``).

The files ship with the extension: CMake copies Resources/SampleData/ of the repository into the module's
Resources/SampleData (in a source checkout they are read where they are). Each source's URI is a
``file://`` URI of that copy; Sample Data fetches it into its cache with urllib (which reads ``file://``
URIs), checks the SHA256 below and loads it. The thumbnail is a slice of the same volume.

The sample and its thumbnail are IXI data (https://brain-development.org/ixi-dataset/), under CC BY-SA 3.0
(https://creativecommons.org/licenses/by-sa/3.0/): see Resources/SampleData/README.md beside them.
"""

from __future__ import annotations

import logging
from pathlib import Path

CATEGORY = "MAEAnomaly"
THUMBNAIL = "MAEAnomalySampleIXI516.png"  # in the module's Resources/Icons, 260x280 as the template asks

# (sample name shown on the button, file, node name, SHA256, properties for the volume reader)
SAMPLES = (
    ("IXI516 healthy T1", "IXI516-HH-2297_T1.nii.gz", "IXI516-HH-2297_T1",
     "1f02d30da5502caa2bcf1659842df11537802a14e98624319463aed085e0f1e7", {}),
    # The brain mask for the panel's "A mask or segmentation from the scene", loaded as a label map.
    ("IXI516 brain mask", "IXI516-HH-2297_brainmask.nii.gz", "IXI516-HH-2297_brainmask",
     "e3af094f2d5d69988562f345ed13d26797ff9dadc8fe532fb7d676975d680ec9", {"labelmap": True}),
)


def moduleDir() -> Path:
    """The folder of MAEAnomaly.py: qt-scripted-modules when installed, MAEAnomaly/ in a checkout."""
    return Path(__file__).resolve().parent.parent


def sampleFolder() -> Path | None:
    """Where the sample files are: the module's Resources/SampleData (installed, or Slicer's build tree), or
    Resources/SampleData at the top of a source checkout; None when neither has them."""
    for folder in (moduleDir() / "Resources" / "SampleData", moduleDir().parent / "Resources" / "SampleData"):
        if all((folder / fileName).is_file() for _, fileName, _, _, _ in SAMPLES):
            return folder
    return None


def sampleDataSources() -> list[dict]:
    """The keyword arguments of ``SampleDataLogic.registerCustomSampleDataSource`` for each sample, or an
    empty list when the files are missing."""
    folder = sampleFolder()
    if folder is None:
        return []
    thumbnail = moduleDir() / "Resources" / "Icons" / THUMBNAIL
    return [{
        "category": CATEGORY,
        "sampleName": sampleName,
        "thumbnailFileName": str(thumbnail) if index == 0 and thumbnail.is_file() else None,
        "uris": (folder / fileName).as_uri(),
        "fileNames": fileName,
        "nodeNames": nodeName,
        "checksums": f"SHA256:{digest}",
        "loadFileTypes": "VolumeFile",
        "loadFileProperties": dict(properties),
    } for index, (sampleName, fileName, nodeName, digest, properties) in enumerate(SAMPLES)]


def registerSampleData() -> None:
    """Adds the samples to the Sample Data module (a no-op when that module or the files are missing)."""
    try:
        import SampleData
    except ImportError:  # Slicer started without the Sample Data module
        return
    sources = sampleDataSources()
    if not sources:
        logging.warning("MAEAnomaly: the IXI sample is not installed; Sample Data does not offer it")
    for source in sources:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**source)


def registerSampleDataOnStartup() -> None:
    """Registers the samples once the application has started (Sample Data is loaded by then), as the
    template does. Without an application (PythonSlicer, tests) there is no Sample Data module to add to."""
    import slicer

    connect = getattr(getattr(slicer, "app", None), "connect", None)
    if connect is not None:
        connect("startupCompleted()", registerSampleData)
