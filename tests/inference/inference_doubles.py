"""Test doubles and synthetic data for the inference tests (imported by conftest and the test files)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F


class FakeSRPipeline(torch.nn.Module):
    """TEST DOUBLE for ``qdm_med.models.sr.SRPipeline``.

    Same public surface (``scale``, ``in_channels``, ``size_multiple``, ``last_info`` set on every call,
    LR (B, C, h, w) in [-1, 1] -> SR (B, C, h*s, w*s) in [-1, 1]) but deterministic and cheap: bicubic
    upsampling (``torch.nn.functional.interpolate``, align_corners=False) plus a constant ``offset``.
    ``last_info`` reports a closed-form mask density (share of LR pixels with |x| > 0.5) and
    ``macs = 100 * B * h * w``, so aggregation can be checked exactly. Inputs must respect
    ``size_multiple`` (checks the padding); every input shape is recorded in ``calls``.
    """

    def __init__(self, scale: int, in_channels: int = 1, size_multiple: int = 4, offset: float = 0.0):
        super().__init__()
        self.scale = scale
        self.in_channels = in_channels
        self.size_multiple = size_multiple
        self.offset = offset
        self.last_info: dict = {}
        self.calls: list[tuple[int, ...]] = []

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        assert lr.ndim == 4 and lr.shape[1] == self.in_channels, lr.shape
        assert lr.shape[-2] % self.size_multiple == 0 and lr.shape[-1] % self.size_multiple == 0, lr.shape
        assert float(lr.min()) >= -1.0 and float(lr.max()) <= 1.0
        self.calls.append(tuple(lr.shape))
        b, _, h, w = lr.shape
        out = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False) + self.offset
        self.last_info = {
            "mask_density": float((lr.abs() > 0.5).float().mean()),
            "macs": 100 * b * h * w,
            "active_windows": b,
            "total_windows": 2 * b,
            "steps": 3,
            "sampler": "fake",
        }
        return out.clamp(-1.0, 1.0)


@dataclasses.dataclass
class FakeLoadedBundle:
    """TEST DOUBLE for ``qdm_med.bundle.LoadedBundle`` (the fields ``run`` reads)."""

    pipeline: torch.nn.Module
    scale: int
    window: tuple = (-1024.0, 2048.0)
    config: dict = dataclasses.field(default_factory=dict)


def oblique_affine() -> np.ndarray:
    """A rotated, anisotropic, shifted voxel-to-RAS affine."""
    theta = 0.3
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.8, 0.7, 2.5])
    aff[:3, 3] = [-100.0, 40.0, 12.5]
    return aff


def make_volume(array: np.ndarray, affine: np.ndarray | None = None, path: str = "synthetic.nii.gz"):
    from qdm_med.io import Volume

    return Volume(
        array=np.asarray(array, dtype=np.float32),
        affine=oblique_affine() if affine is None else affine,
        meta={"path": path, "format": "nifti", "modality": "CT"},
        dicom_headers=None,
    )


def smooth_ct(shape=(24, 20, 5), seed: int = 0) -> np.ndarray:
    """A smooth in-window HU volume (soft tissue/bone-like values between -600 and 1200)."""
    rng = np.random.RandomState(seed)
    x, y = np.meshgrid(np.linspace(0, 1, shape[0]), np.linspace(0, 1, shape[1]), indexing="ij")
    out = np.empty(shape, dtype=np.float32)
    for k in range(shape[2]):
        a, b = rng.uniform(1, 4, size=2)
        out[:, :, k] = 300 + 900 * np.sin(a * np.pi * x) * np.cos(b * np.pi * y) + 20 * rng.randn(*shape[:2])
    return out


class NoisySRPipeline(FakeSRPipeline):
    """TEST DOUBLE for a diffusion pipeline's randomness: bicubic plus ``sigma`` Gaussian noise drawn from the
    ``generator`` argument (as ``QDMSuperResolution.forward(lr, generator=...)``), or from torch's global
    RNG when ``global_rng`` is set (a callable without a generator argument)."""

    def __init__(self, scale: int, sigma: float = 0.05, **kw):
        super().__init__(scale, **kw)
        self.sigma = sigma

    def forward(self, lr: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        out = super().forward(lr)
        return (out + self.sigma * torch.randn(out.shape, generator=generator, device=out.device)).clamp(-1.0, 1.0)


class GlobalRNGSRPipeline(NoisySRPipeline):
    """Same, but the noise comes from torch's global RNG (no ``generator`` argument)."""

    def forward(self, lr: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(lr, None)
