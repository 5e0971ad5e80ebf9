"""Bicubic resampling and the HR -> (LR, HR) pair transform used by the datasets."""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose

from qdm_med.transforms.intensity import HUWindowd
from qdm_med.transforms.presets import DegradationPipelined

__all__ = ["bicubic_upsample", "bicubic_downsample", "MakeLRHRPaird", "lr_hr_pair_transform"]


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


class MakeLRHRPaird(DegradationPipelined):
    """``{"hr": (C, H, W) in [-1, 1]}`` -> adds ``"lr"``: (C, H/s, W/s) in [-1, 1], degraded by ``preset``.

    The HR image is mapped to [0, 1] (where the Real-ESRGAN parameters are defined), degraded with
    :class:`DegradationPipeline`, and mapped back. H and W must be divisible by ``scale``.
    """

    def __init__(self, keys: str | Sequence[str] = "hr", lr_key: str = "lr", preset="medical", scale: int = 4) -> None:
        super().__init__(keys, preset=preset, scale=scale, lr_key=lr_key)
        if len(self.keys) != 1:
            raise ValueError("MakeLRHRPaird takes exactly one HR key")

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        key = self.keys[0]
        hr = torch.as_tensor(np.asarray(d[key]) if not isinstance(d[key], torch.Tensor) else d[key]).float()
        if hasattr(hr, "as_tensor"):
            hr = hr.as_tensor()
        lr01 = self.pipeline((hr.clamp(-1, 1) + 1) / 2)
        d[key] = hr
        d[self.lr_key] = lr01 * 2 - 1
        return d


def lr_hr_pair_transform(preset="medical", scale: int = 4, window: Sequence[float] | None = None,
                         hr_key: str = "hr", lr_key: str = "lr") -> Compose:
    """Compose: optional HU window (when the HR slice is in HU) then :class:`MakeLRHRPaird`."""
    steps = []
    if window is not None:
        steps.append(HUWindowd(hr_key, window[0], window[1]))
    steps.append(MakeLRHRPaird(hr_key, lr_key, preset, scale))
    return Compose(steps)
