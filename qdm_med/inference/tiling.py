"""Overlapping-tile super-resolution with smooth blending, so memory stays bounded for any image size.

An LR batch ``(B, C, h, w)`` larger than ``tile_size`` LR pixels along an axis is cut into tiles of
``tile_size`` that overlap by at least ``overlap`` LR pixels; the callable runs on each tile (the whole
batch at once) and the SR tiles are blended back with weights that

- are exactly 0 in a ``margin`` next to an internal tile edge (a network's or an interpolator's border
  effects never reach the output),
- rise as a Hann (sin^2) ramp across the rest of the overlap, so two aligned tiles sum to 1 there
  (partition of unity) and no seam is visible,
- are 1 everywhere else, including at the image borders (there is no neighbour to blend with).

The output is ``sum_i w_i * sr_i / sum_i w_i``: where neighbouring tiles agree (any callable that is local
with a support smaller than the margin, e.g. nearest or bicubic upsampling) the tiled output equals the
untiled one up to float rounding.

Every call, tiled or not, pads its input at the bottom/right (replicate) to a multiple of the model's
stride ``size_multiple`` (LR pixels) and crops the SR output back; with a tile larger than the image the
result is exactly one call of the callable.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

SRFn = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["TiledSR", "tile_starts", "blend_weights", "pad_to_multiple", "call_padded", "tiled_apply"]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with overlaps ``>= overlap``.

    The last tile is aligned to the end, so every tile has the full size when ``length >= tile``.
    """
    if length <= tile:
        return [0]
    step = tile - overlap
    if step <= 0:
        raise ValueError(f"tile size {tile} must exceed the overlap {overlap}")
    starts = [0]
    while starts[-1] + tile < length:
        starts.append(min(starts[-1] + step, length - tile))
    return starts


def _ramp(n: int, left: bool, right: bool, overlap: int, margin: int, device=None) -> torch.Tensor:
    """1D weights of length ``n`` (SR pixels): zero margin, then sin^2 ramp, then 1, at each blended side."""
    w = torch.ones(n, dtype=torch.float32, device=device)
    ramp_len = overlap - 2 * margin
    if ramp_len <= 0:
        raise ValueError(f"overlap {overlap} leaves no room for a ramp after margins of {margin}")
    d = torch.arange(n, dtype=torch.float32, device=device) + 0.5  # distance of pixel centres from the edge
    rising = torch.sin(0.5 * math.pi * ((d - margin) / ramp_len).clamp(0.0, 1.0)) ** 2
    rising = torch.where(d < margin, torch.zeros_like(rising), rising)
    if left:
        w = w * rising
    if right:
        w = w * rising.flip(0)
    return w


def blend_weights(
    size: tuple[int, int],
    sides: tuple[bool, bool, bool, bool],
    overlap: int,
    margin: int,
    device=None,
) -> torch.Tensor:
    """Blending weights ``(H, W)`` of one SR tile.

    Args:
        size: (H, W) of the SR tile.
        sides: (top, bottom, left, right) -- True where the tile has a neighbour to blend with.
        overlap: nominal overlap in SR pixels.
        margin: SR pixels next to a blended edge that get weight 0.
    """
    top, bottom, left, right = sides
    wy = _ramp(size[0], top, bottom, overlap, margin, device)
    wx = _ramp(size[1], left, right, overlap, margin, device)
    return wy[:, None] * wx[None, :]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad ``x`` (B, C, h, w) at the bottom/right so h and w divide by ``multiple``."""
    if multiple <= 1:
        return x
    ph = (-x.shape[-2]) % multiple
    pw = (-x.shape[-1]) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def call_padded(fn: SRFn, x: torch.Tensor, scale: int, multiple: int = 1) -> torch.Tensor:
    """``fn`` on ``x`` (B, C, h, w) padded to ``multiple``; returns (B, C', h*scale, w*scale) cropped back."""
    h, w = x.shape[-2:]
    out = fn(pad_to_multiple(x, multiple))
    ph, pw = pad_to_multiple_shape(h, w, multiple)
    expected = (ph * scale, pw * scale)
    if out.ndim != 4 or tuple(out.shape[-2:]) != expected or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"super-resolution callable returned shape {tuple(out.shape)} for input {tuple(x.shape)} "
            f"(padded to {ph}x{pw}); expected (B, C, {expected[0]}, {expected[1]}) at scale {scale}"
        )
    return out[..., : h * scale, : w * scale]


def pad_to_multiple_shape(h: int, w: int, multiple: int) -> tuple[int, int]:
    """(h, w) rounded up to ``multiple``."""
    m = max(1, int(multiple))
    return h + (-h) % m, w + (-w) % m


class TiledSR:
    """Apply an SR callable tile by tile with overlap blending.

    Args:
        scale: SR factor of the callable (integer).
        tile_size: tile size in LR pixels; ``None`` never tiles (one padded call per batch).
        overlap: minimum overlap of neighbouring tiles in LR pixels.
        margin: LR pixels at each internal tile edge given weight 0 (default ``overlap // 4``).
        size_multiple: the callable's input stride in LR pixels (tiles are padded to it and cropped back).

    Call: ``TiledSR(...)(fn, x)`` with ``x`` (B, C, h, w) -> (B, C', h*scale, w*scale), on the device and
    dtype the callable returns (accumulated in float32).
    """

    def __init__(
        self,
        scale: int,
        tile_size: int | None = 128,
        overlap: int = 16,
        margin: int | None = None,
        size_multiple: int = 4,
    ) -> None:
        self.scale = int(scale)
        if self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        self.tile_size = None if tile_size is None else int(tile_size)
        self.overlap = int(overlap)
        self.margin = self.overlap // 4 if margin is None else int(margin)
        self.size_multiple = max(1, int(size_multiple))
        if self.tile_size is not None:
            if self.tile_size <= 2 * self.overlap:
                raise ValueError(f"tile_size {self.tile_size} must exceed twice the overlap {self.overlap}")
            if self.overlap <= 2 * self.margin:
                raise ValueError(f"overlap {self.overlap} must exceed twice the margin {self.margin}")

    def n_tiles(self, h: int, w: int) -> int:
        """Number of callable invocations for an LR image of size (h, w)."""
        if self.tile_size is None:
            return 1
        return len(tile_starts(h, self.tile_size, self.overlap)) * len(tile_starts(w, self.tile_size, self.overlap))

    def __call__(
        self, fn: SRFn, x: torch.Tensor, on_tile: Callable[[int, int], None] | None = None
    ) -> torch.Tensor:
        """Run ``fn`` over the tiles of ``x``; ``on_tile(done, total)`` is called after each tile."""
        if x.ndim != 4:
            raise ValueError(f"expected an LR batch (B, C, h, w), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        t = self.tile_size
        if t is None or (h <= t and w <= t):
            out = call_padded(fn, x, self.scale, self.size_multiple)
            if on_tile is not None:
                on_tile(1, 1)
            return out
        s = self.scale
        ys = tile_starts(h, t, self.overlap)
        xs = tile_starts(w, t, self.overlap)
        out = norm = None
        for iy, y0 in enumerate(ys):
            y1 = min(y0 + t, h)
            for ix, x0 in enumerate(xs):
                x1 = min(x0 + t, w)
                sr = call_padded(fn, x[..., y0:y1, x0:x1], s, self.size_multiple).float()
                if out is None:
                    out = torch.zeros((*sr.shape[:2], h * s, w * s), dtype=torch.float32, device=sr.device)
                    norm = torch.zeros((h * s, w * s), dtype=torch.float32, device=sr.device)
                sides = (iy > 0, iy < len(ys) - 1, ix > 0, ix < len(xs) - 1)
                wt = blend_weights(sr.shape[-2:], sides, self.overlap * s, self.margin * s, sr.device)
                out[..., y0 * s : y1 * s, x0 * s : x1 * s] += sr * wt
                norm[y0 * s : y1 * s, x0 * s : x1 * s] += wt
                if on_tile is not None:
                    on_tile(iy * len(xs) + ix + 1, len(ys) * len(xs))
        return out / norm


def tiled_apply(
    fn: SRFn,
    x: torch.Tensor,
    scale: int,
    tile_size: int | None = 128,
    overlap: int = 16,
    size_multiple: int = 4,
    margin: int | None = None,
    on_tile: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Functional form of :class:`TiledSR`: ``fn`` on ``x`` (B, C, h, w) -> (B, C', h*scale, w*scale)."""
    return TiledSR(scale, tile_size, overlap, margin, size_multiple)(fn, x, on_tile=on_tile)
