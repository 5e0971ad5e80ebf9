"""LR made by other libraries' downsamplers: the evaluation presets for "low resolution made by code that is
not ours".

Hospitals and benchmarks make low-resolution CT with whatever their stack offers; a model tuned to one
kernel can lose most of its gain on another. These presets call the libraries themselves (scikit-image,
SciPy) rather than re-implementations, so they stay honest test inputs. The shipped bundles never train
on them.

- ``skimage_resize``: ``skimage.transform.resize(order=1, anti_aliasing=True)`` (Gaussian pre-filter with
  sigma ``(s - 1) / 2``, then linear sampling);
- ``skimage_local_mean``: ``skimage.transform.downscale_local_mean`` (block mean);
- ``scipy_zoom``: ``scipy.ndimage.zoom(order=3, grid_mode=True)`` (cubic spline, no pre-filter: aliased);
- ``skimage_resize_noise``: ``skimage_resize`` plus white Gaussian noise of sigma 0.0025 (10 HU in the CT
  unit range [-1024, 3071] of :mod:`qdm_med.data.simulate`), seeded.
"""

from __future__ import annotations

import numpy as np
import torch

from qdm_med.transforms.degradation import _RandImageTransform

__all__ = ["EXTERNAL_KINDS", "EXTERNAL_NOISE_SIGMA", "ExternalDownsample", "downsample_plane"]

EXTERNAL_KINDS = ("skimage_resize", "skimage_local_mean", "scipy_zoom", "skimage_resize_noise")
#: noise of ``skimage_resize_noise`` in [0, 1] units: 10 HU of the 4095-HU CT range
EXTERNAL_NOISE_SIGMA = 10.0 / 4095.0


def downsample_plane(plane: np.ndarray, kind: str, scale: int) -> np.ndarray:
    """(H, W) float64 -> (H/s, W/s) with the named library call (linear: any intensity unit, e.g. HU)."""
    from scipy import ndimage
    from skimage.transform import downscale_local_mean, resize

    out = (plane.shape[0] // scale, plane.shape[1] // scale)
    if kind in ("skimage_resize", "skimage_resize_noise"):
        return resize(plane, out, order=1, anti_aliasing=True, preserve_range=True)
    if kind == "skimage_local_mean":
        return downscale_local_mean(plane, (scale, scale))
    if kind == "scipy_zoom":
        return ndimage.zoom(plane, 1.0 / scale, order=3, grid_mode=True, mode="nearest")
    raise ValueError(f"external downsampler {kind!r}: use one of {', '.join(EXTERNAL_KINDS)}")


class ExternalDownsample(_RandImageTransform):
    """Downsample (C, H, W) in [0, 1] by ``scale`` with another library's resampler -> (C, H/s, W/s), clamped.

    Args:
        kind: one of :data:`EXTERNAL_KINDS`.
        scale: integer factor; H and W must be divisible by it.
    """

    def __init__(self, kind: str, scale: int) -> None:
        super().__init__(1.0)
        if kind not in EXTERNAL_KINDS:
            raise ValueError(f"external downsampler {kind!r}: use one of {', '.join(EXTERNAL_KINDS)}")
        self.kind, self.scale = kind, int(scale)
        self.params = {"kind": kind}

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self.params = {"kind": self.kind, "noise_seed": int(self.R.randint(0, 2**31 - 1))}

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        if h % self.scale or w % self.scale:
            raise ValueError(f"image size {h}x{w} is not divisible by the scale {self.scale}")
        lr = np.stack([downsample_plane(p.double().numpy(), self.kind, self.scale) for p in img.detach().cpu()])
        if self.kind == "skimage_resize_noise":
            lr = lr + np.random.RandomState(self.params["noise_seed"]).normal(0.0, EXTERNAL_NOISE_SIGMA, lr.shape)
        return torch.from_numpy(np.clip(lr, 0.0, 1.0).astype(np.float32))
