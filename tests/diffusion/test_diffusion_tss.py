from __future__ import annotations

import numpy as np
import pytest
import torch

from qdm_med.diffusion import TDSSampler, TSSSampler, make_plan, make_sampler
from qdm_med.diffusion.tss import (
    gaussian_blur,
    local_variance_map,
    logistic_warp,
    polynomial_warp,
    respaced_timesteps,
    sds_variance_map,
    trigonometric_warp,
)
from qdm_med.errors import ConfigError


@pytest.mark.parametrize(
    "steps,T,expected",
    [
        (15, 15, list(range(14, -1, -1))),
        (7, 15, [14, 11, 9, 7, 4, 2, 0]),
        (5, 15, [14, 10, 7, 3, 0]),
        (4, 15, [14, 9, 4, 0]),
        (2, 15, [14, 0]),
        (1, 15, [14]),
        (4, 1000, [999, 666, 333, 0]),
    ],
)
def test_respacing_indices(steps, T, expected):
    assert respaced_timesteps(steps, T) == expected


def test_respacing_starts_at_prior_ends_at_zero_and_is_the_shifted_paper_formula():
    for T in (2, 5, 15, 50):
        for steps in range(2, T + 1):
            ts = respaced_timesteps(steps, T)
            assert ts[0] == T - 1 and ts[-1] == 0 and len(ts) == steps
            assert all(a > b for a, b in zip(ts, ts[1:]))
            # floor(k T / T') with T -> T-1 intervals and T' -> T'-1 intervals, k counted from 0.
            assert ts[::-1] == [int(np.floor(k * (T - 1) / (steps - 1) + 1e-12)) for k in range(steps)]
    with pytest.raises(ConfigError):
        respaced_timesteps(16, 15)
    with pytest.raises(ConfigError):
        respaced_timesteps(0, 15)


@pytest.mark.parametrize("steps", [2, 4, 7, 15])
def test_tds_with_n_one_is_uniform(steps):
    uni = make_plan("uniform", steps, 15)
    tds = make_plan("tds", steps, 15, n=1.0, a=0.37)
    assert tds.describe() == uni.describe()


def test_polynomial_warp_shape():
    span = 14.0
    t = torch.linspace(0, span, 1401, dtype=torch.float64)
    for a, n in [(7.0, 1.5), (5.0, 2.2), (9.1, 1.2)]:
        f = polynomial_warp(t, a, n, span)
        assert float(f[0]) == 0.0 and float(f[-1]) == pytest.approx(span, abs=1e-12)
        assert float(polynomial_warp(a, a, n, span)) == pytest.approx(a, abs=1e-12)
        d = torch.diff(f)
        assert bool((d > 0).all())  # monotone
        # crowding: the warp is flat at both ends and steeper than identity around a
        dt = float(torch.diff(t)[0])
        assert float(d[:10].mean()) < 0.6 * dt and float(d[-10:].mean()) < 0.6 * dt
        assert float(d.max()) == pytest.approx(n * dt, rel=1e-2)  # slope n at the breakpoint
        assert bool((f[t < a] <= t[t < a] + 1e-12).all()) and bool((f[t > a] >= t[t > a] - 1e-12).all())
    assert torch.allclose(polynomial_warp(t, 6.0, 1.0, span), t)


def test_tds_crowds_both_ends():
    uni = make_plan("uniform", 7, 15).describe()
    tds = make_plan("tds", 7, 15, a=0.5, n=2.0).describe()
    assert tds[0] == 14.0 and tds[-1] == 0.0
    assert all(a > b for a, b in zip(tds, tds[1:]))
    gaps_u = -np.diff(uni)
    gaps_t = -np.diff(tds)
    assert gaps_t[0] < gaps_u[0] and gaps_t[-1] < gaps_u[-1]  # smaller first and last steps
    assert max(gaps_t) > max(gaps_u)  # larger steps in the middle


@pytest.mark.parametrize("warp", ["trigonometric", "logistic"])
def test_alternative_warps(warp):
    span = 14.0
    t = torch.linspace(0, span, 1401, dtype=torch.float64)
    f = trigonometric_warp(t, 6.0, span) if warp == "trigonometric" else logistic_warp(t, 6.0, span)
    assert float(f[0]) == pytest.approx(0.0, abs=1e-12) and float(f[-1]) == pytest.approx(span, abs=1e-12)
    d = torch.diff(f)
    assert bool((d > 0).all())
    assert float(d[0]) < float(d.max()) / 5 and float(d[-1]) < float(d.max()) / 5  # flat at both ends
    assert float(d.max() - d.min()) > 0 and float(torch.diff(d).abs().max()) < 1e-3  # continuous slope (C1)
    plan = make_plan("tds", 6, 15, warp=warp, a=0.43)
    ts = plan.describe()
    assert ts[0] == 14.0 and ts[-1] == 0.0 and all(a > b for a, b in zip(ts, ts[1:]))


def _brute_local_variance(img: np.ndarray, field: int) -> np.ndarray:
    r = field // 2
    p = np.pad(img, r, mode="reflect")
    out = np.empty_like(img)
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            out[i, j] = p[i : i + field, j : j + field].var()
    return out


def test_local_variance_matches_brute_force():
    rng = np.random.default_rng(0)
    img = rng.uniform(-1, 1, (11, 13))
    got = local_variance_map(torch.from_numpy(img)[None, None], field=5)
    np.testing.assert_allclose(got[0, 0].numpy(), _brute_local_variance(img, 5), atol=1e-12)
    rgb = rng.uniform(-1, 1, (3, 9, 9))
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    got = local_variance_map(torch.from_numpy(rgb)[None], field=3)
    np.testing.assert_allclose(got[0, 0].numpy(), _brute_local_variance(luma, 3), atol=1e-12)
    # Field larger than the image: the radius is clamped, still a valid variance map.
    assert local_variance_map(torch.from_numpy(img)[None, None], field=33).shape == (1, 1, 11, 13)


def test_gaussian_blur_preserves_constants_and_mass():
    x = torch.full((1, 1, 10, 12), 0.3, dtype=torch.float64)
    assert torch.allclose(gaussian_blur(x, 2.0), x)
    d = torch.zeros(1, 1, 31, 31, dtype=torch.float64)
    d[0, 0, 15, 15] = 1.0
    b = gaussian_blur(d, 1.5)
    assert float(b.sum()) == pytest.approx(1.0, abs=1e-12) and float(b[0, 0, 15, 15]) == float(b.max())
    assert torch.equal(gaussian_blur(d, 0.0), d)


def test_sds_variance_map():
    flat = torch.full((2, 1, 24, 24), 0.25)
    assert bool((sds_variance_map(flat) == 0).all())
    img = torch.zeros(1, 1, 48, 48)
    img[0, 0, 28:44, 28:44] = torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    v = sds_variance_map(img, field=9, blur_sigma=1.0)
    assert float(v.min()) == 0.0 and float(v.max()) == pytest.approx(1.0)
    assert float(v[0, 0, 32:40, 32:40].mean()) > 0.5 and float(v[0, 0, :12, :12].max()) == 0.0
    up = sds_variance_map(img, field=9, blur_sigma=1.0, size=(96, 96))
    assert up.shape == (1, 1, 96, 96) and float(up.min()) >= 0.0 and float(up.max()) <= 1.0


def test_sds_with_flat_variance_equals_tds():
    sampler = TSSSampler(6, n_range=(1.2, 2.0), a_range=(0.4, 0.6))
    v = torch.full((2, 1, 4, 5), 0.25, dtype=torch.float64)
    plan = sampler.plan_from_variance(15, v)
    tds = make_plan("tds", 6, 15, a=0.4 + 0.25 * 0.2, n=1.2 + 0.25 * 0.8).describe()
    for t_map, t in zip(plan.timesteps, tds):
        assert t_map.shape == (2, 1, 4, 5)
        assert torch.allclose(t_map, torch.full_like(t_map, t), atol=1e-12, rtol=0)
    # A flat LR image has v = 0: every pixel follows TDS(Amin, Nmin).
    lr = torch.full((1, 1, 16, 16), -0.3)
    plan = make_plan("tss", 6, 15, lr=lr, n_range=(1.2, 2.0), a_range=(0.4, 0.6), latent_size=(32, 32))
    tds = make_plan("tds", 6, 15, a=0.4, n=1.2).describe()
    for t_map, t in zip(plan.timesteps, tds):
        assert t_map.shape == (1, 1, 32, 32) and torch.allclose(t_map, torch.full_like(t_map, t), atol=1e-12, rtol=0)


def test_sds_per_pixel_schedules():
    lr = torch.zeros(1, 1, 32, 32)
    lr[0, 0, :, 16:] = torch.rand(32, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    plan = make_plan("tss", 7, 15, lr=lr, n_range=(1.0, 2.0), a_range=(0.45, 0.55), field=9)
    maps = plan.timesteps
    assert plan.spatial and len(plan) == 7
    assert torch.equal(maps[0], torch.full_like(maps[0], 14.0)) and torch.equal(maps[-1], torch.zeros_like(maps[-1]))
    for a, b in zip(maps, maps[1:]):
        assert bool((b < a).all())
    # Textured pixels (n -> 2) take a smaller last and first step than flat ones (n = 1, uniform).
    flat, textured = (0, 0, 16, 2), (0, 0, 16, 28)
    assert float(maps[-2][flat]) == pytest.approx(2.0)
    assert float(maps[-2][textured]) < 1.5 and float(maps[1][textured]) > 11.5
    assert plan.steps[-1].t_prev == -1.0 and torch.equal(plan.steps[0].t_prev, maps[1])


def test_make_sampler_validation_and_config():
    with pytest.raises(ConfigError, match="unknown"):
        make_sampler("ddim", 5)
    with pytest.raises(ConfigError, match="accepted"):
        make_sampler("tds", 5, alpha=0.3)
    with pytest.raises(ConfigError):
        make_sampler("tds", 5, a=1.0)
    with pytest.raises(ConfigError):
        make_sampler("tds", 5, warp="cubic")
    with pytest.raises(ConfigError):
        make_sampler("tss", 5, a_range=(0.6, 0.4))
    with pytest.raises(ConfigError):
        make_sampler("tss", 5, field=32)
    with pytest.raises(ConfigError):
        make_plan("uniform", 20, 15)
    assert make_sampler("TDS", 7).config() == {"sampler": "tds", "steps": 7, "warp": "polynomial", "a": 0.05, "n": 6.0}
    assert isinstance(make_sampler("tds", 3), TDSSampler)
    assert make_plan("uniform", 3, 15).describe() == [14.0, 7.0, 0.0]
    with pytest.raises(ValueError):
        make_plan("tss", 5, 15)  # needs the LR image
