"""Reading, validating and reorienting volumes with SimpleITK."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import MAEAnomalyError
from ..core.files import check_gzip_stream
from .digest import data_files
from .integrity import check_dicom_spacing, check_metaimage, check_nifti

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".img", ".hdr")
# Scores run over slices of the LPS-oriented volume: index k grows from inferior to superior.
CANONICAL = "LPS"


def volume_name(path: str | Path) -> str:
    """The file name without its volume extension (``case.nii.gz`` -> ``case``)."""
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or name


def _missing(path: Path) -> str:
    """Why a path that does not exist cannot be read: a link loop, a broken link, or no such file."""
    if not path.is_symlink():
        return "file not found"
    try:
        path.resolve(strict=True)
    except RuntimeError:
        return "symbolic link loop"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
    return f"broken symbolic link (it points to {os.readlink(path)}, which does not exist)"


_NOT_REGULAR = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
DENIED = "cannot read (permission denied)"


def _refuse_special(path: Path, mode: int) -> None:
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a file")
        raise MAEAnomalyError(f"is {kind}, not a regular file or a folder", path)


def check_input(path: str | Path) -> None:
    """Refuses, before anything opens it, an input that is not a regular file or a folder (opening a FIFO
    would wait for a writer for ever) or that cannot be read, so that the message names the real cause."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except PermissionError:  # a folder on the way that may not be searched
        raise MAEAnomalyError(DENIED, path) from None
    except OSError:
        raise MAEAnomalyError(_missing(path), path) from None
    _refuse_special(path, mode)
    try:
        if stat.S_ISDIR(mode):
            os.listdir(path)
            return
        for item in (path, *data_files(path)):  # with a detached header's voxel files
            if item != path:
                _refuse_special(item, item.stat().st_mode)
            with item.open("rb"):
                pass
    except PermissionError as exc:
        raise MAEAnomalyError(DENIED, exc.filename or path) from None
    except OSError:
        pass  # a voxel file gone meanwhile: the reader names it


def _read_any(path: Path) -> sitk.Image:
    check_input(path)
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise MAEAnomalyError("folder holds no DICOM series", path)
        if len(series) > 1:
            raise MAEAnomalyError(f"folder holds {len(series)} DICOM series; give a folder with one", path)
        files = reader.GetGDCMSeriesFileNames(str(path), series[0])
        check_dicom_spacing(files, path)
        reader.SetFileNames(files)
        read = reader.Execute
    else:
        if path.name.lower().endswith(".gz"):
            check_gzip_stream(path)
        if path.name.lower().endswith((".nii", ".nii.gz")):
            check_nifti(path)
        if path.name.lower().endswith((".mha", ".mhd")):
            check_metaimage(path)

        def read() -> sitk.Image:
            return sitk.ReadImage(str(path))
    try:
        return read()
    except RuntimeError as exc:
        # ITK's message ends with the useful line, after the source location; drop the repeated path.
        last = [ln.strip() for ln in str(exc).splitlines() if ln.strip()][-1:] or ["unknown error"]
        reason = last[0].removeprefix("sitk::ERROR: ").replace(f' for "{path}"', "").replace(str(path), "file")
        reason = reason[:160]
        raise MAEAnomalyError(f"cannot read image ({reason})", path) from None


def read_volume(path: str | Path, kind: str = "image") -> sitk.Image:
    """Reads a 3D scalar volume as float32, rejecting anything that cannot be scored."""
    path = Path(path)
    image = _read_any(path)
    dim = image.GetDimension()
    if dim != 3:
        raise MAEAnomalyError(f"{kind} is {dim}D; a 3D volume is needed", path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise MAEAnomalyError(
            f"{kind} has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar volume is needed",
            path)
    stored = sitk.GetArrayViewFromImage(image)
    if stored.dtype.kind == "f" and not np.isfinite(stored).all():
        raise MAEAnomalyError(f"{kind} contains NaN or infinite voxels", path)
    # Only doubles can exceed float32's range (the largest 64-bit integer is far below it).
    largest = float(np.abs(stored).max()) if stored.dtype == np.float64 and stored.size else 0.0
    if largest > float(np.finfo(np.float32).max):
        raise MAEAnomalyError(f"{kind} has values up to {largest:.3g}, beyond what 32-bit floats hold", path)
    image = sitk.Cast(image, sitk.sitkFloat32)
    values = sitk.GetArrayViewFromImage(image)
    if kind == "image" and values.min() == values.max():
        raise MAEAnomalyError(f"image is constant (every voxel is {float(values.min()):g})", path)
    return image


def check_same_grid(image: sitk.Image, other: sitk.Image, other_path: str | Path, kind: str) -> None:
    """Raises unless ``other`` lies on exactly the grid of ``image`` (within float tolerance)."""
    problems = []
    if image.GetSize() != other.GetSize():
        problems.append(f"size {other.GetSize()} vs {image.GetSize()}")
    elif not np.allclose(image.GetSpacing(), other.GetSpacing(), rtol=1e-4, atol=1e-5):
        problems.append(f"spacing {other.GetSpacing()} vs {image.GetSpacing()}")
    elif not np.allclose(image.GetOrigin(), other.GetOrigin(), atol=1e-3):
        problems.append(f"origin {other.GetOrigin()} vs {image.GetOrigin()}")
    elif not np.allclose(image.GetDirection(), other.GetDirection(), atol=1e-4):
        problems.append("direction differs")
    if problems:
        raise MAEAnomalyError(f"{kind} grid differs from the image grid ({problems[0]})", other_path)


def read_mask(path: str | Path, image: sitk.Image, kind: str = "mask") -> sitk.Image:
    """Reads a mask or label map that must share ``image``'s grid; voxels > 0 count as set."""
    mask = read_volume(path, kind=kind)
    check_same_grid(image, mask, path, kind)
    if kind == "mask" and not (sitk.GetArrayViewFromImage(mask) > 0).any():
        raise MAEAnomalyError("mask is empty", path)
    return mask


def to_canonical(image: sitk.Image) -> sitk.Image:
    """Permutes and flips axes (no resampling) so that array index [k] is an axial slice, inferior first."""
    return sitk.DICOMOrient(image, CANONICAL)


def canonical_size(image: sitk.Image) -> tuple[int, int, int]:
    """``to_canonical(image).GetSize()`` without reorienting the voxels: the permutation is read off a
    one-voxel probe with the image's direction."""
    probe = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    probe.SetDirection(image.GetDirection())
    before = np.array(image.GetDirection()).reshape(3, 3)
    after = np.array(to_canonical(probe).GetDirection()).reshape(3, 3)
    permutation = np.abs(np.linalg.solve(before, after))  # column i: the image axis that becomes axis i
    return tuple(int(image.GetSize()[int(permutation[:, i].argmax())]) for i in range(3))


def from_canonical(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Puts an array computed on ``to_canonical(reference)`` back onto ``reference``'s exact grid."""
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(reference.GetDirection())
    canonical = sitk.GetImageFromArray(array)
    # Only the direction steers the reorientation (the rest is the reference's below): take it from a
    # one-voxel probe rather than a reoriented copy of the whole reference.
    probe = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    probe.SetDirection(reference.GetDirection())
    canonical.SetDirection(to_canonical(probe).GetDirection())
    restored = sitk.DICOMOrient(canonical, code)
    restored.CopyInformation(reference)
    return restored


def slice_positions_mm(canonical: sitk.Image) -> np.ndarray:
    """Superior world coordinate (mm) of the centre of each axial slice of a canonical image."""
    nx, ny, nz = canonical.GetSize()
    centre = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    return np.array([canonical.TransformContinuousIndexToPhysicalPoint((*centre, float(k)))[2]
                     for k in range(nz)])
