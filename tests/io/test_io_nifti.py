"""NIfTI reading and writing: scaling, affine, int16 output, 2D/4D/RGB handling, corrupt files."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
from io_doubles import assert_one_line_naming, ct_values, oblique_affine

from qdm_med.errors import InputError, OutputError
from qdm_med.io import Volume, load_volume, save_volume


def _write(path, data, affine=None, **header):
    img = nib.Nifti1Image(data, oblique_affine() if affine is None else affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii"])
def test_round_trip_int16_hu_and_affine(tmp_path, name):
    hu = ct_values((9, 7, 4))
    hu[0, 0, 0], hu[1, 0, 0], hu[2, 0, 0] = 0.6, -1.4, 1e6  # rounding and clipping
    vol = Volume(hu, oblique_affine(), {"path": "x"})
    out = save_volume(vol, tmp_path / name)
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.int16
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.get_qform(), oblique_affine(), atol=1e-5)
    back = load_volume(out)
    assert back.array.dtype == np.float32 and back.array.shape == (9, 7, 4)
    expected = hu.copy()
    expected[0, 0, 0], expected[1, 0, 0], expected[2, 0, 0] = 1, -1, 32767
    np.testing.assert_array_equal(back.array, expected)
    np.testing.assert_allclose(back.affine, oblique_affine(), atol=1e-9)
    np.testing.assert_allclose(back.spacing, [0.8, 0.7, 2.5])
    assert back.meta["format"] == "nifti" and back.dicom_headers is None


def test_scaling_is_applied(tmp_path):
    stored = np.arange(24, dtype=np.int16).reshape(4, 3, 2)
    path = _write(tmp_path / "scaled.nii", stored)
    raw = bytearray(path.read_bytes())
    raw[112:120] = np.array([2.0, -1024.0], dtype="<f4").tobytes()  # scl_slope, scl_inter of the header
    path.write_bytes(bytes(raw))
    proxy = nib.load(str(path)).dataobj  # nibabel moves the header scaling onto the array proxy
    assert (proxy.slope, proxy.inter) == (2.0, -1024.0)
    np.testing.assert_array_equal(load_volume(path).array, stored * 2.0 - 1024.0)


def test_nibabel_and_simpleitk_written_files_give_the_same_affine(tmp_path):
    import SimpleITK as sitk

    from qdm_med.io.geometry import itk_from_affine

    affine = oblique_affine()
    hu = ct_values((6, 5, 3))
    _write(tmp_path / "nib.nii.gz", hu.astype(np.int16), affine)
    image = sitk.GetImageFromArray(np.transpose(hu.astype(np.int16), (2, 1, 0)))
    origin, spacing, direction = itk_from_affine(affine)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(tmp_path / "itk.nii.gz"))
    a, b = load_volume(tmp_path / "nib.nii.gz"), load_volume(tmp_path / "itk.nii.gz")
    np.testing.assert_allclose(a.affine, affine, atol=1e-5)
    np.testing.assert_allclose(b.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(a.array, b.array)
    # and our writer's output reads back in SimpleITK with the same LPS geometry
    save_volume(a, tmp_path / "ours.nii.gz")
    back = sitk.ReadImage(str(tmp_path / "ours.nii.gz"))
    np.testing.assert_allclose(back.GetOrigin(), origin, atol=1e-4)
    np.testing.assert_allclose(back.GetSpacing(), spacing, atol=1e-5)
    np.testing.assert_allclose(back.GetDirection(), direction, atol=1e-5)


def test_4d_needs_a_volume_index(tmp_path):
    data = np.stack([np.full((4, 3, 2), v, np.int16) for v in (10, 20, 30)], axis=-1)
    path = _write(tmp_path / "series4d.nii.gz", data)
    with pytest.raises(InputError) as err:
        load_volume(path)
    text = assert_one_line_naming(err, "series4d.nii.gz")
    assert "4D" in text and "--volume-index" in text
    vol = load_volume(path, volume_index=1)
    assert vol.array.shape == (4, 3, 2) and np.all(vol.array == 20)
    with pytest.raises(InputError) as err:
        load_volume(path, volume_index=3)
    assert_one_line_naming(err, "series4d.nii.gz")


def test_size_one_fourth_dimension_is_squeezed_silently(tmp_path, qdm_warnings):
    path = _write(tmp_path / "one.nii.gz", ct_values((4, 3, 2))[..., None].astype(np.int16))
    vol = load_volume(path)
    assert vol.array.shape == (4, 3, 2)
    assert qdm_warnings() == []


def test_2d_nifti_is_a_single_slice_volume(tmp_path):
    path = _write(tmp_path / "flat.nii.gz", ct_values((5, 4, 1))[..., 0].astype(np.int16), np.diag([0.5, 0.5, 1, 1]))
    vol = load_volume(path)
    assert vol.array.shape == (5, 4, 1)


def test_rgb_and_vector_nifti_are_refused(tmp_path):
    rgb = np.zeros((4, 3, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = _write(tmp_path / "colour.nii.gz", rgb)
    with pytest.raises(InputError) as err:
        load_volume(path)
    assert "RGB" in assert_one_line_naming(err, "colour.nii.gz")
    vec = _write(tmp_path / "vector.nii.gz", np.zeros((4, 3, 2, 1, 3), np.float32))
    with pytest.raises(InputError) as err:
        load_volume(vec)
    assert_one_line_naming(err, "vector.nii.gz")


def test_truncated_and_garbage_files(tmp_path):
    good = _write(tmp_path / "good.nii.gz", ct_values((20, 20, 10)).astype(np.int16))
    raw = gzip.decompress(good.read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    (tmp_path / "cut_stream.nii.gz").write_bytes(good.read_bytes()[:-200])
    (tmp_path / "junk.nii").write_bytes(b"not a nifti file at all" * 20)
    for name in ["cut.nii.gz", "cut_stream.nii.gz", "junk.nii"]:
        with pytest.raises(InputError) as err:
            load_volume(tmp_path / name)
        assert_one_line_naming(err, name)


def test_qform_sform_disagreement_warns_and_uses_sform(tmp_path, qdm_warnings):
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.int16), np.eye(4))
    other = np.diag([2.0, 2.0, 2.0, 1.0])
    img.set_qform(np.eye(4), code=1)
    img.set_sform(other, code=2)
    nib.save(img, str(tmp_path / "forms.nii.gz"))
    vol = load_volume(tmp_path / "forms.nii.gz")
    np.testing.assert_allclose(vol.affine, other)
    assert any("forms.nii.gz" in m and "sform" in m for m in qdm_warnings())
    assert vol.meta["warnings"]


def test_existing_output_refused_and_failed_write_leaves_nothing(tmp_path, monkeypatch):
    vol = Volume(ct_values((4, 3, 2)), oblique_affine())
    out = save_volume(vol, tmp_path / "out.nii.gz")
    before = out.read_bytes()
    with pytest.raises(OutputError) as err:
        save_volume(vol, out)
    assert_one_line_naming(err, "out.nii.gz")
    assert out.read_bytes() == before
    vol2 = Volume(vol.array + 5, vol.affine)
    save_volume(vol2, out, overwrite=True)
    np.testing.assert_array_equal(load_volume(out).array, vol2.array)

    def boom(img, filename):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    listing = sorted(os.listdir(tmp_path))
    with pytest.raises(RuntimeError):
        save_volume(vol, tmp_path / "new.nii.gz")
    assert sorted(os.listdir(tmp_path)) == listing
