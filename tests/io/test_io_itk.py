"""NRRD / MetaImage through SimpleITK: axis order, LPS->RAS geometry, round trips, 4D/RGB/corrupt files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk
from io_doubles import assert_one_line_naming, ct_values, oblique_affine

from qdm_med.errors import InputError, OutputError
from qdm_med.io import Volume, load_volume, save_volume
from qdm_med.io.geometry import itk_from_affine


def _sitk_image(array_xyz: np.ndarray, affine: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(np.transpose(array_xyz, (2, 1, 0)))
    origin, spacing, direction = itk_from_affine(affine)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


@pytest.mark.parametrize("name", ["ct.nrrd", "ct.mha"])
def test_reading_matches_simpleitk_index_to_point(tmp_path, name):
    hu = ct_values((7, 5, 3)).astype(np.int16)
    image = _sitk_image(hu, oblique_affine())
    sitk.WriteImage(image, str(tmp_path / name))
    vol = load_volume(tmp_path / name)
    assert vol.array.shape == (7, 5, 3) and vol.array.dtype == np.float32
    for idx in [(0, 0, 0), (6, 1, 2), (3, 4, 1)]:
        assert vol.array[idx] == image.GetPixel(idx)  # SimpleITK indexes (x, y, z) like our (i, j, k)
        lps = np.array(image.TransformIndexToPhysicalPoint(idx))
        np.testing.assert_allclose((vol.affine @ [*idx, 1.0])[:3], lps * [-1, -1, 1], atol=1e-9)
    assert vol.meta["format"] == ("nrrd" if name.endswith("nrrd") else "mha")


@pytest.mark.parametrize("name", ["out.nrrd", "out.mha"])
def test_round_trip(tmp_path, name):
    hu = ct_values((8, 6, 3))
    vol = Volume(hu, oblique_affine())
    save_volume(vol, tmp_path / name)
    assert sitk.ReadImage(str(tmp_path / name)).GetPixelID() == sitk.sitkInt16
    back = load_volume(tmp_path / name)
    np.testing.assert_array_equal(back.array, hu)
    np.testing.assert_allclose(back.affine, oblique_affine(), atol=1e-9)
    # the same volume through NIfTI gives the same geometry
    save_volume(vol, tmp_path / "same.nii.gz")
    np.testing.assert_allclose(load_volume(tmp_path / "same.nii.gz").affine, back.affine, atol=1e-5)


def test_mhd_with_separate_data_file_reads_and_missing_data_file_errors(tmp_path):
    hu = ct_values((4, 3, 2)).astype(np.int16)
    sitk.WriteImage(_sitk_image(hu, oblique_affine()), str(tmp_path / "pair.mhd"))
    np.testing.assert_array_equal(load_volume(tmp_path / "pair.mhd").array, hu)
    for f in tmp_path.glob("pair.*raw"):
        f.unlink()
    with pytest.raises(InputError) as err:
        load_volume(tmp_path / "pair.mhd")
    assert_one_line_naming(err, "pair.mhd")


def test_truncated_nrrd(tmp_path):
    sitk.WriteImage(_sitk_image(ct_values((16, 16, 8)).astype(np.int16), np.eye(4)), str(tmp_path / "full.nrrd"))
    data = (tmp_path / "full.nrrd").read_bytes()
    (tmp_path / "cut.nrrd").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        load_volume(tmp_path / "cut.nrrd")
    assert_one_line_naming(err, "cut.nrrd")


def test_rgb_volume_refused(tmp_path):
    rgb = np.zeros((2, 3, 4, 3), np.uint8)  # (z, y, x, rgb)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "colour.mha"))
    with pytest.raises(InputError) as err:
        load_volume(tmp_path / "colour.mha")
    assert "RGB" in assert_one_line_naming(err, "colour.mha")


def test_4d_image_needs_volume_index(tmp_path):
    frames = [sitk.GetImageFromArray(np.full((2, 3, 4), v, np.int16)) for v in (5, 6)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(tmp_path / "time.nrrd"))
    with pytest.raises(InputError) as err:
        load_volume(tmp_path / "time.nrrd")
    assert "--volume-index" in assert_one_line_naming(err, "time.nrrd")
    vol = load_volume(tmp_path / "time.nrrd", volume_index=1)
    assert vol.array.shape == (4, 3, 2) and np.all(vol.array == 6)
    with pytest.raises(InputError):
        load_volume(tmp_path / "time.nrrd", volume_index=2)


def test_2d_image_becomes_one_slice(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(12, dtype=np.int16).reshape(3, 4)), str(tmp_path / "flat.nrrd"))
    vol = load_volume(tmp_path / "flat.nrrd")
    assert vol.array.shape == (4, 3, 1)
    assert vol.array[1, 0, 0] == 1  # x=1, y=0


def test_writer_refuses_mhd_and_existing_files(tmp_path, monkeypatch):
    vol = Volume(ct_values((4, 3, 2)), oblique_affine())
    with pytest.raises(OutputError) as err:
        save_volume(vol, tmp_path / "two_files.mhd")
    assert_one_line_naming(err, "two_files.mhd")
    save_volume(vol, tmp_path / "a.nrrd")
    with pytest.raises(OutputError):
        save_volume(vol, tmp_path / "a.nrrd")

    def boom(*args, **kwargs):
        raise RuntimeError("simulated ITK failure")

    monkeypatch.setattr(sitk, "WriteImage", boom)
    listing = sorted(os.listdir(tmp_path))
    with pytest.raises(OutputError) as err:
        save_volume(vol, tmp_path / "b.mha")
    assert_one_line_naming(err, "b.mha")
    assert sorted(os.listdir(tmp_path)) == listing
