"""Time-Spatial Sampling (TSS, SPEC 5): respacing, Time Dynamic Sampling warps, Spatial Dynamic Sampling.

Step indexing
-------------
The paper writes the uniform respacing of T' sampling steps over a T-step chain 1-indexed,
``t_k = floor(k T / T')`` for k = 1..T' (steps 1..T, data at 0). This project's chain is 0-indexed like
ResShift: the network is evaluated at steps 0..T-1 (step 0 is already nearly clean, sqrt(eta_0) = 0.02)
and the clean latent is at -1. Every plan therefore pins its kept steps to both ends of 0..T-1 -- the
first sampling step is at T-1 (where the prior lives) and the last at 0 -- which is the paper's formula
applied to the T-1 intervals between those ends, with T'-1 intervals between kept steps:

    t_k = floor((k - 1) (T - 1) / (T' - 1)),  k = T', T'-1, ..., 1      (T' = 1: just [T - 1])

e.g. T = 15: T' = 15 keeps every step, T' = 7 gives [14, 11, 9, 7, 4, 2, 0], T' = 5 [14, 10, 7, 3, 0].
After the last kept step the sampler steps to -1 (eta = 0), i.e. returns the x0 prediction.

Warps
-----
TDS warps map the integer grid above through ``f: [0, L] -> [0, L]`` with ``L = T - 1`` (the span of
the 0-indexed chain; SPEC's ``T`` in the warp formulas), ``f(0) = 0``, ``f(L) = L``, giving real-valued
steps that the model embeds as real numbers and the schedule interpolates. ``a`` is given to the
samplers as a fraction of ``L`` and to the functions below in steps.

- polynomial (paper): ``t**n / a**(n-1)`` for ``t < a``, ``L - (L-t)**n / (L-a)**(n-1)`` otherwise;
  n = 1 is the identity, n > 1 crowds steps near both ends (slope 0 at 0 and L, n at a).
- trigonometric (ablation): ``a - a cos(pi t / 2a)`` for ``t < a``, ``a + (L-a) sin(pi (t-a) / 2(L-a))``
  otherwise. SPEC's second branch ``-a sin(...) + T`` is T at t = a and T - a at t = T, i.e. neither
  continuous nor endpoint-preserving; the form used here is the continuous (C1) one with the same
  shape (slope 0 at both ends, pi/2 at a).
- logistic (ablation): ``T / (1 + exp(-k (t - T/2)))`` rescaled so that f(0) = 0 and f(L) = L (the raw
  curve would never start at the prior step nor end at step 0); ``k = steepness / L``.

Spatial Dynamic Sampling
------------------------
``v`` = min-max normalised, Gaussian-blurred local variance (33 x 33 field) of the grayscale LR, resized
to the latent grid; per pixel ``n = v (Nmax - Nmin) + Nmin`` and ``a = v (Amax - Amin) + Amin`` (a fraction
of L), and each pixel follows its own polynomial warp of the common integer grid. All maps start at L
and end at 0, so the prior and the final step are shared by every pixel.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from qdm_med.errors import ConfigError

__all__ = [
    "respaced_timesteps",
    "polynomial_warp",
    "trigonometric_warp",
    "logistic_warp",
    "WARPS",
    "grayscale",
    "local_variance_map",
    "gaussian_blur",
    "sds_variance_map",
    "sds_timestep_maps",
]


def respaced_timesteps(steps: int, T: int) -> list[int]:
    """The kept integer steps, descending from ``T-1`` to ``0`` (see module docstring)."""
    if T < 1:
        raise ConfigError(f"T={T}: the diffusion needs at least one step")
    if not 1 <= int(steps) <= T:
        raise ConfigError(f"steps {steps}: must be between 1 and T={T}")
    steps = int(steps)
    if steps == 1:
        return [T - 1]
    return [((k - 1) * (T - 1)) // (steps - 1) for k in range(steps, 0, -1)]


def _f64(v, like: torch.Tensor | None = None) -> torch.Tensor:
    device = like.device if like is not None else None
    return torch.as_tensor(v, dtype=torch.float64, device=device)


def _check_a(a: torch.Tensor, span: float, name: str) -> None:
    if a.numel() and not bool(((a > 0) & (a < span)).all()):
        raise ValueError(f"{name}: a must lie strictly inside (0, {span}) steps; got {float(a.min())}..{float(a.max())}")


def polynomial_warp(t, a, n, span: float) -> torch.Tensor:
    """Polynomial TDS warp ``f(t; a, n)`` on ``[0, span]`` (float64; ``t``, ``a``, ``n`` broadcast, so
    ``a`` and ``n`` may be per-pixel maps)."""
    a = _f64(a)
    t, n = _f64(t, a), _f64(n, a)
    _check_a(a, span, "polynomial warp")
    if n.numel() and not bool((n > 0).all()):
        raise ValueError(f"polynomial warp: n must be > 0, got min {float(n.min())}")
    low = t.clamp(min=0) ** n / a ** (n - 1)
    high = span - (span - t).clamp(min=0) ** n / (span - a) ** (n - 1)
    return torch.where(t < a, low, high)


def trigonometric_warp(t, a, span: float) -> torch.Tensor:
    """Trigonometric TDS warp (C1 form, see module docstring) on ``[0, span]``."""
    a = _f64(a)
    t = _f64(t, a)
    _check_a(a, span, "trigonometric warp")
    low = a - a * torch.cos(math.pi * t / (2 * a))
    high = a + (span - a) * torch.sin(math.pi * (t - a) / (2 * (span - a)))
    return torch.where(t < a, low, high)


def logistic_warp(t, steepness: float, span: float) -> torch.Tensor:
    """Logistic TDS warp centred at ``span/2``, rescaled to fix both ends; ``k = steepness / span``."""
    if steepness <= 0:
        raise ValueError(f"logistic warp: steepness must be > 0, got {steepness}")
    t = _f64(t)
    k = steepness / span
    g = torch.sigmoid(k * (t - span / 2))
    g0 = 1.0 / (1.0 + math.exp(k * span / 2))
    g1 = 1.0 / (1.0 + math.exp(-k * span / 2))
    return span * (g - g0) / (g1 - g0)


WARPS = ("polynomial", "trigonometric", "logistic")


def _as_bchw(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None]
    elif x.ndim != 4:
        raise ValueError(f"expected an image (H,W), (C,H,W) or (B,C,H,W); got shape {tuple(x.shape)}")
    return x


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W): ITU-R BT.601 luma for RGB, the channel mean otherwise."""
    if x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True)
    return x.mean(dim=1, keepdim=True)


def _reflect(x: torch.Tensor, rh: int, rw: int) -> torch.Tensor:
    # Reflect padding needs pad < size: callers clamp the radius to size - 1 first.
    return F.pad(x, (rw, rw, rh, rh), mode="reflect") if (rh or rw) else x


def local_variance_map(lr, field: int = 33) -> torch.Tensor:
    """Per-pixel variance of the grayscale image over a ``field`` x ``field`` window (float64).

    Box filters on ``x`` and ``x**2`` with reflect padding (``var = E[x^2] - E[x]^2``, clamped at 0). On
    images smaller than the field the window radius is clamped to ``size - 1`` per axis.

    Args:
        lr: (B, C, H, W) (or (C, H, W) / (H, W)). Returns (B, 1, H, W).
    """
    if field < 1 or field % 2 == 0:
        raise ValueError(f"variance field must be a positive odd size, got {field}")
    g = grayscale(_as_bchw(lr).double())
    h, w = g.shape[-2:]
    rh, rw = min(field // 2, h - 1), min(field // 2, w - 1)
    p = _reflect(g, rh, rw)
    mean, mean_sq = (_box_mean(q, 2 * rh + 1, 2 * rw + 1) for q in (p, p * p))
    return (mean_sq - mean * mean).clamp(min=0.0)


def _box_mean(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Valid ``kh`` x ``kw`` box mean of (B, C, H, W), as two 1-D passes (the same sums; O(kh + kw) per pixel)."""
    return F.avg_pool2d(F.avg_pool2d(x, (kh, 1), stride=1), (1, kw), stride=1)


def _gauss1d(sigma: float, radius: int, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=like.dtype, device=like.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), radius ``ceil(3 sigma)`` (clamped to size - 1), reflect
    padding. ``sigma <= 0`` returns ``x`` unchanged."""
    if sigma <= 0:
        return x
    c, h, w = x.shape[1:]
    r = int(math.ceil(3 * sigma))
    rh, rw = min(r, h - 1), min(r, w - 1)
    kh = _gauss1d(sigma, rh, x).view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    kw = _gauss1d(sigma, rw, x).view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    p = _reflect(x, rh, rw)
    return F.conv2d(F.conv2d(p, kh, groups=c), kw, groups=c)


def sds_variance_map(
    lr,
    field: int = 33,
    blur_sigma: float = 3.0,
    size: Sequence[int] | None = None,
    flat_tolerance: float = 1e-10,
) -> torch.Tensor:
    """SDS detail map ``v`` in [0, 1]: min-max(GaussianBlur(local variance)) per image, float64.

    Args:
        lr: (B, C, H, W) LR in [-1, 1].
        field: variance window (paper: 33 LR pixels).
        blur_sigma: Gaussian sigma in LR pixels (the paper does not give it).
        size: (h, w) to resize to (the latent grid); bilinear with antialiasing.
        flat_tolerance: an image whose blurred variance spans less than this is flat: v = 0 everywhere
            (min-max would otherwise blow rounding noise up to [0, 1]).

    Returns:
        (B, 1, h, w) float64.
    """
    v = gaussian_blur(local_variance_map(lr, field), blur_sigma)
    vmin = v.amin(dim=(1, 2, 3), keepdim=True)
    span = v.amax(dim=(1, 2, 3), keepdim=True) - vmin
    v = torch.where(span > flat_tolerance, (v - vmin) / span.clamp(min=flat_tolerance), torch.zeros_like(v))
    if size is not None and tuple(int(s) for s in size) != tuple(v.shape[-2:]):
        v = F.interpolate(v, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False, antialias=True)
    return v.clamp(0.0, 1.0)


def sds_timestep_maps(
    v: torch.Tensor,
    T: int,
    steps: int,
    n_range: Sequence[float],
    a_range: Sequence[float],
) -> list[torch.Tensor]:
    """Per-pixel real-valued step maps, one per sampling step (descending, first = T-1, last = 0).

    Args:
        v: (B, 1, h, w) detail map in [0, 1].
        T: chain length; steps: number of sampling steps T'.
        n_range: (Nmin, Nmax) polynomial exponents; a_range: (Amin, Amax) as fractions of L = T-1.

    Returns:
        ``steps`` float64 maps of shape (B, 1, h, w).
    """
    span = T - 1
    v = _f64(v)
    n = v * (n_range[1] - n_range[0]) + n_range[0]
    a = (v * (a_range[1] - a_range[0]) + a_range[0]) * span
    return [polynomial_warp(float(t), a, n, span) for t in respaced_timesteps(steps, T)]
