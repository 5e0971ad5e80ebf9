"""MONAI transforms of qdm-med: the CT intensity window and the Real-ESRGAN degradation that makes LR inputs.

- :mod:`.intensity`: :class:`HUWindow` / :class:`InverseHUWindow` (HU <-> [-1, 1]) and dict versions.
- :mod:`.kernels`: Gaussian, generalized, plateau and sinc blur kernels.
- :mod:`.degradation`: randomizable blur, resize, noise, JPEG, final-resize and clean-downsample transforms (+ dict versions).
- :mod:`.external`: other libraries' downsamplers (scikit-image, SciPy) as evaluation presets.
- :mod:`.presets`: ``natural``, ``medical``, ``medical_test``, ``bicubic``, ``clean`` and the external presets, :class:`DegradationPipeline`.
- :mod:`.pairs`: bicubic up/down-sampling and the HR -> (LR, HR) pair transform.
"""

from qdm_med.transforms.degradation import (
    FinalResize,
    FinalResized,
    RandBlur,
    RandBlurd,
    RandCleanDownsample,
    RandCleanDownsampled,
    RandJPEG,
    RandJPEGd,
    RandNoise,
    RandNoised,
    RandResize,
    RandResized,
)
from qdm_med.transforms.intensity import DEFAULT_WINDOW, HUWindow, HUWindowd, InverseHUWindow, InverseHUWindowd, window_from
from qdm_med.transforms.pairs import MakeLRHRPaird, bicubic_downsample, bicubic_upsample, lr_hr_pair_transform
from qdm_med.transforms.external import EXTERNAL_KINDS, EXTERNAL_NOISE_SIGMA, ExternalDownsample, ExternalDownsampled
from qdm_med.transforms.presets import PRESETS, DegradationPipeline, DegradationPipelined, preset_params

__all__ = [
    "DEFAULT_WINDOW", "HUWindow", "HUWindowd", "InverseHUWindow", "InverseHUWindowd", "window_from",
    "RandBlur", "RandBlurd", "RandResize", "RandResized", "RandNoise", "RandNoised", "RandJPEG", "RandJPEGd",
    "FinalResize", "FinalResized", "RandCleanDownsample", "RandCleanDownsampled",
    "EXTERNAL_KINDS", "EXTERNAL_NOISE_SIGMA", "ExternalDownsample", "ExternalDownsampled", "PRESETS", "DegradationPipeline", "DegradationPipelined", "preset_params",
    "bicubic_upsample", "bicubic_downsample", "MakeLRHRPaird", "lr_hr_pair_transform",
]
