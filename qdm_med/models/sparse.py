"""Sparse execution of :class:`~qdm_med.models.qdm.DualStreamQDM` (SPEC section 4, inference).

``forward_sparse`` gathers the windows holding an active token from the whole batch (one image per
chunk of at most ``chunk_size`` windows), packs their tokens (all 64 with window sparsity, the active ones
with token sparsity, grouped by attention length), runs the downstream on them, scatters the pixels back
and blends ``down * m + up * (1 - m)``. The detail branch runs on the 2x2-token units holding an active
token, gathered with their halo, or once over the whole image when more than ``DENSE_DETAIL_DENSITY`` of the
units are active (the same pixels; faster there, though fewer MACs only above about 41%).
``forward_window_loop`` is the reference implementation's Python loop over windows, the oracle of the tests
and the baseline of the gather benchmark.

Every function takes the model as its first argument and reads its layers and sizes; shapes use the
model's notation: Cz latent channels, Cin = Cz + LR channels, Hp x Wp padded latent, Dd downstream width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qdm_med.models.blocks import AttentionGroup, TokenLayout

__all__ = ["forward_sparse", "forward_window_loop", "window_chunks", "token_layout", "run_tokens", "detail_units", "halo_view",
           "gather_halo"]


def halo_view(model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(B, Cin+1, nh, nw, 16+2r, 16+2r) view: each window's input with its halo (an unfold view of the
    padded input: windows are copied only when gathered)."""
    s, r = model.win_px, model.detail_halo
    return model._detail_input(x, t).unfold(2, s + 2 * r, s).unfold(3, s + 2 * r, s)


def gather_halo(view: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` (window order of :meth:`DualStreamQDM._windows`) of a halo view -> (n, Cin+1, S, S)."""
    nh, nw = view.shape[2], view.shape[3]
    nwin = nh * nw
    return view[ids // nwin, :, (ids % nwin) // nw, ids % nw]


def window_chunks(idx: torch.Tensor, nwin: int, chunk_size: int):
    """Split active window ids (sorted, batch-major) into chunks of at most ``chunk_size`` windows of
    one image each."""
    step = max(1, int(chunk_size))
    _, counts = torch.unique_consecutive(idx // nwin, return_counts=True)
    for part in torch.split(idx, counts.tolist()):
        yield from torch.split(part, step)


def token_layout(model, sel: torch.Tensor, win_tok: torch.Tensor, nwin: int):
    """The tokens to compute in active windows ``sel`` (one image's, batch-major ids) -> (window id (n,),
    position in the window (n,), :class:`TokenLayout`).

    Window sparsity: every token, each window's grid whole. Token sparsity: the active tokens only;
    windows are grouped by the shortest of :attr:`ATTENTION_LENGTHS` (or the full window) that holds
    their active tokens, which sit at the front of their window's grid (the rest is masked).
    """
    length, dev = model.window**2, sel.device
    if not model.token_sparse:
        pos = torch.arange(length, device=dev).repeat(sel.numel())
        wid = sel.repeat_interleave(length)
        return wid, pos, TokenLayout([AttentionGroup(0, wid.numel(), None, sel.numel(), length, None)], wid // nwin)
    wmask = win_tok.index_select(0, sel)  # (nc, 64)
    counts = wmask.sum(1)
    rank = torch.cumsum(wmask, 1) - 1  # a token's place among its window's active tokens
    wids, poss, groups, start, lower = [], [], [], 0, 0
    for grid_len in [g for g in model.ATTENTION_LENGTHS if g < length] + [length]:
        here = (counts > lower) & (counts <= grid_len)
        lower = grid_len
        if not bool(here.any()):
            continue
        m = wmask[here]
        rows, pos = torch.nonzero(m).unbind(1)
        key_mask = torch.arange(grid_len, device=dev)[None] < counts[here][:, None]
        groups.append(AttentionGroup(start, start + rows.numel(), rows * grid_len + rank[here][rows, pos], m.shape[0], grid_len, key_mask))
        wids.append(sel[here][rows])
        poss.append(pos)
        start += rows.numel()
    wid = torch.cat(wids)
    return wid, torch.cat(poss), TokenLayout(groups, wid // nwin)


def run_tokens(model, patches: torch.Tensor, wid: torch.Tensor, pos: torch.Tensor, layout: TokenLayout, nwin: int,
                kvs, mods, t_tok, pos_w) -> torch.Tensor:
    """Downstream blocks on packed tokens -> (n, p, p, Cz) pixels per token.

    ``patches``: (n, Cin, p, p) the tokens' input patches; ``wid``/``pos``: global window (batch-major)
    and position in the window of each token; other arguments as in :meth:`DualStreamQDM._run_windows`.
    """
    tok = model.down_embed(patches).flatten(1) + pos_w[wid % nwin, pos]  # (n, Dd)
    if mods is None:
        block_mods, final_mod = model._token_modulations(t_tok[wid, pos])  # (n, 12Dd), (n, 2Dd)
    else:  # the chunk is one image's (see window_chunks): its modulations broadcast, no per-token copies
        item = int(layout.batch[0])
        block_mods = [m[item : item + 1] for m in mods[:-1]]
        final_mod = mods[-1][item : item + 1]
    tok = tok[None]  # packed rows: (1, n, Dd); modulations (1, 12Dd) or per token (1, n, 12Dd)
    for blk, kv, mod in zip(model.down_blocks, kvs, block_mods):
        tok = blk(tok, kv, mod[None], layout=layout)
    p = model.down_patch
    return model.down_final(tok, mod=final_mod[None])[0].view(-1, p, p, model.latent_channels)


def detail_units(model, x: torch.Tensor, t: torch.Tensor, tok_mask: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, int, bool]:
    """The detail branch on the units (DETAIL_UNIT tokens square) holding an active token -> (pixels
    (B, Cz, Hp, Wp), zero elsewhere; number of units computed; whether it ran over the whole image).

    Above ``model.DENSE_DETAIL_DENSITY`` active units it runs once over the whole image instead (the same
    pixels on the active units: its valid convolutions do not depend on where the image is cut)."""
    b, _, hp, wp = x.shape
    u = model.DETAIL_UNIT
    px = u * model.down_patch
    units = F.max_pool2d(tok_mask[:, None].float(), u)[:, 0] > 0  # (B, nuh, nuw)
    if float(units.float().mean()) > model.DENSE_DETAIL_DENSITY:
        return model._detail_whole(x, t), int(units.numel()), True
    ids = torch.nonzero(units)
    out = x.new_zeros(b, hp // px, wp // px, model.latent_channels, px, px)
    # the input and timestep channel once, channels-last (B, Hp, Wp, Cin+1): a unit's halo'd block is
    # gathered as runs of contiguous pixels, already in the layout the convolutions run fastest on;
    # clamped coordinates are the replicate padding of the dense pass
    z = torch.cat([x.permute(0, 2, 3, 1), model._t_channel(x, t).permute(0, 2, 3, 1)], dim=3)
    offsets = torch.arange(px + 2 * model.detail_halo, device=x.device) - model.detail_halo
    step = max(1, int(chunk_size)) * (model.window // u) ** 2  # as many pixels per call as chunk_size windows
    for start in range(0, ids.shape[0], step):
        bi, ui, uj = ids[start : start + step].unbind(1)
        rows = (ui[:, None] * px + offsets).clamp_(0, hp - 1)
        cols = (uj[:, None] * px + offsets).clamp_(0, wp - 1)
        out[bi, ui, uj] = model.detail(z[bi[:, None, None], rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2))
    return out.permute(0, 3, 1, 4, 2, 5).reshape(b, model.latent_channels, hp, wp), int(ids.shape[0]), False


def forward_sparse(model, x_in: torch.Tensor, t, lr: torch.Tensor, token_mask: torch.Tensor | None, chunk_size: int = 64, jump=None):
    """Sparse path: ``(down * m + up * (1 - m), info)``; only windows with an active token are computed
    (with token sparsity, only their active tokens).

    Args:
        token_mask: (B, ceil(h/2), ceil(w/2)) bool (None = all active).
        chunk_size: windows per downstream call (bounds memory).
        jump: the steps the chain moved to this state, for a model with ``jump_conditioning`` (see its ``forward``).
    Returns:
        prediction (B, Cz, h, w) and ``{"active_windows", "total_windows", "active_tokens",
        "total_tokens", "active_units", "macs"}`` (tokens and detail units actually computed).
    """
    x, t, jump, (h, w) = model._prepare(x_in, t, lr, jump)
    b, _, hp, wp = x.shape
    tok_mask = model._token_grid(token_mask, b, hp, wp, x.device)
    up, hidden = model._upstream(x, t, jump=jump)
    length, p = model.window**2, model.down_patch
    win_tok = model._windows(tok_mask[:, None], model.window).flatten(1)  # (B*nWin, 64) bool
    idx = torch.nonzero(win_tok.any(1)).flatten()
    nwin = (hp // model.win_px) * (wp // model.win_px)
    pred, n_tokens, n_units, pairs, detail_dense = up, 0, 0, 0, False
    if idx.numel() > 0:
        nwin, pos_w, kvs, mods, t_tok = model._down_setup(x, t, hidden, jump=jump)
        # (B*nWin, 8, 8, Cin, p, p) view: every token's input patch, copied only when gathered
        patches = model._windows(x, model.win_px).unflatten(2, (model.window, p)).unflatten(4, (model.window, p)).permute(0, 2, 4, 1, 3, 5)
        down_tok = x.new_zeros(b * nwin * length, p, p, model.latent_channels)
        for sel in window_chunks(idx, nwin, chunk_size):
            wid, pos, layout = token_layout(model, sel, win_tok, nwin)
            patch = patches[wid, pos // model.window, pos % model.window]
            down_tok[wid * length + pos] = run_tokens(model, patch, wid, pos, layout, nwin, kvs, mods, t_tok, pos_w)
            n_tokens += int(wid.numel())
            pairs += layout.attention_pairs()
        s = model.window
        down = model._unwindows(
            down_tok.view(b * nwin, s, s, p, p, model.latent_channels)
            .permute(0, 5, 1, 3, 2, 4)
            .reshape(b * nwin, model.latent_channels, s * p, s * p),
            b,
            hp,
            wp,
        )
        if model.detail is not None:
            detail, n_units, detail_dense = detail_units(model, x, t, tok_mask, chunk_size)
            down = down + detail
        m = F.interpolate(tok_mask[:, None].float(), scale_factor=p, mode="nearest") > 0.5
        pred = torch.where(m, down, up)
    pred = pred + model._skip(x, t)
    info = {
        "active_windows": int(idx.numel()),
        "total_windows": int(b * nwin),
        "active_tokens": n_tokens,
        "total_tokens": int(tok_mask.numel()),
        "active_units": n_units,
        "macs": model.macs(
            (h, w), int(idx.numel()), b, per_token_t=t.ndim == 4, active_tokens=n_tokens, active_units=n_units, attention_pairs=pairs,
            detail_dense=detail_dense,
        ),
    }
    return pred[..., :h, :w], info


def forward_window_loop(model, x_in: torch.Tensor, t, lr: torch.Tensor, token_mask: torch.Tensor | None, jump=None) -> torch.Tensor:
    """The reference implementation's sparse path: a Python loop over batch items and windows that runs
    the downstream on one active window at a time (whole, with the detail branch on its halo'd window).
    Same output as :func:`forward_sparse` (up to float rounding); kept as its test oracle and as the
    baseline of the gather benchmark.

    Returns:
        prediction (B, Cz, h, w).
    """
    x, t, jump, (h, w) = model._prepare(x_in, t, lr, jump)
    b, _, hp, wp = x.shape
    s, ts = model.win_px, model.window
    tok_mask = model._token_grid(token_mask, b, hp, wp, x.device)
    up, hidden = model._upstream(x, t, jump=jump)
    nwin, pos_w, kvs, mods, t_tok = model._down_setup(x, t, hidden, jump=jump)
    halo = halo_view(model, x, t) if model.detail is not None else None
    pred = up.clone()
    nw = wp // s
    for i in range(b):
        for k in range(nwin):
            r, c = divmod(k, nw)
            m = tok_mask[i, r * ts : (r + 1) * ts, c * ts : (c + 1) * ts]
            if not bool(m.any()):
                continue
            sel = torch.tensor([i * nwin + k], device=x.device)
            tok = model.down_embed(x[i : i + 1, :, r * s : (r + 1) * s, c * s : (c + 1) * s]).flatten(2).transpose(1, 2)
            tt = None if t_tok is None else t_tok.index_select(0, sel)
            hs = None if halo is None else gather_halo(halo, sel)
            attn_mask = model._attention_mask(m.reshape(1, -1))
            down = model._run_windows(tok, sel // nwin, sel % nwin, kvs, mods, tt, pos_w, hs, attn_mask)[0]
            m_px = m.repeat_interleave(model.down_patch, 0).repeat_interleave(model.down_patch, 1)
            region = pred[i, :, r * s : (r + 1) * s, c * s : (c + 1) * s]
            pred[i, :, r * s : (r + 1) * s, c * s : (c + 1) * s] = torch.where(m_px, down, region)
    pred = pred + model._skip(x, t)
    return pred[..., :h, :w]
