"""Derived DICOM series (SPEC section 9): read back with MONAI's PydicomReader and checked tag by tag."""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest
from io_doubles import assert_one_line_naming, ct_values, oblique_affine, write_ct_series
from pydicom.uid import ExplicitVRLittleEndian

from qdm_med.errors import InputError, OutputError
from qdm_med.io import Volume, load_volume, scaled_affine, write_dicom_series
from qdm_med.io.geometry import dicom_derived_position

pytestmark = pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")


def _upscale(vol: Volume, s: int) -> Volume:
    """Nearest-neighbour in-plane upscale with the matching geometry (stands in for the SR model)."""
    array = np.repeat(np.repeat(vol.array, s, axis=0), s, axis=1)
    return Volume(array, scaled_affine(vol.affine, s), dict(vol.meta), vol.dicom_headers)


def _read_monai(folder):
    from monai.transforms import LoadImage

    return LoadImage(reader="PydicomReader", image_only=True)(str(folder))


def _read_sorted(folder):
    datasets = [pydicom.dcmread(f) for f in sorted(folder.iterdir())]
    return sorted(datasets, key=lambda d: int(d.InstanceNumber))


@pytest.mark.parametrize("s", [2, 4])
def test_derived_series_round_trips_through_monai_with_spec9_tags(tmp_path, ct_series, s):
    src = load_volume(ct_series.folder)
    sr = _upscale(src, s)
    out = write_dicom_series(sr, tmp_path / "derived", s, src.dicom_headers, description_suffix=f" SR x{s}")
    assert out == tmp_path / "derived"

    img = _read_monai(out)
    assert tuple(img.shape) == (12 * s, 10 * s, 5)
    np.testing.assert_allclose(img.affine.numpy(), scaled_affine(src.affine, s), atol=1e-4)
    np.testing.assert_allclose(img.numpy(), sr.array, atol=0.5)

    derived = _read_sorted(out)
    assert len(derived) == 5
    series_uids = {d.SeriesInstanceUID for d in derived}
    assert len(series_uids) == 1 and ct_series.series_uid not in series_uids
    sops = [d.SOPInstanceUID for d in derived]
    assert len(set(sops)) == 5
    for k, (d, h) in enumerate(zip(derived, src.dicom_headers)):
        assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
        assert d.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert d.SOPInstanceUID != h.SOPInstanceUID
        assert int(d.SeriesNumber) == int(h.SeriesNumber) + 1000
        assert d.SeriesDescription == f"{h.SeriesDescription} SR x{s}"
        assert list(d.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert "super-resolution" in d.DerivationDescription
        (ref,) = d.SourceImageSequence
        assert ref.ReferencedSOPInstanceUID == h.SOPInstanceUID and ref.ReferencedSOPClassUID == h.SOPClassUID
        assert (int(d.Rows), int(d.Columns)) == (10 * s, 12 * s)
        np.testing.assert_allclose([float(v) for v in d.PixelSpacing], np.array([float(v) for v in h.PixelSpacing]) / s, rtol=1e-9)
        expected_ipp = dicom_derived_position(
            [float(v) for v in h.ImagePositionPatient], [float(v) for v in h.ImageOrientationPatient],
            [float(v) for v in h.PixelSpacing], s,
        )
        np.testing.assert_allclose([float(v) for v in d.ImagePositionPatient], expected_ipp, atol=1e-9)
        np.testing.assert_allclose([float(v) for v in d.ImageOrientationPatient], [float(v) for v in h.ImageOrientationPatient])
        assert "SmallestImagePixelValue" not in d and "LargestImagePixelValue" not in d
        for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientName", "PatientID", "StudyDate", "Modality"):
            assert d.get(keyword) == h.get(keyword), keyword
        assert (float(d.RescaleSlope), float(d.RescaleIntercept)) == (float(h.RescaleSlope), float(h.RescaleIntercept))
        assert d.pixel_array.dtype == np.int16 and int(d.PixelRepresentation) == 1
        np.testing.assert_array_equal(d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept), sr.array[:, :, k].T)
        assert int(d.InstanceNumber) == k + 1
    # and our own reader gives back the volume
    back = load_volume(out)
    np.testing.assert_array_equal(back.array, sr.array)
    np.testing.assert_allclose(back.affine, sr.affine, atol=1e-6)


def test_hu_rounding_and_fallback_rescale_when_values_overflow(tmp_path):
    spec = write_ct_series(tmp_path / "src", slope=0.1, intercept=-1024.0)
    src = load_volume(spec.folder)
    np.testing.assert_allclose(src.array, spec.hu, atol=1e-3)
    sr = _upscale(src, 2)
    sr.array[0, 0, 0] = 12.4
    write_dicom_series(sr, tmp_path / "kept", 2, src.dicom_headers)  # fits: the source rescale is kept
    assert all(float(d.RescaleSlope) == 0.1 for d in _read_sorted(tmp_path / "kept"))
    np.testing.assert_allclose(load_volume(tmp_path / "kept").array, sr.array, atol=0.05 + 1e-4)
    sr.array[1, 0, 0] = 3000.0  # stored (3000 + 1024) / 0.1 = 40240 does not fit int16
    write_dicom_series(sr, tmp_path / "out", 2, src.dicom_headers)
    derived = _read_sorted(tmp_path / "out")
    assert all((float(d.RescaleSlope), float(d.RescaleIntercept)) == (1.0, -1024.0) for d in derived)
    back = load_volume(tmp_path / "out").array
    expected = np.rint(sr.array)
    np.testing.assert_array_equal(back, expected)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2"])  # JPEG 2000 lossless, implicit VR
def test_compressed_or_implicit_source_gives_explicit_uncompressed_output(tmp_path, syntax):
    spec = write_ct_series(tmp_path / "src", shape=(64, 48, 2), transfer_syntax=syntax)
    assert pydicom.dcmread(spec.files[0]).file_meta.TransferSyntaxUID == syntax
    src = load_volume(spec.folder)
    write_dicom_series(_upscale(src, 2), tmp_path / "out", 2, src.dicom_headers)
    d = _read_sorted(tmp_path / "out")[0]
    assert d.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and not d.file_meta.TransferSyntaxUID.is_compressed
    assert d.get("Manufacturer") == "GE MEDICAL SYSTEMS"  # other source tags are carried over
    np.testing.assert_array_equal(load_volume(tmp_path / "out").array, _upscale(src, 2).array)


def test_series_from_nifti_without_source_headers(tmp_path):
    vol = Volume(ct_values((9, 7, 4)), oblique_affine(), {"path": str(tmp_path / "case_01.nii.gz"), "format": "nifti"})
    write_dicom_series(vol, tmp_path / "fromnii", 4, None)
    img = _read_monai(tmp_path / "fromnii")
    assert tuple(img.shape) == (9, 7, 4)
    np.testing.assert_allclose(img.affine.numpy(), vol.affine, atol=1e-5)
    np.testing.assert_allclose(img.numpy(), vol.array)
    derived = _read_sorted(tmp_path / "fromnii")
    assert {d.Modality for d in derived} == {"CT"}
    assert len({d.StudyInstanceUID for d in derived}) == 1 and len({d.FrameOfReferenceUID for d in derived}) == 1
    assert len({d.SeriesInstanceUID for d in derived}) == 1 and len({d.SOPInstanceUID for d in derived}) == 4
    d = derived[0]
    assert d.SOPClassUID == pydicom.uid.CTImageStorage and d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
    assert (float(d.RescaleSlope), float(d.RescaleIntercept)) == (1.0, -1024.0)
    assert d.SeriesDescription == "case_01 SR x4" and d.PatientID == "case_01"
    np.testing.assert_allclose(float(d.SliceThickness), 2.5)
    back = load_volume(tmp_path / "fromnii")
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-6)


def test_geometry_mismatch_refused(tmp_path, ct_series):
    src = load_volume(ct_series.folder)
    wrong = _upscale(src, 2)
    with pytest.raises(InputError) as err:
        write_dicom_series(wrong, tmp_path / "bad", 4, src.dicom_headers)  # claims x4, volume is x2
    assert_one_line_naming(err, "bad")
    with pytest.raises(InputError):
        write_dicom_series(wrong, tmp_path / "bad", 2, src.dicom_headers[:3])
    assert not (tmp_path / "bad").exists()


def test_existing_output_and_failed_write_leave_no_trace(tmp_path, ct_series, monkeypatch):
    src = load_volume(ct_series.folder)
    sr = _upscale(src, 2)
    out = write_dicom_series(sr, tmp_path / "out", 2, src.dicom_headers)
    first = sorted(os.listdir(out))
    with pytest.raises(OutputError) as err:
        write_dicom_series(sr, out, 2, src.dicom_headers)
    assert_one_line_naming(err, "out")
    assert sorted(os.listdir(out)) == first
    write_dicom_series(sr, out, 2, src.dicom_headers, overwrite=True)
    assert len(os.listdir(out)) == 5

    calls = {"n": 0}
    real_save = pydicom.Dataset.save_as

    def failing_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", failing_save)
    listing = sorted(os.listdir(tmp_path))
    with pytest.raises(OSError):
        write_dicom_series(sr, tmp_path / "new", 2, src.dicom_headers)
    assert sorted(os.listdir(tmp_path)) == listing
    calls["n"] = 0
    with pytest.raises(OSError):
        write_dicom_series(sr, out, 2, src.dicom_headers, overwrite=True)
    assert sorted(os.listdir(out)) == first  # the previous series is untouched


def test_downscaled_series_for_test_sets(tmp_path, ct_series):
    """A factor below 1 (``qdm-med degrade`` writing a low-resolution DICOM series) uses the same recipe."""
    src = load_volume(ct_series.folder)
    lr = Volume(src.array[::2, ::2], scaled_affine(src.affine, 0.5), dict(src.meta), src.dicom_headers)
    write_dicom_series(lr, tmp_path / "lr", 0.5, src.dicom_headers, description_suffix=" LR x2")
    img = _read_monai(tmp_path / "lr")
    assert tuple(img.shape) == (6, 5, 5)
    np.testing.assert_allclose(img.affine.numpy(), lr.affine, atol=1e-4)
    d = _read_sorted(tmp_path / "lr")[0]
    assert d.SeriesDescription.endswith(" LR x2")
    np.testing.assert_allclose([float(v) for v in d.PixelSpacing], [1.4, 1.6])
