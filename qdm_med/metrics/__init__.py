"""Image-quality metrics: PSNR/SSIM (scikit-image) and offline LPIPS (:mod:`.lpips_offline`).

Model compute (MACs) is counted where the models live, in :mod:`qdm_med.models.macs`.
"""

from qdm_med.metrics.image import psnr, ssim, window_metrics

__all__ = ["psnr", "ssim", "window_metrics"]
