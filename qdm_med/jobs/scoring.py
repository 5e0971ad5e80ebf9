"""Image-quality scores of SR results against a reference, slice by slice (used by ``evaluate`` and by
``upscale --ref``).

CT volumes are scored per axial slice in two ranges:

- ``window``: both images clipped to the model window (default [-1024, 2048] HU), data range = its width;
- ``full``: both clipped to the full 12-bit CT range [-1024, 3071] HU, data range 4095;
- ``soft``: both clipped to the soft-tissue window W 400 / L 40 ([-160, 240] HU), where a reader sees
  soft-tissue texture (it spans 13 % of the model window); ``lpips_soft`` is LPIPS there.

PSNR and SSIM come from :mod:`qdm_med.metrics` (scikit-image). LPIPS uses the offline AlexNet LPIPS
(:func:`qdm_med.metrics.lpips_offline.load_lpips`) on the window-mapped slice in [-1, 1] replicated to
three channels; when its weights are absent every LPIPS entry is the string ``"unavailable"``.

Overall numbers: the mean of the per-slice scores, plus ``psnr_*_volume`` from the MSE over all voxels
(slices with a constant reference, e.g. empty air, do not make the volume PSNR infinite).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from qdm_med.data.corpus import default_lpips_path
from qdm_med.transforms.window import FULL_HU_RANGE, HUWindow

SOFT_TISSUE = (-160.0, 240.0)  # W 400 / L 40

__all__ = ["FULL_HU_RANGE", "SOFT_TISSUE", "UNAVAILABLE", "load_lpips_or_none", "SliceScorer", "summarize", "volume_psnr"]

#: Value written where LPIPS cannot be computed (weights not fetched): never a made-up number.
UNAVAILABLE = "unavailable"


def load_lpips_or_none(weights_path: str | Path | None = None, device: str | torch.device = "cpu"):
    """The offline LPIPS module on ``device`` in eval mode, or None when the weights are absent."""
    from qdm_med.metrics.lpips_offline import load_lpips

    path = Path(weights_path) if weights_path is not None else default_lpips_path()
    model = load_lpips(path)
    if model is None:
        return None
    return model.to(device).eval()


def volume_psnr(pred: np.ndarray, ref: np.ndarray, data_range: float) -> float:
    """PSNR over all voxels of two equally shaped arrays (already clipped to the range)."""
    mse = float(np.mean((pred.astype(np.float64) - ref.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else "inf"


class SliceScorer:
    """Score predictions against a reference.

    Args:
        window: model window (HU) for the ``window`` range and for LPIPS.
        lpips: an LPIPS module (from :func:`load_lpips_or_none`) or None for "unavailable".
        device: where LPIPS runs.
    """

    def __init__(self, window: Sequence[float], lpips=None, device: str | torch.device = "cpu") -> None:
        self.window = (float(window[0]), float(window[1]))
        self.lpips = lpips
        self.device = torch.device(device)

    def _lpips(self, pred: np.ndarray, ref: np.ndarray) -> float | str:
        """LPIPS of two (C, H, W) arrays in [-1, 1] (C = 1 is replicated to 3)."""
        if self.lpips is None:
            return UNAVAILABLE
        a = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))[None].to(self.device)
        b = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))[None].to(self.device)
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        with torch.inference_mode():
            return float(torch.as_tensor(self.lpips(a, b)).mean().item())

    def score_ct_slice(self, pred_hu: np.ndarray, ref_hu: np.ndarray) -> dict[str, Any]:
        """Scores of one 2D HU slice."""
        from qdm_med.metrics import psnr, ssim

        out: dict[str, Any] = {}
        for name, (lo, hi) in (("window", self.window), ("full", FULL_HU_RANGE), ("soft", SOFT_TISSUE)):
            p = np.clip(pred_hu, lo, hi).astype(np.float64)
            r = np.clip(ref_hu, lo, hi).astype(np.float64)
            out[f"psnr_{name}"] = _finite(float(psnr(p, r, data_range=hi - lo)))
            out[f"ssim_{name}"] = float(ssim(p, r, data_range=hi - lo))
        for key, window in (("lpips", self.window), ("lpips_soft", SOFT_TISSUE)):
            to_unit = HUWindow(*window)
            out[key] = self._lpips(to_unit(pred_hu)[None], to_unit(ref_hu)[None])
        return out

    def score_ct_volume(self, pred_hu: np.ndarray, ref_hu: np.ndarray, slices: Sequence[int] | None = None):
        """Per-slice scores (list of dicts with ``slice``) and the summary of a (X, Y, Z) HU pair."""
        if pred_hu.shape != ref_hu.shape:
            raise ValueError(f"prediction {pred_hu.shape} and reference {ref_hu.shape} differ in shape")
        ks = range(pred_hu.shape[2]) if slices is None else slices
        per_slice = []
        for k in ks:
            # slices as images with rows = Y (the orientation the model sees); metrics are orientation-free
            row = {"slice": int(k)}
            row.update(self.score_ct_slice(pred_hu[:, :, k].T, ref_hu[:, :, k].T))
            per_slice.append(row)
        summary = summarize(per_slice)
        idx = list(ks)
        for name, (lo, hi) in (("window", self.window), ("full", FULL_HU_RANGE)):
            p = np.clip(pred_hu[:, :, idx], lo, hi)
            r = np.clip(ref_hu[:, :, idx], lo, hi)
            summary[f"psnr_{name}_volume"] = _finite(volume_psnr(p, r, hi - lo))
        return per_slice, summary

    def score_image(self, pred: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
        """Scores of a (C, H, W) image pair in [0, 1] (PSNR/SSIM with data range 1)."""
        from qdm_med.metrics import psnr, ssim

        p = np.clip(pred, 0.0, 1.0).astype(np.float64)
        r = np.clip(ref, 0.0, 1.0).astype(np.float64)
        out: dict[str, Any] = {"psnr": _finite(float(psnr(p, r, data_range=1.0)))}
        if p.shape[0] == 1:
            out["ssim"] = float(ssim(p[0], r[0], data_range=1.0))
        else:  # mean SSIM over channels (each channel a gray image)
            out["ssim"] = float(np.mean([ssim(p[c], r[c], data_range=1.0) for c in range(p.shape[0])]))
        out["lpips"] = self._lpips(p * 2.0 - 1.0, r * 2.0 - 1.0)
        return out


def summarize(per_slice: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of every metric over slices (``"inf"`` entries are skipped for PSNR; LPIPS stays
    ``"unavailable"`` when it was)."""
    if not per_slice:
        return {}
    keys = [k for k in per_slice[0] if k != "slice"]
    out: dict[str, Any] = {}
    for key in keys:
        values = [row[key] for row in per_slice]
        if any(v == UNAVAILABLE for v in values):
            out[key] = UNAVAILABLE
            continue
        nums = [float(v) for v in values if not isinstance(v, str)]
        out[key] = float(np.mean(nums)) if nums else "inf"
    out["slices"] = len(per_slice)
    return out
