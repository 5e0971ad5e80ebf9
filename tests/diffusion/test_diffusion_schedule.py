from __future__ import annotations

import numpy as np
import pytest
import torch

from qdm_med.diffusion.schedule import Schedule, exponential_sqrt_etas

SPEC_SQRT_ETAS = [0.02, 0.1172, 0.1763, 0.2336, 0.2916, 0.3510, 0.4124, 0.4759, 0.5417, 0.6099, 0.6807,
                  0.7540, 0.8300, 0.9086, 0.99]


def test_exponential_schedule_matches_spec():
    s = exponential_sqrt_etas()
    assert s.dtype == torch.float64 and s.shape == (15,)
    np.testing.assert_allclose(s.numpy(), SPEC_SQRT_ETAS, atol=1e-4)
    assert float(s[0]) == pytest.approx(0.02, abs=1e-15)
    assert float(s[-1]) == pytest.approx(0.99, abs=1e-12)


def test_exponential_schedule_formula_other_parameters():
    s = exponential_sqrt_etas(T=4, kappa=1.0, min_noise_level=0.1, etas_end=0.8, power=1.0)
    # power 1: geometric progression from min(0.1/1, 0.1) to 0.8.
    np.testing.assert_allclose(s.numpy(), 0.1 * (8.0 ** (np.arange(4) / 3)), rtol=1e-12)


def test_schedule_tables():
    sch = Schedule.exponential()
    etas = torch.tensor(SPEC_SQRT_ETAS, dtype=torch.float64) ** 2
    np.testing.assert_allclose(sch.etas.numpy(), etas.numpy(), atol=3e-4)
    prev = torch.cat([torch.zeros(1, dtype=torch.float64), sch.etas[:-1]])
    assert torch.equal(sch.etas_prev, prev)
    assert torch.allclose(sch.alphas, sch.etas - prev)
    assert torch.allclose(sch.posterior_mean_coef1, prev / sch.etas)
    assert torch.allclose(sch.posterior_mean_coef2, (sch.etas - prev) / sch.etas)
    assert torch.allclose(sch.posterior_variance_factor, prev / sch.etas * (sch.etas - prev))
    assert float(sch.posterior_variance_factor[0]) == 0.0
    assert len(sch) == sch.num_timesteps == 15


def test_eta_at_integer_and_real_steps():
    sch = Schedule.exponential()
    ints = torch.arange(15)
    assert torch.equal(sch.eta(ints), sch.etas)
    assert float(sch.eta(-1)) == 0.0
    assert float(sch.eta(2.25)) == pytest.approx(0.75 * float(sch.etas[2]) + 0.25 * float(sch.etas[3]), rel=1e-14)
    assert float(sch.eta(-0.5)) == pytest.approx(0.5 * float(sch.etas[0]), rel=1e-14)
    grid = torch.linspace(-1, 14, 301, dtype=torch.float64)
    e = sch.eta(grid)
    assert bool((e[1:] > e[:-1]).all())
    m = sch.eta(grid.view(1, 1, 1, -1))
    assert m.shape == (1, 1, 1, 301) and torch.equal(m.flatten(), e)
    assert torch.allclose(sch.sqrt_eta(ints), sch.sqrt_etas)
    with pytest.raises(ValueError):
        sch.eta(14.5)
    with pytest.raises(ValueError):
        sch.eta(-1.5)


def test_schedule_rejects_bad_tables():
    with pytest.raises(ValueError):
        Schedule([0.1, 0.1, 0.2])
    with pytest.raises(ValueError):
        Schedule([0.0, 0.5])
    with pytest.raises(ValueError):
        exponential_sqrt_etas(T=1)
