"""Mask-guided residual-shift diffusion (QDM) and TSS sampling.

- :mod:`.schedule`: the exponential eta schedule, real-valued steps.
- :mod:`.resshift`: forward process, prior, posterior, training loss, sampling loop (MODEL PROTOCOL).
- :mod:`.tss`: respacing, TDS warps, SDS variance maps and per-pixel step maps.
- :mod:`.samplers`: :class:`TimestepPlan` and the ``uniform`` / ``tds`` / ``tss`` samplers by name.
"""

from __future__ import annotations

from qdm_med.diffusion.resshift import ResShiftDiffusion
from qdm_med.diffusion.samplers import (
    SAMPLERS,
    PlanStep,
    Sampler,
    TDSSampler,
    TimestepPlan,
    TSSSampler,
    UniformSampler,
    make_plan,
    make_sampler,
)
from qdm_med.diffusion.schedule import Schedule, exponential_sqrt_etas

__all__ = [
    "ResShiftDiffusion",
    "Schedule",
    "exponential_sqrt_etas",
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
