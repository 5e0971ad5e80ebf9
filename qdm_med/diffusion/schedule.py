"""The residual-shift noise schedule (ResShift / QDM 'exponential' schedule, SPEC 3).

Steps are 0-indexed, ``t = 0 .. T-1``: step 0 is the least noisy state (``sqrt(eta_0) = 0.02``), step
``T-1`` the prior (``sqrt(eta_{T-1}) = etas_end = 0.99``). The clean latent sits at ``t = -1`` with
``eta(-1) = 0`` by convention, so the last reverse step ``0 -> -1`` returns the x0 prediction.

TSS needs the schedule at real-valued steps: :meth:`Schedule.eta` interpolates ``eta`` linearly in
``t`` between integer steps (and between ``eta(-1) = 0`` and ``eta_0`` on ``[-1, 0]``). Because
``eta`` stays increasing, the forward process ``x_t = x_s + (eta_t - eta_s) e0 + kappa sqrt(eta_t -
eta_s) eps`` is well defined for any real ``s < t``, so posteriors between arbitrary real steps are
exact for that continuous-time process. Respacing (ResShift keeps a subset of steps and recomputes the
etas for it) is the special case of integer ``t`` and ``t_prev`` that are not adjacent.
"""

from __future__ import annotations

import math

import torch

__all__ = ["exponential_sqrt_etas", "Schedule"]


def exponential_sqrt_etas(
    T: int = 15,
    kappa: float = 2.0,
    min_noise_level: float = 0.04,
    etas_end: float = 0.99,
    power: float = 0.3,
) -> torch.Tensor:
    """``sqrt(eta_t)`` for t = 0..T-1 (float64, shape (T,)).

    ``sqrt_eta_0 = min(min_noise_level / kappa, min_noise_level)``,
    ``b = exp(log(etas_end / sqrt_eta_0) / (T - 1))``,
    ``sqrt_eta_t = sqrt_eta_0 * b ** (linspace(0, 1, T) ** power * (T - 1))``.
    Defaults give SPEC 3's values [0.02, 0.1172, ..., 0.9086, 0.99].
    """
    if T < 2:
        raise ValueError(f"the exponential schedule needs T >= 2 steps, got {T}")
    if kappa <= 0 or min_noise_level <= 0 or power <= 0:
        raise ValueError(f"kappa, min_noise_level and power must be > 0 (got {kappa}, {min_noise_level}, {power})")
    start = min(min_noise_level / kappa, min_noise_level)
    if not start < etas_end <= 1.0:
        raise ValueError(f"etas_end must be in ({start}, 1], got {etas_end}")
    base = math.exp(math.log(etas_end / start) / (T - 1))
    exponent = torch.linspace(0.0, 1.0, T, dtype=torch.float64) ** power * (T - 1)
    return start * base**exponent


class Schedule:
    """Tables of one eta schedule, all float64 tensors of shape (T,):

    - ``sqrt_etas``, ``etas``; ``etas_prev`` (``eta_{t-1}``, 0 for t = 0); ``alphas = etas - etas_prev``;
    - posterior coefficients of q(x_{t-1} | x_t, x0): ``posterior_mean_coef1 = eta_{t-1}/eta_t``,
      ``posterior_mean_coef2 = alpha_t/eta_t``, ``posterior_variance_factor = eta_{t-1}/eta_t*alpha_t``
      (the variance is ``kappa**2`` times this, on active sites).

    Args:
        sqrt_etas: strictly increasing values in (0, 1], one per step.
    """

    def __init__(self, sqrt_etas) -> None:
        s = torch.as_tensor(sqrt_etas, dtype=torch.float64).detach().cpu().flatten().clone()
        if s.numel() < 1:
            raise ValueError("a schedule needs at least one step")
        if not bool((s > 0).all() and (s <= 1).all()):
            raise ValueError("sqrt_etas must lie in (0, 1]")
        if s.numel() > 1 and not bool((s[1:] > s[:-1]).all()):
            raise ValueError("sqrt_etas must be strictly increasing")
        self.sqrt_etas = s
        self.etas = s**2
        self.etas_prev = torch.cat([self.etas.new_zeros(1), self.etas[:-1]])
        self.alphas = self.etas - self.etas_prev
        self.posterior_mean_coef1 = self.etas_prev / self.etas
        self.posterior_mean_coef2 = self.alphas / self.etas
        self.posterior_variance_factor = self.etas_prev / self.etas * self.alphas
        # eta at positions -1, 0, ..., T-1 (index = t + 1) for interpolation at real t.
        self._table = torch.cat([self.etas.new_zeros(1), self.etas])

    @classmethod
    def exponential(
        cls,
        T: int = 15,
        kappa: float = 2.0,
        min_noise_level: float = 0.04,
        etas_end: float = 0.99,
        power: float = 0.3,
    ) -> "Schedule":
        """The ResShift/QDM schedule (:func:`exponential_sqrt_etas`)."""
        return cls(exponential_sqrt_etas(T, kappa, min_noise_level, etas_end, power))

    @property
    def num_timesteps(self) -> int:
        return int(self.etas.numel())

    def __len__(self) -> int:
        return self.num_timesteps

    def __repr__(self) -> str:
        return f"Schedule(T={self.num_timesteps}, sqrt_eta {float(self.sqrt_etas[0]):.4g}..{float(self.sqrt_etas[-1]):.4g})"

    def eta(self, t) -> torch.Tensor:
        """``eta`` at real-valued step(s) ``t`` in [-1, T-1] (any shape; float64, on ``t``'s device).

        Linear interpolation in ``t`` between integer steps; integer ``t`` returns the table values
        exactly and ``t = -1`` returns 0.
        """
        tt = torch.as_tensor(t, dtype=torch.float64)
        last = self.num_timesteps - 1
        if tt.numel() and (float(tt.min()) < -1 - 1e-9 or float(tt.max()) > last + 1e-9):
            raise ValueError(f"timestep out of range [-1, {last}]: {float(tt.min())}..{float(tt.max())}")
        table = self._table.to(tt.device)
        u = (tt + 1.0).clamp(0.0, float(last + 1))
        lo = u.floor().clamp(max=float(last)).long()
        frac = u - lo.double()
        return table[lo] * (1.0 - frac) + table[lo + 1] * frac

    def sqrt_eta(self, t) -> torch.Tensor:
        """``sqrt(eta(t))`` (see :meth:`eta`)."""
        return self.eta(t).sqrt()
