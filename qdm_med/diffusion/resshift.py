"""Mask-guided residual-shift diffusion (ResShift with QDM's quadtree mask, SPEC 3).

Notation: ``x0`` HR latent, ``y`` latent of the bicubic-upsampled LR, ``e0 = y - x0``, ``m`` the
diffusion mask (1 = active/detail-rich), ``eta_t`` the schedule at (real) step ``t``, ``kappa`` the noise
scale. All latents are (B, Cz, h, w); masks (B, h, w) or (B, 1, h, w) (bool or {0, 1}); a timestep is a
number, a (B,) tensor, or a per-pixel (B, 1, h, w) map (TSS).

- forward marginal  ``x_t = x0 + eta_t e0 + kappa sqrt(eta_t) m eps``
- prior             ``x_{T-1} = y + kappa sqrt(eta_{T-1}) m eps`` (inactive sites start exactly at y)
- posterior (t -> s < t, any real steps, per pixel):
  ``mean = (eta_s/eta_t) x_t + ((eta_t - eta_s)/eta_t) x0`` on m = 1, ``x0`` on m = 0 (SPEC/paper);
  ``var = kappa^2 (eta_s/eta_t)(eta_t - eta_s) m``. ``eta(-1) = 0`` so the last step returns ``x0``.
- network input ``x_t / sqrt(eta_t kappa^2 + 1)``; the network predicts x0 (down and up streams).

Inactive sites (m = 0). The reference code adds noise of std 1e-7 there (forward, prior and posterior);
here that floor is ``latent_noise_floor`` and defaults to 0: inactive sites are exactly
``x0 + eta_t e0`` in training and exactly ``y`` in the prior, so the SPEC's "unmasked sites start exactly
at y" holds and sampling is noise-free there (1e-7 is below float32 resolution of typical latents
anyway). A non-zero floor is used in the forward marginal and the prior only; the posterior variance
keeps its exact ``* m`` form. The reference code's reverse mean on inactive sites is the ordinary
posterior mean (it keeps the ``x0 + eta_t e0`` path that training saw) rather than the SPEC's ``x0``;
``unmasked_mean="posterior"`` selects that behaviour, the default ``"x0"`` follows the SPEC. Both
return the prediction itself at the final step.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from qdm_med.diffusion.samplers import TimestepPlan, UniformSampler
from qdm_med.diffusion.schedule import Schedule

__all__ = ["ResShiftDiffusion"]

UNMASKED_MEANS = ("x0", "posterior")


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Drawn where the generator lives (training keeps a CPU generator for CUDA batches too), then moved.
    device = like.device if generator is None else generator.device
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-step value (0-d, (B,), (B, h, w) or (B, 1, h, w)) -> broadcastable to (B, C, h, w)."""
    if v.ndim == 0:
        v = v.view(1, 1, 1, 1)
    elif v.ndim == 1:
        v = v.view(-1, 1, 1, 1)
    elif v.ndim == 3:
        v = v[:, None]
    elif v.ndim != 4:
        raise ValueError(f"timestep of shape {tuple(v.shape)}: expected a number, (B,), (B,h,w) or (B,1,h,w)")
    if v.ndim == 4 and v.shape[-2:] != (1, 1) and v.shape[-2:] != like.shape[-2:]:
        raise ValueError(f"timestep map {tuple(v.shape)} does not match the latent {tuple(like.shape)}")
    return v.to(device=like.device, dtype=like.dtype)


class ResShiftDiffusion:
    """Mask-guided residual-shift diffusion process and its sampler.

    Args:
        schedule: the eta schedule (default: the exponential T = 15 schedule for ``kappa``).
        kappa: noise scale (2.0 in QDM/ResShift); must match the kappa the schedule was built with.
        normalize_input: feed the network ``x_t / sqrt(eta_t kappa^2 + 1)`` (True in QDM).
        latent_noise_floor: noise std on inactive sites in the forward marginal and the prior (0; the
            reference code uses 1e-7).
        unmasked_mean: reverse mean on inactive sites, "x0" (SPEC) or "posterior" (reference code).
    """

    def __init__(
        self,
        schedule: Schedule | None = None,
        kappa: float = 2.0,
        normalize_input: bool = True,
        latent_noise_floor: float = 0.0,
        unmasked_mean: str = "x0",
    ) -> None:
        if kappa <= 0:
            raise ValueError(f"kappa must be > 0, got {kappa}")
        if latent_noise_floor < 0:
            raise ValueError(f"latent_noise_floor must be >= 0, got {latent_noise_floor}")
        if unmasked_mean not in UNMASKED_MEANS:
            raise ValueError(f"unmasked_mean must be one of {UNMASKED_MEANS}, got {unmasked_mean!r}")
        self.schedule = schedule if schedule is not None else Schedule.exponential(kappa=kappa)
        self.kappa = float(kappa)
        self.normalize_input = bool(normalize_input)
        self.latent_noise_floor = float(latent_noise_floor)
        self.unmasked_mean = unmasked_mean

    @classmethod
    def exponential(
        cls,
        T: int = 15,
        kappa: float = 2.0,
        min_noise_level: float = 0.04,
        etas_end: float = 0.99,
        power: float = 0.3,
        **kwargs,
    ) -> "ResShiftDiffusion":
        """The QDM/ResShift process with its exponential schedule built for the same ``kappa``."""
        return cls(Schedule.exponential(T, kappa, min_noise_level, etas_end, power), kappa, **kwargs)

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    def config(self) -> dict:
        return {
            "T": self.num_timesteps,
            "kappa": self.kappa,
            "normalize_input": self.normalize_input,
            "latent_noise_floor": self.latent_noise_floor,
            "unmasked_mean": self.unmasked_mean,
            "sqrt_etas": [float(v) for v in self.schedule.sqrt_etas],
        }

    # -- helpers ---------------------------------------------------------------------------------
    def _eta64(self, t) -> torch.Tensor:
        return self.schedule.eta(t.detach() if isinstance(t, torch.Tensor) else t)

    def eta(self, t, like: torch.Tensor) -> torch.Tensor:
        """``eta(t)`` broadcastable to ``like`` (in its dtype/device)."""
        return _bcast(self._eta64(t), like)

    @staticmethod
    def _mask(mask, like: torch.Tensor) -> torch.Tensor | None:
        """None (all active) or a float (B, 1, h, w) {0, 1} mask matching ``like``."""
        if mask is None:
            return None
        m = torch.as_tensor(mask, device=like.device)
        if m.ndim == 3:
            m = m[:, None]
        if m.ndim != 4 or m.shape[1] != 1 or m.shape[-2:] != like.shape[-2:]:
            raise ValueError(f"mask of shape {tuple(m.shape)} does not fit latents {tuple(like.shape)}")
        return (m > 0.5).to(like.dtype) if m.dtype != torch.bool else m.to(like.dtype)

    def _noise_std(self, eta: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        std = self.kappa * eta.sqrt()
        if m is None:
            return std
        return std * m + self.latent_noise_floor * (1.0 - m)

    def _model_t(self, t, batch: int, like: torch.Tensor) -> torch.Tensor:
        """The timestep as the model gets it: float (B,) or (B, 1, h, w) map, unnormalised step index."""
        if isinstance(t, torch.Tensor) and t.ndim == 4:
            tt = t.to(device=like.device, dtype=like.dtype)
            return tt.expand(batch, -1, -1, -1) if tt.shape[0] == 1 and batch > 1 else tt
        tt = torch.as_tensor(t, device=like.device, dtype=like.dtype)
        if tt.ndim == 0:
            return tt.expand(batch).clone()
        if tt.ndim == 1 and tt.shape[0] == batch:
            return tt
        raise ValueError(f"timestep of shape {tuple(tt.shape)} for a batch of {batch}")

    # -- the process -----------------------------------------------------------------------------
    def q_mean_variance(self, x0: torch.Tensor, y: torch.Tensor, t, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_t | x0, y) (both (B, Cz, h, w))."""
        eta = self.eta(t, x0)
        m = self._mask(mask, x0)
        mean = x0 + eta * (y - x0)
        var = self._noise_std(eta, m) ** 2
        return mean, var.expand_as(mean)

    def q_sample(
        self,
        x0: torch.Tensor,
        y: torch.Tensor,
        t,
        mask=None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw ``x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) m eps``."""
        eta = self.eta(t, x0)
        m = self._mask(mask, x0)
        noise = _randn(x0, generator) if noise is None else noise
        return x0 + eta * (y - x0) + self._noise_std(eta, m) * noise

    def prior_sample(
        self, y: torch.Tensor, mask=None, noise: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw the start of sampling, ``x_{T-1} = y + kappa sqrt(eta_{T-1}) m eps``."""
        eta = self.eta(float(self.num_timesteps - 1), y)
        m = self._mask(mask, y)
        noise = _randn(y, generator) if noise is None else noise
        return y + self._noise_std(eta, m) * noise

    def q_posterior_mean_variance(
        self, x_t: torch.Tensor, x0_pred: torch.Tensor, t, t_prev=None, mask=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t_prev} | x_t, x0) for real steps ``t_prev < t`` (default t - 1).

        ``t`` and ``t_prev`` may be numbers, (B,) tensors or (B, 1, h, w) maps (per-pixel TSS steps).
        Coefficients are computed in float64 and cast to the latent dtype.
        """
        if t_prev is None:
            t_prev = t - 1
        eta_t, eta_s = self._eta64(t), self._eta64(t_prev)
        if bool((eta_s > eta_t * (1 + 1e-12)).any()):
            raise ValueError("posterior needs t_prev < t")
        coef1 = eta_s / eta_t
        coef2 = (eta_t - eta_s) / eta_t
        var = self.kappa**2 * coef1 * (eta_t - eta_s)
        mean = _bcast(coef1, x_t) * x_t + _bcast(coef2, x_t) * x0_pred
        var = _bcast(var, x_t).expand_as(mean)
        m = self._mask(mask, x_t)
        if m is not None:
            if self.unmasked_mean == "x0":
                mean = torch.where(m > 0.5, mean, x0_pred)
            var = var * m
        return mean, var

    def normalize(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """Network input ``x_t / sqrt(eta_t kappa^2 + 1)`` (identity with ``normalize_input=False``)."""
        if not self.normalize_input:
            return x_t
        return x_t * _bcast((self._eta64(t) * self.kappa**2 + 1.0).rsqrt(), x_t)

    # -- training --------------------------------------------------------------------------------
    def random_timesteps(
        self, batch: int, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:
        """Uniform integer training steps (B,) in [0, T-1]."""
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=device)

    def training_loss(
        self,
        model: Callable,
        x0: torch.Tensor,
        y: torch.Tensor,
        lr: torch.Tensor,
        mask,
        t,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        l1: float = 1.0,
        l2: float = 1.0,
        model_kwargs: dict | None = None,
    ) -> dict:
        """Dual-stream x0 loss ``l1 MSE(down, x0) + l2 MSE(up, x0)`` at steps ``t``.

        Args:
            model: ``down, up = model(x_in, t, lr)`` (MODEL PROTOCOL, dense path).
            x0, y: (B, Cz, h, w) HR and upsampled-LR latents; lr: (B, C, H_lr, W_lr) in [-1, 1].
            mask: diffusion mask (B, h, w) or None (dense); t: (B,) steps (integers in training).
            model_kwargs: extra keyword arguments of the model call (e.g. ``pos_offset``).

        Returns:
            {"loss": scalar with grad, "mse_down", "mse_up" (detached), "x_t", "down" and "up" (the two
            predictions, with grad, for extra terms such as LPIPS)}.
        """
        x_t = self.q_sample(x0, y, t, mask, noise=noise, generator=generator)
        down, up = model(self.normalize(x_t, t), self._model_t(t, x0.shape[0], x0), lr, **(model_kwargs or {}))
        mse_down = F.mse_loss(down, x0)
        mse_up = F.mse_loss(up, x0)
        return {
            "loss": l1 * mse_down + l2 * mse_up,
            "mse_down": mse_down.detach(),
            "mse_up": mse_up.detach(),
            "x_t": x_t.detach(),
            "down": down,
            "up": up,
        }

    # -- sampling --------------------------------------------------------------------------------
    def _as_plan(self, timesteps) -> TimestepPlan:
        T = self.num_timesteps
        if timesteps is None:
            return UniformSampler(T).plan(T)
        if isinstance(timesteps, TimestepPlan):
            if timesteps.T != T:
                raise ValueError(f"timestep plan for T={timesteps.T} used with a T={T} diffusion")
            return timesteps
        if isinstance(timesteps, int):
            return UniformSampler(timesteps).plan(T)
        return TimestepPlan(list(timesteps), T)

    @torch.no_grad()
    def sample(self, model, y: torch.Tensor, lr: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, dict]:
        """Run the reverse diffusion from the prior at ``y`` to an x0 latent, without gradients: see :meth:`chain`."""
        return self.chain(model, y, lr, *args, **kwargs)

    def unrolled(self, model, y: torch.Tensor, lr: torch.Tensor, timesteps, diffusion_mask=None, token_mask: torch.Tensor | None = None,
                 model_kwargs: dict | None = None, stochastic: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """The chain (dense model calls) with gradients through every step -> the x0 latent (B, Cz, h, w) that
        ``sample(..., sparse=False, stochastic=stochastic, generator=generator)`` returns. Deterministic: posterior
        means from ``y``; stochastic: the prior's draw and each step's noise, reparameterised (gradients flow through
        the means). Training a few-step plan where it runs (``train.unroll``) backpropagates through it;
        ``model_kwargs`` go to every model call."""
        return self.chain(model, y, lr, diffusion_mask, token_mask, timesteps, generator=generator, sparse=False,
                          stochastic=stochastic, model_kwargs=model_kwargs)[0]

    def chain(
        self,
        model,
        y: torch.Tensor,
        lr: torch.Tensor,
        diffusion_mask=None,
        token_mask: torch.Tensor | None = None,
        timesteps: TimestepPlan | Sequence[float] | int | None = None,
        generator: torch.Generator | None = None,
        sparse: bool = True,
        progress: Callable[[int, int], None] | None = None,
        chunk_size: int = 64,
        stochastic: bool = True,
        model_kwargs: dict | None = None,
    ) -> tuple[torch.Tensor, dict]:
        """Run the reverse diffusion from the prior at ``y`` to an x0 latent (with gradients when enabled).

        Args:
            model: MODEL PROTOCOL network: ``model.forward_sparse(x_in, t, lr, token_mask, chunk_size)
                -> (pred, info)`` when ``sparse`` and available, else ``down, up = model(x_in, t, lr)``
                combined as ``down*m + up*(1-m)`` with the token mask upsampled (``down`` if no mask).
            y: (B, Cz, h, w) latent of the bicubic-upsampled LR; lr: (B, C, H_lr, W_lr) in [-1, 1].
            diffusion_mask: (B, h, w) bool, None = all active. token_mask: (B, ceil(h/2), ceil(w/2))
                bool, None = all active.
            timesteps: a :class:`TimestepPlan`, a list of descending steps from T-1, an int (uniform
                respacing to that many steps) or None (every step).
            generator: torch.Generator for the prior and per-step noise (same seed -> same sample).
            progress: called as ``progress(done, total)`` after each step.
            stochastic: False starts at the prior's mean ``y`` and keeps the posterior means (no noise is
                drawn: the result does not depend on ``generator``).
            model_kwargs: extra keyword arguments of the dense model calls (e.g. a training crop's ``pos_offset``).

        Returns:
            (x0 latent (B, Cz, h, w), info) with info keys ``sampler``, ``sampler_params``, ``T``,
            ``num_steps``, ``timesteps`` (plan description), ``steps`` (per step: t, t_prev and the
            model's info), ``model_calls``, ``active_windows``/``total_windows``/``active_tokens``/``total_tokens``/``macs`` (sums over
            steps, None if the model did not report them), ``sparse`` and ``diffusion_mask_density``.
        """
        plan = self._as_plan(timesteps)
        batch, h, w = y.shape[0], y.shape[-2], y.shape[-1]
        m = self._mask(diffusion_mask, y)
        tok = None if token_mask is None else torch.as_tensor(token_mask, device=y.device).bool()
        use_sparse = bool(sparse) and hasattr(model, "forward_sparse")
        if use_sparse and tok is None:
            tok = torch.ones(batch, (h + 1) // 2, (w + 1) // 2, dtype=torch.bool, device=y.device)
        tok_up = None
        if not use_sparse and tok is not None:
            tok_up = F.interpolate(tok[:, None].float(), size=(h, w), mode="nearest") > 0.5

        x = self.prior_sample(y, m, generator=generator) if stochastic else y.clone()
        records: list[dict] = []
        n = len(plan)
        # a jump-conditioned model is told how far each call's state came (the prior counts as step T)
        with_jump = bool(getattr(getattr(model, "module", model), "jump_conditioning", False))
        t_from = float(self.num_timesteps)
        for i, step in enumerate(plan):
            t, t_prev = step.t, step.t_prev
            if isinstance(t, torch.Tensor):
                t = t.to(y.device)
                t = t.expand(batch, -1, -1, -1) if t.shape[0] == 1 and batch > 1 else t
            if isinstance(t_prev, torch.Tensor):
                t_prev = t_prev.to(y.device)
                t_prev = t_prev.expand(batch, -1, -1, -1) if t_prev.shape[0] == 1 and batch > 1 else t_prev
            x_in = self.normalize(x, t)
            t_model = self._model_t(t, batch, y)
            jump_kw = {"jump": self._model_t(t_from - t, batch, y)} if with_jump else {}
            t_from = t
            if use_sparse:
                pred, minfo = model.forward_sparse(x_in, t_model, lr, tok, chunk_size=chunk_size, **jump_kw)
            else:
                kw = {**(model_kwargs or {}), **jump_kw}
                if tok is not None and getattr(getattr(model, "module", model), "token_sparse", False):
                    kw["token_mask"] = tok
                down, up = model(x_in, t_model, lr, **kw)
                pred = down if tok_up is None else torch.where(tok_up, down, up)
                minfo = {}
            mean, var = self.q_posterior_mean_variance(x, pred, t, t_prev, m)
            x = mean if i == n - 1 or not stochastic else mean + var.sqrt() * _randn(x, generator)
            record = {"t": _describe(t), "t_prev": _describe(t_prev)}
            for key in ("active_windows", "total_windows", "active_tokens", "total_tokens", "macs"):
                if minfo and key in minfo:
                    record[key] = int(minfo[key])
            records.append(record)
            if progress is not None:
                progress(i + 1, n)

        def total(key: str) -> int | None:
            vals = [r.get(key) for r in records]
            return int(sum(vals)) if vals and all(v is not None for v in vals) else None

        info = {
            "sampler": plan.name,
            "sampler_params": dict(plan.params),
            "T": self.num_timesteps,
            "num_steps": n,
            "timesteps": plan.describe(),
            "steps": records,
            "model_calls": n,
            "active_windows": total("active_windows"),
            "total_windows": total("total_windows"),
            "active_tokens": total("active_tokens"),
            "total_tokens": total("total_tokens"),
            "macs": total("macs"),
            "sparse": use_sparse,
            "stochastic": bool(stochastic),
            "diffusion_mask_density": 1.0 if m is None else float(m.mean()),
        }
        return x, info


def _describe(t) -> float | dict:
    if isinstance(t, torch.Tensor) and t.numel() > 1:
        return {"min": float(t.min()), "mean": float(t.mean()), "max": float(t.max())}
    return float(t)
