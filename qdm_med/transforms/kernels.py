"""Blur kernels of the Real-ESRGAN degradation (Wang et al. 2021), written from their formulas.

All kernels are (k, k) float64 numpy arrays that sum to 1, ``k`` odd. With the covariance
``S = R(theta) diag(sx^2, sy^2) R(theta)^T`` and ``q(x) = x^T S^-1 x`` over the pixel grid centred on 0:

- Gaussian:             ``exp(-q/2)``
- generalized Gaussian: ``exp(-0.5 * q^beta)`` (beta = 1 is the Gaussian)
- plateau:              ``1 / (1 + q^beta)``
- sinc (circular low-pass with cutoff w): ``w * J1(w r) / (2 pi r)``, value ``w^2 / (4 pi)`` at r = 0.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.special import j1

__all__ = [
    "KERNEL_TYPES",
    "covariance",
    "gaussian_kernel",
    "generalized_gaussian_kernel",
    "plateau_kernel",
    "sinc_kernel",
    "random_mixed_kernel",
]

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size {size}: must be a positive odd number")
    r = np.arange(size, dtype=np.float64) - size // 2
    xx, yy = np.meshgrid(r, r, indexing="xy")  # xx varies along columns (x), yy along rows (y)
    return xx, yy


def covariance(sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """2x2 covariance ``R diag(sx^2, sy^2) R^T`` with R the rotation by ``theta`` (radians)."""
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    return rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T


def _quadratic(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    xx, yy = _grid(size)
    inv = np.linalg.inv(covariance(sigma_x, sigma_y, theta))
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def _normalised(k: np.ndarray) -> np.ndarray:
    return k / k.sum()


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> np.ndarray:
    """(An)isotropic, rotated Gaussian kernel; ``sigma_y=None`` gives the isotropic one."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return _normalised(np.exp(-0.5 * _quadratic(size, sigma_x, sigma_y, theta)))


def generalized_gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0
) -> np.ndarray:
    """Generalized Gaussian ``exp(-0.5 q^beta)``; beta = 1 is the Gaussian, beta < 1 heavier tails."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return _normalised(np.exp(-0.5 * np.power(_quadratic(size, sigma_x, sigma_y, theta), beta)))


def plateau_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0) -> np.ndarray:
    """Plateau-shaped kernel ``1 / (1 + q^beta)`` (flat top, sharp fall-off for large beta)."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return _normalised(1.0 / (1.0 + np.power(_quadratic(size, sigma_x, sigma_y, theta), beta)))


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """Circular low-pass (2D sinc / Airy) kernel with angular cutoff in (0, pi]; models ringing."""
    if not 0 < cutoff <= math.pi + 1e-9:
        raise ValueError(f"sinc cutoff {cutoff}: must be in (0, pi]")
    xx, yy = _grid(size)
    r = np.hypot(xx, yy)
    with np.errstate(invalid="ignore", divide="ignore"):
        k = cutoff * j1(cutoff * r) / (2 * math.pi * r)
    k[r == 0] = cutoff**2 / (4 * math.pi)
    return _normalised(k)


def random_mixed_kernel(
    rng: np.random.RandomState,
    size: int,
    kernel_list: Sequence[str],
    kernel_prob: Sequence[float],
    sigma_range: Sequence[float],
    rotation_range: Sequence[float] = (-math.pi, math.pi),
    betag_range: Sequence[float] = (0.5, 4.0),
    betap_range: Sequence[float] = (1.0, 2.0),
) -> tuple[np.ndarray, dict]:
    """Draw a kernel type by ``kernel_prob`` and its parameters; returns (kernel, parameters)."""
    kind = str(rng.choice(list(kernel_list), p=np.asarray(kernel_prob, dtype=np.float64) / np.sum(kernel_prob)))
    if kind not in KERNEL_TYPES:
        raise ValueError(f"kernel type {kind!r}: use one of {', '.join(KERNEL_TYPES)}")
    sx = float(rng.uniform(*sigma_range))
    if kind.endswith("iso") and not kind.endswith("aniso"):
        sy, theta = sx, 0.0
    else:
        sy, theta = float(rng.uniform(*sigma_range)), float(rng.uniform(*rotation_range))
    params = {"type": kind, "size": int(size), "sigma_x": sx, "sigma_y": sy, "theta": theta}
    if kind.startswith("generalized"):
        params["beta"] = float(rng.uniform(*betag_range))
        return generalized_gaussian_kernel(size, sx, sy, theta, params["beta"]), params
    if kind.startswith("plateau"):
        params["beta"] = float(rng.uniform(*betap_range))
        return plateau_kernel(size, sx, sy, theta, params["beta"]), params
    return gaussian_kernel(size, sx, sy, theta), params
