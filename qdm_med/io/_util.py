"""Small helpers shared by the io readers and writers: the logger, one-line messages, file suffixes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

#: Warnings about inputs (uneven slice spacing, forced non-CT modality, ...) go to this logger, a child of
#: ``"qdm_med"``: configure ``logging.getLogger("qdm_med")`` to see or silence them.
logger = logging.getLogger("qdm_med.io")

VOLUME_READ_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".dicom", ".ima")
VOLUME_WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def one_line(err: BaseException | str, limit: int = 200) -> str:
    """An exception (or text) squeezed onto one line, at most ``limit`` characters."""
    if isinstance(err, BaseException):
        text = " ".join(str(err).split())
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    else:
        text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def suffix_of(path: str | os.PathLike) -> str:
    """Lower-case known suffix of ``path`` (``.nii.gz`` counts as one), else its last suffix ('' if none)."""
    name = Path(path).name.lower()
    for suf in VOLUME_READ_SUFFIXES + IMAGE_SUFFIXES:
        if name.endswith(suf):
            return suf
    return Path(name).suffix


def warn(path: str | os.PathLike, message: str, sink: list[str] | None = None) -> str:
    """Log a one-line warning naming ``path``; also append it to ``sink`` (e.g. ``meta["warnings"]``)."""
    text = f"{path}: {one_line(message, limit=400)}"
    logger.warning(text)
    if sink is not None:
        sink.append(text)
    return text


def has_dicm_preamble(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file with the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def as_int(value) -> int | None:
    """``int(value)``, or None when the value (e.g. a DICOM element) is missing or not a number."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def float_vector(ds, keyword: str, n: int):
    """The DICOM element ``keyword`` of ``ds`` as a finite float64 vector of length ``n``, else None."""
    import numpy as np

    value = ds.get(keyword)
    if value is None:
        return None
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None
