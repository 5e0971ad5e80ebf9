"""Token-level sparsity of the QDM downstream: the self-attention split by the mask (dense path) equals the
packed active-token path, the per-window loop and the MAC count; window-level models are unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_doubles import inputs, random_model

from qdm_med.diffusion import ResShiftDiffusion
from qdm_med.models import count_macs_hooks
from qdm_med.models.blocks import AttentionGroup, SelfAttention, TokenLayout
from qdm_med.models.sparse import token_layout


def mixed_mask(b=2, gh=16, gw=24, seed=0) -> torch.Tensor:
    """Windows of 8x8 tokens holding 0, a few, ~20, ~50 and all 64 active tokens (every attention grid length)."""
    g = torch.Generator().manual_seed(seed)
    tok = torch.zeros(b, gh, gw, dtype=torch.bool)
    tok[0, 0:8, 0:8] = torch.rand(8, 8, generator=g) < 0.1  # few
    tok[0, 0:8, 8:16] = torch.rand(8, 8, generator=g) < 0.35  # about 20
    tok[0, 8:16, 0:8] = torch.rand(8, 8, generator=g) < 0.8  # about 50
    tok[1, 8:16, 16:24] = True  # whole window
    tok[1, 0, 0] = True  # one token
    return tok


def token_model(**kw):
    m = random_model(**kw)
    m.token_sparse = True
    return m


def token_case(detail, per_token_t, seed):
    """(model, x, t, lr, mask): a token-sparse model with the given detail branch, constant or per-pixel t."""
    m = token_model(detail_channels=detail[0], detail_blocks=detail[1])
    x, t, lr = inputs()
    if per_token_t:
        t = torch.rand(2, 1, 32, 48, generator=torch.Generator().manual_seed(seed)) * 14
    return m, x, t, lr, mixed_mask()


@torch.no_grad()
@pytest.mark.parametrize("detail", [(0, 0), (8, 0), (8, 2)])
@pytest.mark.parametrize("per_token_t", [False, True])
def test_token_sparse_equals_dense_with_split_attention(detail, per_token_t):
    m, x, t, lr, tok = token_case(detail, per_token_t, seed=3)
    down, up = m(x, t, lr, token_mask=tok)
    pred, info = m.forward_sparse(x, t, lr, tok, chunk_size=2)
    active = F.interpolate(tok[:, None].float(), scale_factor=2) > 0.5
    torch.testing.assert_close(pred, torch.where(active, down, up), atol=1e-5, rtol=1e-5)
    assert info["active_tokens"] == int(tok.sum()) and info["active_windows"] == 5
    # the reference loop (one whole window at a time, split attention) agrees
    torch.testing.assert_close(m.forward_window_loop(x, t, lr, tok), pred, atol=1e-5, rtol=1e-5)
    # the split matters: the window model (whole-window attention) gives another result on the same weights
    m.token_sparse = False
    assert not torch.allclose(m.forward_sparse(x, t, lr, tok)[0], pred, atol=1e-4)


@torch.no_grad()
def test_token_sparse_outputs_do_not_depend_on_inactive_tokens_of_the_window():
    """An active token's downstream output is the same whether or not an inactive neighbour is computed:
    forward_sparse on a mask equals the dense split-attention output, and enlarging the dense mask's
    inactive side changes nothing at the active tokens."""
    m = token_model()
    x, t, lr = inputs()
    tok = mixed_mask()
    down_a, _ = m(x, t, lr, token_mask=tok)
    more = tok.clone()
    more[0, 0:8, 16:24] = True  # another window becomes active: the others' attention is untouched
    down_b, _ = m(x, t, lr, token_mask=more)
    active = F.interpolate(tok[:, None].float(), scale_factor=2)[:, 0] > 0.5
    torch.testing.assert_close(down_a.permute(1, 0, 2, 3)[:, active], down_b.permute(1, 0, 2, 3)[:, active])


@torch.no_grad()
def test_full_mask_token_sparse_equals_window_model():
    """With every token active the split attention is whole-window attention: both granularities agree."""
    m = token_model(detail_channels=8)
    x, t, lr = inputs()
    full = torch.ones(2, 16, 24, dtype=torch.bool)
    pred_tok, info = m.forward_sparse(x, t, lr, full)
    m.token_sparse = False
    pred_win, _ = m.forward_sparse(x, t, lr, full)
    torch.testing.assert_close(pred_tok, pred_win, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pred_tok, m(x, t, lr)[0], atol=1e-5, rtol=1e-5)
    assert info["active_tokens"] == 2 * 16 * 24


@torch.no_grad()
@pytest.mark.parametrize("per_token_t", [False, True])
@pytest.mark.parametrize("detail", [(0, 0), (8, 2)])
def test_token_sparse_macs_equal_hook_count_and_shrink_with_tokens(per_token_t, detail):
    m, x, t, lr, tok = token_case(detail, per_token_t, seed=2)
    _, info = m.forward_sparse(x, t, lr, tok)
    assert info["macs"] == count_macs_hooks(m, x, t, lr, tok, method="forward_sparse")
    m.token_sparse = False
    _, info_win = m.forward_sparse(x, t, lr, tok)
    assert info_win["active_windows"] == info["active_windows"] and info_win["active_tokens"] == 5 * 64
    assert info["macs"] < info_win["macs"]


@torch.no_grad()
@pytest.mark.parametrize("per_token_t", [False, True])
def test_detail_branch_over_the_whole_image_equals_units(per_token_t, monkeypatch):
    """Above DENSE_DETAIL_DENSITY active units the detail branch runs once over the image: the same pixels,
    and the MAC count follows the path taken."""
    m, x, t, lr, tok = token_case((8, 1), per_token_t, seed=3)
    cls = type(m)
    monkeypatch.setattr(cls, "DENSE_DETAIL_DENSITY", 1.0)  # never dense: units
    pred_units, info_units = m.forward_sparse(x, t, lr, tok)
    hooks_units = count_macs_hooks(m, x, t, lr, tok, method="forward_sparse")
    monkeypatch.setattr(cls, "DENSE_DETAIL_DENSITY", 0.0)  # any active unit: the whole image
    pred_dense, info_dense = m.forward_sparse(x, t, lr, tok)
    torch.testing.assert_close(pred_dense, pred_units, atol=1e-5, rtol=1e-5)
    assert info_dense["active_units"] == 2 * 8 * 12 > info_units["active_units"] > 0
    assert info_units["macs"] == hooks_units != info_dense["macs"]
    assert info_dense["macs"] == count_macs_hooks(m, x, t, lr, tok, method="forward_sparse")


@torch.no_grad()
def test_empty_token_mask_runs_no_downstream():
    m = token_model(detail_channels=8)
    x, t, lr = inputs()
    pred, info = m.forward_sparse(x, t, lr, torch.zeros(2, 16, 24, dtype=torch.bool))
    assert info["active_tokens"] == info["active_units"] == info["active_windows"] == 0
    torch.testing.assert_close(pred, m(x, t, lr)[1])


def test_attention_groups_use_the_shortest_grid():
    m = token_model()
    tok = mixed_mask()
    win_tok = m._windows(tok[:, None], 8).flatten(1)
    counts = win_tok.sum(1)
    sel = torch.nonzero(counts[:6] > 0).flatten()  # image 0's active windows
    wid, pos, layout = token_layout(m, sel, win_tok, nwin=6)
    assert wid.numel() == int(counts[:6].sum())
    for g in layout.groups:
        n_per_window = g.key_mask.sum(1)
        assert g.length in (16, 32, 64) and bool((n_per_window <= g.length).all())
        assert g.length == 16 or bool((n_per_window > g.length // 2).all())
        assert int(n_per_window.sum()) == g.end - g.start
    assert layout.attention_pairs() == sum(g.windows * g.length**2 for g in layout.groups)
    assert layout.batch_ranges == [(0, 0, wid.numel())]


@torch.no_grad()
def test_packed_self_attention_equals_masked_window_attention():
    torch.manual_seed(0)
    attn = SelfAttention(16, 2)
    x = torch.randn(3, 8, 16)
    keep = torch.tensor([[1, 1, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1], [1] * 8], dtype=torch.bool)
    dense = attn(x, ((keep[:, :, None] & keep[:, None, :]) | ~keep[:, :, None])[:, None])  # inactive queries: anything
    rows, pos = torch.nonzero(keep).unbind(1)
    rank = (torch.cumsum(keep, 1) - 1)[rows, pos]
    counts = keep.sum(1)
    group = AttentionGroup(0, rows.numel(), rows * 8 + rank, 3, 8, torch.arange(8)[None] < counts[:, None])
    packed = attn(x[rows, pos][None], layout=TokenLayout([group], torch.zeros(rows.numel(), dtype=torch.long)))
    torch.testing.assert_close(packed[0], dense[rows, pos], atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_sampler_dense_path_passes_the_token_mask():
    """diffusion.sample with sparse=False gives the sparse result for a token-sparse model."""
    m = token_model(detail_channels=8)
    x, _, lr = inputs()
    tok = mixed_mask()
    diff = ResShiftDiffusion()
    kw = dict(token_mask=tok, timesteps=2)
    a, _ = diff.sample(m, x, lr, generator=torch.Generator().manual_seed(0), sparse=True, **kw)
    b, _ = diff.sample(m, x, lr, generator=torch.Generator().manual_seed(0), sparse=False, **kw)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_masked_attention_core_equals_fused_kernel():
    """The CPU matmul form of masked attention equals torch's fused kernel (and attends nowhere masked)."""
    from qdm_med.models.blocks import AttentionCore

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 2, 16, 8, generator=g) for _ in range(3))
    mask = torch.rand(5, 1, 1, 16, generator=g) < 0.4
    mask[..., 3] = True
    out = AttentionCore()(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-6, rtol=1e-5)
    v2 = v.clone()
    v2[~mask[:, :, 0, :].expand(5, 2, 16)] = 1e3  # values behind the mask cannot leak
    torch.testing.assert_close(AttentionCore()(q, k, v2, mask), out)
