"""Which voxel axis is the slice axis, and axial storage for the slice-wise model.

The model super-resolves ``array[:, :, k]`` in-plane, so axis 2 must be the slice axis. A volume may be
stored otherwise: slice-axis-first ``(S, P, L)`` arrays, sagittal-major ``(A, S, R)`` ones, a sagittal
DICOM series (slices along L-R). The slice axis is found from the affine: the voxel axis whose world
direction is closest to the patient's superior-inferior (RAS ``z``) axis. :func:`axial_frame` returns an
:class:`AxialFrame` that permutes the array (no flips, nibabel orientation tools) so that axis becomes
axis 2, with the two in-plane axes ordered left-right first; :meth:`AxialFrame.from_axial` puts a result
(e.g. upscaled in-plane) back into the input's own storage order and world coordinates. A volume whose
slice axis is already axis 2 is left untouched (identity frame).

A volume with no voxel axis within :data:`MAX_TILT_DEG` of superior-inferior (an oblique reslice) has
no axial plane to super-resolve and is refused with a one-line :class:`~qdm_med.errors.InputError`.
Gantry-tilted head CT (up to ~30 degrees) stays within the tolerance.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from qdm_med.errors import InputError
from qdm_med.io.geometry import affine_direction

__all__ = ["MAX_TILT_DEG", "AxialFrame", "axial_frame", "axis_codes"]

#: Largest angle (degrees) between the slice axis and the patient's superior-inferior axis.
MAX_TILT_DEG = 40.0


def axis_codes(affine) -> str:
    """nibabel's orientation codes of the voxel axes, e.g. ``"LPS"`` (the closest world axis of each)."""
    import nibabel as nib

    return "".join(nib.orientations.aff2axcodes(np.asarray(affine, dtype=np.float64)))


@dataclasses.dataclass(frozen=True)
class AxialFrame:
    """How a volume's storage maps to axial storage.

    Attributes:
        perm: ``perm[a]`` is the input axis that becomes axial axis ``a`` (``(0, 1, 2)`` = identity).
        axcodes: the input's orientation codes (e.g. ``"SPL"``).
        slice_axis: the input axis used as the slice axis.
        tilt_deg: angle between that axis and superior-inferior.
    """

    perm: tuple[int, int, int]
    axcodes: str
    slice_axis: int
    tilt_deg: float

    @property
    def identity(self) -> bool:
        return self.perm == (0, 1, 2)

    def _ornt(self, inverse: bool) -> np.ndarray:
        """nibabel orientation: row ``i`` = (target axis of source axis ``i``, no flip)."""
        ornt = np.ones((3, 2))
        for new, old in enumerate(self.perm):
            if inverse:
                ornt[new, 0] = old
            else:
                ornt[old, 0] = new
        return ornt

    def _apply(self, vol, inverse: bool):
        import nibabel as nib

        if self.identity:
            return vol
        ornt = self._ornt(inverse)
        array = np.ascontiguousarray(nib.orientations.apply_orientation(np.asarray(vol.array), ornt))
        affine = np.asarray(vol.affine, np.float64) @ nib.orientations.inv_ornt_aff(ornt, vol.array.shape)
        meta = dict(vol.meta) if isinstance(vol.meta, dict) else {}
        # per-slice DICOM headers describe the source's own slices, not these; a derived series keeps the
        # patient, study and frame of reference of the first one
        if vol.dicom_headers:
            meta.setdefault("dicom_study_template", vol.dicom_headers[0])
        return dataclasses.replace(vol, array=array, affine=affine, meta=meta, dicom_headers=None)

    def to_axial(self, vol):
        """The volume with its slice axis as axis 2 (same world geometry)."""
        return self._apply(vol, inverse=False)

    def from_axial(self, vol):
        """A volume in axial storage (e.g. upscaled in-plane) back in the input's storage order."""
        return self._apply(vol, inverse=True)

    def describe(self) -> dict:
        return {"axcodes": self.axcodes, "slice_axis": self.slice_axis, "tilt_deg": round(self.tilt_deg, 3),
                "reoriented": not self.identity, "axial_axes": list(self.perm)}


def axial_frame(affine, name: str = "volume", max_tilt_deg: float = MAX_TILT_DEG) -> AxialFrame:
    """The :class:`AxialFrame` of a volume with voxel-to-RAS ``affine``.

    Raises:
        InputError: no voxel axis within ``max_tilt_deg`` of superior-inferior (one line naming ``name``).
    """
    a = np.asarray(affine, dtype=np.float64)
    d = affine_direction(a)  # columns: unit RAS direction of voxel axes i, j, k
    if not np.all(np.isfinite(d)):
        raise InputError(f"{name}: the affine has a zero-length or non-finite voxel axis; no orientation")
    si = np.abs(d[2])
    k = int(np.argmax(si))
    tilt = math.degrees(math.acos(min(1.0, float(si[k]))))
    codes = axis_codes(a)
    if tilt > max_tilt_deg:
        raise InputError(
            f"{name}: no voxel axis is within {max_tilt_deg:g} degrees of the patient's superior-inferior axis "
            f"(closest: axis {k} at {tilt:.1f} degrees, orientation {codes}); reslice the scan to axial first"
        )
    if k == 2:
        return AxialFrame((0, 1, 2), codes, 2, tilt)
    a0, a1 = (i for i in range(3) if i != k)
    if abs(d[0, a1]) > abs(d[0, a0]):  # left-right axis first, as in axial DICOM
        a0, a1 = a1, a0
    return AxialFrame((a0, a1, k), codes, k, tilt)
