"""The tiled (periodic) component of an image residual: how much of a model's added "texture" is one pattern
repeated on a fixed grid.

A patchified transformer projects each token linearly onto its ``p x p`` output pixels. Where tokens look
alike (air, a soft-tissue plateau) it can only draw the same pattern in every patch, so texture it adds there
repeats with the patch period (the QDM upstream: 8 latent pixels, 32 HR pixels with a 4x first stage). Real
texture does not. :func:`tiled_component` estimates that pattern as the mean of the residual over all tiles
of a period, phase by phase, less the residual's mean (an offset is no pattern); for a residual with no tiled
part its RMS falls as 1/sqrt(tiles).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["tiled_component", "tiled_energy", "tiled_share"]


def tiled_component(residual: np.ndarray, period: int, mask: np.ndarray | None = None) -> np.ndarray:
    """The zero-mean ``period``-periodic part of a residual (tile means, phase by phase, less the mean), tiled
    back to its size.

    Args:
        residual: (H, W) or (N, H, W) float array, e.g. a model's output minus a smooth reference; a stack
            of N slices shares one pattern (the tiles of every slice are pooled).
        period: tile side in pixels (>= 1); the grid starts at pixel (0, 0), as a model's patch grid does.
        mask: bool array of the residual's shape, the pixels that form and receive the estimate (None: all).
            A phase with no masked pixel gets 0.

    Returns:
        float64 array of the residual's shape: the tile pattern where ``mask`` holds, 0 elsewhere.
    """
    r = np.asarray(residual, dtype=np.float64)
    if r.ndim not in (2, 3):
        raise ValueError(f"residual must be a 2D (H, W) or 3D (N, H, W) array; got shape {r.shape}")
    if int(period) != period or period < 1:
        raise ValueError(f"period {period} must be a positive integer")
    p = int(period)
    m = np.ones(r.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != r.shape:
        raise ValueError(f"mask shape {m.shape} differs from the residual's {r.shape}")
    r3, m3 = r.reshape(-1, *r.shape[-2:]), m.reshape(-1, *m.shape[-2:])
    n, h, w = r3.shape
    rows, cols = -(-h // p) * p, -(-w // p) * p  # pad up to whole tiles; padding is unmasked
    rp = np.zeros((n, rows, cols))
    mp = np.zeros((n, rows, cols))
    rp[:, :h, :w], mp[:, :h, :w] = np.where(m3, r3, 0.0), m3
    sums = rp.reshape(n, rows // p, p, cols // p, p).sum(axis=(0, 1, 3))
    counts = mp.reshape(n, rows // p, p, cols // p, p).sum(axis=(0, 1, 3))
    tile = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    seen = counts > 0
    if seen.any():  # a constant offset repeats with every period: it is not a pattern (zero mean over the phases)
        tile = np.where(seen, tile - tile[seen].mean(), 0.0)
    pattern = np.tile(tile, (rows // p, cols // p))[:h, :w]
    return np.where(m, np.broadcast_to(pattern, r.shape), 0.0)


def tiled_share(residual: np.ndarray, period: int, mask: np.ndarray | None = None) -> float:
    """Fraction of the residual's energy (mean square over ``mask``) in its ``period``-tiled component
    (shapes as in :func:`tiled_component`).

    0 for a residual without one (up to the 1/tiles estimation floor), 1 for a pure tiled pattern.
    """
    r = np.asarray(residual, dtype=np.float64)
    m = np.ones(r.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    tiled = tiled_component(r, period, m)
    total = float(np.mean(r[m] ** 2)) if m.any() else 0.0
    return float(np.mean(tiled[m] ** 2)) / total if total > 0 else 0.0


def tiled_energy(residual: torch.Tensor, period: int) -> torch.Tensor:
    """Mean square of the zero-mean ``period``-periodic part of a (N, C, H, W) residual batch, differentiable (a
    training penalty on a patch-grid pattern); the tiles of every image and channel are pooled, as in
    :func:`tiled_component` for a stack. H and W must be multiples of ``period``. Returns a scalar tensor."""
    if residual.ndim != 4:
        raise ValueError(f"residual must be (N, C, H, W); got shape {tuple(residual.shape)}")
    n, c, h, w = residual.shape
    if int(period) != period or period < 1 or h % period or w % period:
        raise ValueError(f"period {period} must be a positive integer dividing the size {(h, w)}")
    p = int(period)
    tile = residual.reshape(n * c, h // p, p, w // p, p).mean(dim=(0, 1, 3))  # (p, p): each phase's mean
    return (tile - tile.mean()).pow(2).mean()
