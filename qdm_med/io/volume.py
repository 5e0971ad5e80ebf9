"""Format dispatch for reading and writing CT volumes.

Reading picks the reader from the path: a folder or a DICOM file goes to :mod:`qdm_med.io.dicom`,
``.nii``/``.nii.gz`` to :mod:`qdm_med.io.nifti`, ``.nrrd``/``.nhdr``/``.mha``/``.mhd`` to
:mod:`qdm_med.io.itk`. Every problem with the input is an :class:`~qdm_med.errors.InputError` whose message
is one line naming the file; warnings go to the ``"qdm_med.io"`` logger (child of ``"qdm_med"``) and are
also kept in ``Volume.meta["warnings"]``.
"""

from __future__ import annotations

import os
from pathlib import Path

from qdm_med.errors import InputError, OutputError
from qdm_med.io._util import VOLUME_READ_SUFFIXES, VOLUME_WRITE_SUFFIXES, has_dicm_preamble, suffix_of
from qdm_med.io.types import Volume, hu_to_int16, sub_volume

__all__ = ["Volume", "load_volume", "save_volume", "is_volume_path", "sub_volume", "hu_to_int16"]  # Volume & co. re-exported from .types


def is_volume_path(path: str | os.PathLike) -> bool:
    """True for a folder (a DICOM series) or a file with a volume suffix (.nii(.gz), .nrrd, .nhdr, .mha,
    .mhd, .dcm, .dicom, .ima). Does not read the file."""
    p = Path(path)
    if p.is_dir():
        return True
    return suffix_of(p) in VOLUME_READ_SUFFIXES


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
    elif suf in (".dcm", ".dicom", ".ima") or has_dicm_preamble(p):
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
