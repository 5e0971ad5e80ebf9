"""Reading DICOM: slice ordering, HU, affine, series selection and every awkward-input case."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest
from io_doubles import assert_one_line_naming, write_ct_series
from pydicom.data import get_testdata_file

from qdm_med.errors import InputError
from qdm_med.io import list_dicom_series, load_volume

pytestmark = pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")


def test_series_sorted_by_position_with_hu_affine_and_headers(ct_series):
    vol = load_volume(ct_series.folder)
    assert vol.array.shape == (12, 10, 5) and vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, ct_series.hu)
    np.testing.assert_allclose(vol.affine, ct_series.affine, atol=1e-6)
    np.testing.assert_allclose(vol.spacing, [0.8, 0.7, 2.5], atol=1e-6)
    assert vol.meta["format"] == "dicom" and vol.meta["modality"] == "CT"
    assert vol.meta["series_uid"] == ct_series.series_uid and vol.meta["warnings"] == []
    assert len(vol.dicom_headers) == 5
    assert all("PixelData" not in h for h in vol.dicom_headers)
    # headers follow k (InstanceNumber was written descending, so k order reverses it)
    assert [int(h.InstanceNumber) for h in vol.dicom_headers] == [5, 4, 3, 2, 1]


def test_affine_agrees_with_monai_pydicomreader(tmp_path):
    from monai.transforms import LoadImage

    spec = write_ct_series(tmp_path / "s", instance_order="ascending")  # MONAI orders by InstanceNumber
    ours = load_volume(spec.folder)
    theirs = LoadImage(reader="PydicomReader", image_only=True)(str(spec.folder))
    np.testing.assert_allclose(theirs.affine.numpy(), ours.affine, atol=1e-5)
    np.testing.assert_allclose(theirs.numpy(), ours.array)


def test_rescale_slope_and_intercept_applied(tmp_path):
    spec = write_ct_series(tmp_path / "s", slope=0.5, intercept=-2048.0)
    np.testing.assert_allclose(load_volume(spec.folder).array, spec.hu)


def test_jpeg2000_series(tmp_path):
    from pydicom.uid import JPEG2000Lossless

    spec = write_ct_series(tmp_path / "j2k", shape=(64, 48, 3), transfer_syntax=JPEG2000Lossless)  # >= 32 px for 6 levels
    assert pydicom.dcmread(spec.files[0]).file_meta.TransferSyntaxUID == JPEG2000Lossless
    vol = load_volume(spec.folder)
    np.testing.assert_array_equal(vol.array, spec.hu)


def test_single_ct_small_file_is_a_one_slice_volume():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    vol = load_volume(path)
    assert vol.array.shape == (128, 128, 1)
    np.testing.assert_array_equal(vol.array[:, :, 0], ds.pixel_array.T.astype(np.float32) - 1024.0)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ vol.affine
    np.testing.assert_allclose(lps[:3, 3], [-158.135803, -179.035797, -75.699997], atol=1e-6)
    np.testing.assert_allclose(vol.spacing, [0.661468, 0.661468, 5.0], atol=1e-6)
    assert len(vol.dicom_headers) == 1


def test_single_file_in_a_folder(tmp_path):
    spec = write_ct_series(tmp_path / "one", shape=(6, 4, 1))
    vol = load_volume(spec.folder)
    assert vol.array.shape == (6, 4, 1)
    np.testing.assert_allclose(vol.affine, spec.affine, atol=1e-6)  # step 2.5 mm from SpacingBetweenSlices


def test_non_dicom_files_and_subfolders(tmp_path):
    spec = write_ct_series(tmp_path / "study" / "series")
    (tmp_path / "study" / "README.txt").write_text("notes")
    (tmp_path / "study" / ".DS_Store").write_bytes(b"\0" * 10)
    vol = load_volume(tmp_path / "study")
    np.testing.assert_array_equal(vol.array, spec.hu)


def test_several_series_listed_and_selected(tmp_path):
    a = write_ct_series(tmp_path / "mix", series_uid="1.2.840.99.1.111", series_number=2, description="Lung")
    b = write_ct_series(tmp_path / "mix", series_uid="1.2.840.99.2.222", series_number=5, description="Bone", shape=(12, 10, 3), seed=3)
    infos = list_dicom_series(tmp_path / "mix")
    assert [(i.series_uid, i.series_number, i.description, i.n_slices) for i in infos] == [
        ("1.2.840.99.1.111", 2, "Lung", 5),
        ("1.2.840.99.2.222", 5, "Bone", 3),
    ]
    with pytest.raises(InputError) as err:
        load_volume(tmp_path / "mix")
    text = assert_one_line_naming(err, "mix")
    for piece in ("--series", "1.2.840.99.1.111", "'Lung'", "5 slices", "1.2.840.99.2.222", "'Bone'", "3 slices"):
        assert piece in text
    np.testing.assert_array_equal(load_volume(tmp_path / "mix", series="1.2.840.99.2.222").array, b.hu)
    np.testing.assert_array_equal(load_volume(tmp_path / "mix", series="1.2.840.99.1").array, a.hu)  # prefix
    np.testing.assert_array_equal(load_volume(tmp_path / "mix", series="5").array, b.hu)  # SeriesNumber
    with pytest.raises(InputError) as err:
        load_volume(tmp_path / "mix", series="1.2.840.99")
    assert "matches 2 series" in assert_one_line_naming(err, "mix")
    with pytest.raises(InputError) as err:
        load_volume(tmp_path / "mix", series="9.9")
    assert "no DICOM series matches" in assert_one_line_naming(err, "mix")


def test_series_without_images_is_ignored(tmp_path):
    spec = write_ct_series(tmp_path / "s")
    report = pydicom.dcmread(spec.files[0], stop_before_pixels=True)
    for kw in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel"):
        delattr(report, kw)
    report.SeriesInstanceUID = "1.2.3.4"
    report.Modality = "SR"
    report.save_as(tmp_path / "s" / "report.dcm")
    np.testing.assert_array_equal(load_volume(spec.folder).array, spec.hu)


def test_missing_slice_is_an_error_unless_forced(tmp_path, qdm_warnings):
    spec = write_ct_series(tmp_path / "gap", shape=(12, 10, 6))
    spec.files[3].unlink()  # files are listed in k order (their names are shuffled)
    with pytest.raises(InputError) as err:
        load_volume(spec.folder)
    text = assert_one_line_naming(err, "gap")
    assert "missing slice" in text and "5 mm" in text and "--force" in text
    vol = load_volume(spec.folder, force=True)
    assert vol.array.shape == (12, 10, 5)
    np.testing.assert_allclose(vol.spacing[2], 2.5, atol=1e-6)  # the median step
    assert any("missing slice" in m for m in qdm_warnings())
    assert len(vol.meta["warnings"]) == 1


def test_gaps_found_even_when_most_steps_are_gaps(tmp_path):
    spec = write_ct_series(tmp_path / "gaps", shape=(12, 10, 7))
    spec.files[3].unlink()
    spec.files[5].unlink()  # steps 2.5, 2.5, 5, 5: the median would hide these gaps
    with pytest.raises(InputError) as err:
        load_volume(spec.folder)
    assert "about 2 missing slice(s)" in assert_one_line_naming(err, "gaps")


def test_uneven_spacing_warns_and_uses_the_mean(tmp_path, qdm_warnings):
    positions = [0.0, 2.5, 5.0, 8.0, 10.0]
    spec = write_ct_series(tmp_path / "uneven", positions=positions)
    vol = load_volume(spec.folder)
    assert vol.array.shape == (12, 10, 5)
    np.testing.assert_allclose(vol.spacing[2], 2.5, atol=1e-6)  # (10 - 0) / 4
    # first and last slices are placed exactly
    np.testing.assert_allclose(vol.affine @ [0, 0, 4, 1], spec.affine @ [0, 0, 10.0, 1], atol=1e-5)
    warned = [m for m in qdm_warnings() if "uneven slice spacing" in m]
    assert len(warned) == 1 and "uneven" in warned[0] and "\n" not in warned[0]
    # the headers keep each slice's true position
    lps_normal_positions = [float(h.ImagePositionPatient[2]) for h in vol.dicom_headers]
    assert len(set(np.round(np.diff(lps_normal_positions), 3))) > 1


def test_even_spacing_with_float_noise_is_silent(tmp_path, qdm_warnings):
    write_ct_series(tmp_path / "noisy", positions=[0.0, 2.5001, 4.9999, 7.5002, 10.0])
    load_volume(tmp_path / "noisy")
    assert qdm_warnings() == []


def test_mixed_orientations_refused(tmp_path):
    from io_doubles import rotation

    base = rotation(0.2, -0.15, 0.4)
    tilted = rotation(0.2, -0.15, 0.9)
    iops = [np.concatenate([base[:, 0], base[:, 1]])] * 4 + [np.concatenate([tilted[:, 0], tilted[:, 1]])]
    write_ct_series(tmp_path / "mixed", orientations=iops)
    with pytest.raises(InputError) as err:
        load_volume(tmp_path / "mixed")
    assert "mixed orientations" in assert_one_line_naming(err, "mixed")


def test_non_ct_modality_refused_unless_forced(tmp_path, qdm_warnings):
    spec = write_ct_series(tmp_path / "mr", modality="MR")
    with pytest.raises(InputError) as err:
        load_volume(spec.folder)
    text = assert_one_line_naming(err, "mr")
    assert "MR" in text and "--force" in text
    vol = load_volume(spec.folder, force=True)
    np.testing.assert_array_equal(vol.array, spec.hu)
    assert any("modality MR" in m for m in qdm_warnings())


def test_colour_dicom_refused(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.set_pixel_data(np.zeros((8, 6, 3), np.uint8), "RGB", 8)
    ds.save_as(tmp_path / "colour.dcm")
    with pytest.raises(InputError) as err:
        load_volume(tmp_path / "colour.dcm")
    assert "colour" in assert_one_line_naming(err, "colour.dcm")


def test_duplicate_positions(tmp_path, qdm_warnings):
    spec = write_ct_series(tmp_path / "dup")
    (spec.folder / "copy.dcm").write_bytes(spec.files[2].read_bytes())  # same instance twice: dropped
    vol = load_volume(spec.folder)
    assert vol.array.shape == (12, 10, 5)
    assert any("duplicate" in m for m in qdm_warnings())
    other = pydicom.dcmread(spec.files[2])
    other.SOPInstanceUID = pydicom.uid.generate_uid()
    other.file_meta.MediaStorageSOPInstanceUID = other.SOPInstanceUID
    other.save_as(spec.folder / "second_acq.dcm")
    with pytest.raises(InputError) as err:
        load_volume(spec.folder)
    assert "same position" in assert_one_line_naming(err, "dup")


def test_different_slice_sizes_refused(tmp_path):
    spec = write_ct_series(tmp_path / "sizes")
    ds = pydicom.dcmread(spec.files[0])
    ds.set_pixel_data(np.zeros((4, 4), np.int16), "MONOCHROME2", 16, generate_instance_uid=False)
    ds.save_as(spec.files[0])
    with pytest.raises(InputError) as err:
        load_volume(spec.folder)
    assert "different sizes" in assert_one_line_naming(err, "sizes")


def test_truncated_and_unreadable_files(tmp_path):
    spec = write_ct_series(tmp_path / "trunc")
    victim = spec.files[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 60])
    with pytest.raises(InputError) as err:
        load_volume(spec.folder)
    assert_one_line_naming(err, victim.name)
    single = tmp_path / "cut.dcm"
    single.write_bytes(data[:600])
    with pytest.raises(InputError) as err:
        load_volume(single)
    assert_one_line_naming(err, "cut.dcm")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x01" * 300)
    with pytest.raises(InputError) as err:
        load_volume(junk)
    assert_one_line_naming(err, "junk.dcm")


def test_empty_and_non_dicom_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as err:
        load_volume(tmp_path / "empty")
    assert_one_line_naming(err, "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("hello")
    with pytest.raises(InputError) as err:
        load_volume(tmp_path / "text")
    assert_one_line_naming(err, "text")


def test_missing_geometry_on_a_single_slice_warns(tmp_path, qdm_warnings):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds = copy.deepcopy(ds)
    del ds.ImageOrientationPatient
    del ds.ImagePositionPatient
    ds.save_as(tmp_path / "nogeo.dcm")
    vol = load_volume(tmp_path / "nogeo.dcm")
    assert vol.array.shape == (128, 128, 1)
    assert any("nogeo.dcm" in m for m in qdm_warnings())


def test_series_argument_checked_for_a_single_file(tmp_path):
    with pytest.raises(InputError):
        load_volume(get_testdata_file("CT_small.dcm"), series="9.9.9")
