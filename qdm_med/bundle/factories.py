"""Network factories of a bundle: the first stage, the QDM, the diffusion process, the prior and the whole
LR->SR module (:class:`qdm_med.models.sr.QDMSuperResolution`) built from :func:`bundle_settings`.

- :func:`build_network`: the bundle's ``network_def`` -- the LR->SR module of a QDM bundle, or the KL-VAE of a
  first-stage bundle (random weights; :func:`qdm_med.bundle.load_bundle` loads ``models/model.pt``).
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from qdm_med.bundle.settings import SAMPLING_KEYS, bundle_settings, diffusion_start
from qdm_med.bundle.weights import read_weights
from qdm_med.errors import ConfigError

__all__ = ["build_first_stage_from", "build_qdm_from", "build_diffusion_from", "build_prior_from", "build_sr_module", "build_network"]


def build_first_stage_from(settings: dict, load_weights: bool = True):
    """The first stage named by the settings; a KL-VAE is loaded from the VAE bundle it names."""
    from qdm_med.models import build_first_stage

    fs_cfg = dict(settings["first_stage"])
    kind = fs_cfg.pop("kind", "pixel_unshuffle")
    vae_bundle = fs_cfg.pop("bundle", None)
    fs = build_first_stage(kind, settings["in_channels"], **fs_cfg)
    if kind == "kl_vae" and load_weights and settings.get("stage") == "qdm":
        if vae_bundle is None:
            raise ConfigError(f"{settings['name']}: first_stage kl_vae needs 'bundle' (the VAE bundle folder)")
        vdir = (Path(settings["bundle_dir"]) / vae_bundle).resolve()
        weights = vdir / "models" / "model.pt"
        if not weights.is_file():
            raise ConfigError(f"{vdir}: the KL-VAE has no trained weights (models/model.pt); run `qdm-med train {vdir}` first")
        fs.load_state_dict(read_weights(weights))  # fp16 or fp32 storage
        if "scale_factor" in fs_cfg:  # the QDM bundle's latent scale wins over the one stored with the VAE
            fs.scale_factor.fill_(float(fs_cfg["scale_factor"]))
        if not bool(fs.trained):
            raise ConfigError(f"{vdir}: the KL-VAE weights are untrained; run `qdm-med train {vdir}` first")
    return fs


def build_qdm_from(settings: dict, latent_channels: int):
    from qdm_med.models import build_qdm

    m = dict(settings["model"])
    return build_qdm(m.pop("config", "cpu_small"), latent_channels, settings["in_channels"], **m)


def build_diffusion_from(settings: dict):
    """The residual-shift process with the exponential schedule of the settings (SPEC section 3)."""
    from qdm_med.diffusion import ResShiftDiffusion, Schedule, exponential_sqrt_etas
    from qdm_med.diffusion.resshift import UNMASKED_MEANS

    d = settings["diffusion"]
    sqrt_etas = exponential_sqrt_etas(T=int(d["T"]), kappa=float(d["kappa"]), min_noise_level=float(d["min_noise_level"]),
                                      etas_end=float(d["etas_end"]), power=float(d["power"]))
    unmasked_mean = str(d.get("unmasked_mean", "x0"))
    if unmasked_mean not in UNMASKED_MEANS:
        raise ConfigError(f"{settings.get('name', 'bundle')}: diffusion.unmasked_mean {unmasked_mean!r}: use {' or '.join(UNMASKED_MEANS)}")
    return ResShiftDiffusion(Schedule(sqrt_etas), kappa=float(d["kappa"]), unmasked_mean=unmasked_mean)


def build_prior_from(settings: dict):
    """The bundle's learned prior (untrained; its weights ship in the SR module's) or None."""
    from qdm_med.models.prior import build_prior

    return build_prior(settings.get("prior"), int(settings["scale"]), settings["in_channels"])


def build_sr_module(settings: dict, load_first_stage: bool = False, qdm=None, first_stage=None, diffusion=None, prior=None):
    """The bundle's LR->SR module (:class:`qdm_med.models.sr.QDMSuperResolution`); the parts not
    given are built from the settings (untrained, except a KL-VAE first stage with ``load_first_stage``)."""
    from qdm_med.models.sr import QDMSuperResolution

    fs = first_stage if first_stage is not None else build_first_stage_from(settings, load_weights=load_first_stage)
    s = settings["sampling"]
    extra = {k: v for k, v in s.items() if k not in (*SAMPLING_KEYS, "flip_ensemble", "background_ramp")}
    flip_ensemble = s.get("flip_ensemble", True)
    if not isinstance(flip_ensemble, bool):
        raise ConfigError(f"{settings.get('bundle_dir', 'bundle')}: sampling.flip_ensemble {flip_ensemble!r}: use true or false")
    return QDMSuperResolution(fs, qdm if qdm is not None else build_qdm_from(settings, fs.latent_channels),
                              diffusion if diffusion is not None else build_diffusion_from(settings), scale=settings["scale"],
                              sampler=s["sampler"], steps=s["steps"], threshold=s["threshold"], sampler_params=extra or None,
                              prior=prior if prior is not None else build_prior_from(settings), start=diffusion_start(settings),
                              stochastic=bool(s.get("stochastic", True)), flip_ensemble=flip_ensemble,
                              background_ramp=s.get("background_ramp"))


def build_network(bundle_root: str | Path) -> nn.Module:
    """The bundle's network (random weights; MONAI Deploy and :func:`load_bundle` load ``models/model.pt``)."""
    settings = bundle_settings(bundle_root, "inference")
    if settings["stage"] == "vae":
        return build_first_stage_from(settings, load_weights=False)
    return build_sr_module(settings)
