"""The :class:`Volume` container and format dispatch for reading and writing CT volumes.

Reading picks the reader from the path: a folder or a DICOM file goes to :mod:`qdm_med.io.dicom`,
``.nii``/``.nii.gz`` to :mod:`qdm_med.io.nifti`, ``.nrrd``/``.nhdr``/``.mha``/``.mhd`` to
:mod:`qdm_med.io.itk`. Every problem with the input is an :class:`~qdm_med.errors.InputError` whose message
is one line naming the file; warnings go to the ``"qdm_med.io"`` logger (child of ``"qdm_med"``) and are
also kept in ``Volume.meta["warnings"]``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from qdm_med.errors import InputError, OutputError
from qdm_med.io._util import VOLUME_READ_SUFFIXES, VOLUME_WRITE_SUFFIXES, suffix_of
from qdm_med.io.geometry import affine_direction, affine_spacing

__all__ = ["Volume", "load_volume", "save_volume", "is_volume_path", "sub_volume"]


@dataclasses.dataclass
class Volume:
    """A CT volume in Hounsfield units with its geometry.

    Attributes:
        array: float32 HU, shape (X, Y, Z) = (i, j, k): ``i`` column index and ``j`` row index in-plane,
            ``k`` slice index. ``array[:, :, k]`` is one axial (in-plane) slice.
        affine: 4x4 float64, voxel ``(i, j, k, 1)`` -> RAS+ world mm (nibabel/MONAI convention).
        meta: source path, ``format``, ``modality``, DICOM series UID/description/number when known, and
            ``warnings`` (the one-line warnings issued while reading).
        dicom_headers: for DICOM input, one ``pydicom.Dataset`` per slice in ``k`` order with the pixel data
            removed (the templates of a derived series, see :func:`qdm_med.io.write_dicom_series`);
            ``None`` otherwise.
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    dicom_headers: list | None = None

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array, dtype=np.float32)
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must be 3D (X, Y, Z), got shape {self.array.shape}")
        self.affine = np.array(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume.affine must be 4x4, got shape {self.affine.shape}")
        if self.dicom_headers is not None and len(self.dicom_headers) != self.array.shape[2]:
            raise ValueError(
                f"Volume has {self.array.shape[2]} slices but {len(self.dicom_headers)} DICOM headers"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """(X, Y, Z) voxel counts."""
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size (mm) along i, j, k, from the affine's column norms."""
        return affine_spacing(self.affine)

    @property
    def origin(self) -> np.ndarray:
        """RAS position (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the RAS unit directions of the i, j, k axes."""
        return affine_direction(self.affine)


def is_volume_path(path: str | os.PathLike) -> bool:
    """True for a folder (a DICOM series) or a file with a volume suffix (.nii(.gz), .nrrd, .nhdr, .mha,
    .mhd, .dcm, .dicom, .ima). Does not read the file."""
    p = Path(path)
    if p.is_dir():
        return True
    return suffix_of(p) in VOLUME_READ_SUFFIXES


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def load_volume(
    path: str | os.PathLike,
    series: str | None = None,
    force: bool = False,
    volume_index: int | None = None,
) -> Volume:
    """Read a CT volume as HU float32 (X, Y, Z) with its RAS affine.

    Args:
        path: a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) file, a DICOM file
            (.dcm, or any file with the DICM preamble) or a folder holding a DICOM series.
        series: for DICOM folders with several series: a SeriesInstanceUID, a unique UID prefix, a
            SeriesNumber or a SeriesDescription.
        force: load DICOM data that is otherwise refused (non-CT modality, missing slices) with a warning.
        volume_index: which volume of a 4D file to read (0-based).
    Raises:
        InputError: one line naming the file: missing, unreadable, unsupported, or not a CT volume.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_dir():
        from qdm_med.io.dicom import load_dicom

        return load_dicom(p, series=series, force=force, volume_index=volume_index)
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: file is not readable (permission denied)")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: file is empty")
    suf = suffix_of(p)
    if suf in (".nii", ".nii.gz"):
        from qdm_med.io.nifti import load_nifti

        vol = load_nifti(p, volume_index=volume_index)
    elif suf in (".nrrd", ".nhdr", ".mha", ".mhd"):
        from qdm_med.io.itk import load_itk

        vol = load_itk(p, volume_index=volume_index)
    elif suf in (".dcm", ".dicom", ".ima") or _is_dicom_file(p):
        from qdm_med.io.dicom import load_dicom

        return load_dicom(p, series=series, force=force, volume_index=volume_index)
    else:
        raise InputError(
            f"{p}: unsupported file type {suf or '(no extension)'!r}; expected NIfTI (.nii, .nii.gz), "
            "NRRD (.nrrd), MetaImage (.mha, .mhd) or DICOM (folder or .dcm)"
        )
    if series is not None:
        raise InputError(f"{p}: --series only applies to DICOM input")
    return vol


def save_volume(vol: Volume, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``vol`` as int16 HU (rounded, clipped to the int16 range) with its geometry, atomically.

    The format follows the extension: ``.nii.gz``/``.nii`` (nibabel; qform and sform both set, code 1
    "scanner"), ``.nrrd``/``.mha`` (SimpleITK, gzip-compressed, LPS origin/spacing/direction).
    A DICOM series is written by :func:`qdm_med.io.write_dicom_series`.

    Raises:
        OutputError: the path exists and ``overwrite`` is False, its folder is not writable, or the
            extension is not a supported volume format.
    Returns:
        The written path.
    """
    p = Path(path)
    suf = suffix_of(p)
    if suf not in VOLUME_WRITE_SUFFIXES:
        raise OutputError(
            f"{p}: cannot write volume format {suf or '(no extension)'!r}; use .nii.gz, .nii, .nrrd or .mha "
            "(a DICOM series is a folder: use the dicom output format)"
        )
    if suf in (".nii", ".nii.gz"):
        from qdm_med.io.nifti import save_nifti

        return save_nifti(vol, p, overwrite=overwrite)
    from qdm_med.io.itk import save_itk

    return save_itk(vol, p, overwrite=overwrite)


def hu_to_int16(array: np.ndarray) -> np.ndarray:
    """HU float -> int16: NaN to -1024 (air), round half to even, clip to [-32768, 32767]."""
    a = np.nan_to_num(np.asarray(array, dtype=np.float64), nan=-1024.0)
    return np.clip(np.rint(a), -32768, 32767).astype(np.int16)


def sub_volume(vol: Volume, k0: int, k1: int) -> Volume:
    """Slices ``k0 .. k1 - 1`` of ``vol`` with their own geometry: the affine moves to slice ``k0`` (so the
    first slice keeps its world position) and the DICOM headers are those slices'."""
    nz = vol.array.shape[2]
    if not 0 <= k0 < k1 <= nz:
        raise ValueError(f"slice range {k0}..{k1 - 1} outside 0..{nz - 1}")
    shift = np.eye(4)
    shift[2, 3] = float(k0)
    meta = dict(vol.meta) if isinstance(vol.meta, dict) else {}
    meta["slice_offset"] = int(meta.get("slice_offset", 0)) + int(k0)
    headers = None if vol.dicom_headers is None else list(vol.dicom_headers[k0:k1])
    return dataclasses.replace(vol, array=vol.array[:, :, k0:k1], affine=vol.affine @ shift, meta=meta, dicom_headers=headers)
