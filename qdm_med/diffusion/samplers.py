"""Sampling plans (which steps the reverse diffusion visits) and the samplers that build them by name.

A :class:`TimestepPlan` lists, per sampling step, the current step ``t`` and the next one ``t_prev``
(``-1`` after the last step: the clean latent). ``t`` is a real number (uniform and TDS) or a per-pixel
map (B, 1, h, w) on the latent grid (TSS); plans always start at ``T-1`` (where the prior is drawn) and
their last model call is at step 0 (see :mod:`qdm_med.diffusion.tss` for the indexing).

Samplers (``make_sampler(name, steps, **params)`` / ``make_plan(...)``):

- ``uniform``: the respaced integer steps; with ``steps = T`` every step of the chain (plain QDM/ResShift).
- ``tds`` (Time Dynamic Sampling): a warp of the uniform steps. Parameters ``a`` (fraction of T-1, in
  (0, 1)), ``n`` (> 0), ``warp`` ("polynomial", "trigonometric" (uses ``a``), "logistic" (uses
  ``steepness``)). Defaults a = 0.05, n = 6, polynomial.
- ``tss`` (TDS + Spatial Dynamic Sampling): per-pixel polynomial warps from the LR's local variance.
  Parameters ``n_range`` (Nmin, Nmax), ``a_range`` (Amin, Amax, fractions of T-1), ``field`` (variance
  window, LR pixels), ``blur_sigma`` (LR pixels). Defaults n 5.75-6.25, a 0.02-0.10, field 33, sigma 3.

How the defaults were chosen for T = 15 (SPEC section 5: the paper's ranges, StableSR n 1-1.2 / a .45-.65,
PASD n 1-2 / a .4-.6, SUPIR n 2.2-2.5 / a .58-.63, were set for 1000-step backbones): a grid over n and a
at 7 steps with ``scripts/tune_tss.py``, on 8 slices of a *training* patient (pyradiomics_lung1,
medical-test LR) of the shipped x8 and x4 CT models. PSNR rose monotonically with larger n and smaller a
(x8: uniform 30.37 dB, n = 1.5 / a = 0.5 30.29, n = 6 / a = 0.05 31.00; x4: 34.82 -> 34.94), i.e. towards
crowding the steps near t = T and one long final jump (at T' = 7: 14, 14.0, 14.0, 13.7, 11.6, 6.8, 0).
These CPU-trained models lose accuracy at small t (they trust ``x_t`` there), so the best 7-step
schedule spends few steps in that range; a better-trained model may prefer milder warps (pass ``n``,
``a`` or the ranges). The SDS band is the narrow one around that warp (the widest band, n 1-6 from flat
to textured pixels, scored 0.08 dB lower on x8 and level on x4).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from qdm_med.diffusion.tss import (
    WARPS,
    logistic_warp,
    polynomial_warp,
    respaced_timesteps,
    sds_timestep_maps,
    sds_variance_map,
    trigonometric_warp,
)
from qdm_med.errors import ConfigError

__all__ = [
    "PlanStep",
    "TimestepPlan",
    "Sampler",
    "UniformSampler",
    "TDSSampler",
    "TSSSampler",
    "SAMPLERS",
    "make_sampler",
    "make_plan",
]

@dataclass(frozen=True)
class PlanStep:
    """One reverse step: from ``t`` to ``t_prev`` (floats, or (B, 1, h, w) float64 maps)."""

    t: float | torch.Tensor
    t_prev: float | torch.Tensor

    @property
    def spatial(self) -> bool:
        return isinstance(self.t, torch.Tensor)


def _normalise_step(t) -> float | torch.Tensor:
    if isinstance(t, torch.Tensor):
        if t.ndim == 0:
            return float(t)
        if t.ndim != 4 or t.shape[1] != 1:
            raise ValueError(f"a spatial timestep must be a (B, 1, h, w) map; got shape {tuple(t.shape)}")
        return t.detach().double()
    return float(t)


def _min(t) -> float:
    return float(t.min()) if isinstance(t, torch.Tensor) else float(t)


def _max(t) -> float:
    return float(t.max()) if isinstance(t, torch.Tensor) else float(t)


class TimestepPlan:
    """The steps of one sampling run.

    Args:
        timesteps: descending steps, each a number or a (B, 1, h, w) map; the first must be ``T-1``
            (everywhere), every value in [0, T-1], strictly decreasing (per pixel).
        T: length of the diffusion chain the plan refers to.
        name: sampler name (for reports); params: the sampler's parameters (for reports).
    """

    def __init__(self, timesteps: Sequence, T: int, name: str = "custom", params: dict | None = None) -> None:
        ts = [_normalise_step(t) for t in timesteps]
        if not ts:
            raise ValueError("a timestep plan needs at least one step")
        last = T - 1
        if abs(_min(ts[0]) - last) > 1e-6 or abs(_max(ts[0]) - last) > 1e-6:
            raise ValueError(f"a timestep plan must start at T-1={last} (the prior); got {_min(ts[0])}..{_max(ts[0])}")
        for i, t in enumerate(ts):
            if _min(t) < -1e-9 or _max(t) > last + 1e-9:
                raise ValueError(f"step {i}: timestep outside [0, {last}]: {_min(t)}..{_max(t)}")
            if i and not bool(torch.as_tensor(t < ts[i - 1]).all()):
                raise ValueError(f"step {i}: timesteps must decrease strictly (per pixel)")
        self.T = int(T)
        self.name = name
        self.params = dict(params or {})
        self.timesteps = ts
        self.steps = [PlanStep(t, ts[i + 1] if i + 1 < len(ts) else -1.0) for i, t in enumerate(ts)]

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[PlanStep]:
        return iter(self.steps)

    def __getitem__(self, i: int) -> PlanStep:
        return self.steps[i]

    @property
    def spatial(self) -> bool:
        """True when steps are per-pixel maps (TSS)."""
        return any(s.spatial for s in self.steps)

    def to(self, device) -> "TimestepPlan":
        """A copy with the maps on ``device``."""
        ts = [t.to(device) if isinstance(t, torch.Tensor) else t for t in self.timesteps]
        return TimestepPlan(ts, self.T, self.name, self.params)

    def describe(self) -> list:
        """JSON-friendly steps: a float per scalar step, {"min", "mean", "max"} per map."""
        out: list = []
        for t in self.timesteps:
            if isinstance(t, torch.Tensor):
                out.append({"min": float(t.min()), "mean": float(t.mean()), "max": float(t.max())})
            else:
                out.append(float(t))
        return out

    def __repr__(self) -> str:
        return f"TimestepPlan({self.name!r}, T={self.T}, steps={self.describe()})"


def _check_fraction(name: str, key: str, value: float) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ConfigError(f"sampler '{name}': {key}={value} must be in (0, 1) (a fraction of T-1)")
    return value


def _check_range(name: str, key: str, value: Sequence[float], fraction: bool) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"sampler '{name}': {key} must be a pair (min, max), got {value!r}") from None
    if lo > hi:
        raise ConfigError(f"sampler '{name}': {key}=({lo}, {hi}) has min > max")
    if fraction:
        _check_fraction(name, key, lo), _check_fraction(name, key, hi)
    elif lo <= 0:
        raise ConfigError(f"sampler '{name}': {key}=({lo}, {hi}) must be > 0")
    return lo, hi


class Sampler:
    """Base class: ``plan(T, lr=None, latent_size=None) -> TimestepPlan``; ``config()`` for reports."""

    name = ""

    def __init__(self, steps: int) -> None:
        if int(steps) != steps or int(steps) < 1:
            raise ConfigError(f"sampler '{self.name}': steps {steps} must be an integer >= 1")
        self.steps = int(steps)

    def params(self) -> dict:
        return {}

    def config(self) -> dict:
        return {"sampler": self.name, "steps": self.steps, **self.params()}

    def plan(self, T: int, lr: torch.Tensor | None = None, latent_size: Sequence[int] | None = None) -> TimestepPlan:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config()})"


class UniformSampler(Sampler):
    """Respaced integer steps ``T-1, ..., 0`` (all T steps when ``steps == T``)."""

    name = "uniform"

    def plan(self, T, lr=None, latent_size=None) -> TimestepPlan:
        ts = respaced_timesteps(self.steps, T)
        return TimestepPlan([float(t) for t in ts], T, self.name, self.params())


class TDSSampler(Sampler):
    """Time Dynamic Sampling: a warp of the respaced steps (real-valued).

    Args:
        steps: sampling steps T'.
        a: breakpoint as a fraction of T-1 (polynomial, trigonometric).
        n: polynomial exponent (n = 1: uniform).
        warp: "polynomial", "trigonometric" or "logistic".
        steepness: logistic slope, in units of 1/(T-1).
    """

    name = "tds"

    def __init__(self, steps: int, a: float = 0.05, n: float = 6.0, warp: str = "polynomial", steepness: float = 6.0):
        super().__init__(steps)
        if warp not in WARPS:
            raise ConfigError(f"sampler 'tds': warp {warp!r} is unknown; choose one of {', '.join(WARPS)}")
        self.a = _check_fraction(self.name, "a", a)
        self.n = float(n)
        if self.n <= 0:
            raise ConfigError(f"sampler 'tds': n={n} must be > 0")
        self.steepness = float(steepness)
        if self.steepness <= 0:
            raise ConfigError(f"sampler 'tds': steepness={steepness} must be > 0")
        self.warp = warp

    def params(self) -> dict:
        if self.warp == "polynomial":
            return {"warp": self.warp, "a": self.a, "n": self.n}
        if self.warp == "trigonometric":
            return {"warp": self.warp, "a": self.a}
        return {"warp": self.warp, "steepness": self.steepness}

    def warp_fn(self, t, span: float) -> torch.Tensor:
        if self.warp == "polynomial":
            return polynomial_warp(t, self.a * span, self.n, span)
        if self.warp == "trigonometric":
            return trigonometric_warp(t, self.a * span, span)
        return logistic_warp(t, self.steepness, span)

    def plan(self, T, lr=None, latent_size=None) -> TimestepPlan:
        ts = respaced_timesteps(self.steps, T)
        if T < 2:
            return TimestepPlan([float(t) for t in ts], T, self.name, self.params())
        span = T - 1
        warped = self.warp_fn(torch.tensor(ts, dtype=torch.float64), span)
        # Pin the ends exactly (the warps fix them up to rounding).
        values = [float(v) for v in warped]
        values[0], values[-1] = float(ts[0]), float(ts[-1])
        return TimestepPlan(values, T, self.name, self.params())


class TSSSampler(Sampler):
    """TDS + Spatial Dynamic Sampling: per-pixel polynomial warps driven by the LR's local variance.

    Args:
        steps: sampling steps T'.
        n_range: (Nmin, Nmax) exponents for the flattest / most textured pixels.
        a_range: (Amin, Amax) breakpoints as fractions of T-1.
        field: local-variance window in LR pixels (odd).
        blur_sigma: Gaussian blur of the variance map, LR pixels.
    """

    name = "tss"

    def __init__(
        self,
        steps: int,
        n_range: Sequence[float] = (5.75, 6.25),
        a_range: Sequence[float] = (0.02, 0.10),
        field: int = 33,
        blur_sigma: float = 3.0,
    ):
        super().__init__(steps)
        self.n_range = _check_range(self.name, "n_range", n_range, fraction=False)
        self.a_range = _check_range(self.name, "a_range", a_range, fraction=True)
        if int(field) != field or field < 1 or int(field) % 2 == 0:
            raise ConfigError(f"sampler 'tss': field={field} must be a positive odd integer")
        self.field = int(field)
        if blur_sigma < 0:
            raise ConfigError(f"sampler 'tss': blur_sigma={blur_sigma} must be >= 0")
        self.blur_sigma = float(blur_sigma)

    def params(self) -> dict:
        return {
            "n_range": list(self.n_range),
            "a_range": list(self.a_range),
            "field": self.field,
            "blur_sigma": self.blur_sigma,
        }

    def variance_map(self, lr: torch.Tensor, latent_size: Sequence[int] | None = None) -> torch.Tensor:
        """The SDS detail map v (B, 1, h, w) in [0, 1] at ``latent_size`` (default: the LR size)."""
        return sds_variance_map(lr, self.field, self.blur_sigma, latent_size)

    def plan_from_variance(self, T: int, v: torch.Tensor) -> TimestepPlan:
        """Plan for a given detail map ``v`` (B, 1, h, w) in [0, 1] on the latent grid."""
        if T < 2:
            raise ConfigError(f"sampler 'tss': T={T} is too short to warp")
        maps = sds_timestep_maps(v, T, self.steps, self.n_range, self.a_range)
        return TimestepPlan(maps, T, self.name, self.params())

    def plan(self, T, lr=None, latent_size=None) -> TimestepPlan:
        if lr is None:
            raise ValueError("the 'tss' sampler needs the LR image to build its per-pixel schedule")
        return self.plan_from_variance(T, self.variance_map(lr, latent_size))


SAMPLERS: dict[str, type[Sampler]] = {"uniform": UniformSampler, "tds": TDSSampler, "tss": TSSSampler}


def make_sampler(name: str, steps: int, **params) -> Sampler:
    """A sampler by name ("uniform", "tds", "tss") with its parameters (see module docstring)."""
    cls = SAMPLERS.get(str(name).lower())
    if cls is None:
        raise ConfigError(f"sampler {name!r} is unknown; choose one of {', '.join(SAMPLERS)}")
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "steps")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        hint = ", ".join(allowed) if allowed else "none"
        raise ConfigError(f"sampler '{cls.name}': unknown parameter(s) {', '.join(unknown)} (accepted: {hint})")
    return cls(steps, **params)


def make_plan(
    name: str,
    steps: int,
    T: int,
    lr: torch.Tensor | None = None,
    latent_size: Sequence[int] | None = None,
    **params,
) -> TimestepPlan:
    """``make_sampler(name, steps, **params).plan(T, lr, latent_size)``.

    ``lr`` (B, C, H, W) in [-1, 1] and ``latent_size`` (h, w) are only used by "tss" (latent size
    defaults to the LR size, i.e. sf = 4 with an f = 4 first stage).
    """
    return make_sampler(name, steps, **params).plan(T, lr=lr, latent_size=latent_size)


