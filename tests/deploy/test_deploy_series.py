"""The SDK-to-Volume adapter (no SDK needed): same volume as the project's DICOM reader."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from deploy_doubles import write_axial_ct

from qdm_med.deploy.series import volume_from_series
from qdm_med.errors import InputError
from qdm_med.io.dicom import load_dicom


def _sorted_series(folder):
    """(D, H, W) HU and datasets sorted along the normal, as the SDK's DICOMSeriesToVolumeOperator gives them."""
    datasets = sorted((pydicom.dcmread(f) for f in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    voxels = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets])
    return voxels, datasets


def test_volume_equals_load_dicom(tmp_path):
    """Non-square pixels (0.9 x 0.8 mm) and files not in slice order: array, affine and header order match."""
    _, hu = write_axial_ct(tmp_path / "ct", size=24, n_slices=3)
    voxels, datasets = _sorted_series(tmp_path / "ct")
    vol = volume_from_series(voxels.astype(np.int16), datasets, "ct")
    ref = load_dicom(tmp_path / "ct")
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_array_equal(vol.array, hu)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-9)
    assert [h.SOPInstanceUID for h in vol.dicom_headers] == [h.SOPInstanceUID for h in ref.dicom_headers]
    assert all("PixelData" not in h for h in vol.dicom_headers)
    assert "PixelData" in datasets[0]  # the SDK's datasets are not modified


def test_unsorted_or_mismatched_series_is_refused(tmp_path):
    write_axial_ct(tmp_path / "ct", size=16, n_slices=3)
    voxels, datasets = _sorted_series(tmp_path / "ct")
    with pytest.raises(InputError, match="not strictly ordered"):
        volume_from_series(voxels[::-1], datasets[::-1], "ct")
    with pytest.raises(InputError, match="one 2D image per instance"):
        volume_from_series(voxels[:2], datasets, "ct")
    datasets[0].PhotometricInterpretation = "MONOCHROME1"
    with pytest.raises(InputError, match="only MONOCHROME2"):
        volume_from_series(voxels, datasets, "ct")
    datasets[0].PhotometricInterpretation = "MONOCHROME2"
    del datasets[1].ImagePositionPatient
    with pytest.raises(InputError, match="no valid ImagePositionPatient"):
        volume_from_series(voxels, datasets, "ct")
