"""NIfTI volumes (.nii, .nii.gz) through nibabel.

Reading applies the header scaling (scl_slope/scl_inter) and keeps nibabel's affine (sform when its code
is set, else qform). Writing stores int16 HU with the affine in both qform and sform (code 1, scanner).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from qdm_med._atomic import atomic_path
from qdm_med.errors import InputError
from qdm_med.io._util import one_line, warn
from qdm_med.io.types import Volume, hu_to_int16

__all__ = ["load_nifti", "save_nifti"]


def _select_volume(path: Path, shape: tuple[int, ...], volume_index: int | None) -> tuple[int, ...] | None:
    """The index into the dims beyond the third that picks one 3D volume, or None for 3D data.

    A 4th dimension of size 1 is squeezed silently; a real 4D series needs ``volume_index``.
    """
    extra = shape[3:]
    if not extra or all(n == 1 for n in extra):
        if volume_index not in (None, 0):
            raise InputError(f"{path}: --volume-index {volume_index} given but the file holds one 3D volume")
        return tuple(0 for _ in extra) or None
    if len(extra) > 1 and any(n > 1 for n in extra[1:]):
        # NIfTI puts vector/RGB components in dim 5 (intent vector): not a scalar CT volume.
        raise InputError(f"{path}: {len(shape)}D NIfTI (shape {shape}) with vector components is not a CT volume")
    if volume_index is None:
        raise InputError(
            f"{path}: 4D NIfTI (shape {shape}) is not a CT volume; pick a volume with --volume-index 0..{extra[0] - 1}"
        )
    if not 0 <= volume_index < extra[0]:
        raise InputError(f"{path}: --volume-index {volume_index} out of range for {extra[0]} volumes (shape {shape})")
    return (volume_index,) + tuple(0 for _ in extra[1:])


def load_nifti(path: str | os.PathLike, volume_index: int | None = None) -> Volume:
    """Read a NIfTI file as a :class:`Volume` (HU float32 (X, Y, Z), RAS affine).

    2D images become Z=1 volumes; 4D files need ``volume_index`` unless the 4th dimension has size 1.
    RGB and vector data are refused. When qform and sform are both set and disagree, the sform is used
    (as nibabel and ITK do) with a warning.
    """
    import nibabel as nib

    path = Path(path)
    warnings: list[str] = []
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises ImageFileError, gzip/zlib errors, EOFError, ValueError...
        raise InputError(f"{path}: cannot read NIfTI header ({one_line(err)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path}: not a NIfTI-1/2 image ({type(img).__name__})")
    dtype = img.get_data_dtype()
    if dtype.names is not None:
        raise InputError(f"{path}: RGB NIfTI ({dtype.names}) is not a CT volume")
    if np.issubdtype(dtype, np.complexfloating):
        raise InputError(f"{path}: complex-valued NIfTI is not a CT volume")
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 2:
        raise InputError(f"{path}: {len(shape)}D NIfTI (shape {shape}) is not a CT volume")
    index = _select_volume(path, shape, volume_index)
    try:
        if index is None:
            data = np.asanyarray(img.dataobj)  # applies scl_slope / scl_inter
        else:
            data = img.dataobj[(slice(None),) * 3 + index]
        data = np.asarray(data, dtype=np.float32)
    except Exception as err:  # truncated or corrupt data block
        raise InputError(f"{path}: cannot read NIfTI voxel data, file truncated or corrupt ({one_line(err)})") from None
    if data.ndim == 2:
        data = data[:, :, None]
    hdr = img.header
    affine = np.asarray(img.affine, dtype=np.float64)
    sform, s_code = img.get_sform(coded=True)
    qform, q_code = img.get_qform(coded=True)
    if s_code and q_code and not np.allclose(sform, qform, atol=1e-3):
        warn(path, "qform and sform disagree; using the sform (as nibabel and ITK do)", warnings)
    if not (s_code or q_code):
        warn(path, "no qform or sform set; geometry taken from pixdim only (no orientation)", warnings)
    meta = {
        "path": str(path),
        "format": "nifti",
        "modality": None,
        "original_dtype": str(dtype),
        "original_shape": list(shape),
        "volume_index": volume_index,
        "description": hdr.get("descrip").item().decode("latin-1", "replace").strip("\x00 ") if "descrip" in hdr else "",
        "warnings": warnings,
    }
    return Volume(array=data, affine=affine, meta=meta, dicom_headers=None)


def save_nifti(vol: Volume, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``vol`` as NIfTI-1 int16 HU (rounded, clipped) with qform and sform set; atomic."""
    import nibabel as nib

    path = Path(path)
    data = hu_to_int16(vol.array)
    affine = np.asarray(vol.affine, dtype=np.float64)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    img.header.set_data_dtype(np.int16)
    img.header["scl_slope"] = 1.0
    img.header["scl_inter"] = 0.0
    with atomic_path(path, overwrite) as tmp:
        nib.save(img, str(tmp))
    return path
