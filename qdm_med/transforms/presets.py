"""Degradation presets (SPEC section 6) and the pipeline that turns an HR image into its LR version."""

from __future__ import annotations

import copy
from typing import Mapping

import torch
from monai.transforms import Randomizable, Transform

from qdm_med.errors import ConfigError
from qdm_med.transforms.degradation import FinalResize, RandBlur, RandCleanDownsample, RandJPEG, RandNoise, RandResize, as_image_tensor
from qdm_med.transforms.external import EXTERNAL_KINDS, ExternalDownsample
from qdm_med.transforms.kernels import KERNEL_TYPES

__all__ = ["PRESETS", "preset_params", "DegradationPipeline"]

_NATURAL = {
    "kernel_range": (7, 21),
    "kernel_list": KERNEL_TYPES,
    "kernel_prob": (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
    "sigma_range": (0.2, 3.0),
    "betag_range": (0.5, 4.0),
    "betap_range": (1.0, 2.0),
    "sinc_prob": 0.1,
    "resize_prob": (0.2, 0.7, 0.1),
    "resize_range": (0.15, 1.5),
    "gaussian_noise_prob": 0.5,
    "noise_range": (1.0, 30.0),
    "poisson_scale_range": (0.05, 3.0),
    "gray_noise_prob": 0.4,
    "jpeg_range": (30, 95),
}
# QDM Med-SR4 / Med-SR8 training degradation.
_MEDICAL = dict(
    _NATURAL,
    kernel_range=(3, 11),
    kernel_list=("iso", "aniso"),
    kernel_prob=(0.6, 0.4),
    resize_range=(0.5, 1.5),
    gaussian_noise_prob=0.4,
    noise_range=(1.0, 15.0),
    jpeg_range=(70, 95),
)
# The fixed medical test sets: milder blur and Poisson noise, Gaussian noise half the time.
_MEDICAL_TEST = dict(_MEDICAL, sigma_range=(0.2, 0.8), poisson_scale_range=(0.05, 0.3), gaussian_noise_prob=0.5)

#: sigma range of ``clean_noise`` in [0, 1] units: 0-25 HU on the CT bundles' 3072-HU window (quantum noise
#: of a CT slice survives downsampling; without it a model mistakes noise for detail and sharpens it)
CLEAN_NOISE_RANGE = (0.0, 25.0 / 3072.0)

#: Preset name -> parameters. Those without parameters: ``bicubic`` is antialiased bicubic downsampling (no
#: randomness), ``clean`` draws one common resampler per image (:class:`RandCleanDownsample`), and the
#: external ones call another library's downsampler (:mod:`qdm_med.transforms.external`; evaluation only).
PRESETS: dict[str, dict | None] = {
    "natural": _NATURAL, "medical": _MEDICAL, "medical_test": _MEDICAL_TEST, "bicubic": None, "bicubic_noise": None, "clean": None,
    "clean_noise": None, "aliased": None, "aliased_noise": None,
    **{kind: None for kind in EXTERNAL_KINDS},
}


def preset_params(preset: str | Mapping) -> dict | None:
    """Parameters of a named preset (a copy), or a custom mapping completed from ``natural``."""
    if isinstance(preset, Mapping):
        unknown = set(preset) - set(_NATURAL)
        if unknown:
            raise ConfigError(f"degradation parameters {sorted(unknown)} are unknown; valid: {', '.join(sorted(_NATURAL))}")
        return dict(_NATURAL, **preset)
    if preset not in PRESETS:
        raise ConfigError(f"degradation preset {preset!r}: use one of {', '.join(PRESETS)}")
    params = PRESETS[preset]
    return None if params is None else copy.deepcopy(params)


class DegradationPipeline(Randomizable, Transform):
    """HR image (C, H, W) in [0, 1] -> LR (C, H/scale, W/scale) in [0, 1] (float32 torch, clamped).

    Real-ESRGAN's first stage: blur (mixed kernel or sinc) -> random resize -> Gaussian or Poisson noise
    -> JPEG -> resize to H/scale with a random mode. Preset ``bicubic`` is clean antialiased bicubic
    downsampling (``bicubic_noise`` adds white noise of sigma ~ U(0, 25 HU)); ``aliased`` is bicubic or
    bilinear sampling with no pre-filter (``F.interpolate``'s and OpenCV's defaults; ``aliased_noise`` adds
    the same noise); ``clean`` is noise-free downsampling with a random common resampler
    (:class:`~qdm_med.transforms.degradation.RandCleanDownsample`); ``skimage_resize``,
    ``skimage_local_mean``, ``scipy_zoom`` and ``skimage_resize_noise`` are other libraries' downsamplers
    (:class:`~qdm_med.transforms.external.ExternalDownsample`). All sub-transforms draw from this pipeline's RandomState, so
    ``set_random_state(seed)`` fixes the whole chain.

    Args:
        preset: a name of :data:`PRESETS` or a dict of parameters.
        scale: downscale factor (H and W must be divisible by it).
    """

    def __init__(self, preset: str | Mapping = "medical", scale: int = 4) -> None:
        if int(scale) < 1:
            raise ConfigError(f"scale {scale}: must be a positive integer")
        self.scale = int(scale)
        self.preset = preset if isinstance(preset, str) else "custom"
        self.params = preset_params(preset)
        self.stages: list = []
        if self.params is not None:
            p = self.params
            self.stages = [
                RandBlur(
                    p["kernel_range"],
                    p["kernel_list"],
                    p["kernel_prob"],
                    p["sigma_range"],
                    p["betag_range"],
                    p["betap_range"],
                    p["sinc_prob"],
                ),
                RandResize(p["resize_prob"], p["resize_range"]),
                RandNoise(p["gaussian_noise_prob"], p["noise_range"], p["poisson_scale_range"], p["gray_noise_prob"]),
                RandJPEG(p["jpeg_range"]),
            ]
        elif self.preset == "clean":
            self.stages = [RandCleanDownsample(self.scale)]
        elif self.preset == "clean_noise":
            self.stages = [RandCleanDownsample(self.scale, noise_range=CLEAN_NOISE_RANGE)]
        elif self.preset == "bicubic_noise":  # the most common resampler, with CT-like noise
            self.stages = [RandCleanDownsample(self.scale, modes=("bicubic_aa",), probs=(1.0,), noise_range=CLEAN_NOISE_RANGE)]
        elif self.preset in ("aliased", "aliased_noise"):  # F.interpolate's / OpenCV's defaults: no pre-filter
            noise = CLEAN_NOISE_RANGE if self.preset == "aliased_noise" else (0.0, 0.0)
            self.stages = [RandCleanDownsample(self.scale, modes=("bicubic", "bilinear"), probs=(0.5, 0.5), noise_range=noise)]
        elif self.preset in EXTERNAL_KINDS:
            self.stages = [ExternalDownsample(self.preset, self.scale)]
        self.final = FinalResize(self.scale)
        self.set_random_state(seed=0)
        self.last_params: list[dict] = []

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        for stage in [*self.stages, self.final]:
            stage.set_random_state(state=self.R)
        return self

    def randomize(self, data=None) -> None:
        for stage in [*self.stages, self.final]:
            stage.randomize(None)

    def __call__(self, img, randomize: bool = True) -> torch.Tensor:
        x = as_image_tensor(img)
        h, w = x.shape[-2:]
        if h % self.scale or w % self.scale:
            raise ConfigError(f"image size {h}x{w} is not divisible by the scale {self.scale}")
        if self.params is None and self.stages:  # clean(_noise), bicubic_noise, aliased(_noise), external: one resampler does the whole job
            x = self.stages[0](x, randomize=randomize).clamp(0, 1).contiguous()
            self.last_params = [dict(self.stages[0].params)]
            return x
        if self.params is None:
            from qdm_med.transforms.resample import bicubic_downsample

            return bicubic_downsample(x[None], self.scale)[0].clamp(0, 1)
        if randomize:
            self.randomize()
        self.last_params = []
        for stage in self.stages:
            x = stage(x, randomize=False).clamp(0, 1)
            self.last_params.append(dict(stage.params))
        self.final.hr_size = (h, w)
        x = self.final(x, randomize=False)
        self.last_params.append(dict(self.final.params))
        return x.clamp(0, 1).contiguous()
