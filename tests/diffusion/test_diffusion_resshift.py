from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusion_doubles import FixedPredictionModel, ShrinkModel, SparseFixedPredictionModel

from qdm_med.diffusion import ResShiftDiffusion, TimestepPlan, make_plan

KAPPA = 2.0


@pytest.fixture(scope="module")
def diff():
    return ResShiftDiffusion.exponential()


def _latents(seed=0, shape=(1, 2, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g) * 0.5
    y = x0 + torch.randn(shape, generator=g) * 0.3
    return x0, y


def _half_mask(b=1, h=4, w=4):
    m = torch.zeros(b, h, w, dtype=torch.bool)
    m[:, :, : w // 2] = True
    return m


@pytest.mark.parametrize("t", [5, 2.5, 14])
def test_forward_marginal_monte_carlo(diff, t):
    x0, y = _latents()
    n = 40000
    mask = _half_mask()
    g = torch.Generator().manual_seed(1)
    tt = torch.full((n,), float(t))
    xt = diff.q_sample(x0.expand(n, -1, -1, -1), y.expand(n, -1, -1, -1), tt, mask.expand(n, -1, -1), generator=g)
    eta = float(diff.schedule.eta(t))
    mean, var = xt.mean(0), xt.var(0)
    expected_mean = (x0 + eta * (y - x0))[0]
    m = mask[0].expand_as(mean)
    assert torch.allclose(mean[m], expected_mean[m], atol=0.03)
    np.testing.assert_allclose(var[m].numpy(), KAPPA**2 * eta, rtol=0.05)
    # Inactive sites: deterministic shift, no noise at all (latent_noise_floor = 0).
    assert torch.allclose(xt[:, ~m], expected_mean[~m].expand(n, -1), atol=1e-6)
    qm, qv = diff.q_mean_variance(x0, y, torch.tensor([float(t)]), mask)
    assert torch.allclose(qm[0], expected_mean, atol=1e-6)
    assert torch.allclose(qv[0][m], torch.full_like(qv[0][m], KAPPA**2 * eta))
    assert bool((qv[0][~m] == 0).all())


def test_forward_marginal_unmasked_and_noise_floor():
    d = ResShiftDiffusion.exponential(latent_noise_floor=1e-2)
    x0, y = _latents(shape=(1, 1, 2, 2))
    n = 40000
    g = torch.Generator().manual_seed(2)
    mask = torch.tensor([[[True, False], [True, True]]])
    xt = d.q_sample(x0.expand(n, -1, -1, -1), y.expand(n, -1, -1, -1), torch.full((n,), 9), mask.expand(n, -1, -1), generator=g)
    eta = float(d.schedule.etas[9])
    var = xt.var(0)[0]
    np.testing.assert_allclose(var[mask[0]].numpy(), KAPPA**2 * eta, rtol=0.05)
    assert float(var[0, 1]) == pytest.approx(1e-4, rel=0.05)
    # No mask = every site active.
    xt = d.q_sample(x0.expand(n, -1, -1, -1), y.expand(n, -1, -1, -1), torch.full((n,), 9), None, generator=g)
    np.testing.assert_allclose(xt.var(0).flatten().numpy(), KAPPA**2 * eta, rtol=0.05)


def test_prior_mean_and_variance(diff):
    x0, y = _latents()
    n = 40000
    mask = _half_mask()
    g = torch.Generator().manual_seed(3)
    xT = diff.prior_sample(y.expand(n, -1, -1, -1), mask.expand(n, -1, -1), generator=g)
    m = mask[0].expand_as(y[0])
    assert torch.allclose(xT.mean(0)[m], y[0][m], atol=0.03)
    np.testing.assert_allclose(xT.var(0)[m].numpy(), KAPPA**2 * 0.99**2, rtol=0.05)
    assert torch.equal(xT[:, ~m], y[0][~m].expand(n, -1))  # inactive sites start exactly at y


def _bayes_posterior(x0, e0, xt, eta_t, eta_s, kappa=KAPPA):
    """q(x_s | x_t, x0) as the normalised product q(x_s | x0) q(x_t | x_s) of two Gaussians."""
    mu_s, v_s = x0 + eta_s * e0, kappa**2 * eta_s
    v_ts = kappa**2 * (eta_t - eta_s)
    prec = 1 / v_s + 1 / v_ts
    mean = (mu_s / v_s + (xt - (eta_t - eta_s) * e0) / v_ts) / prec
    return mean, 1 / prec


@pytest.mark.parametrize("t,s", [(5, 4), (1, 0), (14, 13), (9, 3), (14, 0), (4.6, 2.2), (7.0, 6.5)])
def test_posterior_is_gaussian_product_of_forward_process(diff, t, s):
    x0, y, xt = 0.3, -0.5, 0.1
    eta_t, eta_s = float(diff.schedule.eta(t)), float(diff.schedule.eta(s))
    mean, var = diff.q_posterior_mean_variance(
        torch.full((1, 1, 1, 1), xt, dtype=torch.float64), torch.full((1, 1, 1, 1), x0, dtype=torch.float64), t, s
    )
    bm, bv = _bayes_posterior(x0, y - x0, xt, eta_t, eta_s)
    assert float(mean) == pytest.approx(bm, rel=1e-9, abs=1e-12)
    assert float(var) == pytest.approx(bv, rel=1e-9)
    # Closed form of the brief.
    assert float(mean) == pytest.approx(eta_s / eta_t * xt + (eta_t - eta_s) / eta_t * x0, rel=1e-12)
    assert float(var) == pytest.approx(KAPPA**2 * eta_s / eta_t * (eta_t - eta_s), rel=1e-12)


def test_posterior_matches_numerical_bayes_on_a_grid(diff):
    # Independent of the algebra above: integrate the unnormalised product on a fine grid.
    x0, y, xt, t, s = -0.2, 0.4, 0.9, 6, 3
    e0 = y - x0
    eta_t, eta_s = float(diff.schedule.etas[t]), float(diff.schedule.etas[s])
    grid = np.linspace(-6, 6, 200001)
    logp = -0.5 * (grid - (x0 + eta_s * e0)) ** 2 / (KAPPA**2 * eta_s)
    logp += -0.5 * (xt - grid - (eta_t - eta_s) * e0) ** 2 / (KAPPA**2 * (eta_t - eta_s))
    p = np.exp(logp - logp.max())
    p /= p.sum()
    num_mean = float((grid * p).sum())
    num_var = float(((grid - num_mean) ** 2 * p).sum())
    mean, var = diff.q_posterior_mean_variance(
        torch.tensor([[[[xt]]]], dtype=torch.float64), torch.tensor([[[[x0]]]], dtype=torch.float64), t, s
    )
    assert float(mean) == pytest.approx(num_mean, abs=1e-6)
    assert float(var) == pytest.approx(num_var, rel=1e-4)


def test_posterior_integer_steps_use_schedule_tables(diff):
    x0, y = _latents()
    xt = y + 0.1
    sch = diff.schedule
    for t in range(15):
        mean, var = diff.q_posterior_mean_variance(xt.double(), x0.double(), torch.tensor([t]))
        assert torch.allclose(mean, sch.posterior_mean_coef1[t] * xt.double() + sch.posterior_mean_coef2[t] * x0.double())
        assert torch.allclose(var, torch.full_like(var, KAPPA**2 * float(sch.posterior_variance_factor[t])))


def test_posterior_masked_sites_and_final_step(diff):
    x0, y = _latents()
    xt = y + 0.25
    mask = _half_mask()
    m = mask[:, None].expand_as(xt)
    mean, var = diff.q_posterior_mean_variance(xt, x0, 8, 5, mask)
    assert torch.equal(mean[~m], x0[~m])
    assert bool((var[~m] == 0).all()) and bool((var[m] > 0).all())
    full, _ = diff.q_posterior_mean_variance(xt, x0, 8, 5, None)
    assert torch.equal(mean[m], full[m])
    # Final step (t_prev = -1): the mean is the prediction everywhere, zero variance.
    mean, var = diff.q_posterior_mean_variance(xt, x0, 0, -1, mask)
    assert torch.equal(mean, x0) and bool((var == 0).all())
    mean, var = diff.q_posterior_mean_variance(xt, x0, 3.7, -1, None)
    assert torch.equal(mean, x0) and bool((var == 0).all())
    # Reference-code behaviour on inactive sites: the ordinary posterior mean, still no noise.
    ref = ResShiftDiffusion(diff.schedule, KAPPA, unmasked_mean="posterior")
    mean, var = ref.q_posterior_mean_variance(xt, x0, 8, 5, mask)
    assert torch.allclose(mean, full) and bool((var[~m] == 0).all())
    with pytest.raises(ValueError):
        diff.q_posterior_mean_variance(xt, x0, 3, 5)


def test_posterior_per_pixel_maps(diff):
    x0, y = _latents(shape=(2, 3, 4, 4))
    xt = y - 0.2
    g = torch.Generator().manual_seed(5)
    t = 3 + 10 * torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64)
    s = t - 0.5 - 2 * torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64)
    mean, var = diff.q_posterior_mean_variance(xt, x0, t, s)
    for b, i, j in [(0, 0, 0), (1, 2, 3), (0, 3, 1)]:
        pm, pv = diff.q_posterior_mean_variance(xt[b : b + 1, :, i : i + 1, j : j + 1], x0[b : b + 1, :, i : i + 1, j : j + 1],
                                                float(t[b, 0, i, j]), float(s[b, 0, i, j]))
        assert torch.allclose(mean[b, :, i, j], pm.flatten(), atol=1e-6)
        assert torch.allclose(var[b, :, i, j], pv.flatten(), atol=1e-7)
    # A constant map is the per-sample posterior.
    cm, cv = diff.q_posterior_mean_variance(xt, x0, torch.full((2, 1, 4, 4), 7.5), torch.full((2, 1, 4, 4), 4.0))
    sm, sv = diff.q_posterior_mean_variance(xt, x0, torch.tensor([7.5, 7.5]), torch.tensor([4.0, 4.0]))
    assert torch.allclose(cm, sm) and torch.allclose(cv, sv)


def test_normalize(diff):
    x = torch.ones(2, 1, 2, 2)
    out = diff.normalize(x, torch.tensor([0, 14]))
    eta = diff.schedule.etas
    assert float(out[0, 0, 0, 0]) == pytest.approx(1 / math.sqrt(float(eta[0]) * 4 + 1), rel=1e-6)
    assert float(out[1, 0, 0, 0]) == pytest.approx(1 / math.sqrt(float(eta[14]) * 4 + 1), rel=1e-6)
    assert torch.equal(ResShiftDiffusion(diff.schedule, KAPPA, normalize_input=False).normalize(x, 3), x)


def test_training_loss_dual_stream(diff):
    x0, y = _latents(shape=(2, 2, 4, 4))
    down, up = torch.zeros_like(x0), x0 + 0.5
    model = FixedPredictionModel(down, up)
    t = torch.tensor([3, 11])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    mask = _half_mask(2)
    out = diff.training_loss(model, x0, y, torch.zeros(2, 1, 2, 2), mask, t, noise=noise, l1=1.0, l2=0.25)
    mse_down = float((x0**2).mean())
    assert float(out["mse_down"]) == pytest.approx(mse_down, rel=1e-6)
    assert float(out["mse_up"]) == pytest.approx(0.25, rel=1e-6)
    assert float(out["loss"]) == pytest.approx(mse_down + 0.25 * 0.25, rel=1e-6)
    call = model.calls[0]
    assert call["t"].dtype == torch.float32 and call["t"].tolist() == [3.0, 11.0]
    xt = diff.q_sample(x0, y, t, mask, noise=noise)
    assert torch.allclose(call["x_in"], diff.normalize(xt, t))
    assert torch.equal(out["x_t"], xt)


PLANS = [("uniform", 15, {}), ("uniform", 4, {}), ("tds", 5, {}), ("tss", 5, {})]


@pytest.mark.parametrize("name,steps,params", PLANS)
def test_oracle_sampling_returns_x0_exactly(diff, name, steps, params):
    x0, y = _latents(shape=(2, 2, 8, 8))
    lr = torch.rand(2, 1, 8, 8) * 2 - 1
    mask = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(7)) > 0.5
    plan = make_plan(name, steps, 15, lr=lr, latent_size=(8, 8), **params)
    outs = []
    for seed in range(3):
        model = SparseFixedPredictionModel(x0)
        out, info = diff.sample(model, y, lr, mask, None, plan, torch.Generator().manual_seed(seed))
        outs.append(out)
        assert info["num_steps"] == len(plan) == len(model.calls) == steps
    for out in outs:  # zero variance at the end, whatever the noise
        assert torch.equal(out, x0)


def test_inactive_sites_follow_the_prediction(diff):
    x0, y = _latents(shape=(1, 2, 8, 8))
    pred = torch.full_like(x0, 0.7)
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, 2:6, 1:5] = True
    m = mask[:, None].expand_as(x0)
    model = FixedPredictionModel(pred)
    plan = make_plan("uniform", 6, 15)
    out, _ = diff.sample(model, y, torch.zeros(1, 1, 8, 8), mask, None, plan, torch.Generator().manual_seed(0))
    one = torch.ones(1, 1, 1, 1)
    states = [c["x_in"] / diff.normalize(one, s.t) for c, s in zip(model.calls, plan)]  # undo the input scaling
    assert torch.equal(model.calls[0]["x_in"][~m], diff.normalize(y, 14.0)[~m])  # prior: exactly y there
    for x in states[1:]:
        assert torch.allclose(x[~m], pred[~m], atol=1e-6)  # every later step: exactly the prediction
        assert not torch.allclose(x[m], pred[m], atol=1e-3)  # active sites carry noise
    assert torch.equal(out, pred)


def test_reference_mode_keeps_the_shift_on_inactive_sites():
    d = ResShiftDiffusion.exponential(unmasked_mean="posterior")
    x0, y = _latents(shape=(1, 1, 4, 4))
    pred = torch.zeros_like(x0)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    model = FixedPredictionModel(pred)
    d.sample(model, y, torch.zeros(1, 1, 4, 4), mask, None, [14, 10], torch.Generator().manual_seed(0))
    e14, e10 = (float(d.schedule.etas[i]) for i in (14, 10))
    x10 = model.calls[1]["x_in"] * math.sqrt(e10 * KAPPA**2 + 1)
    assert torch.allclose(x10, e10 / e14 * y, atol=1e-6)  # (eta_s/eta_t) y + (1 - ...) * 0, no noise


def test_fixed_seed_gives_identical_samples(diff):
    x0, y = _latents(shape=(2, 2, 8, 8))
    lr = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    plan = make_plan("tss", 6, 15, lr=lr)
    a, _ = diff.sample(ShrinkModel(), y, lr, None, None, plan, torch.Generator().manual_seed(42))
    b, _ = diff.sample(ShrinkModel(), y, lr, None, None, plan, torch.Generator().manual_seed(42))
    c, _ = diff.sample(ShrinkModel(), y, lr, None, None, plan, torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_sparse_path_info_and_timestep_types(diff):
    x0, y = _latents(shape=(2, 2, 32, 32))
    lr = torch.rand(2, 1, 32, 32) * 2 - 1
    tok = torch.zeros(2, 16, 16, dtype=torch.bool)
    tok[0, :8, :8] = True  # one window
    tok[1, 9, 3] = True  # one window
    tok[1, 15, 15] = True  # another window
    model = SparseFixedPredictionModel(x0)
    calls = []
    out, info = diff.sample(model, y, lr, None, tok, make_plan("uniform", 5, 15), torch.Generator().manual_seed(0),
                            progress=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 5) for i in range(1, 6)]
    assert info["sparse"] and info["active_windows"] == 5 * 3 and info["total_windows"] == 5 * 8
    assert info["macs"] == 5 * (model.base_macs + 3 * model.per_window_macs)
    assert [s["t"] for s in info["steps"]] == [14.0, 10.0, 7.0, 3.0, 0.0]
    assert [s["t_prev"] for s in info["steps"]] == [10.0, 7.0, 3.0, 0.0, -1.0]
    assert info["timesteps"] == [14.0, 10.0, 7.0, 3.0, 0.0] and info["sampler"] == "uniform"
    assert all(c["t"].shape == (2,) and c["t"].dtype == torch.float32 for c in model.calls)
    assert torch.equal(model.calls[0]["token_mask"], tok)
    # TSS: the model gets (B, 1, h, w) maps, the posterior per-pixel etas.
    model = SparseFixedPredictionModel(x0)
    plan = make_plan("tss", 4, 15, lr=lr, latent_size=(32, 32))
    out, info = diff.sample(model, y, lr, None, tok, plan, torch.Generator().manual_seed(0))
    assert all(c["t"].shape == (2, 1, 32, 32) for c in model.calls)
    assert isinstance(info["steps"][1]["t"], dict) and torch.equal(out, x0)


def test_dense_and_sparse_combination_agree(diff):
    x0, y = _latents(shape=(1, 1, 16, 16))
    down, up = torch.ones_like(x0), -torch.ones_like(x0)
    tok = torch.zeros(1, 8, 8, dtype=torch.bool)
    tok[0, 2:5, 1:3] = True
    expected = torch.where(torch.nn.functional.interpolate(tok[:, None].float(), size=(16, 16)) > 0.5, down, up)
    plan = make_plan("uniform", 3, 15)
    dense, info_d = diff.sample(FixedPredictionModel(down, up), y, None, None, tok, plan, torch.Generator().manual_seed(0))
    sparse, info_s = diff.sample(SparseFixedPredictionModel(down, up), y, None, None, tok, plan, torch.Generator().manual_seed(0))
    assert torch.equal(dense, expected) and torch.equal(sparse, expected)
    assert not info_d["sparse"] and info_d["macs"] is None and info_s["sparse"]
    nomask, _ = diff.sample(FixedPredictionModel(down, up), y, None, None, None, plan, torch.Generator().manual_seed(0))
    assert torch.equal(nomask, down)  # no token mask: the fine stream everywhere


def test_sample_accepts_lists_and_checks_plans(diff):
    x0, y = _latents()
    out, info = diff.sample(FixedPredictionModel(x0), y, None, None, None, [14, 6.5, 0], torch.Generator().manual_seed(0))
    assert torch.equal(out, x0) and info["timesteps"] == [14.0, 6.5, 0.0]
    with pytest.raises(ValueError):
        diff.sample(FixedPredictionModel(x0), y, None, None, None, make_plan("uniform", 3, 10))
    with pytest.raises(ValueError):
        TimestepPlan([13, 5], 15)
    with pytest.raises(ValueError):
        TimestepPlan([14, 5, 6], 15)


def _reference_sqrt_etas(T=15, kappa=KAPPA, min_noise=0.04, etas_end=0.99, power=0.3):
    """SPEC section 3's exponential schedule, written out independently of qdm_med.diffusion.schedule."""
    first = min(min_noise / kappa, min_noise)
    base = np.exp(np.log(etas_end / first) / (T - 1))
    return first * base ** ((np.linspace(0, 1, T) ** power) * (T - 1))


def test_reference_schedule_matches_the_spec_table():
    table = [0.02, 0.1172, 0.1763, 0.2336, 0.2916, 0.3510, 0.4124, 0.4759, 0.5417, 0.6099, 0.6807, 0.7540, 0.8300, 0.9086, 0.99]
    np.testing.assert_allclose(_reference_sqrt_etas(), table, atol=6e-5)


@pytest.mark.parametrize("steps", [1, 3, 15])
def test_sampling_with_a_model_that_depends_on_x_t_follows_the_reverse_recursion(diff, steps):
    """A stand-in whose prediction depends on x_t (0.5 * the normalised x_t): every step must feed the model the
    normalised current state and apply SPEC's posterior mean (deterministic run from the prior mean y)."""
    x0, y = _latents(shape=(1, 2, 8, 8))
    lr = torch.zeros(1, 1, 8, 8)
    plan = make_plan("uniform", steps, 15)
    out, info = diff.sample(ShrinkModel(0.5), y, lr, None, None, plan, stochastic=False)
    etas = _reference_sqrt_etas() ** 2
    ts = [int(t) for t in info["timesteps"]]
    x = y.double()
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        eta, eta_prev = etas[t], (etas[t_prev] if t_prev >= 0 else 0.0)
        pred = 0.5 * x / np.sqrt(eta * KAPPA**2 + 1)
        x = (eta_prev / eta) * x + ((eta - eta_prev) / eta) * pred
    torch.testing.assert_close(out.double(), x, rtol=1e-5, atol=1e-5)
    if steps > 1:  # the earlier steps moved the state the last call sees
        assert not torch.allclose(out, 0.5 * y / np.sqrt(etas[ts[-1]] * KAPPA**2 + 1))


class _TrainableScale(torch.nn.Module):
    """Stand-in with one weight c: down = c x_in, up = c x_in / 4; records each call's ``pos_offset``."""

    def __init__(self):
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(0.7))
        self.calls = []

    def forward(self, x_in, t, lr, pos_offset=(0, 0)):
        self.calls.append(pos_offset)
        return self.c * x_in, 0.25 * self.c * x_in


@pytest.mark.parametrize("steps", [1, 3])
def test_unrolled_chain_is_the_deterministic_sample_with_gradients(diff, steps):
    """``unrolled`` returns what ``sample(sparse=False, stochastic=False)`` returns, and its gradient with respect to
    the model's weight is the derivative of SPEC's recursion written out here (down at active tokens, up elsewhere,
    the x0 prediction at inactive sites); the model kwargs reach every call."""
    x0, y = _latents(shape=(1, 2, 4, 4))
    mask, token = _half_mask(), torch.tensor([[[True, False], [True, False]]])
    model, plan = _TrainableScale(), make_plan("uniform", steps, 15)
    out = diff.unrolled(model, y, None, plan, mask, token, model_kwargs={"pos_offset": (3, 1)})
    with torch.no_grad():
        sampled, _ = diff.sample(model, y, None, mask, token, plan, sparse=False, stochastic=False)
    torch.testing.assert_close(out.detach(), sampled)
    assert model.calls == [(3, 1)] * steps + [(0, 0)] * steps
    out.sum().backward()

    c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    etas = _reference_sqrt_etas() ** 2
    ts = [int(v) for v in plan.timesteps]
    m = mask[:, None].expand_as(y)
    x = y.double()
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        eta, eta_prev = etas[t], (etas[t_prev] if t_prev >= 0 else 0.0)
        x_in = x / np.sqrt(eta * KAPPA**2 + 1)
        pred = torch.where(m, c * x_in, 0.25 * c * x_in)
        x = torch.where(m, (eta_prev / eta) * x + ((eta - eta_prev) / eta) * pred, pred)
    x.sum().backward()
    torch.testing.assert_close(out.detach().double(), x.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.c.grad.double(), c.grad, rtol=1e-4, atol=1e-6)


def test_stochastic_unrolled_chain_is_the_seeded_sample_with_gradients(diff):
    """``unrolled(stochastic=True)`` returns what the stochastic sampler returns for the same generator state (the
    prior's draw and each step's noise), different draws give different outputs, and the gradient reaches the model
    through the reparameterised means."""
    x0, y = _latents(shape=(1, 2, 4, 4))
    mask, token = _half_mask(), torch.tensor([[[True, False], [True, False]]])
    model, plan = _TrainableScale(), make_plan("uniform", 3, 15)
    out = diff.unrolled(model, y, None, plan, mask, token, stochastic=True, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        sampled, _ = diff.sample(model, y, None, mask, token, plan, generator=torch.Generator().manual_seed(5), sparse=False,
                                 stochastic=True)
        other = diff.unrolled(model, y, None, plan, mask, token, stochastic=True, generator=torch.Generator().manual_seed(6))
        mean = diff.unrolled(model, y, None, plan, mask, token)
    torch.testing.assert_close(out.detach(), sampled)
    assert (out.detach() - other).abs().max() > 1e-3 and (out.detach() - mean).abs().max() > 1e-3
    out.sum().backward()
    assert model.c.grad is not None and torch.isfinite(model.c.grad) and model.c.grad != 0


def test_bundle_diffusion_section_selects_the_inactive_sites_mean():
    """``diffusion.unmasked_mean`` in a bundle config reaches the process (default "x0", the SPEC's); "posterior"
    keeps inactive sites on the training marginal: from x_t = x0 + eta_t e0 and a perfect prediction the
    deterministic step lands on x0 + eta_s e0; anything else is a one-line ConfigError naming the key."""
    from qdm_med.bundle.factories import build_diffusion_from
    from qdm_med.bundle.settings import DEFAULTS
    from qdm_med.errors import ConfigError

    settings = {"name": "b", "diffusion": dict(DEFAULTS["diffusion"])}
    assert build_diffusion_from(settings).unmasked_mean == "x0"
    d = build_diffusion_from({**settings, "diffusion": {**settings["diffusion"], "unmasked_mean": "posterior"}})
    x0, y = _latents()
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)  # every site inactive
    x_t = x0 + d.eta(9.0, x0) * (y - x0)
    mean, var = d.q_posterior_mean_variance(x_t, x0, 9.0, 4.0, mask)
    torch.testing.assert_close(mean, x0 + d.eta(4.0, x0) * (y - x0))
    assert bool((var == 0).all())
    with pytest.raises(ConfigError, match="diffusion.unmasked_mean 'mean'"):
        build_diffusion_from({**settings, "diffusion": {**settings["diffusion"], "unmasked_mean": "mean"}})
