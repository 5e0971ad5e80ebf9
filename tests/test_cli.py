"""The command line as a user runs it: help and version, `degrade` geometry, one-line errors, no partial output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from qdm_med import __version__
from qdm_med.cli import app

runner = CliRunner()

COMMANDS = [[], ["degrade"], ["upscale"], ["evaluate"], ["mask"], ["train"], ["demo"], ["data"], ["data", "fetch"], ["data", "list"],
            ["bench"]]


def _nifti(path, shape=(32, 24, 3), affine=None, seed=0):
    import nibabel as nib

    rng = np.random.RandomState(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    body = ((x - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2 < (min(shape[:2]) / 2.5) ** 2).astype(np.float32)
    arr = np.where(body[..., None] > 0, 40.0 + rng.randn(*shape) * 30, -1000.0).astype(np.int16)
    if affine is None:
        c, s = np.cos(0.1), np.sin(0.1)  # rotated in-plane, anisotropic, shifted
        affine = np.array([[-0.7 * c, 0.8 * s, 0, 120.0], [-0.7 * s, -0.8 * c, 0, 90.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return arr, affine


def _err_line(result) -> str:
    text = (result.stderr if hasattr(result, "stderr") else result.output).strip()
    return text


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_every_command_has_help(cmd):
    result = runner.invoke(app, cmd + ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"qdm-med {__version__}"


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_degrade_geometry_matches_monai_zoom(tmp_path, scale):
    from monai.data import MetaTensor
    from monai.transforms import Zoom

    from qdm_med.io import load_volume

    src = tmp_path / "hr.nii.gz"
    arr, affine = _nifti(src)
    out = tmp_path / "lr.nii.gz"
    result = runner.invoke(app, ["degrade", str(src), "-o", str(out), "--scale", str(scale), "-q"])
    assert result.exit_code == 0, result.output
    lr = load_volume(out)
    assert lr.array.shape == (32 // scale, 24 // scale, 3)
    expected = Zoom(zoom=(1 / scale, 1 / scale, 1), keep_size=False)(MetaTensor(torch.zeros(1, 32, 24, 3), affine=torch.as_tensor(affine)))
    assert tuple(expected.shape[1:]) == lr.array.shape
    np.testing.assert_allclose(lr.affine, expected.affine.numpy(), atol=1e-4)
    np.testing.assert_allclose(lr.spacing, np.asarray(load_volume(src).spacing) * [scale, scale, 1], rtol=1e-5)
    # a degraded CT keeps its HU level: mean within a few HU of the HR mean on the body
    assert abs(float(lr.array.mean()) - float(arr.mean())) < 60


def test_degrade_is_seeded(tmp_path):
    from qdm_med.io import load_volume

    src = tmp_path / "hr.nii.gz"
    _nifti(src)
    outs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = tmp_path / f"{name}.nii.gz"
        assert runner.invoke(app, ["degrade", str(src), "-o", str(out), "--scale", "4", "--seed", str(seed), "-q"]).exit_code == 0
        outs.append(load_volume(out).array)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


def test_degrade_dicom_output_reads_back(tmp_path):
    from qdm_med.io import load_volume

    src = tmp_path / "hr.nii.gz"
    _nifti(src)
    out = tmp_path / "lr_dicom"
    result = runner.invoke(app, ["degrade", str(src), "-o", str(out), "--scale", "4", "-q"])
    assert result.exit_code == 0, result.output
    back = load_volume(out)
    ref = load_volume(tmp_path / "hr.nii.gz")
    assert back.array.shape == (8, 6, 3)
    np.testing.assert_allclose(back.spacing, np.asarray(ref.spacing) * [4, 4, 1], rtol=1e-4)


def test_degrade_image(tmp_path):
    from PIL import Image

    src = tmp_path / "photo.png"
    Image.fromarray((np.random.RandomState(0).rand(48, 40, 3) * 255).astype(np.uint8)).save(src)
    out = tmp_path / "small.png"
    result = runner.invoke(app, ["degrade", str(src), "-o", str(out), "--scale", "4", "--preset", "natural", "-q"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (10, 12)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d: ["degrade", str(d / "missing.nii.gz"), "-o", str(d / "o.nii.gz")], "no such file"),
        (lambda d: ["degrade", str(d / "hr.nii.gz"), "-o", str(d / "o.nii.gz"), "--scale", "3"], "scale 3"),
        (lambda d: ["degrade", str(d / "hr.nii.gz"), "-o", str(d / "exists.nii.gz")], "exists"),
        (lambda d: ["degrade", str(d / "hr.nii.gz"), "-o", str(d / "o.txt")], "unsupported output"),
        (lambda d: ["degrade", str(d / "notes.txt"), "-o", str(d / "o.nii.gz")], "unsupported file type"),
        (lambda d: ["degrade", str(d / "broken.nii.gz"), "-o", str(d / "o.nii.gz")], "broken.nii.gz"),
        (lambda d: ["upscale", str(d / "missing.nii.gz")], "no such file"),
        (lambda d: ["evaluate", str(d / "hr.nii.gz"), "--scale", "3"], "x3"),
        (lambda d: ["upscale", str(d / "hr.nii.gz"), "--scale", "4", "--bundle", "bicubic", "--mode", "detail"],
         "no detail operating point"),
    ],
    ids=["missing", "bad-scale", "exists", "bad-output-ext", "bad-input-ext", "truncated", "upscale-missing", "evaluate-scale",
         "detail-without-detail-point"],
)
def test_bad_input_one_line_error_no_output(tmp_path, make_args, message):
    _nifti(tmp_path / "hr.nii.gz")
    (tmp_path / "exists.nii.gz").write_bytes(b"keep me")
    (tmp_path / "notes.txt").write_text("not a scan")
    good = (tmp_path / "hr.nii.gz").read_bytes()
    (tmp_path / "broken.nii.gz").write_bytes(good[: len(good) // 3])
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, make_args(tmp_path))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written
    assert (tmp_path / "exists.nii.gz").read_bytes() == b"keep me"


def test_interrupt_leaves_no_output(tmp_path, monkeypatch):
    import qdm_med.io

    src = tmp_path / "hr.nii.gz"
    _nifti(src)

    def half_write_then_interrupt(vol, path, overwrite=False):
        with open(path, "wb") as fh:  # the writer got half way when Ctrl-C came
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(qdm_med.io, "save_volume", half_write_then_interrupt)
    out = tmp_path / "lr.nii.gz"
    result = runner.invoke(app, ["degrade", str(src), "-o", str(out), "--scale", "4"])
    assert result.exit_code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hr.nii.gz"]


def _one_error_line(result) -> str:
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_hints_lead_somewhere_series_force_volume_index(tmp_path, monkeypatch):
    """Every option an error message names exists on upscale and evaluate, and does what it says."""
    import sys

    monkeypatch.setenv("QDM_MED_DATA", str(tmp_path / "no_corpus"))  # LPIPS off: its AlexNet needs larger images

    import nibabel as nib

    sys.path.insert(0, str(Path(__file__).parent / "io"))
    from io_doubles import write_ct_series

    from qdm_med.io import load_volume

    folder = tmp_path / "study"
    write_ct_series(folder, shape=(8, 6, 3), series_number=3, description="Head 5mm", seed=0)
    b = write_ct_series(folder, shape=(8, 6, 2), series_number=4, description="Head bone", seed=1)
    text = _one_error_line(runner.invoke(app, ["upscale", str(folder), "--scale", "4", "--bundle", "bicubic", "-q"]))
    assert "--series" in text and "SeriesDescription" in text
    assert not (tmp_path / "study_sr_x4").exists()
    for i, key in enumerate(("4", b.series_uid, "head BONE")):  # by number, UID, description
        out = tmp_path / f"o{i}.nii.gz"
        r = runner.invoke(app, ["upscale", str(folder), "--series", key, "--scale", "4", "--bundle", "bicubic", "-o", str(out), "-q"])
        assert r.exit_code == 0, r.output
        assert load_volume(out).array.shape == (32, 24, 2)
    r = runner.invoke(app, ["evaluate", str(folder), "--series", "3", "--scale", "2", "--bundle", "bicubic", "-q", "--device", "cpu"])
    assert r.exit_code == 0, r.output

    mr = tmp_path / "mr"
    write_ct_series(mr, shape=(8, 6, 2), modality="MR")
    text = _one_error_line(runner.invoke(app, ["upscale", str(mr), "--scale", "4", "--bundle", "bicubic", "-q"]))
    assert "--force" in text
    r = runner.invoke(app, ["upscale", str(mr), "--force", "--scale", "4", "--bundle", "bicubic", "-q", "-o", str(tmp_path / "mr.nii.gz")])
    assert r.exit_code == 0, r.output

    dyn = tmp_path / "dyn.nii.gz"
    data = np.stack([np.full((8, 6, 2), -1000 + 500 * t, np.int16) for t in range(3)], axis=-1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(dyn))
    text = _one_error_line(runner.invoke(app, ["upscale", str(dyn), "--scale", "4", "--bundle", "bicubic", "-q"]))
    assert "--volume-index 0..2" in text
    out = tmp_path / "t1.nii.gz"
    r = runner.invoke(app, ["upscale", str(dyn), "--volume-index", "1", "--scale", "4", "--bundle", "bicubic", "-q", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert np.all(load_volume(out).array == -500)


def test_nan_input_one_line_error_no_output(tmp_path, monkeypatch):
    import nibabel as nib

    arr = np.full((8, 6, 2), -1000.0, np.float32)
    arr[1, 2, 1] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    before = sorted(p.name for p in tmp_path.iterdir())
    for cmd in (["upscale", str(tmp_path / "nan.nii.gz"), "--scale", "4"], ["evaluate", str(tmp_path / "nan.nii.gz"), "--scale", "2"]):
        text = _one_error_line(runner.invoke(app, cmd + ["--bundle", "bicubic", "--report", str(tmp_path / "r.json"), "-q"]))
        assert "nan.nii.gz: 1 non-finite voxel(s) (1 NaN), first at voxel (1, 2, 1)" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    r = runner.invoke(app, ["upscale", str(tmp_path / "nan.nii.gz"), "--scale", "4", "--bundle", "bicubic", "--fill-nonfinite", "-1000",
                            "-q", "--report", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    import json

    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["command_line"] == (f"qdm-med upscale {tmp_path / 'nan.nii.gz'} --scale 4 --bundle bicubic --report {tmp_path / 'r.json'} "
                                   "--fill-nonfinite -1000.0")
    assert any("replaced by -1000" in w for w in rep["warnings"])


def test_degrade_non_axial_storage_degrades_the_axial_planes(tmp_path):
    import nibabel as nib

    arr, affine = _nifti(tmp_path / "axial.nii.gz", shape=(32, 24, 3))
    p = np.zeros((4, 4))
    p[3, 3] = p[2, 0] = p[1, 1] = p[0, 2] = 1  # stored (z, y, x)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), affine @ p), str(tmp_path / "zyx.nii.gz"))
    for name in ("axial", "zyx"):
        args = ["degrade", str(tmp_path / f"{name}.nii.gz"), "-o", str(tmp_path / f"{name}_lr.nii.gz"), "--scale", "4", "-q"]
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
    ax, zyx = nib.load(str(tmp_path / "axial_lr.nii.gz")), nib.load(str(tmp_path / "zyx_lr.nii.gz"))
    assert ax.shape == (8, 6, 3) and zyx.shape == (3, 6, 8)
    np.testing.assert_array_equal(np.asarray(zyx.dataobj), np.asarray(ax.dataobj).transpose(2, 1, 0))
    np.testing.assert_allclose(zyx.affine, ax.affine @ p, atol=1e-4)


def test_bench_rejects_unknown_suite_and_existing_output_before_any_work(tmp_path):
    r = runner.invoke(app, ["bench", "--suites", "threshold,warp", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "warp" in r.output and "Traceback" not in r.output
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "benchmarks.md").write_text("old")
    r = runner.invoke(app, ["bench", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "exists" in r.output
    assert (tmp_path / "b" / "benchmarks.md").read_text() == "old"
