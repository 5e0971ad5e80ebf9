"""The LR -> SR module a bundle ships: first stage + dual-stream QDM + residual-shift diffusion + sampler.

:class:`QDMSuperResolution` maps a batch of LR images (B, C, h, w) in [-1, 1] to SR images
(B, C, h*s, w*s) in [-1, 1]:

1. pad the LR (replicate) so the latent is a multiple of the model stride (cropped back at the end);
2. the start of the residual shift at HR size, encoded: ``y`` (B, Cz, H/4, W/4). ``start="bicubic"`` is
   the paper's bicubic upsampling; ``start="prior"`` the learned prior's prediction (a residual CNN,
   :mod:`qdm_med.models.prior`), so inactive quadtree sites keep the CNN output; it is a property of how
   the QDM was trained (the bundle's ``diffusion.start``). ``steps=0`` skips the diffusion and returns the
   prior's prediction (bicubic without a prior): the deterministic fidelity mode of a bundle with a prior,
   averaged over the LR's four mirror images (``flip_ensemble``, the default; one pass without);
3. QDM masks from the LR (Algorithm 1 at ``threshold``): diffusion mask at latent size, token mask at latent/2;
4. the sampler's timestep plan (``uniform`` / ``tds`` / ``tss``, ``steps``) and the masked reverse diffusion,
   sparse by default (only windows with active tokens run the downstream stream); ``stochastic=False``
   starts at the prior's mean and takes posterior means (no noise: the same image for any seed);
5. decode and clamp; with ``background_ramp`` (lo, hi), where the start image is below ``lo`` (air) the output is
   the start image itself, above ``hi`` the diffusion's, linearly in between: the upstream stream draws a texture
   on its patch grid over air that no CT shows (see ``scripts/template_energy.py``).

Its ``state_dict()`` (first stage + prior + QDM weights + buffers) is a bundle's ``models/model.pt``; MONAI
Deploy's bundle operator loads it into ``network_def`` and calls the inferer on it. ``last_info`` holds
mask density, active windows, MACs (QDM steps + decoder) and timings of the last call.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from qdm_med.diffusion import SAMPLERS, ResShiftDiffusion, make_plan
from qdm_med.errors import ConfigError
from qdm_med.quadtree import qdm_masks
from qdm_med.transforms.resample import bicubic_upsample

__all__ = ["QDMSuperResolution"]


class QDMSuperResolution(nn.Module):
    """LR -> SR with QDM (see module docstring).

    Args:
        first_stage: a :mod:`qdm_med.models.first_stage` module.
        qdm: the :class:`~qdm_med.models.qdm.DualStreamQDM`.
        diffusion: the :class:`~qdm_med.diffusion.ResShiftDiffusion` process (schedule).
        scale: SR factor (4 or 8).
        sampler / steps: timestep plan (``uniform``, ``tds``, ``tss``) and its number of steps.
        threshold: quadtree threshold on the [-1, 1] scale (0 = dense masks).
        sparse: use the sparse window path (False: dense downstream everywhere, same result on a full mask).
        chunk_size: windows per downstream call.
        sampler_params: extra parameters of the sampler (e.g. TDS ``a``, ``n``).
        prior: the learned prior (LR -> SR residual CNN) or None.
        start: ``"prior"`` (default when there is a prior) or ``"bicubic"``: where the residual shift starts.
        stochastic: draw the prior noise and the per-step noise (False: posterior means only).
        flip_ensemble: with ``steps=0``, average the prior's prediction over the four mirror images of the LR
            (:meth:`~qdm_med.models.prior.ResidualCNN.flip_ensemble`); the diffusion always starts from one pass,
            the start it was trained on.
        background_ramp: (lo, hi) on the [-1, 1] scale, lo < hi, or None (off): keep the start image where it
            is below ``lo`` and blend up to the diffusion's output at ``hi`` (sampling only; ``steps=0`` is the
            start image everywhere).
    """

    def __init__(self, first_stage: nn.Module, qdm: nn.Module, diffusion: ResShiftDiffusion | None = None, scale: int = 8,
                 sampler: str = "uniform", steps: int = 1, threshold: float = 0.15, sparse: bool = True, chunk_size: int = 64,
                 sampler_params: dict | None = None, prior: nn.Module | None = None, start: str | None = None,
                 stochastic: bool = True, flip_ensemble: bool = True, background_ramp=None) -> None:
        super().__init__()
        self.first_stage, self.qdm, self.prior = first_stage, qdm, prior
        self.start = "bicubic" if prior is None else "prior"
        self.stochastic, self.flip_ensemble = bool(stochastic), bool(flip_ensemble)
        self.diffusion = diffusion if diffusion is not None else ResShiftDiffusion()
        self.scale = int(scale)
        self.in_channels = int(first_stage.in_channels)
        self.sparse, self.chunk_size = bool(sparse), int(chunk_size)
        self.sampler_params = dict(sampler_params or {})
        self.sampler, self.steps, self.threshold = "uniform", 1, 0.0
        self.background_ramp = _check_ramp(background_ramp)
        self.configure(steps=steps, sampler=sampler, threshold=threshold, start=start)
        self.last_info: dict = {}

    def configure(self, steps: int | None = None, sampler: str | None = None, threshold: float | None = None, start: str | None = None,
                  stochastic: bool | None = None, flip_ensemble: bool | None = None) -> None:
        """Change the sampling options (validated: ConfigError with one line)."""
        if start is not None:
            if start not in ("prior", "bicubic"):
                raise ConfigError(f"start {start!r}: use prior or bicubic")
            if start == "prior" and self.prior is None:
                raise ConfigError("start 'prior': this model has no learned prior (its bundle has no 'prior' section)")
            self.start = start
        if stochastic is not None:
            self.stochastic = bool(stochastic)
        if flip_ensemble is not None:
            self.flip_ensemble = bool(flip_ensemble)
        if sampler is not None:
            if sampler not in SAMPLERS:
                raise ConfigError(f"sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
            self.sampler = str(sampler)
        if steps is not None:
            T = self.diffusion.num_timesteps
            if not 0 <= int(steps) <= T:
                raise ConfigError(
                    f"steps {steps}: must be between 0 (the start alone: the prior's prediction) and {T} (the trained schedule)"
                )
            self.steps = int(steps)
        if threshold is not None:
            if not math.isfinite(float(threshold)) or float(threshold) < 0:
                raise ConfigError(f"threshold {threshold}: must be >= 0")
            self.threshold = float(threshold)

    @property
    def lr_multiple(self) -> int:
        """LR size multiple that makes the latent a multiple of the model stride."""
        hr_multiple = self.qdm.multiple * self.first_stage.factor
        if self.prior is not None:
            hr_multiple = math.lcm(hr_multiple, self.prior.unshuffle)
        return max(1, hr_multiple // math.gcd(hr_multiple, self.scale))

    def pinned_context(self, lr: torch.Tensor):
        """Context manager: every call inside it gives the prior's global context (when it has one) of the whole
        LR batch ``lr`` (B, C, h, w) in [-1, 1], padded as :meth:`forward` pads it; the inferencers pin it
        around the tiles of an image, so tiling does not change the fidelity mode's modulation."""
        if self.prior is None or self.prior.context is None or self.start != "prior":
            return contextlib.nullcontext()
        return self.prior.pinned_context(self._pad(lr))

    def _pad(self, lr: torch.Tensor) -> torch.Tensor:
        """Replicate-pad (B, C, h, w) at the bottom/right to the LR stride this call needs: the prior's own in
        fidelity mode (no diffusion), the latent's otherwise."""
        m = (self.prior.lr_multiple if self.prior is not None else 1) if self.steps == 0 else self.lr_multiple
        h, w = lr.shape[-2:]
        hp, wp = -(-h // m) * m, -(-w // m) * m
        return F.pad(lr, (0, wp - w, 0, hp - h), mode="replicate") if (hp, wp) != (h, w) else lr

    def start_image(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, h*s, w*s) in [-1, 1]: the prior's prediction or bicubic (``start``)."""
        return self.prior(lr) if self.start == "prior" else bicubic_upsample(lr, self.scale).clamp(-1, 1)

    def forward(self, lr: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, C, h, w) in [-1, 1] -> (B, C, h*s, w*s) in [-1, 1]."""
        if lr.ndim != 4 or lr.shape[1] != self.in_channels:
            raise ValueError(f"expected LR (B, {self.in_channels}, h, w), got {tuple(lr.shape)}")
        b, _, h, w = lr.shape
        lr_p = self._pad(lr)
        timings = {}
        t0 = time.perf_counter()
        if self.steps == 0:  # no diffusion: the prior's prediction (fidelity mode), deterministic
            ensemble = self.flip_ensemble and self.prior is not None
            if self.prior is None:
                up = bicubic_upsample(lr_p, self.scale).clamp(-1, 1)
            else:
                up = self.prior.flip_ensemble(lr_p) if ensemble else self.prior(lr_p)
            timings["prior"] = time.perf_counter() - t0
            macs = self.prior.macs(up.shape[-2:], b) * (4 if ensemble else 1) if self.prior is not None else 0
            self.last_info = {
                "sampler": "none",
                "steps": 0,
                "start": "prior" if self.prior is not None else "bicubic",
                "flip_ensemble": ensemble,
                "threshold": self.threshold,
                "timings": timings,
                "macs_prior": macs,
                "macs": macs,
            }
            return up[..., : h * self.scale, : w * self.scale]
        up = self.start_image(lr_p)
        timings["start"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        y = self.first_stage.encode(up)
        timings["encode"] = time.perf_counter() - t0
        masks = qdm_masks(lr_p, self.threshold, self.scale, self.first_stage.factor)
        lat_hw = tuple(y.shape[-2:])
        plan = make_plan(self.sampler, self.steps, self.diffusion.num_timesteps, lr=lr_p, latent_size=lat_hw, **self.sampler_params)
        t0 = time.perf_counter()
        x0, info = self.diffusion.sample(
            self.qdm,
            y,
            self.qdm.conditioning(lr_p, y),
            diffusion_mask=masks.diffusion,
            token_mask=masks.token,
            timesteps=plan,
            generator=generator,
            sparse=self.sparse,
            chunk_size=self.chunk_size,
            stochastic=self.stochastic,
        )
        timings["sample"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = self.first_stage.decode(x0)
        if self.background_ramp is not None:
            lo, hi = self.background_ramp
            weight = ((up - lo) / (hi - lo)).clamp(0, 1)  # 0 in air: the start image
            out = up + weight * (out.clamp(-1, 1) - up)
        timings["decode"] = time.perf_counter() - t0
        decode_macs = int(self.first_stage.decode_macs(lat_hw, b))
        qdm_macs = info.get("macs")
        prior_macs = self.prior.macs(up.shape[-2:], b) if self.start == "prior" else 0
        self.last_info = {
            "sampler": self.sampler,
            "steps": self.steps,
            "threshold": self.threshold,
            "sparse": self.sparse,
            "start": self.start,
            "stochastic": self.stochastic,
            "background_ramp": None if self.background_ramp is None else list(self.background_ramp),
            "mask_density": float(masks.token.float().mean()),
            "diffusion_mask_density": float(masks.diffusion.float().mean()),
            "active_windows": info.get("active_windows"),
            "total_windows": info.get("total_windows"),
            "active_tokens": info.get("active_tokens"),
            "total_tokens": info.get("total_tokens"),
            "macs_qdm": qdm_macs,
            "macs_decode": decode_macs,
            "macs_prior": prior_macs,
            "macs": None if qdm_macs is None else int(qdm_macs) + decode_macs + prior_macs,
            "timesteps": info.get("timesteps"),
            "timings": timings,
        }
        return out[..., : h * self.scale, : w * self.scale].clamp(-1, 1)


def _check_ramp(ramp) -> tuple[float, float] | None:
    """``background_ramp`` as (lo, hi) with -1 <= lo < hi <= 1, or None; ConfigError with one line otherwise."""
    if ramp is None:
        return None
    try:
        lo, hi = (float(v) for v in ramp)
    except (TypeError, ValueError):
        raise ConfigError(f"background_ramp {ramp!r}: give [lo, hi] on the [-1, 1] scale, or null") from None
    if not (-1.0 <= lo < hi <= 1.0):
        raise ConfigError(f"background_ramp {ramp!r}: need -1 <= lo < hi <= 1")
    return lo, hi
