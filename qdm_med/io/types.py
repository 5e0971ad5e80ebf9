"""The :class:`Volume` container: a CT volume in HU with its RAS affine (what every reader returns and every
writer takes), and small operations on it. The readers import this module, never the dispatcher
(:mod:`qdm_med.io.volume`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from qdm_med.io.geometry import affine_direction, affine_spacing

__all__ = ["Volume", "hu_to_int16", "sub_volume"]


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
