"""Checks on loaded data before a model sees it: non-finite voxels, and whether a volume looks like CT.

- :func:`check_finite`: NaN / +inf / -inf voxels are refused with one line naming how many and where,
  unless a fill value is given (then they are replaced, with a warning).
- :func:`ct_warnings`: a volume with no voxel near air (-1000 HU), or a DICOM modality other than CT, is
  probably not CT in Hounsfield units; the CT model would still run, so this is a warning.

Warnings go through :func:`qdm_med.io._util.warn` (the ``qdm_med.io`` logger) and into ``sink``.
"""

from __future__ import annotations

import numpy as np

from qdm_med.errors import InputError
from qdm_med.io._util import warn

__all__ = ["AIR_HU", "NEAR_AIR_HU", "check_finite", "ct_warnings"]

#: Air in Hounsfield units, and the level a CT volume reaches somewhere (air around the body, lung, padding).
AIR_HU = -1000.0
NEAR_AIR_HU = -900.0


def _where(bad: np.ndarray, unit: str) -> str:
    idx = np.argwhere(bad)
    first = tuple(int(v) for v in idx[0])
    text = f"first at {unit} {first}"
    if bad.ndim == 3:
        ks = np.unique(idx[:, 2])
        shown = ", ".join(str(int(k)) for k in ks[:6]) + (", ..." if ks.size > 6 else "")
        text += f", in slice(s) {shown} of axis 2"
    return text


def check_finite(array: np.ndarray, name: str, fill: float | None = None, sink: list[str] | None = None,
                 unit: str = "voxel", option: str = "--fill-nonfinite") -> np.ndarray:
    """``array`` when every value is finite; otherwise an InputError, or a copy with ``fill`` in place of
    the non-finite values (and a warning) when ``fill`` is given.

    Args:
        array: any shape, e.g. (X, Y, Z) HU.
        name: file named in the message.
        fill: replacement value (HU for volumes); None refuses.
        sink: list that receives the warning text.
        unit: "voxel" or "pixel" in the message.
    """
    arr = np.asarray(array)
    if not np.issubdtype(arr.dtype, np.floating):
        return arr
    bad = ~np.isfinite(arr)
    n = int(bad.sum())
    if n == 0:
        return arr
    counts = [(int(np.isnan(arr).sum()), "NaN"), (int(np.isposinf(arr).sum()), "+inf"), (int(np.isneginf(arr).sum()), "-inf")]
    kinds = ", ".join(f"{c} {label}" for c, label in counts if c)
    what = f"{n} non-finite {unit}(s) ({kinds}), {_where(bad, unit)}"
    if fill is None:
        raise InputError(f"{name}: {what}; fix the file or pass {option} VALUE to replace them")
    fill = float(fill)
    if not np.isfinite(fill):
        raise InputError(f"{name}: {option} {fill} must be a finite number")
    out = np.where(bad, np.asarray(fill, dtype=arr.dtype), arr)
    warn(name, f"{what} replaced by {fill:g} ({option})", sink)
    return out


def ct_warnings(array: np.ndarray, meta: dict | None, name: str, sink: list[str] | None = None) -> list[str]:
    """Warn when a volume does not look like CT in HU; returns the warnings issued.

    Checks: the DICOM Modality (when known) is CT, and some voxel is at or below :data:`NEAR_AIR_HU`.
    A non-CT modality loaded with ``--force`` was already warned about by the reader (its text is in
    ``meta["warnings"]``), so it is not repeated.
    """
    out: list[str] = []
    meta = meta or {}
    modality = str(meta.get("modality") or "").upper()
    earlier = " ".join(meta.get("warnings") or [])
    if modality and modality != "CT" and f"modality {modality}" not in earlier:
        out.append(warn(name, f"DICOM modality {modality} is not CT; the CT model expects Hounsfield units", sink))
    arr = np.asarray(array)
    if arr.size:
        lo = float(np.nanmin(arr)) if np.isfinite(arr).any() else float("nan")
        if np.isfinite(lo) and lo > NEAR_AIR_HU:
            out.append(warn(
                name,
                f"no voxel near air (minimum {lo:.0f}, CT air is {AIR_HU:.0f} HU): this may not be CT in Hounsfield "
                "units (e.g. MR); the CT model's output would be meaningless",
                sink,
            ))
    return out
