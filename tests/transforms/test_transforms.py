"""Transforms: HU window, Real-ESRGAN kernels and degradation, presets, bicubic resampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qdm_med.errors import ConfigError
from qdm_med.transforms import (
    PRESETS,
    DegradationPipeline,
    HUWindow,
    HUWindowd,
    InverseHUWindow,
    RandBlur,
    RandCleanDownsample,
    RandJPEG,
    RandNoise,
    RandResize,
    bicubic_downsample,
    bicubic_upsample,
)
from qdm_med.transforms import kernels as K


# ---------------------------------------------------------------------------------------------- window
def test_hu_window_known_values_and_clip():
    w = HUWindow(-1024, 2048)
    np.testing.assert_allclose(w(np.array([-1024.0, 2048.0, 512.0, -3000.0, 3071.0])), [-1, 1, 0, -1, 1], atol=1e-6)
    t = w(torch.tensor([-1024.0, 2048.0]))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32


def test_hu_window_round_trip_inside_window():
    hu = np.random.RandomState(0).uniform(-1024, 2048, size=(2, 8, 8)).astype(np.float32)
    back = InverseHUWindow(-1024, 2048)(HUWindow(-1024, 2048)(hu))
    np.testing.assert_allclose(back, hu, atol=1e-3)
    d = HUWindowd("img")({"img": hu, "other": 1})
    np.testing.assert_array_equal(d["img"], HUWindow()(hu))
    assert d["other"] == 1


def test_hu_window_rejects_empty_window():
    with pytest.raises(ValueError):
        HUWindow(100, 100)


# --------------------------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("make", [
    lambda: K.gaussian_kernel(11, 2.0),
    lambda: K.gaussian_kernel(11, 2.5, 0.8, 0.7),
    lambda: K.generalized_gaussian_kernel(9, 1.5, 1.0, 0.3, 0.6),
    lambda: K.plateau_kernel(9, 1.5, 1.0, 0.3, 1.5),
    lambda: K.sinc_kernel(13, math.pi / 3),
])
def test_kernels_sum_to_one(make):
    k = make()
    assert k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert abs(k.sum() - 1) < 1e-9


def test_isotropic_gaussian_symmetric_and_closed_form():
    k = K.gaussian_kernel(7, 1.3)
    np.testing.assert_allclose(k, k.T)
    np.testing.assert_allclose(k, k[::-1, ::-1])
    r = np.arange(7) - 3
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.3**2))
    np.testing.assert_allclose(k, g / g.sum(), rtol=1e-12)


def test_anisotropic_rotated_by_90_degrees_is_transpose():
    a = K.gaussian_kernel(11, 3.0, 1.0, 0.0)
    b = K.gaussian_kernel(11, 3.0, 1.0, math.pi / 2)
    np.testing.assert_allclose(b, a.T, atol=1e-12)
    np.testing.assert_allclose(K.gaussian_kernel(11, 1.0, 3.0, 0.0), a.T, atol=1e-12)


def test_generalized_beta_one_is_gaussian():
    np.testing.assert_allclose(K.generalized_gaussian_kernel(9, 1.7, 0.9, 0.4, 1.0), K.gaussian_kernel(9, 1.7, 0.9, 0.4), atol=1e-12)


def test_sinc_cutoff_pi_is_nearly_a_delta():
    k = K.sinc_kernel(21, math.pi)
    assert k[10, 10] > 0.7
    assert k[10, 10] == k.max()


def test_kernel_size_must_be_odd():
    with pytest.raises(ValueError):
        K.gaussian_kernel(8, 1.0)


# ----------------------------------------------------------------------------------- random transforms
@pytest.mark.parametrize("make", [
    lambda: RandBlur(kernel_range=(3, 11), sinc_prob=0.3),
    lambda: RandResize(resize_range=(0.5, 1.5)),
    lambda: RandNoise(),
    lambda: RandJPEG((30, 95)),
    lambda: DegradationPipeline("medical", 4),
    lambda: DegradationPipeline("natural", 4),
    lambda: DegradationPipeline("clean", 4),
])
def test_random_transforms_reproducible(make):
    x = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(0))
    t = make()
    t.set_random_state(seed=5)
    a = t(x)
    t.set_random_state(seed=5)
    b = t(x)
    assert torch.equal(a, b)
    outs = []
    for seed in range(6):
        t.set_random_state(seed=seed)
        outs.append(t(x))
    assert any(o.shape != outs[0].shape or not torch.equal(o, outs[0]) for o in outs[1:])


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("scale", [4, 8])
@pytest.mark.parametrize("shape", [(1, 64, 64), (3, 64, 48)])
def test_pipeline_shapes_and_range(preset, scale, shape):
    p = DegradationPipeline(preset, scale)
    p.set_random_state(seed=1)
    lr = p(torch.rand(*shape))
    assert lr.shape == (shape[0], shape[1] // scale, shape[2] // scale)
    assert lr.dtype == torch.float32 and float(lr.min()) >= 0 and float(lr.max()) <= 1


def test_bicubic_preset_is_antialiased_bicubic():
    x = torch.rand(1, 32, 24)
    np.testing.assert_allclose(DegradationPipeline("bicubic", 4)(x), bicubic_downsample(x[None], 4)[0].clamp(0, 1))


def _clean(mode: str, scale: int, **kw) -> RandCleanDownsample:
    t = RandCleanDownsample(scale, modes=(mode,), probs=(1.0,), **kw)
    t.set_random_state(0)
    return t


def test_clean_area_is_the_block_mean():
    x = torch.rand(1, 32, 24, generator=torch.Generator().manual_seed(1))
    expected = x.reshape(1, 8, 4, 6, 4).mean(dim=(2, 4))
    np.testing.assert_allclose(_clean("area", 4)(x), expected, atol=1e-6)


def test_clean_bicubic_aa_is_the_bicubic_preset():
    x = torch.rand(1, 32, 24)
    np.testing.assert_allclose(_clean("bicubic_aa", 4)(x), bicubic_downsample(x[None], 4)[0], atol=1e-6)


def test_clean_gaussian_matches_skimage_resize_with_antialiasing():
    from skimage.transform import resize

    # skimage's default pre-filter sigma is (scale - 1) / 2 (factor 1), then linear sampling at the centres
    x = np.random.default_rng(0).random((64, 48)).astype(np.float32)
    ours = _clean("gaussian", 4, gaussian_range=(1.0, 1.0))(torch.from_numpy(x)[None])[0].numpy()
    ref = resize(x, (16, 12), order=1, anti_aliasing=True, mode="reflect")
    inner = (slice(2, -2), slice(2, -2))  # border handling differs (reflect vs symmetric padding)
    np.testing.assert_allclose(ours[inner], ref[inner], atol=2e-3)


@pytest.mark.parametrize("mode", ["bicubic_aa", "bilinear_aa", "area", "gaussian", "bicubic", "bilinear"])
def test_clean_modes_keep_constants_and_draw_all_modes(mode):
    np.testing.assert_allclose(_clean(mode, 8)(torch.full((1, 64, 64), 0.4)), 0.4, atol=1e-5)


def test_clean_preset_draws_every_resampler():
    p = DegradationPipeline("clean", 4)
    p.set_random_state(seed=0)
    seen = set()
    for _ in range(60):
        p(torch.rand(1, 16, 16))
        seen.add(p.last_params[0]["mode"])
    assert seen == {"bicubic_aa", "bilinear_aa", "area", "gaussian", "bicubic", "bilinear"}
    with pytest.raises(ValueError, match="modes from"):
        RandCleanDownsample(4, modes=("lanczos",), probs=(1.0,))


def test_external_presets_are_the_library_calls_and_closed_forms():
    from scipy import ndimage
    from skimage.transform import resize

    x = torch.rand(2, 32, 48, generator=torch.Generator().manual_seed(0))
    block = x.view(2, 8, 4, 12, 4).mean((2, 4))  # local mean == the 4x4 block mean
    np.testing.assert_allclose(DegradationPipeline("skimage_local_mean", 4)(x), block, atol=1e-6)
    sk = np.stack([resize(p.double().numpy(), (8, 12), order=1, anti_aliasing=True, preserve_range=True) for p in x])
    np.testing.assert_allclose(DegradationPipeline("skimage_resize", 4)(x), sk, atol=1e-6)
    zoom = ndimage.zoom(x[0].double().numpy(), 0.25, order=3, grid_mode=True, mode="nearest")
    np.testing.assert_allclose(DegradationPipeline("scipy_zoom", 4)(x)[0], np.clip(zoom, 0, 1), atol=1e-6)
    for kind in ("skimage_resize", "skimage_local_mean", "scipy_zoom", "skimage_resize_noise"):
        lr = DegradationPipeline(kind, 8)(torch.full((1, 64, 64), 0.4))
        assert lr.shape == (1, 8, 8) and lr.dtype == torch.float32
        if kind != "skimage_resize_noise":
            np.testing.assert_allclose(lr, 0.4, atol=1e-6)


def test_external_noise_preset_is_seeded_with_the_stated_sigma():
    from qdm_med.transforms import EXTERNAL_NOISE_SIGMA, ExternalDownsample

    p = DegradationPipeline("skimage_resize_noise", 2)
    flat = torch.full((1, 256, 256), 0.5)
    a = p.set_random_state(seed=1)(flat)
    b = p.set_random_state(seed=1)(flat)
    c = p.set_random_state(seed=2)(flat)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float((a - 0.5).std()) == pytest.approx(EXTERNAL_NOISE_SIGMA, rel=0.05)
    with pytest.raises(ValueError, match="use one of"):
        ExternalDownsample("opencv_area", 2)


def test_pipeline_errors_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="use one of"):
        DegradationPipeline("blurry", 4)
    with pytest.raises(ConfigError, match="not divisible"):
        DegradationPipeline("medical", 8)(torch.rand(1, 30, 32))


def test_jpeg_high_quality_is_close():
    x = torch.from_numpy(np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1)))[None]
    t = RandJPEG((95, 95))
    t.set_random_state(0)
    assert float((t(x) - x).abs().mean()) < 0.01


def test_gaussian_noise_level_on_flat_image():
    t = RandNoise(gaussian_noise_prob=1.0, noise_range=(20, 20), gray_noise_prob=0.0)
    t.set_random_state(0)
    x = torch.full((1, 128, 128), 0.5)
    std = float((t(x) - x).std())
    assert abs(std - 20 / 255) < 0.01


def test_poisson_noise_mean_free_and_scaled():
    # 256 distinct 8-bit levels -> vals = 256: noise = Poisson(256 x)/256 - x has variance x/256
    x = torch.from_numpy(np.tile(np.arange(256, dtype=np.float32) / 255, (128, 1)))[None]
    stds = []
    for level in (0.5, 2.0):
        t = RandNoise(gaussian_noise_prob=0.0, poisson_scale_range=(level, level), gray_noise_prob=0.0)
        t.set_random_state(0)
        n = t(x) - x
        assert abs(float(n.mean())) < 0.01 * level
        stds.append(float(n.std()))
    assert stds[0] == pytest.approx(0.5 * math.sqrt(float(x.mean()) / 256), rel=0.05)
    assert stds[1] == pytest.approx(4 * stds[0], rel=0.01)  # noise is linear in the scale  # noise is linear in the scale


def test_blur_preserves_flat_image_and_mean():
    t = RandBlur(kernel_range=(7, 7), sinc_prob=0.0)
    t.set_random_state(0)
    np.testing.assert_allclose(t(torch.full((1, 16, 16), 0.3)), 0.3, atol=1e-6)


# --------------------------------------------------------------------------------------------- pairs
def test_bicubic_up_and_down_shapes_and_constants():
    x = torch.full((2, 1, 8, 6), 0.25)
    np.testing.assert_allclose(bicubic_upsample(x, 4), 0.25, atol=1e-6)
    assert bicubic_upsample(x, 8).shape == (2, 1, 64, 48)
    assert bicubic_downsample(torch.rand(1, 3, 32, 24), 4).shape == (1, 3, 8, 6)
