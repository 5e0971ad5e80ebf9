"""Stage ``prior``: the residual CNN that starts the residual shift (:mod:`qdm_med.models.prior`).

L1 between ``prior(LR)`` and the HR crop (the ``loss`` setting may say ``mse``). The exported weights are
the prior's state dict (EMA); a QDM stage reads them through its ``prior.weights`` setting, freezes them
and ships them inside the SR module (keys ``prior.*``). The same stage, with ``prior.blocks = 0`` and
``layers = 6``, trains the plain-CNN baseline of SPEC section 12 (``scripts/train_cnn_baseline.py``).
``train.init_from`` starts it from trained weights: a prior run's ``models/model.pt`` or a QDM bundle's
(whose ``prior.*`` keys are the prior), e.g. to continue a shipped prior on a new schedule or LR mix; a
prior without the global context (``prior.context``) may start one with it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from qdm_med.errors import ConfigError
from qdm_med.models.prior import build_prior
from qdm_med.training.checkpoint import resolve_weights_path
from qdm_med.training.scores import image_scores
from qdm_med.transforms import bicubic_upsample

__all__ = ["PriorStage"]


class PriorStage:
    """Trains the bundle's ``prior`` section on (HR, LR) crops."""

    name = "prior"

    def __init__(self, settings: dict) -> None:
        self.settings = settings
        self.scale = int(settings["scale"])
        self.model = build_prior(settings.get("prior"), self.scale, settings["in_channels"])
        if self.model is None:
            raise ConfigError(f"{settings['name']}: stage 'prior' needs a 'prior' section with kind 'cnn'")
        loss = str(settings["train"].get("loss", "l1"))
        if loss not in ("l1", "mse"):
            raise ConfigError(f"train.loss {loss!r}: use l1 or mse")
        self.criterion = F.l1_loss if loss == "l1" else F.mse_loss
        if settings["train"].get("init_from"):
            self._init_from(settings["train"]["init_from"], settings["bundle_dir"])

    def _init_from(self, value: str, bundle_dir: str) -> None:
        from qdm_med.bundle.weights import read_weights

        path = resolve_weights_path(value, bundle_dir)
        if not path.is_file():
            raise ConfigError(f"{path}: init_from names no file (a prior run's or a QDM bundle's models/model.pt)")
        state = read_weights(path)
        if any(k.startswith("prior.") for k in state):  # a QDM bundle's SR module: keep its prior
            state = {k[len("prior.") :]: v for k, v in state.items() if k.startswith("prior.")}
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        except RuntimeError as err:
            raise ConfigError(f"{path}: does not fit this bundle's prior ({' '.join(str(err).split())[:160]})") from None
        # a prior without the global context may start a context prior: its zero-initialised MLP keeps the function
        odd = list(unexpected) + [k for k in missing if not k.startswith(self.model.ADDED_BY_CONTEXT)]
        if odd:
            raise ConfigError(f"{path}: does not fit this bundle's prior (keys {', '.join(odd[:4])})")

    def loss(self, model: nn.Module, hr: torch.Tensor, lr: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        loss = self.criterion(model(lr), hr)
        return loss, {"pixel": float(loss.detach())}

    @torch.no_grad()
    def validate(self, model: nn.Module, val: list[dict], device) -> dict:
        if not val:
            return {}
        ours, bic = [], []
        for item in val:
            hr, lr = item["hr"][None].to(device), item["lr"][None].to(device)
            ours.append(image_scores(model(lr)[0], hr[0]))
            bic.append(image_scores(bicubic_upsample(lr, self.scale).clamp(-1, 1)[0], hr[0]))
        return {
            "val_psnr": float(np.mean([s[0] for s in ours])), "val_ssim": float(np.mean([s[1] for s in ours])),
            "val_psnr_bicubic": float(np.mean([s[0] for s in bic])), "val_ssim_bicubic": float(np.mean([s[1] for s in bic])),
        }

    def export(self, model: nn.Module) -> dict:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
