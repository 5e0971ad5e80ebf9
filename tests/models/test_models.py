"""Dual-stream QDM: sparse path vs dense path, per-token adaLN, MACs vs hooks, first stages, SR module."""

from __future__ import annotations

import pytest
import torch
from model_doubles import inputs, random_model

from qdm_med.diffusion import ResShiftDiffusion
from qdm_med.errors import ConfigError
from qdm_med.models import QDM_CONFIGS, build_first_stage, build_qdm, count_macs_hooks
from qdm_med.models.blocks import DiTBlock, modulate
from qdm_med.models.sr import QDMSuperResolution


@torch.no_grad()
@pytest.mark.parametrize("detail", [(0, 0), (8, 0), (8, 2)])
def test_full_mask_sparse_equals_dense(detail):
    m = random_model(detail_channels=detail[0], detail_blocks=detail[1])
    x, t, lr = inputs()
    down, up = m(x, t, lr)
    pred, info = m.forward_sparse(x, t, lr, torch.ones(2, 16, 24, dtype=torch.bool))
    torch.testing.assert_close(pred, down, atol=1e-5, rtol=1e-5)
    assert info["active_windows"] == info["total_windows"] == 2 * 2 * 3
    assert not torch.allclose(down, up)
    # per-pixel timesteps (SDS): the dense detail pass over the whole image equals the windows with halos
    tvar = torch.rand(2, 1, 32, 48, generator=torch.Generator().manual_seed(3)) * 14
    torch.testing.assert_close(m.forward_sparse(x, tvar, lr, None)[0], m(x, tvar, lr)[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("detail", [(0, 0), (8, 0), (8, 2)])
def test_empty_mask_never_runs_downstream(detail):
    m = random_model(detail_channels=detail[0], detail_blocks=detail[1])
    x, t, lr = inputs()
    calls = []
    handles = [blk.register_forward_hook(lambda *a: calls.append(1)) for blk in m.down_blocks]
    handles.append(m.down_embed.register_forward_hook(lambda *a: calls.append(1)))
    if detail[0]:
        handles += [
            c.register_forward_hook(lambda *a: calls.append(1))
            for n, c in m.named_modules()
            if n.startswith("detail") and isinstance(c, torch.nn.Conv2d)
        ]
    pred, info = m.forward_sparse(x, t, lr, torch.zeros(2, 16, 24, dtype=torch.bool))
    for h in handles:
        h.remove()
    assert calls == [] and info["active_windows"] == 0
    torch.testing.assert_close(pred, m(x, t, lr)[1])


@torch.no_grad()
@pytest.mark.parametrize("detail", [(0, 0), (8, 0), (8, 2)])
def test_partial_mask_combines_down_and_up_per_token(detail):
    m = random_model(detail_channels=detail[0], detail_blocks=detail[1])
    x, t, lr = inputs()
    down, up = m(x, t, lr)
    tok = torch.zeros(2, 16, 24, dtype=torch.bool)
    tok[0, 2:5, 3:9] = True  # spans two windows of item 0
    tok[1, 15, 23] = True  # last window of item 1
    pred, info = m.forward_sparse(x, t, lr, tok, chunk_size=1)
    assert info["active_windows"] == 3
    mask = torch.nn.functional.interpolate(tok[:, None].float(), scale_factor=2) > 0.5
    torch.testing.assert_close(pred, torch.where(mask, down, up), atol=1e-5, rtol=1e-5)
    pred64, _ = m.forward_sparse(x, t, lr, tok, chunk_size=64)
    torch.testing.assert_close(pred, pred64, atol=1e-6, rtol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("detail", [(0, 0), (8, 0), (8, 2)])
@pytest.mark.parametrize("per_token_t", [False, True])
def test_window_loop_equals_batched_gather(detail, per_token_t):
    """The reference-style per-item, per-window loop and the batched gather give the same prediction,
    including windows cut by the padding of a non-multiple size and a per-token timestep map."""
    m = random_model(detail_channels=detail[0], detail_blocks=detail[1])
    x, t, lr = inputs(h=30, w=44)
    if per_token_t:
        t = torch.linspace(1, 12, 30 * 44).view(1, 1, 30, 44).expand(2, 1, 30, 44).contiguous()
    tok = torch.zeros(2, 15, 22, dtype=torch.bool)
    tok[0, 1:4, 2:10] = True
    tok[1, 14, 21] = True
    pred, info = m.forward_sparse(x, t, lr, tok)
    loop = m.forward_window_loop(x, t, lr, tok)
    assert info["active_windows"] == 3
    torch.testing.assert_close(loop, pred, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(loop, m(x, t, lr)[1][..., :30, :44], atol=1e-3)  # the downstream did run


@torch.no_grad()
def test_rectangular_and_unpadded_sizes():
    m = random_model()
    x, t, lr = inputs(h=20, w=36)  # not multiples of 16: padded internally, cropped back
    down, up = m(x, t, lr)
    assert down.shape == up.shape == (2, 16, 20, 36)
    pred, _ = m.forward_sparse(x, t, lr, torch.ones(2, 10, 18, dtype=torch.bool))
    torch.testing.assert_close(pred, down, atol=1e-5, rtol=1e-5)


def test_per_token_adaln_with_constant_t_equals_per_sample():
    torch.manual_seed(0)
    blk = DiTBlock(32, 4)
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0, 0.1)
    x, c = torch.randn(2, 10, 32), torch.randn(2, 32)
    torch.testing.assert_close(blk(x, c), blk(x, c[:, None].expand(2, 10, 32)))
    s, b = torch.randn(2, 32), torch.randn(2, 32)
    torch.testing.assert_close(modulate(x, b, s), modulate(x, b[:, None].expand(2, 10, 32), s[:, None].expand(2, 10, 32)))


@torch.no_grad()
def test_constant_timestep_map_equals_scalar_timestep():
    m = random_model()
    x, t, lr = inputs()
    tmap = t.view(2, 1, 1, 1).expand(2, 1, 32, 48).contiguous()
    for a, b in zip(m(x, t, lr), m(x, tmap, lr)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    tok = torch.rand(2, 16, 24, generator=torch.Generator().manual_seed(0)) > 0.7
    torch.testing.assert_close(m.forward_sparse(x, t, lr, tok)[0], m.forward_sparse(x, tmap, lr, tok)[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_new_detail_blocks_start_as_identity():
    base = random_model(detail_channels=8)
    deep = build_qdm("tiny", 16, 1, detail_channels=8, detail_blocks=3).eval()
    missing, unexpected = deep.load_state_dict(base.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith(deep.ADDED_BY_DETAIL_BLOCKS) for k in missing)
    assert deep.detail_halo == 9 and base.detail_halo == 3
    x, t, lr = inputs()
    for a, b in zip(deep(x, t, lr), base(x, t, lr)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    tok = torch.rand(2, 16, 24, generator=torch.Generator().manual_seed(0)) > 0.7
    torch.testing.assert_close(deep.forward_sparse(x, t, lr, tok)[0], base.forward_sparse(x, t, lr, tok)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="detail_channels"):
        build_qdm("tiny", 16, 1, detail_blocks=2)


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("pattern", ["full", "empty", "some"])
@pytest.mark.parametrize("detail", [(0, 0), (8, 0), (8, 2)])
def test_macs_analytic_equals_hook_count(per_token, pattern, detail):
    m = random_model(detail_channels=detail[0], detail_blocks=detail[1])
    x, t, lr = inputs()
    if per_token:
        t = torch.rand(2, 1, 32, 48, generator=torch.Generator().manual_seed(2)) * 14
    tok = {"full": torch.ones(2, 16, 24), "empty": torch.zeros(2, 16, 24)}.get(pattern)
    if tok is None:
        tok = torch.zeros(2, 16, 24)
        tok[0, 0, 0] = tok[1, 9, 17] = tok[1, 0, 23] = 1
    tok = tok.bool()
    hooks = count_macs_hooks(m, x, t, lr, tok, method="forward_sparse")
    _, info = m.forward_sparse(x, t, lr, tok)
    assert info["macs"] == hooks


def test_macs_linear_in_active_windows():
    m = build_qdm("cpu_small", 16, 1)
    base = m.macs((128, 128), 0, 1)
    per = [m.macs((128, 128), k, 1) - base for k in (1, 2, 8, 64)]
    kv = per[0] - (per[1] - per[0])  # the K/V projection is paid once as soon as one window runs
    assert [p - kv for p in per] == [(per[1] - per[0]) * k for k in (1, 2, 8, 64)]


def test_paper_config_sizes():
    n = lambda name: sum(p.numel() for p in build_qdm(name, 3, 1).parameters())  # noqa: E731
    assert 40e6 < n("S") < 60e6  # paper: ~50 M
    assert set(QDM_CONFIGS) >= {"S", "B", "L", "tiny", "cpu_small"}
    with pytest.raises(ConfigError, match="use one of"):
        build_qdm("XXL", 3, 1)


# ---------------------------------------------------------------------------------------- first stages
def test_pixel_unshuffle_is_exact():
    fs = build_first_stage("pixel_unshuffle", 3)
    x = torch.rand(2, 3, 32, 24)
    z = fs.encode(x)
    assert z.shape == (2, 48, 8, 6) and fs.latent_channels == 48 and fs.factor == 4
    assert torch.equal(fs.decode(z), x)
    assert fs.decode_macs((8, 6)) == 0
    with pytest.raises(ValueError, match="not divisible"):
        fs.encode(torch.rand(1, 3, 30, 24))


def test_kl_vae_shapes_scale_factor_and_decode_macs():
    fs = build_first_stage("kl_vae", 1, scale_factor=0.5)
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    z = fs.encode(x)
    assert z.shape == (1, 3, 8, 8) and fs.factor == 4
    mu, _ = fs.encode_posterior(x)
    torch.testing.assert_close(z, mu * 0.5)
    state = fs.state_dict()
    assert float(state["scale_factor"]) == 0.5 and not bool(state["trained"])
    assert fs.decode(z).shape == (1, 1, 32, 32)
    macs8 = fs.decode_macs((8, 8))
    assert macs8 == count_macs_hooks(fs.autoencoder, z / 0.5, method="decode")
    assert fs.decode_macs((16, 16)) == 4 * macs8 and fs.decode_macs((8, 8), batch=3) == 3 * macs8
    with pytest.raises(ConfigError):
        build_first_stage("vqgan", 1)


# ----------------------------------------------------------------------------------------- SR module
def make_sr(scale=8, c=1, kind="pixel_unshuffle", **kw):
    fs = build_first_stage(kind, c)
    return QDMSuperResolution(fs, random_model(fs.latent_channels, c), ResShiftDiffusion(), scale=scale, **kw).eval()


@pytest.mark.parametrize("scale,shape", [(4, (2, 1, 16, 16)), (8, (2, 1, 16, 16)), (4, (1, 3, 16, 12)), (8, (1, 1, 10, 14))])
@torch.no_grad()
def test_sr_module_shapes_and_info(scale, shape):
    sr = make_sr(scale, shape[1], steps=3)
    out = sr(torch.rand(*shape) * 2 - 1)
    assert out.shape == (shape[0], shape[1], shape[2] * scale, shape[3] * scale)
    assert float(out.abs().max()) <= 1
    info = sr.last_info
    assert info["macs"] > 0 and 0 <= info["mask_density"] <= 1 and info["steps"] == 3


@torch.no_grad()
def test_sr_module_seeded_and_threshold_zero_is_dense():
    sr = make_sr(8, steps=4, sampler="uniform", threshold=0.0)
    lr = torch.rand(1, 1, 16, 16) * 2 - 1
    a = sr(lr, generator=torch.Generator().manual_seed(3))
    b = sr(lr, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert sr.last_info["mask_density"] == 1.0
    sr.sparse = False
    c = sr(lr, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)  # full mask: sparse path == dense path


@torch.no_grad()
def test_sr_module_flat_input_skips_downstream():
    sr = make_sr(8, steps=2, threshold=0.15)
    sr(torch.zeros(1, 1, 16, 16))
    assert sr.last_info["active_windows"] == 0 and sr.last_info["mask_density"] == 0.0


def test_sr_module_configure_validates():
    sr = make_sr(8)
    with pytest.raises(ConfigError, match="sampler"):
        sr.configure(sampler="ddim")
    with pytest.raises(ConfigError, match="steps"):
        sr.configure(steps=99)
    with pytest.raises(ConfigError, match="threshold"):
        sr.configure(threshold=-1)
    sr.configure(steps=5, sampler="tds", threshold=0.3)
    assert (sr.steps, sr.sampler, sr.threshold) == (5, "tds", 0.3)
    keys = set(sr.state_dict())
    assert any(k.startswith("qdm.") for k in keys) and "first_stage.scale_factor" in keys


def test_sincos_offset_is_a_crop_of_the_larger_grid():
    from qdm_med.models.blocks import sincos_pos_embed_2d

    big = sincos_pos_embed_2d(32, 8, 8).view(8, 8, 32)
    crop = sincos_pos_embed_2d(32, 4, 3, offset=(2, 5)).view(4, 3, 32)
    torch.testing.assert_close(crop, big[2:6, 5:8])


def test_pos_offset_changes_only_positions_and_defaults_to_inference_grid():
    from qdm_med.models import build_qdm

    torch.manual_seed(0)
    m = build_qdm("tiny", 4, 1, cond="lr").eval()
    for p in m.parameters():  # leave the zero-initialised identity so positions can matter
        p.data.add_(0.02 * torch.randn_like(p))
    x, lr, t = torch.randn(1, 4, 32, 32), torch.randn(1, 1, 8, 8), torch.tensor([3.0])
    with torch.no_grad():
        a0, b0 = m(x, t, lr)
        a1, b1 = m(x, t, lr, pos_offset=(0, 0))
        a2, _ = m(x, t, lr, pos_offset=(1, 2))
    torch.testing.assert_close(a0, a1)
    torch.testing.assert_close(b0, b1)
    assert not torch.allclose(a0, a2)
