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
def _sr(prior=True, context=0, **kw):
    from model_doubles import random_model

    from qdm_med.diffusion import ResShiftDiffusion
    from qdm_med.models import build_first_stage
    from qdm_med.models.sr import QDMSuperResolution

    fs = build_first_stage("pixel_unshuffle", 1)
    p = None
    if prior:
        torch.manual_seed(1)
        p = ResidualCNN(8, channels=8, blocks=1, context=context)
        torch.nn.init.normal_(p.tail.weight, std=0.05)
        if context:
            torch.nn.init.normal_(p.context[-1].weight, std=0.5)
    return QDMSuperResolution(fs, random_model(fs.latent_channels, 1), ResShiftDiffusion(), scale=8, prior=p, **kw).eval()


@torch.no_grad()
def test_steps_zero_returns_the_prior_and_is_seed_free():
    sr = _sr(steps=0, sampler="uniform")
    lr = torch.rand(2, 1, 16, 12) * 2 - 1
    out = sr(lr, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, sr.prior.flip_ensemble(lr)) and sr.last_info["steps"] == 0 and sr.last_info["start"] == "prior"
    assert sr.last_info["flip_ensemble"] is True and sr.last_info["macs"] == 4 * sr.prior.macs((128, 96), 2)
    assert torch.equal(out, sr(lr, generator=torch.Generator().manual_seed(5)))
    sr.configure(flip_ensemble=False)
    assert torch.equal(sr(lr), sr.prior(lr)) and sr.last_info["flip_ensemble"] is False
    assert sr.last_info["macs"] == sr.prior.macs((128, 96), 2)
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


@torch.no_grad()
def test_context_floor_averages_the_band_energies_over_the_body_only():
    torch.manual_seed(0)
    net = ResidualCNN(4, channels=8, layers=4, context=6, context_floor=-0.9)
    whole = ResidualCNN(4, channels=8, layers=4, context=6)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    whole.load_state_dict(net.state_dict())
    body = torch.rand(1, 1, 16, 16) * 1.6 - 0.8  # every pixel above the floor
    padded = F.pad(body, (4, 4, 4, 4), value=-1.0)  # a body in air
    wider = F.pad(body, (40, 40, 40, 40), value=-1.0)  # the same body in a wider field of view
    energy = lambda m, x: m._band_energy(m._first_layer(m._upsample(x)), m._upsample(x))  # noqa: E731
    up = net._upsample(padded)
    feat = F.relu(net._first_layer(up))
    mask = F.avg_pool2d(up, 4) > -0.9  # the 4x4 blocks of the bicubic upsampling above the floor
    expected = torch.log((feat * mask).sum((2, 3)) / mask.sum((2, 3)) + 1e-4)
    assert torch.allclose(energy(net, padded), expected, atol=1e-6)
    assert torch.allclose(energy(whole, padded), torch.log(feat.mean((2, 3)) + 1e-4), atol=1e-6)
    # the field of view moves the whole-image energies, not the body-only ones
    assert (energy(whole, padded) - energy(whole, wider)).abs().max() > 1.0
    assert torch.allclose(energy(net, padded), energy(net, wider), atol=1e-5)
    air = torch.full((1, 1, 8, 8), -1.0)  # nothing above the floor: the mean over every pixel
    assert torch.equal(energy(net, air), energy(whole, air))
    assert build_prior({"kind": "cnn", "context": 4, "context_floor": -0.9}, 4).context_floor == -0.9
    for bad in ({"context_floor": -0.9}, {"context": 4, "context_floor": 1.5}):  # no context to read; above the window
        with pytest.raises(ConfigError, match="context_floor"):
            build_prior({"kind": "cnn", **bad}, 4)


@torch.no_grad()
@pytest.mark.parametrize("seed", [None, 3])
def test_tiles_share_the_whole_images_context(seed):
    import numpy as np

    from qdm_med.inference.volume import SliceWiseInferencer, upscale_image
    from qdm_med.io import Volume

    sr = _sr(context=4, steps=0, sampler="uniform")
    rng = np.random.default_rng(0)
    vol = Volume((rng.random((48, 40, 2)) * 1500 - 1000).astype(np.float32), np.eye(4), {})
    vol.array[30:, :, :] = -1000.0  # an air strip: its tiles' own band energies differ from the image's
    run = dict(progress=False, seed=seed, device="cpu", window=(-1024.0, 2048.0))
    whole = SliceWiseInferencer(sr, 8, tile_size=None, **run).infer(vol)[0].array
    tiled, stats = SliceWiseInferencer(sr, 8, tile_size=28, tile_overlap=12, **run).infer(vol)
    assert stats["tiles_per_slice"] > 1 and sr.prior._pinned is None  # pinned only while the tiles run
    np.testing.assert_allclose(tiled.array, whole, atol=0.05)  # HU
    img = rng.random((1, 48, 40)).astype(np.float32)
    np.testing.assert_allclose(upscale_image(img, sr, 8, tile_size=28, tile_overlap=12, progress=False, seed=seed),
                               upscale_image(img, sr, 8, tile_size=None, progress=False, seed=seed), atol=1e-4)
    # each tile with its own context (the behaviour before pinning) is visibly different
    with torch.no_grad():
        lr = torch.from_numpy(vol.array[:, :, 0].T.copy())[None, None] / 1536.0
        own = torch.cat([sr.prior(lr[..., :, :24]), sr.prior(lr[..., :, 24:])], dim=-1)
        with sr.pinned_context(lr):
            pinned = torch.cat([sr.prior(lr[..., :, :24]), sr.prior(lr[..., :, 24:])], dim=-1)
            with pytest.raises(ValueError, match="pinned context of 1 image"):
                sr.prior(lr.expand(2, -1, -1, -1))
    assert torch.allclose(pinned[..., :, :160], sr.prior(lr)[..., :, :160], atol=1e-5)  # 4 LR px from the cut
    assert not torch.allclose(own, pinned, atol=1e-3)


@torch.no_grad()
@pytest.mark.parametrize("context", [0, 6])
def test_flip_ensemble_is_the_mean_of_the_four_mirrored_passes_and_commutes_with_mirroring(context):
    torch.manual_seed(0)
    net = ResidualCNN(4, channels=8, layers=4, context=context)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    lr = torch.rand(1, 1, 12, 16) * 2 - 1
    with net.pinned_context(lr):  # the four passes share the unmirrored image's context
        passes = [net(lr), net(lr.flip(-1)).flip(-1), net(lr.flip(-2)).flip(-2), net(lr.flip((-2, -1))).flip((-2, -1))]
    ens = net.flip_ensemble(lr)
    torch.testing.assert_close(ens, torch.stack(passes).mean(0), atol=1e-6, rtol=0)
    assert not torch.allclose(ens, net(lr), atol=1e-4)  # the passes differ: a 3x3 stack is not mirror-symmetric
    if not context:  # without a context each mirror's pass is its own: mirroring the input mirrors the mean
        torch.testing.assert_close(net.flip_ensemble(lr.flip(-1)), ens.flip(-1), atol=1e-6, rtol=0)
    else:  # inside a pinned context (a tile of a bigger image) the pinned one wins, as for a single pass
        big = torch.rand(1, 1, 24, 24) * 2 - 1
        with net.pinned_context(big):
            tile = net.flip_ensemble(lr)
            ref = torch.stack([net(lr), net(lr.flip(-1)).flip(-1), net(lr.flip(-2)).flip(-2),
                               net(lr.flip((-2, -1))).flip((-2, -1))]).mean(0)
        torch.testing.assert_close(tile, ref, atol=1e-6, rtol=0)
        assert not torch.allclose(tile, ens, atol=1e-4)


@torch.no_grad()
def test_background_ramp_keeps_the_start_image_in_air_and_the_sampled_image_above_it():
    lr = torch.rand(1, 1, 16, 16) * 2 - 1
    lr[..., :, :8] = -1.0  # an air half
    plain = _sr(steps=2, sampler="uniform", threshold=0.0, stochastic=False)
    lo, hi = -0.95, -0.8
    ramped = _sr(steps=2, sampler="uniform", threshold=0.0, stochastic=False, background_ramp=[lo, hi])
    ramped.load_state_dict(plain.state_dict())
    up, sampled, out = plain.prior(lr), plain(lr), ramped(lr)
    weight = ((up - lo) / (hi - lo)).clamp(0, 1)
    torch.testing.assert_close(out, (up + weight * (sampled - up)).clamp(-1, 1), atol=1e-6, rtol=0)
    assert torch.equal(out[up <= lo], up[up <= lo])
    torch.testing.assert_close(out[up >= hi], sampled[up >= hi], atol=1e-6, rtol=0)
    assert bool((up <= lo).any()) and bool((up >= hi).any())
    assert ramped.last_info["background_ramp"] == [lo, hi] and plain.last_info["background_ramp"] is None
    ramped.configure(steps=0)  # the fidelity mode is the start image everywhere already
    torch.testing.assert_close(ramped(lr), plain.prior.flip_ensemble(lr))


@pytest.mark.parametrize(
    "ramp, message", [([-0.5, -0.9], "lo < hi"), ([-2.0, 0.0], "-1 <= lo"), ("air", r"\[lo, hi\]"), ([0.1], r"\[lo, hi\]")]
)
def test_a_bad_background_ramp_is_named(ramp, message):
    with pytest.raises(ConfigError, match=message):
        _sr(steps=1, background_ramp=ramp)
