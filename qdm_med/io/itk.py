"""NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) volumes through SimpleITK.

SimpleITK stores geometry in LPS (origin, spacing, direction) and ``GetArrayFromImage`` returns the
voxels as (z, y, x); qdm-med uses (x, y, z) = (i, j, k) and RAS affines, so reading transposes the array
and flips the first two world axes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from qdm_med._atomic import atomic_path
from qdm_med.errors import InputError, OutputError
from qdm_med.io._util import one_line, suffix_of
from qdm_med.io.geometry import affine_from_itk, itk_from_affine
from qdm_med.io.types import Volume, hu_to_int16

__all__ = ["load_itk", "save_itk"]


def _pick_component(path: Path, image, volume_index: int | None):
    """Scalar image from a multi-component one: RGB is refused, other vectors are 4D series."""
    import SimpleITK as sitk

    n = image.GetNumberOfComponentsPerPixel()
    if n == 1:
        if volume_index not in (None, 0) and image.GetDimension() < 4:
            raise InputError(f"{path}: --volume-index {volume_index} given but the file holds one 3D volume")
        return image
    pixel = image.GetPixelIDTypeAsString()
    if n in (3, 4) and ("8-bit" in pixel or "rgb" in pixel.lower()):
        raise InputError(f"{path}: RGB volume ({n} components of {pixel}) is not a CT volume")
    if volume_index is None:
        raise InputError(
            f"{path}: 4D volume ({n} components per voxel) is not a CT volume; pick a volume with "
            f"--volume-index 0..{n - 1}"
        )
    if not 0 <= volume_index < n:
        raise InputError(f"{path}: --volume-index {volume_index} out of range for {n} volumes")
    return sitk.VectorIndexSelectionCast(image, int(volume_index))


def load_itk(path: str | os.PathLike, volume_index: int | None = None) -> Volume:
    """Read an NRRD/MetaImage file as a :class:`Volume` (HU float32 (X, Y, Z), RAS affine).

    2D images become Z=1 volumes; 4D images (4 dimensions, or a non-RGB multi-component pixel) need
    ``volume_index``; RGB volumes are refused.
    """
    import SimpleITK as sitk

    path = Path(path)
    try:
        image = sitk.ReadImage(str(path))
    except Exception as err:  # RuntimeError with a multi-line ITK message
        raise InputError(f"{path}: cannot read {suffix_of(path)} file, unreadable or truncated ({one_line(err)})") from None
    image = _pick_component(path, image, volume_index)
    dim = image.GetDimension()
    origin, spacing, direction = image.GetOrigin(), image.GetSpacing(), image.GetDirection()
    try:
        arr = sitk.GetArrayFromImage(image)  # (z, y, x) or (t, z, y, x)
    except Exception as err:
        raise InputError(f"{path}: cannot read voxel data ({one_line(err)})") from None
    if dim == 4:
        n = arr.shape[0]
        if n == 1:
            index = 0
        elif volume_index is None:
            raise InputError(
                f"{path}: 4D volume (shape {tuple(arr.shape[::-1])}) is not a CT volume; pick a volume with "
                f"--volume-index 0..{n - 1}"
            )
        elif not 0 <= volume_index < n:
            raise InputError(f"{path}: --volume-index {volume_index} out of range for {n} volumes")
        else:
            index = volume_index
        arr = arr[index]
    elif dim == 2:
        arr = arr[None]
    elif dim != 3:
        raise InputError(f"{path}: {dim}D image is not a CT volume")
    array = np.ascontiguousarray(np.transpose(arr, (2, 1, 0)), dtype=np.float32)
    affine = affine_from_itk(origin, spacing, direction)  # a 2D image gets a unit slice axis along z
    meta = {
        "path": str(path),
        "format": "mha" if suffix_of(path) in (".mha", ".mhd") else "nrrd",
        "modality": None,
        "original_dtype": image.GetPixelIDTypeAsString(),
        "volume_index": volume_index,
        "warnings": [],
    }
    return Volume(array=array, affine=affine, meta=meta, dicom_headers=None)


def save_itk(vol: Volume, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``vol`` as int16 HU NRRD or MetaImage (single file .mha), gzip-compressed; atomic.

    ``.mhd`` (header plus separate data file) is refused: two files cannot be renamed into place atomically.
    """
    import SimpleITK as sitk

    path = Path(path)
    suf = suffix_of(path)
    if suf not in (".nrrd", ".mha"):
        raise OutputError(f"{path}: SimpleITK output must be .nrrd or .mha (single file), not {suf!r}")
    try:
        origin, spacing, direction = itk_from_affine(vol.affine)
    except ValueError as err:
        raise OutputError(f"{path}: cannot write this geometry ({err})") from None
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(hu_to_int16(vol.array), (2, 1, 0))))
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    with atomic_path(path, overwrite) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        except RuntimeError as err:
            raise OutputError(f"{path}: SimpleITK could not write the file ({one_line(err)})") from None
    return path
