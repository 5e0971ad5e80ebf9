"""Real-ESRGAN first-stage degradation as MONAI randomizable transforms.

Every transform works on one image ``(C, H, W)`` with values in [0, 1] (numpy or torch) and returns a
float32 torch tensor. Random parameters are drawn from the transform's ``self.R`` (a
``numpy.random.RandomState``), so ``set_random_state(seed)`` makes a run reproducible, as everywhere in
MONAI. :class:`~qdm_med.transforms.presets.DegradationPipeline` chains them:
blur (mixed kernel or sinc) -> random resize -> Gaussian/Poisson noise -> JPEG -> resize to H/sf.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import RandomizableTransform

from qdm_med.transforms.kernels import KERNEL_TYPES, gaussian_kernel, random_mixed_kernel, sinc_kernel

__all__ = [
    "RESIZE_MODES",
    "as_image_tensor",
    "resize",
    "RandBlur",
    "RandResize",
    "RandNoise",
    "RandJPEG",
    "FinalResize",
    "RandCleanDownsample",
]

RESIZE_MODES = ("area", "bilinear", "bicubic")


def as_image_tensor(img) -> torch.Tensor:
    """(C, H, W) float32 torch tensor from a numpy array or tensor (MetaTensor metadata dropped)."""
    t = torch.as_tensor(np.asarray(img) if not isinstance(img, torch.Tensor) else img)
    t = t.as_tensor() if hasattr(t, "as_tensor") else t
    if t.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {tuple(t.shape)}")
    return t.float()


def resize(img: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize (C, H, W) to ``size`` with ``area``, ``bilinear`` or ``bicubic`` (no antialias, as Real-ESRGAN)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r}: use one of {', '.join(RESIZE_MODES)}")
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(img[None], size=size, mode=mode, **kw)[0]


def _convolve(img: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Depthwise convolution with reflect padding (same size)."""
    k = torch.as_tensor(kernel, dtype=img.dtype)
    pad = k.shape[-1] // 2
    c = img.shape[0]
    x = img[None]
    mode = "reflect" if min(img.shape[-2:]) > pad else "replicate"
    x = F.pad(x, (pad, pad, pad, pad), mode=mode)
    return F.conv2d(x, k.expand(c, 1, *k.shape), groups=c)[0]


class _RandImageTransform(RandomizableTransform):
    """Base: ``randomize()`` draws the parameters, ``__call__(img, randomize=True)`` applies them."""

    def __init__(self, prob: float = 1.0) -> None:
        RandomizableTransform.__init__(self, prob)
        self.params: dict = {}

    def randomize(self, data=None) -> None:  # pragma: no cover - overridden
        super().randomize(None)

    def apply(self, img: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def __call__(self, img, randomize: bool = True) -> torch.Tensor:
        img = as_image_tensor(img)
        if randomize:
            self.randomize(img)
        if not self._do_transform:
            return img
        return self.apply(img)


class RandBlur(_RandImageTransform):
    """Blur with a random Real-ESRGAN kernel: with ``sinc_prob`` a sinc kernel, else a mixed kernel.

    Args:
        kernel_range: odd kernel sizes are drawn from ``range(kernel_range[0], kernel_range[1] + 1, 2)``.
        kernel_list / kernel_prob: kernel types (see :data:`~qdm_med.transforms.kernels.KERNEL_TYPES`).
        sigma_range, betag_range, betap_range: Gaussian widths, generalized and plateau shape ranges.
        sinc_prob: probability of a sinc kernel (cutoff U[pi/3, pi] below size 13, else U[pi/5, pi]).
    """

    def __init__(
        self,
        kernel_range: Sequence[int] = (7, 21),
        kernel_list: Sequence[str] = KERNEL_TYPES,
        kernel_prob: Sequence[float] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        sigma_range: Sequence[float] = (0.2, 3.0),
        betag_range: Sequence[float] = (0.5, 4.0),
        betap_range: Sequence[float] = (1.0, 2.0),
        sinc_prob: float = 0.1,
        prob: float = 1.0,
    ) -> None:
        super().__init__(prob)
        if len(kernel_list) != len(kernel_prob):
            raise ValueError("kernel_list and kernel_prob must have the same length")
        self.sizes = list(range(int(kernel_range[0]), int(kernel_range[1]) + 1, 2))
        if not self.sizes or any(s % 2 == 0 for s in self.sizes):
            raise ValueError(f"kernel_range {kernel_range}: must start at an odd size")
        self.kernel_list, self.kernel_prob = list(kernel_list), list(kernel_prob)
        self.sigma_range, self.betag_range, self.betap_range = sigma_range, betag_range, betap_range
        self.sinc_prob = float(sinc_prob)
        self.kernel: np.ndarray | None = None

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        size = int(self.R.choice(self.sizes))
        if self.R.uniform() < self.sinc_prob:
            cutoff = float(self.R.uniform(math.pi / 3, math.pi) if size < 13 else self.R.uniform(math.pi / 5, math.pi))
            self.kernel, self.params = sinc_kernel(size, cutoff), {"type": "sinc", "size": size, "cutoff": cutoff}
        else:
            self.kernel, self.params = random_mixed_kernel(
                self.R, size, self.kernel_list, self.kernel_prob, self.sigma_range,
                betag_range=self.betag_range, betap_range=self.betap_range,
            )

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        return _convolve(img, self.kernel)


class RandResize(_RandImageTransform):
    """Random up/down/keep resize (probabilities ``resize_prob``) by a factor from ``resize_range``, random mode."""

    def __init__(self, resize_prob: Sequence[float] = (0.2, 0.7, 0.1), resize_range: Sequence[float] = (0.15, 1.5),
                 modes: Sequence[str] = RESIZE_MODES, prob: float = 1.0) -> None:
        super().__init__(prob)
        self.resize_prob, self.resize_range, self.modes = list(resize_prob), tuple(resize_range), list(modes)

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        kind = str(self.R.choice(["up", "down", "keep"], p=np.asarray(self.resize_prob) / np.sum(self.resize_prob)))
        if kind == "up":
            factor = float(self.R.uniform(1.0, max(1.0, self.resize_range[1])))
        elif kind == "down":
            factor = float(self.R.uniform(min(1.0, self.resize_range[0]), 1.0))
        else:
            factor = 1.0
        self.params = {"kind": kind, "factor": factor, "mode": str(self.R.choice(self.modes))}

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        size = (max(1, int(round(h * self.params["factor"]))), max(1, int(round(w * self.params["factor"]))))
        if size == (h, w):
            return img
        return resize(img, size, self.params["mode"])


def _gray(img: torch.Tensor) -> torch.Tensor:
    if img.shape[0] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=img.dtype).view(3, 1, 1)
        return (img * w).sum(0, keepdim=True)
    return img.mean(0, keepdim=True)


class RandNoise(_RandImageTransform):
    """Gaussian noise (prob ``gaussian_noise_prob``, sigma on the 0-255 scale) or else Poisson noise.

    Poisson noise follows Real-ESRGAN: ``vals = 2^ceil(log2(#distinct 8-bit levels))``,
    ``noise = Poisson(img * vals) / vals - img``, scaled by a factor from ``poisson_scale_range``.
    With ``gray_noise_prob`` the same noise is used for every channel.
    """

    def __init__(self, gaussian_noise_prob: float = 0.5, noise_range: Sequence[float] = (1.0, 30.0),
                 poisson_scale_range: Sequence[float] = (0.05, 3.0), gray_noise_prob: float = 0.4, prob: float = 1.0) -> None:
        super().__init__(prob)
        self.gaussian_noise_prob, self.noise_range = float(gaussian_noise_prob), tuple(noise_range)
        self.poisson_scale_range, self.gray_noise_prob = tuple(poisson_scale_range), float(gray_noise_prob)
        self.seed = 0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        gaussian = bool(self.R.uniform() < self.gaussian_noise_prob)
        level = float(self.R.uniform(*(self.noise_range if gaussian else self.poisson_scale_range)))
        self.params = {"type": "gaussian" if gaussian else "poisson", "level": level, "gray": bool(self.R.uniform() < self.gray_noise_prob)}
        self.seed = int(self.R.randint(0, 2**31 - 1))  # the noise field itself, drawn reproducibly

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        rng = np.random.RandomState(self.seed)
        shape = (1, *img.shape[1:]) if self.params["gray"] else tuple(img.shape)
        if self.params["type"] == "gaussian":
            noise = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) * (self.params["level"] / 255.0)
        else:
            src = _gray(img) if self.params["gray"] else img
            src = src.clamp(0, 1)
            levels = len(torch.unique((src * 255).round()))
            vals = 2 ** math.ceil(math.log2(max(levels, 2)))
            sampled = torch.from_numpy(rng.poisson(src.double().numpy() * vals).astype(np.float32)) / vals
            noise = (sampled - src) * self.params["level"]
        return img + noise.expand_as(img)


class RandJPEG(_RandImageTransform):
    """JPEG compression with quality from ``quality_range`` (8-bit; gray for 1 channel, RGB for 3)."""

    def __init__(self, quality_range: Sequence[int] = (30, 95), prob: float = 1.0) -> None:
        super().__init__(prob)
        self.quality_range = (int(quality_range[0]), int(quality_range[1]))

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if self._do_transform:
            self.params = {"quality": int(self.R.randint(self.quality_range[0], self.quality_range[1] + 1))}

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        planes = [arr.transpose(1, 2, 0)] if arr.shape[0] == 3 else [a for a in arr]
        out = []
        for plane in planes:
            buf = io.BytesIO()
            Image.fromarray(plane).save(buf, format="JPEG", quality=self.params["quality"])
            buf.seek(0)
            out.append(np.asarray(Image.open(buf), dtype=np.float32) / 255.0)
        res = out[0].transpose(2, 0, 1) if arr.shape[0] == 3 else np.stack(out)
        return torch.from_numpy(np.ascontiguousarray(res))


class FinalResize(_RandImageTransform):
    """Resize to ``(H_hr / scale, W_hr / scale)`` with a random mode; the HR size is given per call."""

    def __init__(self, scale: int, modes: Sequence[str] = RESIZE_MODES) -> None:
        super().__init__(1.0)
        self.scale, self.modes = int(scale), list(modes)
        self.hr_size: tuple[int, int] | None = None

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self.params = {"mode": str(self.R.choice(self.modes))}

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        h, w = self.hr_size if self.hr_size is not None else img.shape[-2:]
        return resize(img, (h // self.scale, w // self.scale), self.params["mode"])


#: Clean downsamplers of :class:`RandCleanDownsample` and their default probabilities.
CLEAN_MODES = ("bicubic_aa", "bilinear_aa", "area", "gaussian", "bicubic", "bilinear")
CLEAN_PROBS = (0.25, 0.15, 0.2, 0.2, 0.1, 0.1)


class RandCleanDownsample(_RandImageTransform):
    """Noise-free downsampling by ``scale`` with a randomly drawn common resampler (all pixel-centre aligned).

    Other people's "make it low-resolution" code is one of a handful of resamplers; a model that has seen
    only one of them learns its exact kernel and loses most of its gain on the others. The modes:

    - ``bicubic_aa`` / ``bilinear_aa``: antialiased bicubic / bilinear (PIL, MATLAB ``imresize``,
      torchvision ``Resize``);
    - ``area``: block mean (MONAI ``Resize``'s default for downsampling, ``skimage.transform.downscale_local_mean``);
    - ``gaussian``: Gaussian pre-filter with sigma ``f * (scale - 1) / 2``, ``f ~ U(gaussian_range)``, then
      bilinear sampling at the LR pixel centres (``skimage.transform.resize(anti_aliasing=True)``);
    - ``bicubic`` / ``bilinear``: no pre-filter, aliased (OpenCV ``INTER_CUBIC/LINEAR``, ITK resampling).

    Args:
        scale: downscale factor; H and W of the input must be divisible by it.
        modes / probs: the resamplers and their probabilities.
        gaussian_range: range of the factor on the skimage default sigma.
        noise_range: white Gaussian noise added to the LR, sigma ~ U(noise_range) in [0, 1] units
            (CT noise of the acquisition survives downsampling); (0, 0): none, and nothing more is drawn.
    """

    def __init__(self, scale: int, modes: Sequence[str] = CLEAN_MODES, probs: Sequence[float] = CLEAN_PROBS,
                 gaussian_range: Sequence[float] = (0.7, 1.3), noise_range: Sequence[float] = (0.0, 0.0)) -> None:
        super().__init__(1.0)
        unknown = set(modes) - set(CLEAN_MODES)
        if unknown or len(modes) != len(probs) or not modes:
            raise ValueError(f"clean modes {list(modes)} / probs {list(probs)}: modes from {', '.join(CLEAN_MODES)}, one probability each")
        self.scale, self.modes = int(scale), list(modes)
        self.probs = np.asarray(probs, dtype=float) / float(np.sum(probs))
        self.gaussian_range = tuple(gaussian_range)
        self.noise_range = tuple(float(v) for v in noise_range)
        if len(self.noise_range) != 2 or not 0.0 <= self.noise_range[0] <= self.noise_range[1]:
            raise ValueError(f"noise_range {list(noise_range)}: expected (low, high) with 0 <= low <= high")

    def randomize(self, data=None) -> None:
        super().randomize(None)
        mode = str(self.R.choice(self.modes, p=self.probs))
        self.params = {"mode": mode}
        if mode == "gaussian":
            self.params["sigma"] = float(self.R.uniform(*self.gaussian_range)) * (self.scale - 1) / 2
        if self.noise_range[1] > 0:  # drawn only then: the noise-free preset keeps its random stream
            self.params["noise_sigma"] = float(self.R.uniform(*self.noise_range))
            self.params["noise_seed"] = int(self.R.randint(0, 2**31 - 1))

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        lr = self._downsample(img)
        if self.params.get("noise_sigma", 0.0) > 0:
            g = torch.Generator().manual_seed(self.params["noise_seed"])
            lr = lr + self.params["noise_sigma"] * torch.randn(lr.shape, generator=g, dtype=lr.dtype)
        return lr

    def _downsample(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        if h % self.scale or w % self.scale:
            raise ValueError(f"image size {h}x{w} is not divisible by the scale {self.scale}")
        size, mode = (h // self.scale, w // self.scale), self.params["mode"]
        if mode == "gaussian":
            sigma = self.params["sigma"]
            img = _convolve(img, gaussian_kernel(2 * math.ceil(3 * sigma) + 1, sigma))
            mode = "bilinear"
        if mode.endswith("_aa"):
            return F.interpolate(img[None], size=size, mode=mode[:-3], align_corners=False, antialias=True)[0]
        return resize(img, size, mode)
