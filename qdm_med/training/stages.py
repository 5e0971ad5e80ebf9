"""The two training stages: KL-VAE reconstruction (stage 1) and QDM diffusion (stage 2).

A stage owns the trainable module, computes the loss of a batch, validates, and exports the weights a
bundle ships (``models/model.pt``): the first stage's state dict for the VAE, the full LR->SR module's
(first stage + QDM, EMA weights) for QDM.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from qdm_med.metrics import psnr, ssim
from qdm_med.training.config import build_diffusion_from, build_first_stage_from, build_qdm_from

__all__ = ["VAEStage", "QDMStage", "build_stage"]


def _scores(pred: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """PSNR/SSIM in the model range [-1, 1] (data range 2; the HU window for CT)."""
    p, r = pred.float().clamp(-1, 1).cpu().numpy(), ref.float().clamp(-1, 1).cpu().numpy()
    s = float(np.mean([ssim(p[c], r[c], 2.0) for c in range(p.shape[0])]))
    return float(psnr(p, r, 2.0)), s


class VAEStage:
    """Stage 1: L1 reconstruction + ``kl_weight`` x KL of the KL-VAE."""

    name = "vae"

    def __init__(self, settings: dict) -> None:
        self.settings = settings
        self.model = build_first_stage_from(settings, load_weights=False)
        self.kl_weight = float(settings["train"]["kl_weight"])

    def loss(self, model: nn.Module, hr: torch.Tensor, lr: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        inner = getattr(model, "module", model)  # DDP wraps the module; call the wrapper so gradients sync
        b, _, h, w = hr.shape
        noise = torch.randn(b, inner.latent_channels, h // inner.factor, w // inner.factor, generator=generator).to(hr)
        rec, mu, sigma = model(hr, noise)
        l1 = F.l1_loss(rec, hr)
        kl = 0.5 * torch.sum(mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1, dim=[1, 2, 3]).mean()
        return l1 + self.kl_weight * kl, {"l1": float(l1.detach()), "kl": float(kl.detach())}

    @torch.no_grad()
    def validate(self, model: nn.Module, val: list[dict], device) -> dict:
        if not val:
            return {}
        scores = []
        for item in val:
            hr = item["hr"][None].to(device)
            scores.append(_scores(model.decode(model.encode(hr))[0], hr[0]))
        return {"val_psnr": float(np.mean([s[0] for s in scores])), "val_ssim": float(np.mean([s[1] for s in scores]))}

    def export(self, model: nn.Module) -> dict:
        model.trained.fill_(True)
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class QDMStage:
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
        t = settings["train"]
        self.l1, self.l2 = (float(w) for w in t["loss_weights"])
        self.train_threshold = float(t["train_threshold"])
        # crops see token positions 0..g-1 only; a random shift of up to pos_jitter upstream tokens lets the
        # model meet every position of an inference-size slice (whose grid is up to g + pos_jitter)
        self.pos_jitter = int(t.get("pos_jitter", 0))

    def to(self, device) -> "QDMStage":
        self.first_stage.to(device)
        return self

    def loss(self, model: nn.Module, hr: torch.Tensor, lr: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        from qdm_med.quadtree import qdm_masks

        with torch.no_grad():
            up = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(-1, 1)
            y, x0 = self.first_stage.encode(up), self.first_stage.encode(hr)
            mask = qdm_masks(lr, self.train_threshold, self.scale, self.first_stage.factor).diffusion
            t = torch.randint(0, self.diffusion.num_timesteps, (hr.shape[0],), generator=generator).to(hr.device)
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            offset = tuple(int(v) for v in torch.randint(0, self.pos_jitter + 1, (2,), generator=generator)) if self.pos_jitter else (0, 0)
        cond = self.model.conditioning(lr, y)
        kwargs = {"pos_offset": offset} if self.pos_jitter else None
        out = self.diffusion.training_loss(model, x0, y, cond, mask, t, noise=noise, l1=self.l1, l2=self.l2, model_kwargs=kwargs)
        return out["loss"], {"mse_down": float(out["mse_down"]), "mse_up": float(out["mse_up"])}

    def sr_module(self, qdm: nn.Module):
        from qdm_med.inference.pipeline import QDMSuperResolution

        s = self.settings["sampling"]
        extra = {k: v for k, v in s.items() if k not in ("sampler", "steps", "threshold")}
        return QDMSuperResolution(self.first_stage, qdm, self.diffusion, scale=self.scale, sampler=s["sampler"], steps=s["steps"],
                                  threshold=s["threshold"], sampler_params=extra or None)

    @torch.no_grad()
    def validate(self, model: nn.Module, val: list[dict], device) -> dict:
        if not val:
            return {}
        sr = self.sr_module(model).eval()
        ours, bic = [], []
        for i, item in enumerate(val):
            hr, lr = item["hr"][None].to(device), item["lr"][None].to(device)
            out = sr(lr, generator=torch.Generator().manual_seed(i))
            b = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(-1, 1)
            ours.append(_scores(out[0], hr[0]))
            bic.append(_scores(b[0], hr[0]))
        return {
            "val_psnr": float(np.mean([s[0] for s in ours])), "val_ssim": float(np.mean([s[1] for s in ours])),
            "val_psnr_bicubic": float(np.mean([s[0] for s in bic])), "val_ssim_bicubic": float(np.mean([s[1] for s in bic])),
        }

    def export(self, model: nn.Module) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.sr_module(model).state_dict().items()}


def build_stage(settings: dict):
    return VAEStage(settings) if settings["stage"] == "vae" else QDMStage(settings)
