"""CT intensity window: Hounsfield units <-> the model's [-1, 1] range (no MONAI import: the inference path uses it).

The default window is [-1024, 2048] HU. It spans air (-1000) through lung, fat, soft tissue and
contrast to dense cortical bone (~1900), so everything a radiotherapy or radiology reader looks at is
inside it, and it keeps 8-bit-like JPEG steps in the degradation at ~12 HU. 12-bit CT stores values up to
3071 HU (metal, dental fillings); those saturate at +1 here, and the volume inferencer restores them from
the bicubic HU (see :mod:`qdm_med.inference.volume`), so nothing is clipped in the output.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["DEFAULT_WINDOW", "FULL_HU_RANGE", "check_window", "HUWindow", "InverseHUWindow"]

#: The full 12-bit CT range in HU (scores in the ``full`` range; the degradation's [0, 1] mapping).
FULL_HU_RANGE: tuple[float, float] = (-1024.0, 3071.0)
#: Default CT window in HU, mapped to [-1, 1].
DEFAULT_WINDOW: tuple[float, float] = (-1024.0, 2048.0)


def check_window(lo: float, hi: float) -> tuple[float, float]:
    lo, hi = float(lo), float(hi)
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        raise ValueError(f"HU window ({lo}, {hi}): need finite lo < hi")
    return lo, hi


class HUWindow:
    """Map HU linearly to [-1, 1]: ``lo -> -1``, ``hi -> +1`` (clipped when ``clip``).

    Works on numpy arrays and torch tensors of any shape (e.g. (C, H, W) slices or (X, Y, Z) volumes) and
    returns the same type, as float32.
    """

    backend = ["torch", "numpy"]

    def __init__(self, lo: float = DEFAULT_WINDOW[0], hi: float = DEFAULT_WINDOW[1], clip: bool = True) -> None:
        self.lo, self.hi = check_window(lo, hi)
        self.clip = clip

    def __call__(self, img):
        out = (img - self.lo) * (2.0 / (self.hi - self.lo)) - 1.0
        if isinstance(out, torch.Tensor):
            out = out.float()
            return out.clamp(-1.0, 1.0) if self.clip else out
        out = np.asarray(out, dtype=np.float32)
        return np.clip(out, -1.0, 1.0) if self.clip else out


class InverseHUWindow:
    """Map [-1, 1] back to HU: ``-1 -> lo``, ``+1 -> hi`` (the inverse of :class:`HUWindow` inside the window)."""

    backend = ["torch", "numpy"]

    def __init__(self, lo: float = DEFAULT_WINDOW[0], hi: float = DEFAULT_WINDOW[1]) -> None:
        self.lo, self.hi = check_window(lo, hi)

    def __call__(self, img):
        out = (img + 1.0) * ((self.hi - self.lo) / 2.0) + self.lo
        return out.float() if isinstance(out, torch.Tensor) else np.asarray(out, dtype=np.float32)
