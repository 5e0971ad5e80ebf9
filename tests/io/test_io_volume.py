"""The Volume container and the load/save dispatch (missing, empty, unsupported paths)."""

from __future__ import annotations

import numpy as np
import pytest
from io_doubles import assert_one_line_naming, ct_values, oblique_affine, write_ct_series

from qdm_med.errors import InputError, OutputError
from qdm_med.io import Volume, load_volume, save_volume


def test_volume_properties_and_validation():
    vol = Volume(ct_values((4, 3, 2)).astype(np.int16), oblique_affine())
    assert vol.array.dtype == np.float32 and vol.shape == (4, 3, 2)
    np.testing.assert_allclose(vol.spacing, [0.8, 0.7, 2.5])
    np.testing.assert_allclose(vol.origin, [-100.0, 40.0, 12.5])
    np.testing.assert_allclose(vol.direction.T @ vol.direction, np.eye(3), atol=1e-12)
    assert vol.meta == {} and vol.dicom_headers is None
    with pytest.raises(ValueError):
        Volume(np.zeros((4, 3)), np.eye(4))
    with pytest.raises(ValueError):
        Volume(np.zeros((4, 3, 2)), np.eye(3))
    with pytest.raises(ValueError):
        Volume(np.zeros((4, 3, 2)), np.eye(4), dicom_headers=[object()])


def test_missing_empty_and_unsupported_inputs(tmp_path):
    with pytest.raises(InputError) as err:
        load_volume(tmp_path / "absent.nii.gz")
    assert "no such file" in assert_one_line_naming(err, "absent.nii.gz")
    (tmp_path / "empty.nrrd").write_bytes(b"")
    with pytest.raises(InputError) as err:
        load_volume(tmp_path / "empty.nrrd")
    assert "empty" in assert_one_line_naming(err, "empty.nrrd")
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError) as err:
        load_volume(tmp_path / "table.csv")
    assert "unsupported" in assert_one_line_naming(err, "table.csv")


def test_dicom_file_without_extension_is_detected(tmp_path):
    spec = write_ct_series(tmp_path / "s", shape=(6, 4, 1))
    plain = tmp_path / "IM0001"
    plain.write_bytes(spec.files[0].read_bytes())
    vol = load_volume(plain)
    np.testing.assert_array_equal(vol.array, spec.hu)


def test_series_and_volume_index_only_where_they_apply(tmp_path):
    vol = Volume(ct_values((4, 3, 2)), oblique_affine())
    save_volume(vol, tmp_path / "v.nii.gz")
    with pytest.raises(InputError) as err:
        load_volume(tmp_path / "v.nii.gz", series="1")
    assert_one_line_naming(err, "v.nii.gz")
    with pytest.raises(InputError):
        load_volume(tmp_path / "v.nii.gz", volume_index=1)
    assert load_volume(tmp_path / "v.nii.gz", volume_index=0).shape == (4, 3, 2)
    spec = write_ct_series(tmp_path / "s")
    with pytest.raises(InputError):
        load_volume(spec.folder, volume_index=2)


def test_save_volume_rejects_unknown_formats(tmp_path):
    vol = Volume(ct_values((4, 3, 2)), oblique_affine())
    for name in ["out.png", "out", "out.dcm"]:
        with pytest.raises(OutputError) as err:
            save_volume(vol, tmp_path / name)
        assert_one_line_naming(err, name)
    assert list(tmp_path.iterdir()) == []


def test_nan_voxels_are_written_as_air(tmp_path):
    arr = ct_values((4, 3, 2))
    arr[1, 1, 1] = np.nan
    save_volume(Volume(arr, oblique_affine()), tmp_path / "nan.nrrd")
    assert load_volume(tmp_path / "nan.nrrd").array[1, 1, 1] == -1024
