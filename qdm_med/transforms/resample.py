"""Bicubic resampling of (B, C, H, W) batches: the one definition of bicubic up- and down-sampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["bicubic_upsample", "bicubic_downsample"]


def _batched(x) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(t.shape)}")
    return t.float() if not t.is_floating_point() else t


def bicubic_upsample(x, scale: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, h*s, w*s), bicubic, ``align_corners=False`` (values may overshoot)."""
    t = _batched(x)
    return F.interpolate(t, scale_factor=int(scale), mode="bicubic", align_corners=False)


def bicubic_downsample(x, scale: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H/s, W/s), antialiased bicubic (the clean ``bicubic`` LR preset)."""
    t = _batched(x)
    h, w = t.shape[-2:]
    return F.interpolate(t, size=(h // int(scale), w // int(scale)), mode="bicubic", align_corners=False, antialias=True)
