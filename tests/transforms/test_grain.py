"""HR grain augmentation: noise level and correlation, seeding, and the pair it makes stays consistent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qdm_med.errors import ConfigError
from qdm_med.transforms.grain import RandGrain, correlated_noise


@pytest.mark.parametrize("corr", [0.0, 0.7, 1.5])
def test_correlated_noise_has_unit_variance_and_the_gaussian_autocorrelation(corr):
    n = correlated_noise((1, 256, 256), corr, torch.Generator().manual_seed(0))[0].double()
    assert abs(float(n.std()) - 1.0) < 0.02 and abs(float(n.mean())) < 0.02
    # lag-1 autocorrelation of Gaussian-filtered white noise (std c per axis): exp(-1 / (4 c^2)); white: 0
    lag1 = float((n[:, 1:] * n[:, :-1]).mean() / (n * n).mean())
    expected = float(np.exp(-1.0 / (4 * corr**2))) if corr > 0 else 0.0
    assert abs(lag1 - expected) < 0.03


def test_rand_grain_adds_the_drawn_level_reproducibly_and_clips():
    t = RandGrain(prob=1.0, sigma_range=(0.02, 0.02), corr_range=(1.0, 1.0))
    img = torch.full((1, 128, 128), 0.5)
    t.set_random_state(seed=4)
    a = t(img)
    t.set_random_state(seed=4)
    torch.testing.assert_close(a, t(img), rtol=0, atol=0)
    assert abs(float((a - img).std()) - 0.02) < 0.002
    assert float(t(torch.zeros(1, 64, 64)).min()) >= 0.0  # clipped to the window
    off = RandGrain(prob=0.0)
    torch.testing.assert_close(off(img), img, rtol=0, atol=0)
    with pytest.raises(ValueError, match="sigma_range"):
        RandGrain(sigma_range=(0.1, 0.0))


def test_paired_dataset_makes_the_lr_from_the_grainy_hr():
    from qdm_med.training.data import PairedDataset, hr_grain
    from qdm_med.transforms import bicubic_downsample

    base = [{"hr": torch.zeros(1, 64, 64)} for _ in range(3)]
    grain = hr_grain({"prob": 1.0, "sigma_hu": [60.0, 60.0], "corr_px": [0.0, 0.0]}, (-1024.0, 2048.0))
    ds = PairedDataset(base, "bicubic", 4, seed=1, grain=grain)
    s = ds.get(0, epoch=0)
    assert abs(float(s["hr"].std()) - 2 * 60.0 / 3072.0) < 0.004  # [-1, 1] units: twice the [0, 1] level
    ref = bicubic_downsample((s["hr"][None] + 1) / 2, 4)[0].clamp(0, 1) * 2 - 1
    torch.testing.assert_close(s["lr"], ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(ds.get(0, epoch=0)["hr"], s["hr"], rtol=0, atol=0)
    assert not torch.equal(ds.get(1, epoch=0)["hr"], s["hr"])
    assert hr_grain(None, (-1024.0, 2048.0)) is None
    for bad in ({"sigma": [0, 1]}, {"sigma_hu": [5.0, 1.0]}, [0, 30]):
        with pytest.raises(ConfigError, match="hr_grain"):
            hr_grain(bad, (-1024.0, 2048.0))
