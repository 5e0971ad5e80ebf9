"""The QDM's jump conditioning: the steps the chain moved to reach a state, embedded next to the timestep."""

from __future__ import annotations

import pytest
import torch
from model_doubles import inputs, random_model

from qdm_med.diffusion import ResShiftDiffusion, make_plan
from qdm_med.models import build_qdm, count_macs_hooks

T = 15


def _pair(token_sparse=False):
    """(a model without jump conditioning, the same weights with silent (freshly initialised) jump embedders)."""
    base = random_model(detail_channels=8, token_sparse=token_sparse)
    jumped = build_qdm("tiny", 16, 1, detail_channels=8, token_sparse=token_sparse, jump_conditioning=True).eval()
    missing, unexpected = jumped.load_state_dict(base.state_dict(), strict=False)
    assert sorted({k.split(".")[0] + "." for k in missing}) == sorted(jumped.JUMP_EMBEDDERS) and unexpected == []
    return base, jumped


def _wake(model, seed=3):
    """Random output layers for the jump embedders, so that the jump changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for te in (model.up_jump, model.down_jump):
            te.mlp[2].weight.copy_(torch.randn(te.mlp[2].weight.shape, generator=g) * 0.1)
    return model


@torch.no_grad()
def test_new_jump_embedders_keep_the_output():
    base, jumped = _pair()
    x, t, lr = inputs()
    for a, b in zip(jumped(x, t, lr, jump=torch.tensor([4.0, 11.6])), base(x, t, lr)):
        torch.testing.assert_close(a, b)


@torch.no_grad()
def test_no_jump_is_the_unit_jump_and_the_jump_changes_the_output():
    _, jumped = _pair()
    _wake(jumped)
    x, t, lr = inputs()
    default, unit, big = jumped(x, t, lr)[0], jumped(x, t, lr, jump=1.0)[0], jumped(x, t, lr, jump=torch.tensor([11.6, 11.6]))[0]
    torch.testing.assert_close(default, unit)
    assert (big - unit).abs().max() > 1e-3


@torch.no_grad()
def test_jump_scale_multiplies_the_embedders_output():
    """jump_scale s with output layer W gives the model of scale 1 with s W (dense and sparse, per-pixel jumps)."""
    _, one = _pair()
    _wake(one)
    scaled = build_qdm("tiny", 16, 1, detail_channels=8, jump_conditioning=True, jump_scale=10.0).eval()
    scaled.load_state_dict(one.state_dict())
    for te in (scaled.up_jump, scaled.down_jump):
        te.mlp[2].weight.div_(10.0)
        te.mlp[2].bias.div_(10.0)
    x, _, lr = inputs()
    t, jump = torch.full((2, 1, 32, 48), 4.0), torch.linspace(0, 12, 48).expand(2, 1, 32, 48)
    for a, b in zip(scaled(x, t, lr, jump=jump), one(x, t, lr, jump=jump)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    tok = torch.rand(2, 16, 24, generator=torch.Generator().manual_seed(4)) > 0.5
    torch.testing.assert_close(scaled.forward_sparse(x, t, lr, tok, jump=jump)[0], one.forward_sparse(x, t, lr, tok, jump=jump)[0],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("token_sparse", [False, True])
@torch.no_grad()
def test_sparse_and_window_loop_equal_dense_with_jump_maps(token_sparse):
    """Per-pixel timestep and jump maps (SDS): the sparse path and the window loop give the dense path's pixels."""
    _, model = _pair(token_sparse)
    _wake(model)
    x, _, lr = inputs()
    g = torch.Generator().manual_seed(5)
    t = torch.rand(2, 1, 32, 48, generator=g) * 14
    jump = torch.rand(2, 1, 32, 48, generator=g) * 12
    tok = torch.rand(2, 16, 24, generator=g) > 0.6
    down, up = model(x, t, lr, token_mask=tok, jump=jump)
    m = tok.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, None]
    dense = torch.where(m, down, up)
    torch.testing.assert_close(model.forward_sparse(x, t, lr, tok, jump=jump)[0], dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.forward_window_loop(x, t, lr, tok, jump=jump), dense, atol=1e-5, rtol=1e-5)
    # a constant map is the per-sample jump
    flat = model(x, t, lr, token_mask=tok, jump=torch.full((2, 1, 32, 48), 6.0))[0]
    torch.testing.assert_close(flat, model(x, t, lr, token_mask=tok, jump=6.0)[0], atol=1e-5, rtol=1e-5)


class _Recorder(torch.nn.Module):
    """Wraps a jump-conditioned model and records the jump each call gets."""

    def __init__(self, model):
        super().__init__()
        self.model, self.jumps, self.jump_conditioning = model, [], True

    def forward(self, x, t, lr, jump=None, **kw):
        self.jumps.append(jump.clone())
        return self.model(x, t, lr, jump=jump, **kw)

    def forward_sparse(self, x, t, lr, tok, chunk_size=64, jump=None):
        self.jumps.append(jump.clone())
        return self.model.forward_sparse(x, t, lr, tok, chunk_size, jump=jump)


@torch.no_grad()
def test_the_chain_tells_each_call_its_jump():
    """Uniform-15 calls all have jump 1 (the prior is step T); a TSS plan's calls get t_from - t per pixel."""
    diffusion = ResShiftDiffusion.exponential(T, kappa=2.0)
    _, model = _pair()
    rec = _Recorder(_wake(model))
    x, _, lr = inputs()
    diffusion.sample(rec, x, lr, timesteps=T, stochastic=False)
    assert len(rec.jumps) == T and all(torch.equal(j, torch.ones(2)) for j in rec.jumps)
    rec.jumps.clear()
    plan = make_plan("tss", 4, T, lr=lr, latent_size=(32, 48))
    diffusion.sample(rec, x, lr, timesteps=plan, stochastic=False, sparse=False)
    starts = [float(T)] + plan.timesteps[:-1]
    for jump, t_from, t in zip(rec.jumps, starts, plan.timesteps):
        torch.testing.assert_close(jump, (t_from - t).float().expand(2, -1, -1, -1), atol=1e-5, rtol=1e-5)
    assert float(rec.jumps[-1].min()) > 5  # the plan's last call comes from far up the chain


@pytest.mark.parametrize("per_pixel", [False, True])
@torch.no_grad()
def test_macs_count_the_jump_embedders(per_pixel):
    _, model = _pair()
    x, t, lr = inputs()
    jump = torch.tensor([2.0, 11.6])
    if per_pixel:
        t, jump = t.view(2, 1, 1, 1).expand(2, 1, 32, 48), jump.view(2, 1, 1, 1).expand(2, 1, 32, 48)
    tok = torch.zeros(2, 16, 24, dtype=torch.bool)
    tok[0, 0, 0] = tok[1, 9, 17] = True
    hooks = count_macs_hooks(model, x, t, lr, tok, method="forward_sparse", jump=jump)
    assert model.forward_sparse(x, t, lr, tok, jump=jump)[1]["macs"] == hooks


def test_bad_jumps_are_refused():
    base, jumped = _pair()
    x, t, lr = inputs()
    with pytest.raises(ValueError, match="without jump_conditioning"):
        base(x, t, lr, jump=2.0)
    with pytest.raises(ValueError, match="does not fit the timestep"):
        jumped(x, t, lr, jump=torch.ones(2, 1, 32, 48))  # a jump map needs a timestep map
    with pytest.raises(ValueError, match="does not fit the timestep"):
        jumped(x, torch.full((2, 1, 32, 48), 3.0), lr, jump=torch.ones(2, 1, 16, 16))
    for kw in ({"jump_scale": 10.0}, {"jump_conditioning": True, "jump_scale": 0.0}):
        with pytest.raises(ValueError, match="jump_scale"):
            build_qdm("tiny", 16, 1, **kw)
