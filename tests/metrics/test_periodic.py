"""The tiled component of a residual against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from qdm_med.metrics.periodic import tiled_component, tiled_share


def _tiled(pattern: np.ndarray, h: int, w: int) -> np.ndarray:
    """``pattern`` (made zero-mean) tiled over (h, w) from the origin."""
    p = pattern.shape[0]
    pattern = pattern - pattern.mean()
    return np.tile(pattern, (-(-h // p), -(-w // p)))[:h, :w]


def test_a_pure_tiled_pattern_is_recovered_exactly_also_on_partial_tiles():
    rng = np.random.default_rng(0)
    pattern = rng.normal(size=(8, 8))
    r = _tiled(pattern, 44, 37)  # neither side a multiple of the period
    np.testing.assert_allclose(tiled_component(r, 8), r, atol=1e-12)
    assert tiled_share(r, 8) == pytest.approx(1.0)


def test_an_offset_is_not_a_pattern():
    rng = np.random.default_rng(4)
    pattern = _tiled(rng.normal(size=(8, 8)), 64, 64)
    np.testing.assert_allclose(tiled_component(pattern + 30.0, 8), pattern, atol=1e-12)
    assert tiled_share(np.full((64, 64), 30.0), 8) == 0.0


def test_white_noise_has_the_estimation_floor_of_one_over_the_tile_count():
    rng = np.random.default_rng(1)
    shares = [tiled_share(rng.normal(size=(256, 256)), 16) for _ in range(5)]
    # each phase mean averages 16 x 16 = 256 tiles: E[share] = 1 / 256
    assert np.mean(shares) == pytest.approx(1 / 256, rel=0.15)


def test_pattern_plus_noise_splits_by_variance():
    rng = np.random.default_rng(2)
    pattern = rng.normal(scale=2.0, size=(32, 32))
    noise = rng.normal(scale=1.0, size=(3, 512, 512))  # a stack of 3 slices shares the pattern
    r = _tiled(pattern, 512, 512)[None] + noise
    est = tiled_component(r, 32)
    assert est.shape == r.shape
    # each phase averages 3 * 16 * 16 noise samples: error SD 1 / sqrt(768)
    assert np.sqrt(np.mean((est[0] - _tiled(pattern, 512, 512)) ** 2)) == pytest.approx(768**-0.5, rel=0.1)
    var_p = np.mean(pattern**2)
    assert tiled_share(r, 32) == pytest.approx((var_p + 1 / 768) / (var_p + 1.0), rel=0.02)


def test_the_mask_confines_estimate_and_output():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    r = _tiled(a, 32, 32)
    r[:, 16:] = _tiled(b, 32, 16)  # another pattern outside the mask
    mask = np.zeros((32, 32), dtype=bool)
    mask[:, :16] = True
    est = tiled_component(r, 4, mask)
    np.testing.assert_allclose(est[:, :16], r[:, :16], atol=1e-12)
    assert np.all(est[:, 16:] == 0.0)
    assert tiled_share(r, 4, mask) == pytest.approx(1.0)
    assert tiled_share(r, 4, np.zeros_like(mask)) == 0.0


@pytest.mark.parametrize(
    "residual, period, mask, message",
    [
        (np.zeros(5), 2, None, "2D \\(H, W\\) or 3D"),
        (np.zeros((4, 4)), 0, None, "positive integer"),
        (np.zeros((4, 4)), 2.5, None, "positive integer"),
        (np.zeros((4, 4)), 2, np.zeros((3, 4), dtype=bool), "mask shape"),
    ],
)
def test_bad_input_is_named(residual, period, mask, message):
    with pytest.raises(ValueError, match=message):
        tiled_component(residual, period, mask)


def test_the_differentiable_energy_matches_the_numpy_component_and_its_gradient_removes_the_pattern():
    import torch

    from qdm_med.metrics.periodic import tiled_energy

    rng = np.random.default_rng(5)
    r = _tiled(rng.normal(size=(8, 8)), 32, 48)[None, None] * np.ones((3, 1, 1, 1)) + 0.5 * rng.normal(size=(3, 1, 32, 48))
    expected = np.mean(tiled_component(r[:, 0], 8) ** 2)  # the stack's pooled pattern, squared, averaged
    x = torch.tensor(r, requires_grad=True)
    energy = tiled_energy(x, 8)
    assert float(energy.detach()) == pytest.approx(expected, rel=1e-10)
    energy.backward()
    # one gradient step of the right size removes the pooled pattern and leaves the rest
    n_tiles = 3 * (32 // 8) * (48 // 8)
    stepped = (x - x.grad * (8 * 8) * n_tiles / 2).detach()
    assert float(tiled_energy(stepped, 8)) == pytest.approx(0.0, abs=1e-20)
    assert float(tiled_energy(torch.full((2, 1, 16, 16), 3.0), 8)) == 0.0  # an offset is no pattern
    with pytest.raises(ValueError, match="dividing the size"):
        tiled_energy(torch.zeros(1, 1, 20, 16), 8)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        tiled_energy(torch.zeros(16, 16), 8)
