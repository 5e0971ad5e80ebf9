"""CT volume and picture I/O for qdm-med.

Volumes: :func:`load_volume` reads NIfTI (nibabel), NRRD/MetaImage (SimpleITK) and DICOM series (pydicom)
into a :class:`Volume` (HU float32 (X, Y, Z), RAS affine); :func:`save_volume` writes NIfTI/NRRD/MHA as
int16 HU; :func:`write_dicom_series` writes a derived DICOM series (SPEC section 9). Pictures:
:mod:`qdm_med.io.images`. Geometry helpers: :mod:`qdm_med.io.geometry`.

Problems with inputs raise :class:`qdm_med.errors.InputError` (one line naming the file); warnings are
logged to ``logging.getLogger("qdm_med.io")`` (propagating to ``"qdm_med"``) and kept in
``Volume.meta["warnings"]``. All writes are atomic and refuse existing outputs unless ``overwrite=True``.
"""

from __future__ import annotations

from qdm_med.io.dicom import DicomSeriesInfo, list_dicom_series
from qdm_med.io.dicom_write import write_dicom_series
from qdm_med.io.geometry import scaled_affine
from qdm_med.io.images import is_image_path, load_image, save_image
from qdm_med.io.types import Volume
from qdm_med.io.volume import is_volume_path, load_volume, save_volume

__all__ = [
    "Volume",
    "load_volume",
    "save_volume",
    "write_dicom_series",
    "list_dicom_series",
    "DicomSeriesInfo",
    "scaled_affine",
    "load_image",
    "save_image",
    "is_image_path",
    "is_volume_path",
]
