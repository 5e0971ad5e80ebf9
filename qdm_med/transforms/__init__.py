"""MONAI transforms of qdm-med: the CT intensity window and the Real-ESRGAN degradation that makes LR inputs.

- :mod:`.window`: :data:`DEFAULT_WINDOW`, :data:`FULL_HU_RANGE`, :class:`HUWindow` / :class:`InverseHUWindow` (HU <-> [-1, 1]);
  :mod:`.intensity`: their MONAI dict versions.
- :mod:`.kernels`: Gaussian, generalized, plateau and sinc blur kernels.
- :mod:`.degradation`: randomizable blur, resize, noise, JPEG, final-resize and clean-downsample transforms.
- :mod:`.grain`: :class:`RandGrain`, correlated CT grain added to an HR image (a dose / kernel augmentation).
- :mod:`.external`: other libraries' downsamplers (scikit-image, SciPy) as evaluation presets.
- :mod:`.presets`: ``natural``, ``medical``, ``medical_test``, ``bicubic``, ``clean`` and the external presets,
  :class:`DegradationPipeline`.
- :mod:`.resample`: bicubic up/down-sampling.

Names load on first use: importing this package does not import MONAI (the one-slice ``upscale`` path needs
only :mod:`.window` and :mod:`.resample`).
"""

from __future__ import annotations

import importlib

_NAMES = {
    "DEFAULT_WINDOW": "window",
    "FULL_HU_RANGE": "window",
    "HUWindow": "window",
    "InverseHUWindow": "window",
    "HUWindowd": "intensity",
    "InverseHUWindowd": "intensity",
    "bicubic_upsample": "resample",
    "bicubic_downsample": "resample",
    "RandBlur": "degradation",
    "RandResize": "degradation",
    "RandNoise": "degradation",
    "RandJPEG": "degradation",
    "FinalResize": "degradation",
    "RandCleanDownsample": "degradation",
    "RandGrain": "grain",
    "EXTERNAL_KINDS": "external",
    "EXTERNAL_NOISE_SIGMA": "external",
    "ExternalDownsample": "external",
    "PRESETS": "presets",
    "DegradationPipeline": "presets",
    "preset_params": "presets",
}
_MODULES = ("degradation", "external", "grain", "intensity", "kernels", "presets", "resample", "window")

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f"qdm_med.transforms.{_NAMES[name]}"), name)
    if name in _MODULES:
        return importlib.import_module(f"qdm_med.transforms.{name}")
    raise AttributeError(f"module 'qdm_med.transforms' has no attribute {name!r}")
