"""``scripts/region_eval.py``: the LR kinds of the held-out-region protocol and its method queries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from script_loader import load_script


@pytest.fixture(scope="module")
def region_eval():
    return load_script("region_eval")


def _slice() -> np.ndarray:
    y, x = np.mgrid[0:64, 0:64]
    return np.where((x - 32) ** 2 + (y - 32) ** 2 < 400, 40.0, -1000.0).astype(np.float32)


@pytest.mark.parametrize("kind", ["pil_bicubic", "skimage_resize", "medical_test", "pil_bicubic_noise", "torch_bicubic", "area",
                                  "sitk_gauss_linear", "scipy_zoom", "area_noise"])
def test_lr_kinds_downscale_in_hu_and_are_seeded(region_eval, kind):
    hu = _slice()
    lr = region_eval.make_lr(hu, 4, kind, 12.0, seed=3)
    assert lr.shape == (16, 16) and lr.dtype == np.float32
    # the disc's centre keeps its HU (up to noise / blur), the corner stays air
    assert abs(float(lr[8, 8]) - 40.0) < 60.0 and float(lr[0, 0]) < -900.0
    np.testing.assert_array_equal(lr, region_eval.make_lr(hu, 4, kind, 12.0, seed=3))


def test_noise_kinds_add_noise_of_the_requested_level(region_eval):
    flat = np.zeros((256, 256), np.float32)
    noisy = region_eval.make_lr(flat, 4, "skimage_resize_noise", 12.0, seed=0)
    assert 10.0 < float(noisy.std()) < 14.0


def test_unknown_lr_kind_names_the_accepted_ones(region_eval):
    with pytest.raises(ValueError, match="use pil_bicubic, skimage_resize, torch_bicubic"):
        region_eval.make_lr(_slice(), 4, "opencv_area", 12.0, seed=0)


def test_sampler_parameters_in_a_method_query(region_eval):
    assert region_eval._sampler_value("1,2") == [1.0, 2.0]
    assert region_eval._sampler_value("6") == 6.0
    assert region_eval._sampler_value("polynomial") == "polynomial"


def test_bundle_method_flags_reach_the_pipeline(region_eval):
    repo = Path(__file__).resolve().parents[2]
    label, sr, window = region_eval.build_method(f"single:bundle={repo}/bundles/qdm_ct_x4?flip_ensemble=false&steps=1&stochastic=0", 4)
    assert label == "single" and window == (-1024.0, 2048.0)
    assert (sr.flip_ensemble, sr.stochastic, sr.steps, sr.sampler_params) == (False, False, 1, {})
    _, sr, _ = region_eval.build_method(f"bundle={repo}/bundles/qdm_ct_x4", 4)
    assert sr.flip_ensemble is True and sr.steps == 0  # the shipped fidelity mode


def test_other_libraries_lr_kinds_agree_on_the_block_geometry(region_eval):
    """Every kind samples at the LR pixel centres: on a smooth ramp (where no kernel's shape matters) each
    LR pixel equals the mean of its HR block; the aliased kinds keep a pixel-scale pattern the others remove."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    ramp = 3.0 * x + 2.0 * y
    block = ramp.reshape(16, 4, 16, 4).mean(axis=(1, 3))
    for kind in ("pil_bicubic", "skimage_resize", "torch_bicubic", "area", "sitk_gauss_linear", "scipy_zoom"):
        lr = region_eval.make_lr(ramp, 4, kind, 0.0, seed=0)
        np.testing.assert_allclose(lr[3:-3, 3:-3], block[3:-3, 3:-3], atol=0.05, err_msg=kind)
    noise = np.random.RandomState(0).normal(0.0, 100.0, (256, 256)).astype(np.float32)  # white: all of it above LR Nyquist
    spread = {k: float(region_eval.make_lr(noise, 4, k, 0.0, seed=0).std()) for k in
              ("pil_bicubic", "area", "sitk_gauss_linear", "torch_bicubic", "scipy_zoom")}
    assert max(spread["pil_bicubic"], spread["area"], spread["sitk_gauss_linear"]) <= 26.0  # averaged: ~100 / 4 or less
    assert min(spread["torch_bicubic"], spread["scipy_zoom"]) > 60.0, spread  # point-sampled: aliased


def test_main_scores_each_method_against_bicubic_with_the_project_scorer(region_eval, tmp_path, monkeypatch):
    import json
    import sys

    import nibabel as nib

    vol = np.stack([_slice().T + 30.0 * k for k in range(2)], axis=2)  # (X, Y, Z) HU
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.0, 1.0])), tmp_path / "ct.nii.gz")
    monkeypatch.setattr(sys, "argv", ["region_eval", "--scale", "4", "--hr", str(tmp_path / "ct.nii.gz"), "--method", "bicubic",
                                      "--method", "again:bicubic", "--lr-kinds", "pil_bicubic", "--out", str(tmp_path / "out")])
    monkeypatch.setattr("qdm_med.jobs.scoring.load_lpips_or_none", lambda *a, **k: None)  # scores without LPIPS weights
    region_eval.main()
    assert torch.is_grad_enabled()  # the script leaves no global autograd state behind (later tests train)
    rows = json.loads((tmp_path / "out" / "rows.json").read_text())
    assert [r["method"] for r in rows] == ["bicubic", "again"] and len(rows[0]["per_slice"]) == 2
    assert {"psnr_full", "ssim_full", "psnr_window", "psnr_soft", "ssim_soft"} <= set(rows[0]["per_slice"][0])
    assert rows[0]["lpips_soft"] == "unavailable" and rows[0]["psnr_full"] == rows[1]["psnr_full"] > 20.0
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| ct.nii.gz | pil_bicubic | again |" in table and "+0.00 (+0.00)" in table
