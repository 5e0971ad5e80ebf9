"""The learned prior: an untrained prior is exactly bicubic, shapes, sizes, config errors; the SR module's
fidelity mode (steps 0) and deterministic sampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qdm_med.errors import ConfigError
from qdm_med.models.prior import ResidualCNN, build_prior


@pytest.mark.parametrize("scale, unshuffle", [(4, 4), (8, 4), (8, 8)])
def test_untrained_prior_is_clamped_bicubic(scale, unshuffle):
    torch.manual_seed(0)
    lr = torch.rand(2, 1, 12, 16) * 2.4 - 1.2
    prior = ResidualCNN(scale, channels=8, blocks=2, unshuffle=unshuffle)
    expected = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)
    assert torch.equal(prior(lr), expected)


def test_prior_learns_a_residual_and_keeps_the_shape():
    torch.manual_seed(0)
    prior = ResidualCNN(4, channels=8, layers=3)
    torch.nn.init.normal_(prior.tail.weight, std=0.1)
    lr = torch.rand(1, 1, 8, 8) * 2 - 1
    out = prior(lr)
    assert out.shape == (1, 1, 32, 32) and out.abs().max() <= 1
    assert not torch.equal(out, F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1))


def test_plain_stack_has_the_baseline_size():
    # SPEC section 12's baseline: 6 conv layers, 64 channels, 16 channels in/out in pixel-unshuffle space
    plain = ResidualCNN(4, channels=64, layers=6, blocks=0)
    convs = [m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6
    expected = (16 * 64 * 9 + 64) + 4 * (64 * 64 * 9 + 64) + (64 * 16 * 9 + 16)
    assert sum(p.numel() for p in plain.parameters()) == expected


def test_prior_macs_equal_the_hook_count():
    from qdm_med.models.macs import count_macs_hooks

    prior = ResidualCNN(8, channels=8, blocks=2)
    lr = torch.zeros(2, 1, 6, 10)
    assert prior.macs((48, 80), batch=2) == count_macs_hooks(prior, lr)


def test_build_prior_from_settings_and_errors():
    assert build_prior(None, 4) is None and build_prior({"kind": "bicubic"}, 4) is None
    net = build_prior({"kind": "cnn", "channels": 8, "blocks": 1, "weights": "runs/x/models/model.pt"}, 8)
    assert isinstance(net, ResidualCNN) and net.scale == 8 and net.lr_multiple == 1
    assert ResidualCNN(2, channels=8, blocks=1, unshuffle=4).lr_multiple == 2
    with pytest.raises(ConfigError, match="prior kind"):
        build_prior({"kind": "unet"}, 4)
    with pytest.raises(ConfigError, match="prior:"):
        build_prior({"kind": "cnn", "depth": 3}, 4)
    with pytest.raises(ConfigError, match="blocks"):
        ResidualCNN(4, layers=1, blocks=0)
    with pytest.raises(ValueError, match="unshuffle"):
        ResidualCNN(3, channels=8, blocks=1, unshuffle=4)(torch.zeros(1, 1, 5, 5))


# ------------------------------------------------------------------------ the SR module with a prior
def _sr(prior=True, **kw):
    from model_doubles import random_model

    from qdm_med.diffusion import ResShiftDiffusion
    from qdm_med.models import build_first_stage
    from qdm_med.models.sr import QDMSuperResolution

    fs = build_first_stage("pixel_unshuffle", 1)
    p = None
    if prior:
        torch.manual_seed(1)
        p = ResidualCNN(8, channels=8, blocks=1)
        torch.nn.init.normal_(p.tail.weight, std=0.05)
    return QDMSuperResolution(fs, random_model(fs.latent_channels, 1), ResShiftDiffusion(), scale=8, prior=p, **kw).eval()


@torch.no_grad()
def test_steps_zero_returns_the_prior_and_is_seed_free():
    sr = _sr(steps=0, sampler="uniform")
    lr = torch.rand(2, 1, 16, 12) * 2 - 1
    out = sr(lr, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, sr.prior(lr)) and sr.last_info["steps"] == 0 and sr.last_info["start"] == "prior"
    assert torch.equal(out, sr(lr, generator=torch.Generator().manual_seed(5)))
    plain = _sr(prior=False, steps=0)
    assert torch.equal(plain(lr), F.interpolate(lr, scale_factor=8, mode="bicubic", align_corners=False).clamp(-1, 1))


@torch.no_grad()
def test_start_prior_shifts_from_the_prior_and_deterministic_sampling_ignores_the_seed():
    lr = torch.rand(1, 1, 16, 16) * 2 - 1
    sr = _sr(steps=3, sampler="uniform", threshold=0.0)
    assert sr.start == "prior"
    a, b = (sr(lr, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    assert not torch.equal(a, b)  # stochastic: the prior noise differs
    sr.configure(stochastic=False)
    c, d = (sr(lr, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    assert torch.equal(c, d)
    # one deterministic step from x_T = y is the model's x0 prediction at T - 1 on y's latent
    sr.configure(steps=1)
    y = sr.first_stage.encode(sr.prior(lr))
    t = torch.full((1,), 14.0)
    down, _ = sr.qdm(sr.diffusion.normalize(y, t), t, sr.qdm.conditioning(lr, y))
    torch.testing.assert_close(sr(lr), sr.first_stage.decode(down).clamp(-1, 1), atol=1e-5, rtol=1e-5)
    sr.configure(start="bicubic")
    assert not torch.equal(sr(lr), c)


def test_start_prior_without_a_prior_is_a_config_error_and_weights_carry_the_prior():
    with pytest.raises(ConfigError, match="no learned prior"):
        _sr(prior=False, start="prior")
    keys = _sr().state_dict().keys()
    assert any(k.startswith("prior.") for k in keys) and not any(k.startswith("prior.") for k in _sr(prior=False).state_dict())


def test_context_prior_starts_as_the_plain_prior_and_sees_the_whole_image():
    torch.manual_seed(0)
    plain = ResidualCNN(4, channels=8, layers=4)
    for p in plain.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ctx = ResidualCNN(4, channels=8, layers=4, context=6)
    missing, unexpected = ctx.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["context.0.bias", "context.0.weight", "context.2.bias", "context.2.weight"] and not unexpected
    lr = torch.rand(1, 1, 24, 24) * 2 - 1
    assert torch.equal(ctx(lr), plain(lr))  # the MLP's zero last layer: no modulation yet
    far = lr.clone()
    far[..., 16:, 16:] = torch.rand(1, 1, 8, 8) * 2 - 1  # change pixels > 13 LR pixels from the top-left corner
    assert torch.equal(plain(far)[..., :16, :16], plain(lr)[..., :16, :16])  # a 3x3 stack of 4 layers is local
    torch.nn.init.normal_(ctx.context[-1].weight, std=0.5)
    assert not torch.allclose(ctx(far)[..., :16, :16], ctx(lr)[..., :16, :16])  # the global context is not
    gamma_beta = ctx.context(torch.zeros(2, 8))
    assert gamma_beta.shape == (2, 16)
    with pytest.raises(ConfigError, match="context"):
        ResidualCNN(4, context=-1)
