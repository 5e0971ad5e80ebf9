"""Building blocks of the dual-stream QDM transformer (DiT-style, adaLN-Zero).

Conditioning ``c`` is either per sample ``(B, D)`` or per token ``(B, N, D)`` (the spatial timestep
map of TSS's SDS). :func:`modulate` and the blocks accept both; with a constant per-token ``c`` they
give exactly the per-sample result.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "modulate",
    "TimestepEmbedder",
    "AttentionCore",
    "SelfAttention",
    "CrossAttention",
    "Mlp",
    "DiTBlock",
    "WindowCrossBlock",
    "FinalLayer",
    "ValidConvResBlock",
    "AttentionGroup",
    "TokenLayout",
    "sincos_pos_embed_2d",
    "window_partition",
    "window_merge",
]


def _per_token(c: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, 1, D) so it broadcasts over tokens; (B, N, D) unchanged."""
    return c.unsqueeze(1) if c.ndim == 2 else c


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x * (1 + scale) + shift`` with per-sample or per-token parameters."""
    return x * (1 + _per_token(scale)) + _per_token(shift)


class TimestepEmbedder(nn.Module):
    """Real-valued timestep -> vector: sinusoidal features (``freq_dim``) then an MLP.

    ``t`` may be (B,) or (B, N) (per token); output (B, D) or (B, N, D).
    """

    def __init__(self, hidden: int, freq_dim: int = 256, max_period: float = 10000.0) -> None:
        super().__init__()
        self.freq_dim, self.max_period = freq_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def frequencies(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[..., None] * freqs
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.frequencies(t).to(self.mlp[0].weight.dtype))


@dataclasses.dataclass
class AttentionGroup:
    """Rows ``start:end`` of a :class:`TokenLayout` and the padded grid their self-attention runs on.

    Attributes:
        slots: (end - start,) position of each row in the ``(windows * length)`` grid (None: the rows are
            the grid, in order).
        windows, length: grid size: windows, and token slots per window.
        key_mask: (windows, length) bool, the slots a query may attend to (None: all).
    """

    start: int
    end: int
    slots: torch.Tensor | None
    windows: int
    length: int
    key_mask: torch.Tensor | None


@dataclasses.dataclass
class TokenLayout:
    """Where packed tokens sit: the downstream's sparse path runs its blocks on ``(1, n, D)`` rows (only the
    tokens it computes) instead of ``(windows, 64, D)`` grids.

    Attributes:
        groups: :class:`AttentionGroup` list covering the rows in order; a row attends within its
            window of its group's grid (groups let windows with few tokens use short grids).
        batch: (n,) batch item of each row, non-decreasing (cross-attention runs per batch item).
    """

    groups: list[AttentionGroup]
    batch: torch.Tensor

    def __post_init__(self) -> None:
        items, counts = torch.unique_consecutive(self.batch, return_counts=True)
        ends = torch.cumsum(counts, 0).tolist()
        #: (batch item, first row, end row) per batch item present
        self.batch_ranges = [(int(b), e - int(c), e) for b, c, e in zip(items.tolist(), counts.tolist(), ends)]

    def attention_pairs(self) -> int:
        """Query-key pairs of the self-attention (per head and block): sum of windows x length^2."""
        return sum(g.windows * g.length**2 for g in self.groups)


class AttentionCore(nn.Module):
    """softmax(q k^T / sqrt(d)) v on (B, heads, N, d) tensors (its own module so MAC hooks can see it).

    ``mask``: bool, broadcastable to (B, heads, N_q, N_k); True = may attend (every query needs one key).
    Masked attention over at most :attr:`MATMUL_MAX_KEYS` keys on the CPU runs as plain matmuls: on the
    short grids of the token-sparse windows they are 1.3-2.8x faster than the fused kernel, which wins on
    full 64-token windows (measured with torch 2.14, 2 threads)."""

    MATMUL_MAX_KEYS = 32

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None or q.device.type != "cpu" or k.shape[-2] > self.MATMUL_MAX_KEYS:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.core = AttentionCore()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, layout: TokenLayout | None = None) -> torch.Tensor:
        """x (B, N, D) -> (B, N, D); ``mask`` (B, 1, N, N) bool or None. With a ``layout``, x is packed
        (1, n, D): rows attend within their window of the layout's grid, to its ``key_mask`` tokens."""
        if layout is not None:
            return self._packed(x, layout)
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(self.core(q, k, v, mask).transpose(1, 2).reshape(b, n, d))

    def _packed(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        d = x.shape[-1]
        qkv = self.qkv(x[0])  # (n, 3D): projections of the computed tokens only
        out = qkv.new_empty(qkv.shape[0], d)
        for g in layout.groups:
            rows = qkv[g.start : g.end]
            if g.slots is None:
                grid = rows
            else:  # empty slots hold zeros; the key mask keeps them out of every softmax
                grid = rows.new_zeros(g.windows * g.length, 3 * d)
                grid[g.slots] = rows
            q, k, v = grid.view(g.windows, g.length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            mask = None if g.key_mask is None else g.key_mask[:, None, None, :]
            o = self.core(q, k, v, mask).transpose(1, 2).reshape(g.windows * g.length, d)
            out[g.start : g.end] = o if g.slots is None else o[g.slots]
        return self.proj(out)[None]


class CrossAttention(nn.Module):
    """Queries from window tokens, keys/values from the upstream hidden states.

    ``project_kv(context)`` runs once per sampling step for the whole batch. ``forward(x, kv, bidx)`` takes
    the per-image keys/values and the batch item of each window row: the queries of all windows of one
    image attend to that image's keys/values in one call, so keys/values are never copied per window
    (a copy per window would make memory grow with windows x upstream tokens, i.e. with pixels squared).
    """

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.core = AttentionCore()
        self.proj = nn.Linear(dim, dim)

    def project_kv(self, context: torch.Tensor) -> torch.Tensor:
        """(B, M, context_dim) -> (B, 2, heads, M, d)."""
        b, m, _ = context.shape
        d = self.q.out_features
        return self.kv(context).view(b, m, 2, self.heads, d // self.heads).permute(0, 2, 3, 1, 4)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, bidx: torch.Tensor | None = None,
                layout: TokenLayout | None = None) -> torch.Tensor:
        """x (n, N, D) window tokens, kv (B, 2, heads, M, d), bidx (n,) batch item of each row
        (None: row i uses kv[i]) -> (n, N, D). With a ``layout``, x is packed (1, n, D)."""
        if layout is not None:
            return self._packed(x, kv, layout)
        n, length, d = x.shape
        h, dh = self.heads, d // self.heads
        q = self.q(x).view(n, length, h, dh)
        if bidx is None:
            out = self.core(q.transpose(1, 2), kv[:, 0], kv[:, 1]).transpose(1, 2)
        else:
            out = q.new_empty(n, length, h, dh)
            for b in torch.unique(bidx).tolist():
                rows = torch.nonzero(bidx == b).flatten()
                qb = q.index_select(0, rows).reshape(1, rows.numel() * length, h, dh).transpose(1, 2)
                ob = self.core(qb, kv[b : b + 1, 0], kv[b : b + 1, 1])  # (1, h, rows*N, dh)
                out[rows] = ob.transpose(1, 2).reshape(rows.numel(), length, h, dh)
        return self.proj(out.reshape(n, length, d))

    def _packed(self, x: torch.Tensor, kv: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        n, d = x.shape[1], x.shape[2]
        h, dh = self.heads, d // self.heads
        q = self.q(x[0]).view(n, h, dh)
        out = q.new_empty(n, h, dh)
        for b, start, end in layout.batch_ranges:  # the rows of one image attend to its keys/values at once
            out[start:end] = self.core(q[start:end].transpose(0, 1)[None], kv[b : b + 1, 0], kv[b : b + 1, 1])[0].transpose(0, 1)
        return self.proj(out.reshape(n, d))[None]


class Mlp(nn.Module):
    def __init__(self, dim: int, ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """Self-attention + MLP with adaLN-Zero (6 modulation vectors from ``c``)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def modulation(self, c: torch.Tensor) -> torch.Tensor:
        return self.ada(c)

    def forward(self, x: torch.Tensor, c: torch.Tensor, mod: torch.Tensor | None = None) -> torch.Tensor:
        mod = self.modulation(c) if mod is None else mod
        sh1, sc1, g1, sh2, sc2, g2 = mod.chunk(6, dim=-1)
        x = x + _per_token(g1) * self.attn(modulate(self.norm1(x), sh1, sc1))
        return x + _per_token(g2) * self.mlp(modulate(self.norm2(x), sh2, sc2))


class WindowCrossBlock(nn.Module):
    """Downstream block on window tokens: window self-attention + MLP, then cross-attention to the
    upstream hidden states + MLP; adaLN-Zero (12 modulation vectors)."""

    def __init__(self, dim: int, context_dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        norm = lambda: nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)  # noqa: E731
        self.norm1, self.norm2, self.norm3, self.norm4 = norm(), norm(), norm(), norm()
        self.attn = SelfAttention(dim, heads)
        self.mlp1 = Mlp(dim, mlp_ratio)
        self.cross = CrossAttention(dim, context_dim, heads)
        self.mlp2 = Mlp(dim, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 12 * dim))

    def modulation(self, c: torch.Tensor) -> torch.Tensor:
        return self.ada(c)

    def forward(
        self,
        x: torch.Tensor,
        kv: torch.Tensor,
        mod: torch.Tensor,
        bidx: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        layout: TokenLayout | None = None,
    ) -> torch.Tensor:
        """x (n, N, D); kv (B, 2, heads, M, d) with ``bidx`` (n,) the batch item of each row, or per row when
        ``bidx`` is None; mod (n, 12D) or per-token (n, N, 12D); ``mask`` (n, 1, N, N) bool self-attention
        mask. With a ``layout`` (:class:`TokenLayout`), x is packed (1, n, D) and mod (1, n, 12D)."""
        m = mod.chunk(12, dim=-1)
        x = x + _per_token(m[2]) * self.attn(modulate(self.norm1(x), m[0], m[1]), mask, layout)
        x = x + _per_token(m[5]) * self.mlp1(modulate(self.norm2(x), m[3], m[4]))
        x = x + _per_token(m[8]) * self.cross(modulate(self.norm3(x), m[6], m[7]), kv, bidx, layout)
        return x + _per_token(m[11]) * self.mlp2(modulate(self.norm4(x), m[9], m[10]))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + linear to ``patch * patch * out_channels`` per token."""

    def __init__(self, dim: int, patch: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def modulation(self, c: torch.Tensor) -> torch.Tensor:
        return self.ada(c)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None, mod: torch.Tensor | None = None) -> torch.Tensor:
        mod = self.modulation(c) if mod is None else mod
        shift, scale = mod.chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class ValidConvResBlock(nn.Module):
    """Residual block of two unpadded 3x3 convolutions: (B, C, H, W) -> (B, C, H-4, W-4).

    Unpadded ("valid") so that a window computed with a halo equals the same pixels of the whole image;
    the skip is the centre crop. The second convolution starts at zero: a new block is the identity.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3)
        self.conv2 = nn.Conv2d(channels, channels, 3)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., 2:-2, 2:-2] + self.conv2(F.gelu(self.conv1(x)))


def window_partition(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * nH * nW, C, size, size), windows in row-major order per image."""
    b, c, h, w = x.shape
    nh, nw = h // size, w // size
    return x.view(b, c, nh, size, nw, size).permute(0, 2, 4, 1, 3, 5).reshape(b * nh * nw, c, size, size)


def window_merge(xw: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nH * nW, C, s, s) -> (B, C, H, W)."""
    _, c, s, _ = xw.shape
    nh, nw = h // s, w // s
    return xw.view(b, nh, nw, c, s, s).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """(grid_h * grid_w, dim) fixed 2D sin-cos embedding (MAE/DiT form) for any rectangular grid whose
    first row/column sit at positions ``offset`` (a crop of a larger grid). A fresh tensor per call; the
    table itself is computed once per (dim, grid, offset) (every sampling step asks for the same one)."""
    if dim % 4:
        raise ValueError(f"embedding size {dim} must be divisible by 4")
    oy, ox = (float(o) for o in offset)
    return _sincos_table(int(dim), int(grid_h), int(grid_w), oy, ox).clone()


@functools.lru_cache(maxsize=32)
def _sincos_table(dim: int, grid_h: int, grid_w: int, oy: float, ox: float) -> torch.Tensor:
    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gy, gx = np.meshgrid(oy + np.arange(grid_h, dtype=np.float64), ox + np.arange(grid_w, dtype=np.float64), indexing="ij")
    emb = np.concatenate([one_d(dim // 2, gy), one_d(dim // 2, gx)], axis=1)
    return torch.from_numpy(emb).float()


class DetailBranch(nn.Module):
    """The downstream's convolutional detail branch: (n, Cin+1, S+2r, S+2r) -> (n, Cz, S, S), valid convolutions.

    ``conv_in`` (3x3, Cin+1 -> C), GELU, ``res`` (``blocks`` :class:`ValidConvResBlock`, possibly none),
    ``conv_mid`` (3x3), GELU, ``conv_out`` (3x3, C -> Cz, zero-initialised by the model): the halo ``r`` is
    3 + 2 x blocks pixels. Parameters are registered in the order of the former positional layout
    (``detail.0/2/4``, then ``detail_res``), whose state-dict keys :meth:`remap_legacy_keys` translates.
    """

    #: former state-dict key prefixes (an ``nn.Sequential`` indexed by position, and the sibling residual list)
    LEGACY_KEYS = {
        "detail.0.": "detail.conv_in.",
        "detail.2.": "detail.conv_mid.",
        "detail.4.": "detail.conv_out.",
        "detail_res.": "detail.res.",
    }

    def __init__(self, in_channels: int, channels: int, out_channels: int, blocks: int = 0) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels, 3)
        self.conv_mid = nn.Conv2d(channels, channels, 3)
        self.conv_out = nn.Conv2d(channels, out_channels, 3)
        self.res = nn.Sequential(*[ValidConvResBlock(channels) for _ in range(int(blocks))])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.res(F.gelu(self.conv_in(z)))
        return self.conv_out(F.gelu(self.conv_mid(h)))

    @classmethod
    def remap_legacy_keys(cls, state_dict: dict, prefix: str) -> None:
        """Rename, in place, the former keys under ``prefix`` (e.g. ``"qdm."``) to this module's names."""
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix) :]
            for old, new in cls.LEGACY_KEYS.items():
                if rest.startswith(old):
                    state_dict[prefix + new + rest[len(old) :]] = state_dict.pop(key)
                    break
