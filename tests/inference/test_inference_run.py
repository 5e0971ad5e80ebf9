from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_doubles import FakeLoadedBundle, FakeSRPipeline, oblique_affine, smooth_ct

from qdm_med.errors import ConfigError, InputError, OutputError, QDMError
from qdm_med.jobs.evaluate import evaluate
from qdm_med.jobs.mask import make_mask_picture
from qdm_med.jobs.resolve import default_bundle_dir
from qdm_med.jobs.upscale import upscale

run = SimpleNamespace(upscale=upscale, evaluate=evaluate, make_mask_picture=make_mask_picture, default_bundle_dir=default_bundle_dir)


def _write_nifti(path, array, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array).astype(np.int16), oblique_affine() if affine is None else affine), str(path))
    return path


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def _zoom_affine(affine, shape, s):
    from monai.data import MetaTensor
    from monai.transforms import Zoom

    mt = MetaTensor(torch.zeros((1, *shape)), affine=torch.as_tensor(affine))
    return np.asarray(Zoom(zoom=(s, s, 1), keep_size=False)(mt).affine, dtype=np.float64)


@pytest.fixture
def ct_file(tmp_path):
    return _write_nifti(tmp_path / "scan.nii.gz", smooth_ct((12, 10, 3)))


@pytest.mark.parametrize("s", [4, 8])
def test_upscale_nifti_default_output_and_geometry(tmp_path, ct_file, s):
    bundle = FakeLoadedBundle(FakeSRPipeline(s), scale=s)
    rep = run.upscale(ct_file, scale=s, bundle=bundle, device="cpu", quiet=True, report=tmp_path / "r.json")
    out = tmp_path / f"scan_sr_x{s}.nii.gz"
    assert rep["output"]["path"] == str(out) and out.exists()
    img = nib.load(str(out))
    assert img.shape == (12 * s, 10 * s, 3)
    np.testing.assert_allclose(img.affine, _zoom_affine(oblique_affine(), (12, 10, 3), s), atol=1e-4)
    saved = json.loads((tmp_path / "r.json").read_text())
    for key in ("versions", "device", "seed", "bundle", "sampler", "steps", "threshold", "timings", "mask_density", "macs"):
        assert key in saved, key
    assert set(saved["timings"]) >= {"load", "inference", "write"}
    assert saved["macs"] == 100 * 3 * 12 * 12  # padded to 12x12 (size_multiple 4), three slices
    assert saved["sampler"] == "fake" and saved["device"] == "cpu"
    assert not [p for p in _listing(tmp_path) if ".part" in p]


def test_png_in_png_out(tmp_path):
    from PIL import Image

    rgb = (np.random.RandomState(0).rand(10, 14, 3) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    rep = run.upscale(tmp_path / "photo.png", scale=4, bundle="bicubic", device="cpu", quiet=True)
    out = tmp_path / "photo_sr_x4.png"
    assert rep["output"]["path"] == str(out)
    back = np.asarray(Image.open(out))
    assert back.shape == (40, 56, 3)
    # bicubic of a photo: the mean colour is preserved within a few grey levels
    assert abs(back.astype(float).mean() - rgb.astype(float).mean()) < 4


def test_upscale_with_reference_reports_model_and_bicubic(tmp_path):
    hr = smooth_ct((24, 20, 2))
    lr = hr[::4, ::4, :]
    aff = oblique_affine()
    _write_nifti(tmp_path / "lr.nii.gz", lr, aff)
    _write_nifti(tmp_path / "hr.nii.gz", hr, aff)
    rep = run.upscale(tmp_path / "lr.nii.gz", scale=4, bundle="bicubic", ref=tmp_path / "hr.nii.gz", device="cpu",
                      quiet=True, lpips_weights=tmp_path / "absent.pt")
    m = rep["metrics"]
    assert m["model"]["overall"]["lpips"] == "unavailable" and "lpips" not in m and m["lpips_weights"] is None
    assert len(m["model"]["per_slice"]) == 2
    # the bicubic baseline through the pipeline is bicubic held above the input's minimum: a hair better
    model_psnr, bicubic_psnr = m["model"]["overall"]["psnr_window"], m["bicubic"]["overall"]["psnr_window"]
    assert bicubic_psnr <= model_psnr < bicubic_psnr + 0.1


def _truncated(tmp_path):
    p = _write_nifti(tmp_path / "cut.nii", smooth_ct((16, 16, 4)))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _four_d(tmp_path):
    return _write_nifti(tmp_path / "dyn.nii.gz", np.zeros((8, 8, 3, 2)))


def _rgb_volume(tmp_path):
    rgb = np.zeros((8, 8, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = tmp_path / "rgb.nii.gz"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(path))
    return path


def _wrong_ext(tmp_path):
    p = tmp_path / "scan.txt"
    p.write_text("not an image")
    return p


@pytest.mark.parametrize(
    "make,exc",
    [
        (lambda t: t / "missing.nii.gz", InputError),
        (_truncated, InputError),
        (_wrong_ext, InputError),
        (_four_d, InputError),
        (_rgb_volume, InputError),
    ],
    ids=["missing", "truncated", "wrong-extension", "4d", "rgb-volume"],
)
def test_bad_inputs_one_line_error_no_output(tmp_path, make, exc):
    path = make(tmp_path)
    before = _listing(tmp_path)
    with pytest.raises(exc) as err:
        run.upscale(path, scale=4, bundle=FakeLoadedBundle(FakeSRPipeline(4), scale=4), device="cpu", quiet=True,
                    report=tmp_path / "r.json", preview=tmp_path / "p.png")
    msg = str(err.value)
    assert "\n" not in msg and path.name in msg
    assert _listing(tmp_path) == before


def test_unsupported_scale_rejected_before_work(tmp_path, ct_file):
    pipe = FakeSRPipeline(8)
    before = _listing(tmp_path)
    with pytest.raises(ConfigError, match="x8") as err:
        run.upscale(ct_file, scale=4, bundle=FakeLoadedBundle(pipe, scale=8), device="cpu", quiet=True)
    assert "\n" not in str(err.value) and pipe.calls == []
    assert _listing(tmp_path) == before


def test_existing_output_refused_and_overwrite(tmp_path, ct_file):
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"keep me")
    pipe = FakeSRPipeline(4)
    with pytest.raises(OutputError, match="exists"):
        run.upscale(ct_file, out, scale=4, bundle=FakeLoadedBundle(pipe, 4), device="cpu", quiet=True)
    assert out.read_bytes() == b"keep me" and pipe.calls == []
    # an existing report also stops the run before any work
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(OutputError, match="r.json"):
        run.upscale(ct_file, tmp_path / "new.nii.gz", scale=4, bundle=FakeLoadedBundle(pipe, 4), device="cpu",
                    quiet=True, report=tmp_path / "r.json")
    assert pipe.calls == [] and not (tmp_path / "new.nii.gz").exists()
    run.upscale(ct_file, out, scale=4, bundle=FakeLoadedBundle(pipe, 4), device="cpu", quiet=True, overwrite=True)
    assert nib.load(str(out)).shape == (48, 40, 3)


def test_unwritable_output_folder(tmp_path, ct_file, monkeypatch):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    pipe = FakeSRPipeline(4)
    with pytest.raises(OutputError) as err:
        run.upscale(ct_file, blocker / "out.nii.gz", scale=4, bundle=FakeLoadedBundle(pipe, 4), device="cpu", quiet=True)
    assert "\n" not in str(err.value)
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) and mode == os.W_OK else real_access(p, mode))
    with pytest.raises(OutputError, match="not writable"):
        run.upscale(ct_file, ro / "out.nii.gz", scale=4, bundle=FakeLoadedBundle(pipe, 4), device="cpu", quiet=True)
    assert pipe.calls == [] and _listing(ro) == []


def test_interrupt_leaves_no_partial_output(tmp_path, ct_file, monkeypatch):
    """Ctrl-C mid-inference and mid-write: nothing under the output name, no temporary left."""

    class Interrupting(FakeSRPipeline):
        def forward(self, lr):
            if len(self.calls) == 1:
                raise KeyboardInterrupt
            return super().forward(lr)

    before = _listing(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run.upscale(ct_file, scale=4, bundle=FakeLoadedBundle(Interrupting(4), 4), device="cpu", quiet=True, batch_size=1)
    assert _listing(tmp_path) == before

    import qdm_med.io

    real_save = qdm_med.io.save_volume

    def save_then_interrupt(vol, path, overwrite=False):
        real_save(vol, path, overwrite=overwrite)
        assert os.path.exists(path)  # a complete file was there under the temporary name
        raise KeyboardInterrupt

    monkeypatch.setattr(qdm_med.io, "save_volume", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run.upscale(ct_file, scale=4, bundle=FakeLoadedBundle(FakeSRPipeline(4), 4), device="cpu", quiet=True)
    assert _listing(tmp_path) == before


def test_format_conversion_and_dicom_output(tmp_path, ct_file):
    rep = run.upscale(ct_file, scale=4, bundle=FakeLoadedBundle(FakeSRPipeline(4), 4), fmt="nrrd", device="cpu", quiet=True)
    assert rep["output"]["path"].endswith("scan_sr_x4.nrrd")
    from qdm_med.io import load_volume

    back = load_volume(rep["output"]["path"])
    assert back.array.shape == (48, 40, 3)
    np.testing.assert_allclose(back.affine, _zoom_affine(oblique_affine(), (12, 10, 3), 4), atol=1e-4)
    rep = run.upscale(ct_file, scale=4, bundle=FakeLoadedBundle(FakeSRPipeline(4), 4), fmt="dicom", device="cpu", quiet=True)
    folder = tmp_path / "scan_sr_x4"
    assert rep["output"]["path"] == str(folder) and folder.is_dir()
    back = load_volume(folder)
    assert back.array.shape == (48, 40, 3)
    np.testing.assert_allclose(back.affine, _zoom_affine(oblique_affine(), (12, 10, 3), 4), atol=1e-3)


def test_format_conflicts_are_config_errors(tmp_path, ct_file):
    with pytest.raises(ConfigError, match="png"):
        run.upscale(ct_file, scale=4, bundle="bicubic", fmt="png", device="cpu", quiet=True)
    with pytest.raises(ConfigError, match="extension"):
        run.upscale(ct_file, tmp_path / "o.nrrd", scale=4, bundle="bicubic", fmt="nifti", device="cpu", quiet=True)
    with pytest.raises(ConfigError, match="scale"):
        run.upscale(ct_file, scale=1, bundle="bicubic", device="cpu", quiet=True)


def test_evaluate_reports_model_and_bicubic(tmp_path):
    hr = _write_nifti(tmp_path / "hr.nii.gz", smooth_ct((32, 24, 3)))
    rep = run.evaluate(hr, scale=4, bundle=FakeLoadedBundle(FakeSRPipeline(4, offset=0.02), 4), device="cpu",
                       quiet=True, report=tmp_path / "eval.json", preview=tmp_path / "prev.png",
                       lpips_weights=tmp_path / "absent.pt")
    saved = json.loads((tmp_path / "eval.json").read_text())
    for who in ("model", "bicubic"):
        overall = saved["metrics"][who]["overall"]
        for key in ("psnr_window", "ssim_window", "psnr_full", "ssim_full", "psnr_window_volume"):
            assert isinstance(overall[key], float), (who, key)
        assert overall["lpips"] == "unavailable"
        assert [r["slice"] for r in saved["metrics"][who]["per_slice"]] == [0, 1, 2]
    # the fake adds a 0.02 offset on top of bicubic: it must score below bicubic
    assert saved["metrics"]["model"]["overall"]["psnr_window"] < saved["metrics"]["bicubic"]["overall"]["psnr_window"]
    assert saved["degradation"]["preset"] == "medical_test"
    assert (tmp_path / "prev.png").exists() and rep["preview"]["path"] == str(tmp_path / "prev.png")


def test_evaluate_subset_reproduces_full_run_slices(tmp_path):
    hr = _write_nifti(tmp_path / "hr.nii.gz", smooth_ct((16, 16, 3)))
    full = run.evaluate(hr, scale=4, bundle="bicubic", device="cpu", quiet=True, lpips_weights=tmp_path / "x.pt")
    part = run.evaluate(hr, scale=4, bundle="bicubic", device="cpu", quiet=True, slices=[2], lpips_weights=tmp_path / "x.pt")
    assert part["metrics"]["model"]["per_slice"][0] == full["metrics"]["model"]["per_slice"][2]


def test_mask_picture(tmp_path, ct_file):
    out = tmp_path / "mask.png"
    info = run.make_mask_picture(ct_file, 0.0, out, slice_index=1)
    assert out.exists() and info["density"] == 1.0 and info["slice"] == 1  # s = 0: everything active
    info = run.make_mask_picture(ct_file, 5.0, tmp_path / "mask2.png")
    assert info["density"] == 0.0  # no block can have a range of 5 on [-1, 1]
    with pytest.raises(OutputError):
        run.make_mask_picture(ct_file, 0.1, out)
    with pytest.raises(QDMError):
        run.make_mask_picture(tmp_path / "nope.nii.gz", 0.1, tmp_path / "m3.png")


def test_default_bundle_found_in_env_then_working_folder(tmp_path, monkeypatch):
    from qdm_med.bundle import locate_bundle
    from qdm_med.jobs.resolve import default_bundle_dir

    for root in ("env", "cwd/bundles"):
        (tmp_path / root / "qdm_ct_x8" / "configs").mkdir(parents=True)
        (tmp_path / root / "qdm_ct_x8" / "configs" / "train.json").write_text("{}")
    (tmp_path / "env" / "qdm_ct_x4" / "configs").mkdir(parents=True)  # no train.json: not a bundle
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.delenv("QDM_MED_BUNDLES", raising=False)
    assert default_bundle_dir("volume", 8).resolve() == (tmp_path / "cwd" / "bundles" / "qdm_ct_x8").resolve()
    monkeypatch.setenv("QDM_MED_BUNDLES", str(tmp_path / "env"))
    assert default_bundle_dir("volume", 8) == tmp_path / "env" / "qdm_ct_x8"
    # training's bundle_root resolves the same way (one search order for both)
    assert Path(locate_bundle("qdm_ct_x8")) == (tmp_path / "env" / "qdm_ct_x8").resolve()
    monkeypatch.chdir(tmp_path / "cwd" / "bundles" / "qdm_ct_x8")  # inside a bundle folder: that bundle
    assert Path(locate_bundle("qdm_ct_x8")) == (tmp_path / "cwd" / "bundles" / "qdm_ct_x8").resolve()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="qdm_ct_x16"):
        locate_bundle("qdm_ct_x16")
    with pytest.raises(ConfigError, match="no shipped bundle qdm_ct_x16"):
        default_bundle_dir("volume", 16)


def test_nrrd_detached_header_input_is_upscaled_to_nrrd(tmp_path):
    import SimpleITK as sitk

    arr = smooth_ct((12, 10, 3)).astype(np.int16)  # (X, Y, Z)
    img = sitk.GetImageFromArray(np.transpose(arr, (2, 1, 0)))
    img.SetSpacing((0.8, 0.7, 2.5))
    sitk.WriteImage(img, str(tmp_path / "ct.nhdr"))
    rep = run.upscale(tmp_path / "ct.nhdr", scale=4, bundle="bicubic", device="cpu", quiet=True)
    out = Path(rep["output"]["path"])
    assert out.name == "ct_sr_x4.nrrd" and out.is_file()
    from qdm_med.io import load_volume

    assert load_volume(out).array.shape == (48, 40, 3)
    with pytest.raises(ConfigError, match="unknown output extension"):
        run.upscale(tmp_path / "ct.nhdr", tmp_path / "o.nhdr", scale=4, bundle="bicubic", device="cpu", quiet=True)


def test_fidelity_mode_averages_mirrored_prior_passes_unless_disable_tta(tmp_path):
    """The shipped x4 bundle's default output is the mean of four mirrored passes of its prior (the report says so);
    ``qdm-med upscale --disable-tta`` writes the single pass."""
    from typer.testing import CliRunner

    from qdm_med.bundle import load_bundle
    from qdm_med.cli import app
    from qdm_med.transforms.window import FULL_HU_RANGE, HUWindow, InverseHUWindow

    bundle = Path(__file__).resolve().parents[2] / "bundles" / "qdm_ct_x4"
    lr = _write_nifti(tmp_path / "lr.nii.gz", smooth_ct((32, 32, 2)))  # a multiple of the model stride: no padding
    outs = {}
    for flag in ([], ["--disable-tta"]):
        out, rep = tmp_path / f"sr{len(flag)}.nii.gz", tmp_path / f"r{len(flag)}.json"
        args = ["upscale", str(lr), "--scale", "4", "--bundle", str(bundle), "-o", str(out), "--report", str(rep), "-q", "--device", "cpu"]
        result = CliRunner().invoke(app, args + flag)
        assert result.exit_code == 0, result.output
        assert json.loads(rep.read_text())["flip_ensemble"] is (not flag)
        outs[len(flag)] = nib.load(str(out)).get_fdata()
    loaded = load_bundle(bundle)
    prior, to_unit, to_hu = loaded.pipeline.prior, HUWindow(*loaded.window), InverseHUWindow(*loaded.window)
    x = to_unit(torch.from_numpy(np.asarray(nib.load(str(lr)).get_fdata(), np.float32)[:, :, 0].T))[None, None]
    with torch.no_grad():
        single, ens = (to_hu(y[0, 0].T).numpy() for y in (prior(x), prior.flip_ensemble(x)))
    # HU, int16 output like the input; the inferencer's HU floor (module docstring of qdm_med.inference.volume) moves a few voxels
    assert np.mean(np.abs(outs[1][:, :, 0] - single) <= 0.5) > 0.99 and np.mean(np.abs(outs[0][:, :, 0] - ens) <= 0.5) > 0.99
    assert np.mean(np.abs(outs[0][:, :, 0] - single) <= 0.5) < 0.9 and FULL_HU_RANGE[0] <= outs[0].min()
