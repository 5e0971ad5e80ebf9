"""Voxel-to-world geometry: affines, LPS/RAS, ITK and DICOM conversions, in-plane scaling.

Conventions (see CONTRACT.md): an affine is a 4x4 float64 matrix mapping voxel indices ``(i, j, k, 1)``
to RAS+ world millimetres (nibabel/MONAI). ``i`` is the in-plane column index, ``j`` the in-plane row
index, ``k`` the slice index. SimpleITK and DICOM are LPS: the first two world axes have the opposite sign.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "LPS_RAS_FLIP",
    "flip_lps_ras",
    "affine_spacing",
    "affine_direction",
    "scaled_affine",
    "affine_from_itk",
    "itk_from_affine",
    "dicom_affine",
    "dicom_slice_geometry",
    "dicom_derived_position",
]

#: Left-multiply an LPS affine by this to get the RAS affine (and vice versa): x and y change sign.
LPS_RAS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def _as_affine(affine) -> np.ndarray:
    a = np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {a.shape}")
    return a


def flip_lps_ras(affine) -> np.ndarray:
    """Convert an LPS affine to RAS or a RAS affine to LPS (the operation is its own inverse)."""
    return LPS_RAS_FLIP @ _as_affine(affine)


def affine_spacing(affine) -> np.ndarray:
    """Voxel size in mm along i, j, k: the norms of the affine's first three columns, shape (3,)."""
    return np.linalg.norm(_as_affine(affine)[:3, :3], axis=0)


def affine_direction(affine) -> np.ndarray:
    """Unit direction of each voxel axis in world coordinates, as the columns of a 3x3 matrix."""
    a = _as_affine(affine)
    return a[:3, :3] / affine_spacing(a)


def scaled_affine(affine, scale: float | Sequence[float]) -> np.ndarray:
    """Affine of a volume resampled by ``scale`` per voxel axis with aligned voxel *edges*.

    This is what ``monai.transforms.Zoom(zoom=scale, keep_size=False)`` puts on a MetaTensor
    (``align_corners=False``): voxel size divided by the factor, and the centre of the first voxel moved by
    ``-0.5 * (1 - 1/s)`` old voxels along each scaled axis, so the field of view is unchanged.

    Args:
        affine: 4x4 voxel-to-world matrix (numpy or torch).
        scale: one number ``s`` for the in-plane upscale ``(s, s, 1)`` used throughout qdm-med, or one factor
            per axis, e.g. ``(s, s, 1)``. Factors below 1 downscale (``1/s`` undoes ``s``).
    Returns:
        The new 4x4 float64 affine.
    """
    a = _as_affine(affine)
    factors = np.asarray([scale, scale, 1.0] if np.isscalar(scale) else scale, dtype=np.float64).ravel()
    if factors.shape != (3,) or np.any(factors <= 0) or not np.all(np.isfinite(factors)):
        raise ValueError(f"scale must be a positive number or 3 positive factors, got {scale!r}")
    inv = 1.0 / factors
    voxel_map = np.eye(4)
    voxel_map[:3, :3] = np.diag(inv)
    voxel_map[:3, 3] = (inv - 1.0) / 2.0  # = -0.5 * (1 - 1/s): keeps the outer voxel edges in place
    return a @ voxel_map


# ----------------------------------------------------------------------------------------------- ITK
def affine_from_itk(origin, spacing, direction) -> np.ndarray:
    """RAS affine from SimpleITK geometry (LPS origin, spacing, row-major flattened direction matrix).

    Only the first three dimensions are used (a 4D image keeps its spatial 3x3 part).
    """
    dim = len(spacing)
    d = np.asarray(direction, dtype=np.float64).reshape(dim, dim)
    n = min(dim, 3)
    lps = np.eye(4)
    lps[:n, :n] = d[:n, :n] @ np.diag(np.asarray(spacing, dtype=np.float64)[:n])
    lps[:n, 3] = np.asarray(origin, dtype=np.float64)[:n]
    return flip_lps_ras(lps)


def itk_from_affine(affine) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(origin, spacing, direction) in SimpleITK's LPS convention for a RAS affine."""
    lps = flip_lps_ras(affine)
    spacing = affine_spacing(lps)
    if np.any(spacing <= 0):
        raise ValueError("affine has a zero-length voxel axis")
    direction = lps[:3, :3] / spacing
    return tuple(lps[:3, 3].tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


# ----------------------------------------------------------------------------------------------- DICOM
def dicom_affine(orientation, first_position, pixel_spacing, slice_step) -> np.ndarray:
    """RAS affine of a DICOM series.

    Args:
        orientation: ImageOrientationPatient, 6 numbers: row direction (along a row, i.e. increasing column
            index ``i``) then column direction (down a column, increasing row index ``j``), LPS.
        first_position: ImagePositionPatient of slice ``k = 0`` (LPS, mm), centre of its first pixel.
        pixel_spacing: PixelSpacing ``(between rows, between columns)`` in mm.
        slice_step: LPS vector from slice ``k`` to slice ``k + 1`` (mm).
    """
    iop = np.asarray(orientation, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    row_spacing, col_spacing = (float(v) for v in pixel_spacing)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing
    lps[:3, 1] = col_dir * row_spacing
    lps[:3, 2] = np.asarray(slice_step, dtype=np.float64)
    lps[:3, 3] = np.asarray(first_position, dtype=np.float64)
    return flip_lps_ras(lps)


def dicom_slice_geometry(affine, tol: float = 1e-4):
    """DICOM per-slice geometry of a RAS affine: ``(orientation, pixel_spacing, positions_fn)``.

    ``orientation`` is the 6-number ImageOrientationPatient, ``pixel_spacing`` the (row, column) spacing
    and ``positions_fn(k)`` the LPS ImagePositionPatient of slice ``k``.

    Raises:
        ValueError: when the in-plane axes are not orthogonal (DICOM cannot express a sheared plane).
    """
    lps = flip_lps_ras(affine)
    spacing = affine_spacing(lps)
    row_dir = lps[:3, 0] / spacing[0]
    col_dir = lps[:3, 1] / spacing[1]
    if abs(float(row_dir @ col_dir)) > tol:
        raise ValueError("in-plane voxel axes are not orthogonal")
    orientation = np.concatenate([row_dir, col_dir])
    pixel_spacing = np.array([spacing[1], spacing[0]])

    def position(k: int) -> np.ndarray:
        return lps[:3, 3] + k * lps[:3, 2]

    return orientation, pixel_spacing, position


def dicom_derived_position(position, orientation, pixel_spacing, scale: float) -> np.ndarray:
    """ImagePositionPatient of a slice upscaled in-plane by ``scale`` (SPEC section 9).

    ``position - 0.5 * (1 - 1/s) * (row_dir * column_spacing + col_dir * row_spacing)``: the first pixel
    centre moves towards the image corner so the new pixels tile the same field of view.
    """
    iop = np.asarray(orientation, dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in pixel_spacing)
    shift = iop[:3] * col_spacing + iop[3:] * row_spacing
    return np.asarray(position, dtype=np.float64) - 0.5 * (1.0 - 1.0 / float(scale)) * shift
