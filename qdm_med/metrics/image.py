"""PSNR and SSIM (scikit-image) for slices, volumes and images, and windowed CT scores."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = ["psnr", "ssim", "window_metrics"]


def psnr(pred, ref, data_range: float) -> float:
    """PSNR in dB of equally shaped arrays, ``10 log10(range^2 / MSE)``; ``inf`` when identical."""
    p, r = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if p.shape != r.shape:
        raise ValueError(f"psnr: shapes {p.shape} and {r.shape} differ")
    if np.array_equal(p, r):
        return math.inf
    return float(peak_signal_noise_ratio(r, p, data_range=float(data_range)))


def ssim(pred, ref, data_range: float, channel_axis: int | None = None) -> float:
    """Mean SSIM (scikit-image defaults: 7x7 uniform window) of 2D images, or (C, H, W) with ``channel_axis=0``."""
    p, r = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if p.shape != r.shape:
        raise ValueError(f"ssim: shapes {p.shape} and {r.shape} differ")
    win = min(7, *(s for i, s in enumerate(p.shape) if i != (channel_axis if channel_axis is not None else -99) % p.ndim))
    win = win if win % 2 == 1 else win - 1
    return float(structural_similarity(r, p, data_range=float(data_range), channel_axis=channel_axis, win_size=max(win, 3)))


def window_metrics(pred_hu, ref_hu, window: Sequence[float]) -> dict[str, float]:
    """PSNR/SSIM of a 2D HU pair clipped to ``window`` (data range = window width)."""
    lo, hi = float(window[0]), float(window[1])
    p, r = np.clip(pred_hu, lo, hi), np.clip(ref_hu, lo, hi)
    return {"psnr": psnr(p, r, hi - lo), "ssim": ssim(p, r, hi - lo)}
