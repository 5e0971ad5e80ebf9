"""The ``clean_noise`` training preset: a common resampler plus white noise of a drawn sigma, seeded."""

from __future__ import annotations

import torch

from qdm_med.transforms import DegradationPipeline
from qdm_med.transforms.presets import CLEAN_NOISE_RANGE


def test_clean_noise_is_the_clean_resampler_plus_seeded_white_noise():
    hr = torch.rand(1, 64, 64)
    noisy, clean = DegradationPipeline("clean_noise", 4), DegradationPipeline("clean", 4)
    sigmas = []
    for seed in range(12):
        noisy.set_random_state(seed=seed)
        a = noisy(hr)
        params = noisy.last_params[0]
        assert CLEAN_NOISE_RANGE[0] <= params["noise_sigma"] <= CLEAN_NOISE_RANGE[1]
        clean.set_random_state(seed=seed)
        b = clean(hr)
        assert clean.last_params[0]["mode"] == params["mode"]  # the noise draws come after the resampler's
        resid = (a - b)[(b > 0.05) & (b < 0.95)]  # away from the clamp
        assert abs(float(resid.std()) - params["noise_sigma"]) < 0.25 * params["noise_sigma"] + 1e-4
        noisy.set_random_state(seed=seed)
        assert torch.equal(noisy(hr), a)
        sigmas.append(params["noise_sigma"])
    assert len(set(sigmas)) == len(sigmas)


def test_bicubic_noise_is_antialiased_bicubic_plus_seeded_white_noise():
    from qdm_med.transforms.resample import bicubic_downsample

    hr = torch.rand(1, 64, 64)
    pipe = DegradationPipeline("bicubic_noise", 4)
    clean = bicubic_downsample(hr[None], 4)[0].clamp(0, 1)
    for seed in range(4):
        pipe.set_random_state(seed=seed)
        a = pipe(hr)
        params = pipe.last_params[0]
        assert params["mode"] == "bicubic_aa" and CLEAN_NOISE_RANGE[0] <= params["noise_sigma"] <= CLEAN_NOISE_RANGE[1]
        resid = (a - clean)[(clean > 0.05) & (clean < 0.95)]
        assert abs(float(resid.std()) - params["noise_sigma"]) < 0.25 * params["noise_sigma"] + 2e-3


def test_aliased_is_unfiltered_point_sampling_and_aliased_noise_adds_the_noise():
    """``aliased``: F.interpolate's bicubic / bilinear with no pre-filter, so white noise (all of it above the
    LR Nyquist) keeps most of its amplitude, where an antialiased resampler averages it away."""
    import torch.nn.functional as F

    noise = (0.5 + 0.1 * torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    pipe, noisy = DegradationPipeline("aliased", 4), DegradationPipeline("aliased_noise", 4)
    modes = set()
    for seed in range(8):
        pipe.set_random_state(seed=seed)
        lr = pipe(noise)
        mode = pipe.last_params[0]["mode"]
        modes.add(mode)
        ref = F.interpolate(noise[None], scale_factor=0.25, mode=mode, align_corners=False)[0]
        torch.testing.assert_close(lr, ref.clamp(0, 1))
        assert float(lr.std()) > 0.05  # aliased, not averaged
        noisy.set_random_state(seed=seed)
        noisy(noise)
        params = noisy.last_params[0]
        assert params["mode"] == mode and CLEAN_NOISE_RANGE[0] <= params["noise_sigma"] <= CLEAN_NOISE_RANGE[1]
    assert modes == {"bicubic", "bilinear"}
    bic = DegradationPipeline("bicubic", 4)(noise)
    assert float(bic.std()) < 0.03
