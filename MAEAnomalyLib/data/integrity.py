"""Checks ITK does not make: a volume file must hold every voxel its header promises, whole compressed
streams, finite float data and evenly spaced DICOM slices (ITK fills, zeroes or spreads them silently)."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np
import SimpleITK as sitk

from ..core.errors import MAEAnomalyError

_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def _open_maybe_gzip(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def _check_holds(held: int, expected: int, path: Path) -> None:
    if held < expected:
        raise MAEAnomalyError(f"image is truncated: its header promises {expected} bytes of voxels, the file holds "
                              f"{held}", path)


def check_nifti(path: Path) -> None:
    """Checks a NIfTI-1 file against its own header: it must hold every voxel the header promises (ITK
    fills a short file with zeros), and float data must be finite (ITK's reader turns NaN into 0)."""
    with _open_maybe_gzip(path) as fh:
        header = fh.read(352)
        if len(header) < 348:
            return  # not NIfTI-1: ITK's own reader judges it
        for endian in ("<", ">"):
            if struct.unpack(f"{endian}i", header[:4])[0] == 348:
                break
        else:
            return
        dims = struct.unpack(f"{endian}8h", header[40:56])
        datatype, bitpix = struct.unpack(f"{endian}2h", header[70:74])
        offset = int(struct.unpack(f"{endian}f", header[108:112])[0])
        voxels = int(np.prod([max(1, d) for d in dims[1:1 + max(0, min(7, dims[0]))]], dtype=np.int64))
        expected = voxels * max(1, bitpix) // 8
        fh.read(max(0, offset - len(header)))
        dtype = np.dtype(endian + _NIFTI_FLOAT_TYPES[datatype]) if datatype in _NIFTI_FLOAT_TYPES else None
        held, finite = 0, True
        while chunk := fh.read(1 << 22):
            held += len(chunk)
            if dtype is not None and finite:
                usable = len(chunk) - len(chunk) % dtype.itemsize
                finite = bool(np.isfinite(np.frombuffer(chunk[:usable], dtype=dtype)).all())
    _check_holds(held, expected, path)
    if not finite:
        raise MAEAnomalyError("image contains NaN or infinite voxels", path)


def check_dicom_spacing(files: Sequence[str], path: Path) -> None:
    """Refuses a series whose slices are unevenly spaced (a missing slice, say): ITK would only warn and
    put them on a uniform grid, misplacing every slice after the gap."""
    reader = sitk.ImageFileReader()
    positions, orientation = [], None
    for name in files:
        reader.SetFileName(name)
        reader.ReadImageInformation()
        if not reader.HasMetaDataKey("0020|0032") or not reader.HasMetaDataKey("0020|0037"):
            return  # no geometry to check against: ITK's own spacing stands
        positions.append([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
        orientation = orientation or [float(v) for v in reader.GetMetaData("0020|0037").split("\\")]
    if len(positions) < 3 or orientation is None or len(orientation) != 6:
        return
    normal = np.cross(orientation[:3], orientation[3:])
    gaps = np.abs(np.diff(np.asarray(positions) @ normal))
    typical = float(np.median(gaps))
    uneven = np.flatnonzero(np.abs(gaps - typical) > max(0.01, 0.01 * typical))
    if uneven.size:
        k = int(uneven[0])
        raise MAEAnomalyError(f"DICOM series is unevenly spaced: {gaps[k]:.2f} mm between slices {k + 1} and {k + 2}, "
                              f"{typical:.2f} mm between the others (a missing slice?); give the complete series "
                              "or resample it to even spacing first", path)


_META_TYPES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4,
               "MET_ULONG": 8, "MET_LONG": 8, "MET_ULONG_LONG": 8, "MET_LONG_LONG": 8, "MET_FLOAT": 4,
               "MET_DOUBLE": 8}


def check_metaimage(path: Path) -> None:
    """Checks an uncompressed MetaImage (.mha, .mhd) against its header: its voxel data must hold every
    voxel promised (MetaIO only complains on stderr, and the message ITK gives names the wrong cause)."""
    fields, offset = {}, 0
    with path.open("rb") as fh:
        for raw in fh:
            offset += len(raw)
            key, sep, value = raw.decode("latin-1").partition("=")
            if not sep:
                return
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
    if fields.get("CompressedData", "False").lower() == "true" or "ElementDataFile" not in fields:
        return
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        per_voxel = _META_TYPES[fields.get("ElementType", "")] * int(fields.get("ElementNumberOfChannels", "1"))
    except (KeyError, ValueError):
        return  # ITK's reader judges it
    data = fields["ElementDataFile"]
    if data == "LOCAL":
        held = path.stat().st_size - offset
    elif (path.parent / data).is_file():
        held = (path.parent / data).stat().st_size
    else:
        return
    expected = int(np.prod(dims, dtype=np.int64)) * per_voxel
    _check_holds(held, expected, path)
