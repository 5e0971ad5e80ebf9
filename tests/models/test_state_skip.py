"""The QDM's state skip: both outputs gain g(t) * (x_in - y), g a learned table over steps, linear in real t."""

from __future__ import annotations

import pytest
import torch
from model_doubles import random_model

from qdm_med.models import build_qdm

T = 15


def _latent_inputs(b=2, cz=16, h=32, w=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, cz, h, w, generator=g), torch.tensor([3.0, 9.5])[:b], torch.randn(b, cz, h, w, generator=g)


def _pair(detail=8):
    """(a model without the skip, the same weights with a random gate table)."""
    base = random_model(cond="latent", detail_channels=detail)
    gated = build_qdm("tiny", 16, 1, cond="latent", detail_channels=detail, state_skip_steps=T).eval()
    missing, unexpected = gated.load_state_dict(base.state_dict(), strict=False)
    assert missing == [gated.STATE_GATE] and unexpected == []
    return base, gated


@torch.no_grad()
def test_a_new_gate_keeps_the_output():
    base, gated = _pair()
    x, t, y = _latent_inputs()
    for a, b in zip(gated(x, t, y), base(x, t, y)):
        torch.testing.assert_close(a, b)
    tok = torch.rand(2, 16, 24, generator=torch.Generator().manual_seed(0)) > 0.7
    torch.testing.assert_close(gated.forward_sparse(x, t, y, tok)[0], base.forward_sparse(x, t, y, tok)[0])


@torch.no_grad()
def test_gate_adds_the_interpolated_state_residual():
    base, gated = _pair()
    gated.state_gate.copy_(torch.linspace(0.09, 0.0, T))  # g = 10 x table: 0.9 at t = 0 down to 0 at T - 1
    x, t, y = _latent_inputs()
    table = gated.state_gate * gated.STATE_GATE_SCALE
    g = torch.stack([table[3], (table[9] + table[10]) / 2]).view(2, 1, 1, 1)  # t = 3 and 9.5
    for a, b in zip(gated(x, t, y), base(x, t, y)):
        torch.testing.assert_close(a, b + g * (x - y), atol=1e-5, rtol=1e-5)
    tok = torch.zeros(2, 16, 24, dtype=torch.bool)
    tok[0, 2:5, 3:9] = True
    expected = base.forward_sparse(x, t, y, tok)[0] + g * (x - y)
    torch.testing.assert_close(gated.forward_sparse(x, t, y, tok)[0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gated.forward_window_loop(x, t, y, tok), expected, atol=1e-5, rtol=1e-5)
    # beyond the table the gate is its end value
    torch.testing.assert_close(gated.state_gate_at(torch.tensor([-1.0, 40.0])).flatten(), table[[0, -1]])


@torch.no_grad()
def test_per_pixel_timesteps_gate_each_pixel():
    """SDS's real-valued step maps: the gate is interpolated per pixel, and the sparse path equals the dense one."""
    base, gated = _pair()
    gated.state_gate.copy_(torch.rand(T, generator=torch.Generator().manual_seed(2)) * 0.1)
    x, _, y = _latent_inputs()
    tmap = torch.rand(2, 1, 32, 48, generator=torch.Generator().manual_seed(3)) * 16 - 0.5  # a little past both ends
    table = gated.state_gate * gated.STATE_GATE_SCALE
    pos = tmap.clamp(0, T - 1)
    lo = pos.floor().clamp(max=T - 2)
    g = table[lo.long()] * (1 - (pos - lo)) + table[lo.long() + 1] * (pos - lo)
    torch.testing.assert_close(gated(x, tmap, y)[0], base(x, tmap, y)[0] + g * (x - y), atol=1e-5, rtol=1e-5)
    full = torch.ones(2, 16, 24, dtype=torch.bool)
    torch.testing.assert_close(gated.forward_sparse(x, tmap, y, full)[0], gated(x, tmap, y)[0], atol=1e-5, rtol=1e-5)


def test_the_gate_learns():
    _, gated = _pair(detail=0)
    x, t, y = _latent_inputs()
    gated(x, t, y)[0].sum().backward()
    assert gated.state_gate.grad is not None and gated.state_gate.grad.abs().sum() > 0
    assert gated.state_gate.grad[[0, 1, 2, 4, 5, 6, 7, 8, 11, 12, 13, 14]].abs().sum() == 0  # only steps 3, 9 and 10


@pytest.mark.parametrize("kw", [{"cond": "lr", "state_skip_steps": T}, {"cond": "latent", "state_skip_steps": 1}])
def test_bad_state_skip_is_refused(kw):
    with pytest.raises(ValueError, match="state_skip_steps"):
        build_qdm("tiny", 16, 1, **kw)
