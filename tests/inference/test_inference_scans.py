"""Real-scan situations of issue 17, each with real files (NIfTI via nibabel, DICOM via pydicom): non-axial
storage, non-finite voxels, the physical HU floor, ``evaluate`` on slice subsets and DICOM folders,
non-CT input, a complete derived DICOM series, and the audit report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from inference_doubles import FakeLoadedBundle, FakeSRPipeline

from qdm_med.errors import ConfigError, InputError
from qdm_med.jobs.evaluate import evaluate
from qdm_med.jobs.mask import make_mask_picture
from qdm_med.jobs.resolve import default_bundle_dir
from qdm_med.jobs.upscale import upscale

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from io_doubles import write_ct_series

run = SimpleNamespace(upscale=upscale, evaluate=evaluate, make_mask_picture=make_mask_picture, default_bundle_dir=default_bundle_dir)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _body(shape, seed=0, air=-1000.0) -> np.ndarray:
    """(X, Y, Z) HU: air around an elliptic body of soft tissue with a bone block; different per slice."""
    rng = np.random.RandomState(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    out = np.full(shape, air, np.float32)
    for k in range(shape[2]):
        body = (x / 0.8) ** 2 + (y / 0.7) ** 2 < 1
        out[body, k] = 40 + 30 * rng.randn(int(body.sum()))
        out[shape[0] // 3 : shape[0] // 3 + 2 + k % 2, shape[1] // 2 : shape[1] // 2 + 3, k] = 1500.0
    return out


# LPS-like axial reference: i -> left (RAS -x), j -> posterior (RAS -y), k -> superior
AXIAL_AFFINE = np.array([[-0.8, 0, 0, 60.0], [0, -0.7, 0, 50.0], [0, 0, 5.0, -20.0], [0, 0, 0, 1]])


def _stored(axial: np.ndarray, perm: tuple[int, int, int]):
    """The axial (X, Y, Z) scan stored with axes ``perm`` (stored axis a = axial axis perm[a]), same world."""
    arr = np.transpose(axial, perm)
    p = np.zeros((4, 4))
    p[3, 3] = 1
    for a, src in enumerate(perm):
        p[src, a] = 1  # stored voxel index a -> axial voxel index perm[a]
    return arr, AXIAL_AFFINE @ p


def _world_grid(affine: np.ndarray, shape) -> np.ndarray:
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1).reshape(-1, 3)
    return (affine[:3, :3] @ idx.T).T + affine[:3, 3]


@pytest.mark.parametrize("perm, codes", [((2, 1, 0), "SPL"), ((1, 2, 0), "PSL")], ids=["slice-axis-first", "sagittal-major"])
def test_non_axial_storage_upscales_the_axial_planes(tmp_path, perm, codes):
    axial = _body((16, 12, 4))
    nib.save(nib.Nifti1Image(axial.astype(np.int16), AXIAL_AFFINE), str(tmp_path / "axial.nii.gz"))
    arr, aff = _stored(axial, perm)
    nib.save(nib.Nifti1Image(arr.astype(np.int16), aff), str(tmp_path / "stored.nii.gz"))
    kw = dict(scale=4, bundle=FakeLoadedBundle(FakeSRPipeline(4), 4), device="cpu", quiet=True)
    run.upscale(tmp_path / "axial.nii.gz", tmp_path / "axial_sr.nii.gz", **kw)
    rep = run.upscale(tmp_path / "stored.nii.gz", tmp_path / "stored_sr.nii.gz", report=tmp_path / "r.json", **kw)
    ref, out = nib.load(str(tmp_path / "axial_sr.nii.gz")), nib.load(str(tmp_path / "stored_sr.nii.gz"))
    # written in the input's own storage order: the two in-plane axes grew x4, the slice axis kept 4 slices
    assert out.shape == tuple(np.array(ref.shape)[list(perm)])
    assert "".join(nib.aff2axcodes(out.affine)) == codes == rep["input"]["orientation"]
    # same world geometry and the same values voxel for voxel
    np.testing.assert_array_equal(np.transpose(np.asarray(ref.dataobj), perm), np.asarray(out.dataobj))
    ref_world = _world_grid(ref.affine, ref.shape).reshape(*ref.shape, 3)
    np.testing.assert_allclose(np.transpose(ref_world, (*perm, 3)).reshape(-1, 3), _world_grid(out.affine, out.shape), atol=1e-4)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["input"]["axial_frame"]["reoriented"] and saved["input"]["axial_frame"]["slice_axis"] == perm.index(2)


def test_oblique_beyond_tolerance_is_refused(tmp_path):
    from qdm_med.io.orientation import MAX_TILT_DEG

    # every voxel axis 54.7 degrees from superior-inferior (direction cosines' z components all 1/sqrt(3))
    r3 = np.ones(3) / np.sqrt(3)
    r1 = np.array([1.0, -1.0, 0.0]) / np.sqrt(2)
    rot = np.stack([r1, np.cross(r3, r1), r3])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.8, 0.8, 3.0])
    nib.save(nib.Nifti1Image(_body((12, 12, 3)).astype(np.int16), aff), str(tmp_path / "oblique.nii.gz"))
    before = _listing(tmp_path)
    with pytest.raises(InputError) as err:
        run.upscale(tmp_path / "oblique.nii.gz", scale=4, bundle="bicubic", device="cpu", quiet=True, report=tmp_path / "r.json")
    text = str(err.value)
    assert "\n" not in text and "oblique.nii.gz" in text and f"{MAX_TILT_DEG:g} degrees" in text and "54.7" in text
    assert _listing(tmp_path) == before
    # a 30-degree gantry tilt stays axial
    t = np.radians(30.0)
    aff[:3, :3] = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]]) @ np.diag([0.8, 0.8, 3.0])
    nib.save(nib.Nifti1Image(_body((12, 12, 3)).astype(np.int16), aff), str(tmp_path / "tilted.nii.gz"))
    rep = run.upscale(tmp_path / "tilted.nii.gz", scale=4, bundle="bicubic", device="cpu", quiet=True)
    assert rep["output"]["shape"] == [48, 48, 3]


def test_non_finite_voxels_refused_with_count_and_place_or_filled(tmp_path):
    arr = _body((12, 10, 3))
    arr[2, 3, 1] = np.nan
    arr[5, 5, 2] = np.inf
    arr[6, 5, 2] = np.nan
    nib.save(nib.Nifti1Image(arr, AXIAL_AFFINE), str(tmp_path / "nan.nii.gz"))
    before = _listing(tmp_path)
    with pytest.raises(InputError) as err:
        run.upscale(tmp_path / "nan.nii.gz", scale=4, bundle="bicubic", device="cpu", quiet=True, report=tmp_path / "r.json")
    text = str(err.value)
    assert "\n" not in text and "nan.nii.gz" in text
    assert "3 non-finite voxel(s) (2 NaN, 1 +inf)" in text and "(2, 3, 1)" in text and "--fill-nonfinite" in text
    assert _listing(tmp_path) == before
    rep = run.upscale(tmp_path / "nan.nii.gz", tmp_path / "filled.nii.gz", scale=4, bundle="bicubic", device="cpu", quiet=True,
                      fill_nonfinite=-1000.0)
    out = np.asarray(nib.load(str(tmp_path / "filled.nii.gz")).dataobj)
    assert out.max() <= 2048 and out.min() >= -1000  # no 32767 block (the model window ends at 2048), no -1024 from NaN
    clean = np.where(np.isfinite(arr), arr, -1000.0)  # the same scan with the fill value written in
    nib.save(nib.Nifti1Image(clean, AXIAL_AFFINE), str(tmp_path / "clean.nii.gz"))
    run.upscale(tmp_path / "clean.nii.gz", tmp_path / "clean_sr.nii.gz", scale=4, bundle="bicubic", device="cpu", quiet=True)
    np.testing.assert_array_equal(out, np.asarray(nib.load(str(tmp_path / "clean_sr.nii.gz")).dataobj))
    assert any("3 non-finite voxel(s)" in w and "replaced by -1000" in w for w in rep["warnings"])


def test_output_never_below_the_input_minimum(tmp_path):
    """Air at -1087 next to bone and -3024 padding: plain bicubic rings below both; the output does not."""
    from qdm_med.jobs.outputs import bicubic_hu

    arr = _body((24, 20, 2), air=-1087.0)
    arr[:3, :, :] = -3024.0  # outside the field of view
    arr[3:6, 8:12, :] = 2400.0  # dense bone right next to it
    nib.save(nib.Nifti1Image(arr.astype(np.int16), AXIAL_AFFINE), str(tmp_path / "lr.nii.gz"))
    rep = run.upscale(tmp_path / "lr.nii.gz", tmp_path / "sr.nii.gz", scale=8, bundle=FakeLoadedBundle(FakeSRPipeline(8), 8),
                      device="cpu", quiet=True)
    out = np.asarray(nib.load(str(tmp_path / "sr.nii.gz")).dataobj)
    bic = bicubic_hu(arr, 8)
    # what plain bicubic does: rings below the padding, and below air next to the bone (LR rows 5 and on)
    assert bic.min() < -3024 - 100 and bic[40:].min() < -1087 - 100
    assert out.min() >= -3024 and out[40:].min() >= -1087 and out.max() <= 2400
    assert rep["output"]["hu_range"][0] >= -3024


def test_dicom_round_trip_keeps_the_floor_and_is_a_complete_ct_series(tmp_path):
    """A DICOM source without the Type 2 attributes: the derived series has them (empty) and no value
    below the source minimum; dciodvfy finds no error where it is installed."""
    import pydicom

    from qdm_med.io import load_volume
    from qdm_med.io.dicom_write import TYPE2_KEYWORDS

    spec = write_ct_series(tmp_path / "src", shape=(16, 12, 3), angles=(0, 0, 0), intercept=-3024.0)
    for f in spec.files:  # padding, sharp bone, and no Type 2 attributes
        ds = pydicom.dcmread(f)
        px = ds.pixel_array.copy()
        px[:, :3] = 0  # stored 0 = -3024 HU
        px[4:7, 5:8] = 5500
        ds.PixelData = px.tobytes()
        for kw in TYPE2_KEYWORDS + ("FrameOfReferenceUID",):
            if kw in ds:
                delattr(ds, kw)
        ds.save_as(f)
    src = load_volume(tmp_path / "src")
    rep = run.upscale(tmp_path / "src", tmp_path / "out", scale=4, bundle=FakeLoadedBundle(FakeSRPipeline(4), 4), device="cpu", quiet=True)
    back = load_volume(tmp_path / "out")
    assert back.array.min() >= src.array.min() == -3024.0
    assert rep["output"]["hu_range"][0] >= -3024.0
    files = sorted((tmp_path / "out").iterdir())
    frame_uids = set()
    for f in files:
        ds = pydicom.dcmread(f)
        for kw in TYPE2_KEYWORDS:
            assert kw in ds, kw
        assert ds.PatientBirthDate == "" and ds.StudyID == "" and ds.AccessionNumber == ""
        assert ds.FrameOfReferenceUID and ds.StudyInstanceUID
        frame_uids.add(ds.FrameOfReferenceUID)
    assert len(frame_uids) == 1
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) not installed; attributes checked above")
    for f in (files[0], files[-1]):
        res = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
        errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], errors
    # the source itself is what dciodvfy complains about
    res = subprocess.run(["dciodvfy", str(spec.files[0])], capture_output=True, text=True)
    assert "Type 2 Required Element=<PatientBirthDate>" in res.stdout + res.stderr


def test_evaluate_slice_subset_keeps_its_geometry(tmp_path):
    hr = _body((32, 24, 6))
    nib.save(nib.Nifti1Image(hr.astype(np.int16), AXIAL_AFFINE), str(tmp_path / "hr.nii.gz"))
    run.evaluate(tmp_path / "hr.nii.gz", 8, bundle="bicubic", device="cpu", quiet=True, slices=[3, 4], output=tmp_path / "out.nii.gz",
                 lpips_weights=tmp_path / "absent.pt")
    out = nib.load(str(tmp_path / "out.nii.gz"))
    assert out.shape == (32, 24, 2)
    # voxel (0, 0, 0) of the output is HR voxel (0, 0, 3): 15 mm above slice 0
    np.testing.assert_allclose(out.affine, AXIAL_AFFINE @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3], [0, 0, 0, 1]]), atol=1e-4)
    with pytest.raises(ConfigError, match="non-contiguous"):
        run.evaluate(tmp_path / "hr.nii.gz", 8, bundle="bicubic", device="cpu", quiet=True, slices=[1, 4], output=tmp_path / "o2.nii.gz")
    assert not (tmp_path / "o2.nii.gz").exists()


def test_evaluate_on_a_dicom_folder_with_slices_and_dicom_output(tmp_path):
    import pydicom

    spec = write_ct_series(tmp_path / "hr", shape=(32, 24, 6))
    rep = run.evaluate(tmp_path / "hr", 4, bundle="bicubic", device="cpu", quiet=True, slices=[2, 3], output=tmp_path / "sr",
                       report=tmp_path / "r.json", lpips_weights=tmp_path / "absent.pt")
    assert [r["slice"] for r in rep["metrics"]["model"]["per_slice"]] == [2, 3]
    files = sorted((tmp_path / "sr").iterdir())
    assert len(files) == 2
    def along_normal(d) -> float:
        iop = np.asarray(d.ImageOrientationPatient, float)
        return float(np.asarray(d.ImagePositionPatient, float) @ np.cross(iop[:3], iop[3:]))

    src = sorted((pydicom.dcmread(f, stop_before_pixels=True) for f in spec.files), key=along_normal)
    for f, hr_ds in zip(files, src[2:4]):
        ds = pydicom.dcmread(f)
        # the SR slices sit exactly on the HR slices they stand for, at HR pixel size
        np.testing.assert_allclose(np.asarray(ds.ImagePositionPatient, float), np.asarray(hr_ds.ImagePositionPatient, float), atol=1e-3)
        np.testing.assert_allclose(np.asarray(ds.PixelSpacing, float), np.asarray(hr_ds.PixelSpacing, float), atol=1e-6)
        assert (ds.Rows, ds.Columns) == (24, 32) and ds.SourceImageSequence[0].ReferencedSOPInstanceUID == hr_ds.SOPInstanceUID
        assert "SR x4" in ds.SeriesDescription
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["output"]["shape"] == [32, 24, 2] and len(saved["output"]["spacing"]) == 3
    assert "lpips" not in saved["metrics"]


def test_dicom_output_error_names_the_output_not_a_part_file(tmp_path):
    """A derived series whose geometry does not fit its headers: the message names the output folder."""
    import dataclasses

    from qdm_med.errors import QDMError
    from qdm_med.io import load_volume
    from qdm_med.jobs.outputs import save_result

    write_ct_series(tmp_path / "src", shape=(12, 10, 3))
    vol = load_volume(tmp_path / "src")
    wrong = dataclasses.replace(vol, array=np.zeros((24, 20, 3), np.float32))  # affine not scaled x2
    with pytest.raises(QDMError) as err:
        save_result(wrong, tmp_path / "sr", "dicom", 2, overwrite=False)
    assert ".part" not in str(err.value) and str(tmp_path / "sr") in str(err.value)
    assert _listing(tmp_path) == ["src"]


def test_non_ct_volume_warns_in_output_and_report(tmp_path):
    mr = np.clip(_body((16, 12, 2), air=0.0) * 0 + np.linspace(0, 1500, 16)[:, None, None], 0, 1500).astype(np.int16)
    nib.save(nib.Nifti1Image(mr, AXIAL_AFFINE), str(tmp_path / "t1.nii.gz"))
    rep = run.upscale(tmp_path / "t1.nii.gz", scale=4, bundle="bicubic", device="cpu", quiet=True, report=tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert any("no voxel near air" in w and "t1.nii.gz" in w for w in saved["warnings"]) and rep["warnings"] == saved["warnings"]
    write_ct_series(tmp_path / "mr", shape=(12, 10, 2), modality="MR")
    with pytest.raises(InputError, match="--force"):
        run.upscale(tmp_path / "mr", tmp_path / "mr_sr.nii.gz", scale=4, bundle="bicubic", device="cpu", quiet=True)
    rep = run.upscale(tmp_path / "mr", tmp_path / "mr_sr.nii.gz", scale=4, bundle="bicubic", device="cpu", quiet=True, force=True)
    assert sum("modality MR" in w for w in rep["warnings"]) == 1


def test_report_is_auditable(tmp_path):
    import hashlib

    from qdm_med.jobs.resolve import bundle_identity

    arr = _body((12, 10, 3))
    nib.save(nib.Nifti1Image(arr.astype(np.int16), AXIAL_AFFINE), str(tmp_path / "ct.nii.gz"))
    rep = run.upscale(tmp_path / "ct.nii.gz", scale=4, bundle=FakeLoadedBundle(FakeSRPipeline(4), 4), device="cpu", quiet=True,
                      batch_size=2, seed=5, report=tmp_path / "r.json", command_line="qdm-med upscale ct.nii.gz --scale 4")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["command_line"] == "qdm-med upscale ct.nii.gz --scale 4" and saved["created"].endswith("+00:00")
    assert saved["batch_size"] == 2 and saved["seed"] == 5 and saved["warnings"] == []
    assert saved["input"]["orientation"] == "LPS"
    np.testing.assert_allclose(saved["input"]["affine"], AXIAL_AFFINE)
    out = np.asarray(nib.load(rep["output"]["path"]).dataobj)
    assert saved["output"]["hu_range"] == pytest.approx([out.min(), out.max()], abs=0.5)
    for key in ("version", "weights_sha256"):
        assert key in saved["bundle"]
    shipped = Path(run.default_bundle_dir("volume", 8))
    ident = bundle_identity(str(shipped))
    assert ident["weights_sha256"] == hashlib.sha256((shipped / "models" / "model.pt").read_bytes()).hexdigest()
    assert ident["version"] == json.loads((shipped / "configs" / "metadata.json").read_text())["version"]


def test_16_bit_gray_png_keeps_its_bit_depth(tmp_path):
    from PIL import Image

    x, y = np.meshgrid(np.linspace(0, 1, 20), np.linspace(0, 1, 16))
    img = np.rint(33984 * (0.5 + 0.5 * np.sin(6 * x) * np.cos(4 * y))).astype(np.uint16)
    Image.fromarray(img).save(tmp_path / "g16.png")
    rep = run.upscale(tmp_path / "g16.png", scale=4, bundle="bicubic", device="cpu", quiet=True)
    out = Image.open(rep["output"]["path"])
    back = np.asarray(out)
    assert out.mode.startswith("I;16") and back.dtype == np.uint16 and back.shape == (64, 80)
    assert rep["input"]["bit_depth"] == 16 == rep["output"]["bit_depth"]
    assert 33000 < int(back.max()) <= 34100 and back.min() < 1000  # not 0..137
    assert len(np.unique(back)) > 1000  # 16-bit levels, not 256


def test_rgba_png_carries_its_alpha(tmp_path):
    from PIL import Image

    rgba = np.zeros((16, 20, 4), np.uint8)
    rgba[..., :3] = (np.random.RandomState(1).rand(16, 20, 3) * 255).astype(np.uint8)
    rgba[:, :10, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(rgba).save(tmp_path / "logo.png")
    rep = run.upscale(tmp_path / "logo.png", scale=4, bundle="bicubic", device="cpu", quiet=True)
    out = Image.open(rep["output"]["path"])
    assert out.mode == "RGBA" and out.size == (80, 64) and rep["output"]["alpha"] is True
    alpha = np.asarray(out)[..., 3]
    assert np.all(alpha[:, :36] == 255) and np.all(alpha[:, 44:] == 0)  # bicubic alpha, edges in between
    rep = run.upscale(tmp_path / "logo.png", tmp_path / "logo.jpg", scale=4, bundle="bicubic", device="cpu", quiet=True)
    assert Image.open(tmp_path / "logo.jpg").mode == "RGB"
    assert any("alpha" in w and "dropped" in w for w in rep["warnings"])


def test_sagittal_dicom_series_upscales_axially_and_keeps_its_study(tmp_path):
    """A sagittal DICOM series (slices along left-right): the axial planes are super-resolved, the NIfTI and
    the derived DICOM series hold the same world geometry, and the series stays in the source's study."""
    import pydicom

    from qdm_med.io import load_volume

    write_ct_series(tmp_path / "sag", shape=(12, 10, 4), angles=(-np.pi / 2, 0, np.pi / 2), step=3.0)
    src = load_volume(tmp_path / "sag")
    assert "".join(nib.aff2axcodes(src.affine)) == "PIR"
    kw = dict(scale=4, bundle=FakeLoadedBundle(FakeSRPipeline(4), 4), device="cpu", quiet=True)
    rep = run.upscale(tmp_path / "sag", tmp_path / "sag.nii.gz", **kw)
    assert rep["output"]["shape"] == [48, 10, 16]  # A-P and L-R grew, superior-inferior kept
    run.upscale(tmp_path / "sag", tmp_path / "sag_dcm", **kw)
    nifti, dicom = load_volume(tmp_path / "sag.nii.gz"), load_volume(tmp_path / "sag_dcm")
    assert dicom.array.shape == (48, 10, 16)
    np.testing.assert_allclose(dicom.affine, nifti.affine, atol=1e-3)
    np.testing.assert_allclose(dicom.array, nifti.array, atol=0.5)
    first = pydicom.dcmread(sorted((tmp_path / "sag").iterdir())[0], stop_before_pixels=True)
    out = pydicom.dcmread(sorted((tmp_path / "sag_dcm").iterdir())[0], stop_before_pixels=True)
    for kw_ in ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert out[kw_].value == first[kw_].value, kw_
    assert out.SeriesInstanceUID != first.SeriesInstanceUID and out.SeriesNumber == first.SeriesNumber + 1000


def test_small_images_skip_lpips_with_a_warning(tmp_path):
    """LPIPS weights present but a 24 x 16 evaluation: the scores say unavailable, the report says why."""
    from qdm_med.jobs.scoring import default_lpips_path
    from qdm_med.metrics.lpips_offline import load_lpips

    weights = default_lpips_path()
    if load_lpips(weights) is None:
        pytest.skip("LPIPS weights not fetched (qdm-med data fetch)")
    nib.save(nib.Nifti1Image(_body((24, 16, 2)).astype(np.int16), AXIAL_AFFINE), str(tmp_path / "small.nii.gz"))
    rep = run.evaluate(tmp_path / "small.nii.gz", 4, bundle="bicubic", device="cpu", quiet=True, lpips_weights=weights)
    assert rep["metrics"]["model"]["overall"]["lpips"] == "unavailable" and rep["metrics"]["lpips_weights"] is None
    assert any("LPIPS not computed" in w for w in rep["warnings"])
