"""Validation scores of the training stages."""

from __future__ import annotations

import numpy as np
import torch

from qdm_med.metrics import psnr, ssim

__all__ = ["image_scores"]


def image_scores(pred: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(PSNR, SSIM) of (C, H, W) images in the model range [-1, 1] (data range 2; the HU window for CT)."""
    p, r = pred.float().clamp(-1, 1).cpu().numpy(), ref.float().clamp(-1, 1).cpu().numpy()
    s = float(np.mean([ssim(p[c], r[c], 2.0) for c in range(p.shape[0])]))
    return float(psnr(p, r, 2.0)), s
