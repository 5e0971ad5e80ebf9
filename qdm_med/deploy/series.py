"""From the MONAI Deploy SDK's DICOM objects to a :class:`qdm_med.io.Volume` the project's inferencer and
DICOM writer take.

The SDK's ``DICOMSeriesToVolumeOperator`` sorts the SOP instances of the selected series along the slice
normal and stacks their rescaled pixels as a ``(D, H, W)`` = (slices, rows, columns) array. This module turns
that array and the (sorted) instances into the volume :func:`qdm_med.io.load_dicom` gives for the same
series: float32 HU ``(X, Y, Z)`` = (columns, rows, slices), the RAS affine of
:func:`qdm_med.io.geometry.dicom_affine`, and one header per slice (pixel data left out) as the templates
of the derived series. The SDK's own affine is not used: it pairs the row direction with the row spacing
(the DICOM standard pairs it with the column spacing), which only agrees for square pixels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from qdm_med.errors import InputError
from qdm_med.io.dicom import PIXEL_DATA_KEYWORDS
from qdm_med.io.geometry import dicom_affine
from qdm_med.io.volume import Volume

__all__ = ["header_without_pixels", "volume_from_series"]


def _vector(ds, keyword: str, n: int, label: str) -> np.ndarray:
    value = ds.get(keyword)
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise InputError(f"{label}: slice {ds.get('SOPInstanceUID', '?')} has no valid {keyword}")
    return arr


def header_without_pixels(ds):
    """A pydicom Dataset holding the elements of ``ds`` except its pixel data (elements shared, not copied)."""
    from pydicom.dataset import Dataset

    out = Dataset()
    for elem in ds:
        if elem.keyword not in PIXEL_DATA_KEYWORDS:
            out.add(elem)
    if getattr(ds, "file_meta", None) is not None:
        out.file_meta = ds.file_meta
    return out


def volume_from_series(voxels: np.ndarray, datasets: Sequence, label: str = "series", meta: dict | None = None) -> Volume:
    """The :class:`~qdm_med.io.Volume` of a sorted single-frame CT series.

    Args:
        voxels: (D, H, W) HU (any numeric dtype): slice ``d`` holds the pixels of ``datasets[d]``.
        datasets: the series' pydicom datasets in the order of ``voxels`` (ascending along the slice normal).
        label: names the series in error messages.
        meta: extra ``Volume.meta`` entries.
    Returns:
        float32 HU (X, Y, Z) = (W, H, D), its RAS affine and the per-slice headers in ``dicom_headers``.
    Raises:
        InputError: counts or sizes disagree, geometry tags are missing, the slices are not strictly
            ordered along the normal (two slices at one position), or they are not MONOCHROME2.
    """
    voxels = np.asarray(voxels)
    n = len(datasets)
    if voxels.ndim != 3 or voxels.shape[0] != n or n == 0:
        raise InputError(f"{label}: expected one 2D image per instance ({n} instances), got pixel data of shape {voxels.shape}")
    photometric = {str(ds.get("PhotometricInterpretation", "MONOCHROME2")) for ds in datasets}
    if photometric != {"MONOCHROME2"}:  # the SDK's DICOMSeriesToVolumeOperator inverts MONOCHROME1 values
        raise InputError(f"{label}: PhotometricInterpretation {', '.join(sorted(photometric))}; only MONOCHROME2 CT is supported")
    iops = [_vector(ds, "ImageOrientationPatient", 6, label) for ds in datasets]
    ipps = [_vector(ds, "ImagePositionPatient", 3, label) for ds in datasets]
    spacing = _vector(datasets[0], "PixelSpacing", 2, label)
    if any(np.max(np.abs(o - iops[0])) > 1e-4 for o in iops):
        raise InputError(f"{label}: mixed orientations in one series; a volume must be one stack of parallel slices")
    row_dir, col_dir = iops[0][:3] / np.linalg.norm(iops[0][:3]), iops[0][3:] / np.linalg.norm(iops[0][3:])
    normal = np.cross(row_dir, col_dir)
    positions = np.array([p @ normal for p in ipps])
    if n > 1 and not np.all(np.diff(positions) > 1e-3):
        raise InputError(f"{label}: slices are not strictly ordered along the slice normal (two slices at one position?)")
    if n > 1:
        step = (ipps[-1] - ipps[0]) / (n - 1)
    else:
        thickness = datasets[0].get("SpacingBetweenSlices") or datasets[0].get("SliceThickness") or 1.0
        step = normal * float(thickness)
    affine = dicom_affine(np.concatenate([row_dir, col_dir]), ipps[0], spacing, step)
    array = np.ascontiguousarray(np.transpose(voxels, (2, 1, 0)), dtype=np.float32)  # (D, H, W) -> (X, Y, Z)
    info = {"format": "dicom", "modality": str(datasets[0].get("Modality", "") or "") or None,
            "series_uid": str(datasets[0].get("SeriesInstanceUID", "")),
            "series_description": str(datasets[0].get("SeriesDescription", "") or ""),
            "slice_positions": [float(p) for p in positions], "path": label}
    info.update(meta or {})
    return Volume(array=array, affine=affine, meta=info, dicom_headers=[header_without_pixels(ds) for ds in datasets])
