"""The two training stages: KL-VAE reconstruction (stage 1) and QDM diffusion (stage 2).

A stage owns the trainable module, computes the loss of a batch, validates, and exports the weights a
bundle ships (``models/model.pt``): the first stage's state dict for the VAE, the full LR->SR module's
(first stage + QDM, EMA weights) for QDM.

Optional terms (``train`` settings, all 0 by default):

- VAE ``perceptual_weight``: LPIPS (AlexNet, loaded offline from ``qdm-med data fetch``) between the
  reconstruction and the HR; ``adversarial_weight``: least-squares patch-adversarial loss against MONAI's
  ``PatchDiscriminator`` (trained by the stage's own optimizer from step ``adversarial_start``; its
  weights and optimizer are part of the checkpoint, so resume stays exact).
- QDM ``lpips_weight``: the LPIPS fine-tune term ``l3 * LPIPS(decode(down), HR)``; with ``init_from``
  (a QDM bundle's ``models/model.pt``) it fine-tunes a trained model instead of starting from scratch.
  ``lpips_windows``: the HU windows LPIPS looks through (mean over them; default the model window). CT's
  soft-tissue contrast spans ~13 % of the 3072-HU model window, so LPIPS there barely sees its texture.
  ``lpips_window_weights``: one positive weight per window (default equal); the term is their weighted mean.
- QDM ``adversarial_weight``: the same patch-adversarial term on the decoded downstream prediction, through
  ``adversarial_window`` (HU; default the model window). An MSE/LPIPS-trained x0 prediction is a conditional
  mean and draws no texture; the adversary asks the detail mode for texture the HR has.
- QDM ``composite_threshold``: the fine-tune terms (LPIPS, adversarial) judge the sparse path's prediction at
  this quadtree threshold -- the downstream's at active sites, the upstream's elsewhere -- instead of the
  downstream's everywhere (None), so the upstream learns the texture of the windows the quadtree skips.
- QDM ``unroll``: ``{"sampler": ..., "steps": n}`` (sampler parameters allowed): the fine-tune terms judge the
  output of that deterministic n-step plan at ``composite_threshold``, run with gradients through every step
  (the chain the detail mode samples), and ``unroll_weight`` x MSE(its x0 latent, x0) joins the dual loss. One
  call at a time at a random t never shows the model the states its own plan feeds it; unrolled, every call
  trains on them. ``"stochastic": true`` runs the plan as the stochastic sampler does (the prior's draw and each
  step's noise, from the training generator), so the model learns what to make of the noise it is given.
- QDM ``tile_weight``: ``tile_weight`` x the mean square (HU^2) of the ``tile_period``-periodic part (HR pixels,
  default 32: the upstream's patch) of the fine-tune's output minus the start image, pooled over the batch. A
  patchified stream draws the same pattern in every patch where its tokens look alike, and LPIPS rewards it.
- QDM ``t_final_prob``: probability that a sample trains at the prior's step t = T - 1 instead of a
  uniform step. The one-step sampler predicts x0 only there, while uniform steps spend 14 of 15 samples
  on steps where ``x_t`` already holds most of x0 (and the downstream stream learns to copy it).
  ``t_zero_prob``: the same for the last step, t = 0, which every plan ends with. Only the plain diffusion term
  there (state = HR + noise) asks that call to read its state; an unrolled plan's output term does not.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from qdm_med.bundle.factories import build_diffusion_from, build_first_stage_from, build_prior_from, build_qdm_from, build_sr_module
from qdm_med.bundle.settings import diffusion_start
from qdm_med.errors import ConfigError
from qdm_med.metrics.periodic import tiled_energy
from qdm_med.training.checkpoint import resolve_weights_path
from qdm_med.training.scores import image_scores
from qdm_med.transforms import bicubic_upsample

__all__ = ["VAEStage", "QDMStage", "build_stage"]


def _lpips_module(settings: dict):
    """Frozen LPIPS for a loss term (ConfigError when its offline weights are missing)."""
    from qdm_med.data.corpus import default_lpips_path
    from qdm_med.metrics.lpips_offline import load_lpips

    path = settings["train"].get("lpips_path") or default_lpips_path()
    module = load_lpips(path)
    if module is None:
        raise ConfigError(f"{path}: no LPIPS weights for the perceptual term; run `qdm-med data fetch` or set the weight to 0")
    return module


def window_view(x: torch.Tensor, model_window, view) -> torch.Tensor:
    """Images in [-1, 1] over the HU ``model_window`` -> the same images seen through the HU window ``view``
    (clamped, in [-1, 1]); differentiable inside the view."""
    from qdm_med.transforms.window import HUWindow, InverseHUWindow

    return HUWindow(*view)(InverseHUWindow(*model_window)(x))


def _lpips_windows(settings: dict) -> tuple[list[tuple[float, float]], list[float]] | None:
    """``train.lpips_windows`` as HU pairs and ``train.lpips_window_weights`` normalized to sum 1 (None: the
    model window itself)."""
    views, weights = settings["train"].get("lpips_windows"), settings["train"].get("lpips_window_weights")
    if not views:
        if weights:
            raise ConfigError("train.lpips_window_weights needs train.lpips_windows")
        return None
    out = []
    for v in views:
        if len(v) != 2 or not float(v[0]) < float(v[1]):
            raise ConfigError(f"train.lpips_windows {views}: each window is [low, high] HU with low < high")
        out.append((float(v[0]), float(v[1])))
    weights = [1.0] * len(out) if weights is None else [float(w) for w in weights]
    if len(weights) != len(out) or min(weights) <= 0:
        raise ConfigError(f"train.lpips_window_weights {weights}: one positive weight per window of train.lpips_windows")
    return out, [w / sum(weights) for w in weights]


def _lpips_loss(module, pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean LPIPS of (B, C, H, W) images in [-1, 1] (gray images repeated to RGB); the stage's ``to`` placed
    ``module`` on the training device."""
    if pred.shape[1] == 1:
        pred, ref = pred.expand(-1, 3, -1, -1), ref.expand(-1, 3, -1, -1)
    return module(pred, ref).mean()


def _adversary(settings: dict, in_channels: int, weight: float):
    """The stage's ``PatchAdversary`` when ``train.adversarial_weight`` > 0, else None.

    ``adversarial_start``: first step of the term; ``adversarial_lr``: the discriminator's (default
    ``train.lr``); ``adversarial_window``: the HU window it looks through (default the model window: CT
    grain of a few HU is invisible to it in the 3072-HU model window); ``adversarial_highpass``: the gain of
    the high-pass channel it also sees (0: none)."""
    if weight <= 0:
        return None
    from qdm_med.training.adversarial import PatchAdversary

    t = settings["train"]
    view = None
    if t.get("adversarial_window"):
        v = t["adversarial_window"]
        if len(v) != 2 or not float(v[0]) < float(v[1]) or not settings.get("window"):
            raise ConfigError(f"train.adversarial_window {v}: a [low, high] HU window (low < high) of a CT bundle")
        model_window, view_window = settings["window"], (float(v[0]), float(v[1]))

        def view(x: torch.Tensor) -> torch.Tensor:
            return window_view(x, model_window, view_window)

    highpass = float(t.get("adversarial_highpass", 0.0))
    if not math.isfinite(highpass) or highpass < 0:
        raise ConfigError(f"train.adversarial_highpass {highpass}: a gain >= 0 (0: the discriminator sees the view only)")
    return PatchAdversary(in_channels, float(t.get("adversarial_lr") or t["lr"]), int(t.get("adversarial_start", 0)), view, highpass)


def _add_adversarial(adversary, weight: float, loss: torch.Tensor, logs: dict, fake: torch.Tensor, real: torch.Tensor):
    """``loss + weight * generator term`` once the adversary is on; (loss, logs)."""
    if adversary is None or not adversary.active:
        return loss, logs
    g = adversary.generator_loss(fake, real)
    logs["adv_g"] = float(g.detach())
    return loss + weight * g, logs


class _AdversaryHooks:
    """The training loop's hooks for a stage's optional ``self.adversary`` (a ``PatchAdversary`` or None)."""

    adversary = None

    @property
    def discriminator(self):
        return None if self.adversary is None else self.adversary.discriminator

    def set_world(self, world: int) -> None:
        """Data-parallel training: one discriminator on every rank (the loop wraps the stage's model in DDP)."""
        if self.adversary is not None:
            self.adversary.set_world(world)

    def after_step(self) -> dict:
        """Train the discriminator on the last batch (HR vs the stage's prediction); returns its logs."""
        return {} if self.adversary is None else self.adversary.update()

    def extra_state(self) -> dict | None:
        """What exact resume needs besides the trained module (discriminator, its optimizer and step)."""
        return None if self.adversary is None else {"step": self.adversary.step, **self.adversary.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        if self.adversary is not None:
            self.adversary.step = int(state.get("step", 0))
            self.adversary.load_state_dict(state)


class VAEStage(_AdversaryHooks):
    """Stage 1: L1 reconstruction + ``kl_weight`` x KL of the KL-VAE."""

    name = "vae"

    def __init__(self, settings: dict) -> None:
        self.settings = settings
        self.model = build_first_stage_from(settings, load_weights=False)
        t = settings["train"]
        self.kl_weight = float(t["kl_weight"])
        self.perceptual_weight = float(t.get("perceptual_weight", 0.0))
        self.adversarial_weight = float(t.get("adversarial_weight", 0.0))
        self.lpips = _lpips_module(settings) if self.perceptual_weight > 0 else None
        self.adversary = _adversary(settings, self.model.in_channels, self.adversarial_weight)

    def to(self, device) -> "VAEStage":
        for m in (self.lpips, self.adversary):
            if m is not None:
                m.to(device)
        return self

    def loss(self, model: nn.Module, hr: torch.Tensor, lr: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        inner = getattr(model, "module", model)  # DDP wraps the module; call the wrapper so gradients sync
        b, _, h, w = hr.shape
        noise = torch.randn(b, inner.latent_channels, h // inner.factor, w // inner.factor, generator=generator).to(hr)
        rec, mu, sigma = model(hr, noise)
        l1 = F.l1_loss(rec, hr)
        kl = 0.5 * torch.sum(mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1, dim=[1, 2, 3]).mean()
        loss, logs = l1 + self.kl_weight * kl, {"l1": float(l1.detach()), "kl": float(kl.detach())}
        if self.lpips is not None:
            p = _lpips_loss(self.lpips, rec, hr)
            loss, logs["perceptual"] = loss + self.perceptual_weight * p, float(p.detach())
        return _add_adversarial(self.adversary, self.adversarial_weight, loss, logs, rec, hr)

    @torch.no_grad()
    def validate(self, model: nn.Module, val: list[dict], device) -> dict:
        if not val:
            return {}
        scores = []
        for item in val:
            hr = item["hr"][None].to(device)
            scores.append(image_scores(model.decode(model.encode(hr))[0], hr[0]))
        return {"val_psnr": float(np.mean([s[0] for s in scores])), "val_ssim": float(np.mean([s[1] for s in scores]))}

    def export(self, model: nn.Module) -> dict:
        model.trained.fill_(True)
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class QDMStage(_AdversaryHooks):
    """Stage 2: dual-loss x0 prediction of the masked residual-shift process on a frozen first stage."""

    name = "qdm"

    def __init__(self, settings: dict) -> None:
        self.settings = settings
        self.first_stage = build_first_stage_from(settings, load_weights=True).eval()
        for p in self.first_stage.parameters():
            p.requires_grad_(False)
        self.model = build_qdm_from(settings, self.first_stage.latent_channels)
        self.diffusion = build_diffusion_from(settings)
        self.scale = int(settings["scale"])
        # the learned prior: trained by stage 'prior', frozen here, shipped in the SR module's weights
        self.prior, self.start = build_prior_from(settings), diffusion_start(settings)
        if self.prior is not None:
            self._load_prior(settings)
        t = settings["train"]
        self.l1, self.l2 = (float(w) for w in t["loss_weights"])
        self.train_threshold = float(t["train_threshold"])
        # token-sparse models learn the split self-attention on masks of these thresholds (one per sample)
        self.token_mask_thresholds = [float(v) for v in (t.get("token_mask_thresholds") or [self.train_threshold])]
        if any(not math.isfinite(v) or v < 0 for v in self.token_mask_thresholds):
            raise ConfigError(f"train.token_mask_thresholds {self.token_mask_thresholds}: thresholds must be >= 0")
        # crops see token positions 0..g-1 only; a random shift of up to pos_jitter upstream tokens lets the
        # model meet every position of an inference-size slice (whose grid is up to g + pos_jitter)
        self.pos_jitter = int(t.get("pos_jitter", 0))
        self.lpips_weight = float(t.get("lpips_weight", 0.0))
        composite = t.get("composite_threshold")
        self.composite_threshold = None if composite is None else float(composite)
        if self.composite_threshold is not None and not (math.isfinite(self.composite_threshold) and self.composite_threshold >= 0):
            raise ConfigError(f"train.composite_threshold {composite}: must be >= 0 (or null: the downstream everywhere)")
        self.t_final_prob, self.t_zero_prob = float(t.get("t_final_prob", 0.0)), float(t.get("t_zero_prob", 0.0))
        for name, prob in (("t_final_prob", self.t_final_prob), ("t_zero_prob", self.t_zero_prob)):
            if not 0.0 <= prob <= 1.0:
                raise ConfigError(f"train.{name} {prob}: must be in [0, 1]")
        if self.t_final_prob + self.t_zero_prob > 1.0:
            raise ConfigError(f"train.t_final_prob + t_zero_prob = {self.t_final_prob + self.t_zero_prob}: must be at most 1")
        self.unroll, self.unroll_weight, self.unroll_stochastic = self._unroll_settings(t)
        self.lpips = _lpips_module(settings) if self.lpips_weight > 0 else None
        self.lpips_windows = _lpips_windows(settings)
        self.tile_weight, period = float(t.get("tile_weight", 0.0)), t.get("tile_period", 32)
        period_ok = isinstance(period, (int, float)) and int(period) == period and period >= 1
        if not (math.isfinite(self.tile_weight) and self.tile_weight >= 0 and period_ok):
            raise ConfigError(f"train.tile_weight {self.tile_weight} / tile_period {period}: weight >= 0, period an integer >= 1")
        self.tile_period = int(period)
        crop = settings.get("data", {}).get("crop_size")
        if self.tile_weight and crop and int(crop) % self.tile_period:
            raise ConfigError(f"train.tile_period {self.tile_period} must divide data.crop_size {crop}")
        self.adversarial_weight = float(t.get("adversarial_weight", 0.0))
        self.adversary = _adversary(settings, int(settings["in_channels"]), self.adversarial_weight)
        if t.get("init_from"):
            self._init_from(resolve_weights_path(t["init_from"], settings["bundle_dir"]))

    def _unroll_settings(self, t: dict):
        """``train.unroll`` as a sampler (ConfigError naming the problem; None without it), its weight and whether
        the plan runs stochastic."""
        unroll = t.get("unroll")
        if not unroll:
            return None, 0.0, False
        from qdm_med.diffusion import make_sampler

        params = dict(unroll)
        if "sampler" not in params or "steps" not in params:
            raise ConfigError(f"train.unroll {unroll}: needs a sampler and its steps, e.g. {{'sampler': 'tss', 'steps': 4}}")
        stochastic = params.pop("stochastic", False)
        if not isinstance(stochastic, bool):
            raise ConfigError(f"train.unroll.stochastic {stochastic!r}: must be true or false")
        if self.composite_threshold is None:
            raise ConfigError("train.unroll: set train.composite_threshold, the quadtree threshold the unrolled plan runs at")
        sampler = make_sampler(params.pop("sampler"), params.pop("steps"), **params)  # validates name, steps and parameters
        weight = float(t.get("unroll_weight", 1.0))
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"train.unroll_weight {weight}: must be >= 0")
        return sampler, weight, stochastic

    def _load_prior(self, settings: dict) -> None:
        from qdm_med.bundle.weights import read_weights

        value = settings["prior"].get("weights")
        if not value:
            raise ConfigError(f"{settings['name']}: prior.weights must name the trained prior (a prior-stage run's models/model.pt)")
        path = resolve_weights_path(value, settings["bundle_dir"])
        if not path.is_file():
            raise ConfigError(f"{path}: prior.weights names no file (run the bundle's prior stage first: --config train_prior)")
        try:
            self.prior.load_state_dict(read_weights(path))
        except RuntimeError as err:
            raise ConfigError(f"{path}: does not fit this bundle's prior ({' '.join(str(err).split())[:160]})") from None
        self.prior.eval().requires_grad_(False)

    def _init_from(self, path: Path) -> None:
        """Start from a trained QDM (a bundle's ``models/model.pt``: the SR module's state dict)."""
        if not path.is_file():
            raise ConfigError(f"{path}: init_from names no file (a trained QDM's models/model.pt; "
                              "a staged recipe's earlier stage writes it)")
        from qdm_med.bundle.weights import read_weights

        qdm = {k[len("qdm.") :]: v for k, v in read_weights(path).items() if k.startswith("qdm.")}
        try:
            missing, unexpected = self.model.load_state_dict(qdm, strict=False)
        except RuntimeError as err:  # a shape mismatch
            raise ConfigError(f"{path}: does not fit this bundle's QDM ({' '.join(str(err).split())[:160]})") from None
        # only detail blocks, a state gate or jump embedders this config adds may be absent: they start silent, so the output is kept
        added = (self.model.ADDED_BY_DETAIL_BLOCKS, self.model.STATE_GATE, *self.model.JUMP_EMBEDDERS)
        missing = [k for k in missing if not k.startswith(added)]
        if missing or unexpected:
            keys = ", ".join((missing + unexpected)[:4])
            raise ConfigError(f"{path}: does not fit this bundle's QDM ({len(missing)} missing, {len(unexpected)} unexpected keys: {keys})")

    def to(self, device) -> "QDMStage":
        self.first_stage.to(device)
        if self.prior is not None:
            self.prior.to(device)
        for m in (self.lpips, self.adversary):
            if m is not None:
                m.to(device)
        return self

    def loss(self, model: nn.Module, hr: torch.Tensor, lr: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        from qdm_med.quadtree import qdm_masks

        with torch.no_grad():
            up = self.prior(lr) if self.start == "prior" else bicubic_upsample(lr, self.scale).clamp(-1, 1)
            y, x0 = self.first_stage.encode(up), self.first_stage.encode(hr)
            masks = qdm_masks(lr, self.train_threshold, self.scale, self.first_stage.factor)
            composite = masks  # the sparse path's masks at composite_threshold (the training masks when equal)
            if self.composite_threshold is not None and self.composite_threshold != self.train_threshold:
                composite = qdm_masks(lr, self.composite_threshold, self.scale, self.first_stage.factor)
            mask, active = masks.diffusion, composite.diffusion
            t = torch.randint(0, self.diffusion.num_timesteps, (hr.shape[0],), generator=generator)
            if self.t_final_prob > 0 or self.t_zero_prob > 0:  # drawn only then: runs without them keep their random stream
                u = torch.rand(hr.shape[0], generator=generator)  # [0, final) -> T - 1, [final, final + zero) -> 0
                t = torch.where(u < self.t_final_prob + self.t_zero_prob, torch.zeros_like(t), t)
                t = torch.where(u < self.t_final_prob, torch.full_like(t, self.diffusion.num_timesteps - 1), t)
            t = t.to(hr.device)
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            offset = tuple(int(v) for v in torch.randint(0, self.pos_jitter + 1, (2,), generator=generator)) if self.pos_jitter else (0, 0)
            token_mask = self._token_masks(lr, generator) if getattr(self.model, "token_sparse", False) else None
        cond = self.model.conditioning(lr, y)
        kwargs = {"pos_offset": offset} if self.pos_jitter else {}
        if token_mask is not None:
            kwargs["token_mask"] = token_mask
        out = self.diffusion.training_loss(model, x0, y, cond, mask, t, noise=noise, l1=self.l1, l2=self.l2, model_kwargs=kwargs or None)
        loss, logs = out["loss"], {"mse_down": float(out["mse_down"]), "mse_up": float(out["mse_up"])}
        if self.lpips is None and self.adversary is None and self.unroll is None and not self.tile_weight:
            return loss, logs
        pred = out["down"]
        if self.unroll is not None:  # the plan's output (deterministic unless unroll.stochastic), gradients through every step
            pred = self._unrolled(model, y, cond, lr, composite, kwargs, generator)
            mse = F.mse_loss(pred, x0)
            loss, logs["mse_unrolled"] = loss + self.unroll_weight * mse, float(mse.detach())
        elif self.composite_threshold is not None:  # what the sparse path returns at that threshold
            pred = torch.where(active[:, None], pred, out["up"])
        pred = self.first_stage.decode(pred).clamp(-1, 1)  # fine-tune terms on the decoded prediction
        if self.lpips is not None:
            p = self._lpips_term(pred, hr)
            loss, logs["lpips"] = loss + self.lpips_weight * p, float(p.detach())
        if self.tile_weight:  # in HU^2: the model's [-1, 1] spans the window
            lo, hi = self.settings["window"]
            tile = tiled_energy(pred - up, self.tile_period) * ((hi - lo) / 2) ** 2
            loss, logs["tile_hu2"] = loss + self.tile_weight * tile, float(tile.detach())
        return _add_adversarial(self.adversary, self.adversarial_weight, loss, logs, pred, hr)

    def _unrolled(self, model: nn.Module, y: torch.Tensor, cond: torch.Tensor, lr: torch.Tensor, masks, kwargs: dict,
                  generator: torch.Generator) -> torch.Tensor:
        """x0 latent (B, Cz, h, w) of ``train.unroll``'s plan from ``y`` (deterministic unless ``unroll.stochastic``)
        on the quadtree ``masks`` of ``composite_threshold`` (diffusion mask; the token mask picks down or up)."""
        with torch.no_grad():
            plan = self.unroll.plan(self.diffusion.num_timesteps, lr=lr, latent_size=tuple(y.shape[-2:]))
        kwargs = {k: v for k, v in kwargs.items() if k != "token_mask"}
        return self.diffusion.unrolled(model, y, cond, plan, diffusion_mask=masks.diffusion, token_mask=masks.token, model_kwargs=kwargs,
                                       stochastic=self.unroll_stochastic, generator=generator)

    def _lpips_term(self, pred: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """LPIPS of (B, C, H, W) predictions against the HR, the weighted mean over ``lpips_windows``."""
        if self.lpips_windows is None:
            return _lpips_loss(self.lpips, pred, hr)
        window, (views, weights) = self.settings["window"], self.lpips_windows
        terms = [w * _lpips_loss(self.lpips, window_view(pred, window, v), window_view(hr, window, v)) for v, w in zip(views, weights)]
        return torch.stack(terms).sum()

    def _token_masks(self, lr: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, h/2, w/2) token masks, sample i at a threshold drawn from ``token_mask_thresholds``."""
        from qdm_med.quadtree import qdm_masks

        pick = torch.randint(0, len(self.token_mask_thresholds), (lr.shape[0],), generator=generator).tolist()
        return torch.cat(
            [qdm_masks(lr[i : i + 1], self.token_mask_thresholds[k], self.scale, self.first_stage.factor).token for i, k in enumerate(pick)]
        )

    def sr_module(self, qdm: nn.Module):
        return build_sr_module(self.settings, qdm=qdm, first_stage=self.first_stage, diffusion=self.diffusion, prior=self.prior)

    @torch.no_grad()
    def validate(self, model: nn.Module, val: list[dict], device) -> dict:
        if not val:
            return {}
        sr = self.sr_module(model).eval()
        ours, bic = [], []
        for i, item in enumerate(val):
            hr, lr = item["hr"][None].to(device), item["lr"][None].to(device)
            out = sr(lr, generator=torch.Generator().manual_seed(i))
            b = bicubic_upsample(lr, self.scale).clamp(-1, 1)
            ours.append(image_scores(out[0], hr[0]))
            bic.append(image_scores(b[0], hr[0]))
        return {
            "val_psnr": float(np.mean([s[0] for s in ours])),
            "val_ssim": float(np.mean([s[1] for s in ours])),
            "val_psnr_bicubic": float(np.mean([s[0] for s in bic])),
            "val_ssim_bicubic": float(np.mean([s[1] for s in bic])),
        }

    def export(self, model: nn.Module) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.sr_module(model).state_dict().items()}


def build_stage(settings: dict):
    if settings["stage"] == "prior":
        from qdm_med.training.prior_stage import PriorStage

        return PriorStage(settings)
    return VAEStage(settings) if settings["stage"] == "vae" else QDMStage(settings)
