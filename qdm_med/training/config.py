"""Bundle configuration: read ``configs/train.json`` / ``inference.json`` of a bundle and build its parts.

The JSON files are MONAI bundle configs: ``$``-expressions and ``@``-references serve MONAI's runner
(``run``, ``bundle_root``, ``network_def``...), and plain sections hold the settings this module reads:
``stage`` ("vae" or "qdm"), ``scale``, ``in_channels``, ``window``, ``first_stage``, ``model``,
``diffusion``, ``data``, ``train``, ``sampling``.
"""

from __future__ import annotations

import json
from pathlib import Path

from qdm_med.errors import ConfigError

__all__ = ["read_json", "bundle_settings", "build_first_stage_from", "build_qdm_from", "build_diffusion_from", "build_prior_from",
           "diffusion_start", "build_sr_module"]

DEFAULTS = {
    "seed": 0,
    "in_channels": 1,
    "window": [-1024.0, 2048.0],
    "first_stage": {"kind": "pixel_unshuffle"},
    "model": {"config": "cpu_small"},
    "diffusion": {"T": 15, "kappa": 2.0, "min_noise_level": 0.04, "etas_end": 0.99, "power": 0.3, "start": "bicubic"},
    "sampling": {"sampler": "tss", "steps": 7, "threshold": 0.15},
    "data": {"kind": "ct", "hr_size": 512, "crop_size": 128, "preset": "medical", "val_fraction": 0.1, "holdout": None,
             "min_foreground": 0.05, "flips": True, "val_slices": 4},
    "train": {"steps": 2000, "batch_size": 8, "lr": 2e-4, "weight_decay": 0.0, "ema_decay": 0.999, "loss_weights": [1.0, 1.0],
              "train_threshold": 0.15, "pos_jitter": 0, "kl_weight": 1e-6, "grad_clip": 1.0, "checkpoint_every": 100, "validate_every": 500,
              "log_every": 10, "warmup": 100},
}


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON ({err.msg} at line {err.lineno})") from None


def _plain(d: dict) -> dict:
    """Drop MONAI-only entries (expressions, references, imports) from a config dict."""
    return {k: v for k, v in d.items() if not (isinstance(v, str) and v[:1] in "$@") and k not in ("imports", "run", "initialize", "finalize")}


def bundle_settings(bundle_dir: str | Path, which: str = "train") -> dict:
    """Plain settings of a bundle (``train`` or ``inference`` config) merged over :data:`DEFAULTS`."""
    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / "configs").is_dir():
        raise ConfigError(f"{bundle_dir}: not a bundle (no configs/ folder)")
    raw = _plain(read_json(bundle_dir / "configs" / f"{which}.json"))
    if which == "inference":  # the architecture lives in train.json
        base = _plain(read_json(bundle_dir / "configs" / "train.json"))
        raw = {**base, **raw}
    out = {}
    for key, value in DEFAULTS.items():
        out[key] = {**value, **(raw.get(key) or {})} if isinstance(value, dict) else raw.get(key, value)
    for key, value in raw.items():
        out.setdefault(key, value)
    out["bundle_dir"] = str(bundle_dir.resolve())
    out["name"] = bundle_dir.resolve().name
    if out.get("stage") not in ("vae", "qdm", "prior"):
        raise ConfigError(f"{bundle_dir}: {which}.json 'stage' must be 'vae', 'qdm' or 'prior'")
    return out


def build_first_stage_from(settings: dict, load_weights: bool = True):
    """The first stage named by the settings; a KL-VAE is loaded from the VAE bundle it names."""
    from qdm_med.models import build_first_stage

    fs_cfg = dict(settings["first_stage"])
    kind = fs_cfg.pop("kind", "pixel_unshuffle")
    vae_bundle = fs_cfg.pop("bundle", None)
    fs = build_first_stage(kind, settings["in_channels"], **fs_cfg)
    if kind == "kl_vae" and load_weights and settings.get("stage") == "qdm":
        from qdm_med.inference.bundle import read_weights

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

    d = settings["diffusion"]
    sqrt_etas = exponential_sqrt_etas(T=int(d["T"]), kappa=float(d["kappa"]), min_noise_level=float(d["min_noise_level"]),
                                      etas_end=float(d["etas_end"]), power=float(d["power"]))
    return ResShiftDiffusion(Schedule(sqrt_etas), kappa=float(d["kappa"]))


SAMPLING_KEYS = ("sampler", "steps", "threshold", "stochastic")


def build_prior_from(settings: dict):
    """The bundle's learned prior (untrained; its weights ship in the SR module's) or None."""
    from qdm_med.models.prior import build_prior

    return build_prior(settings.get("prior"), int(settings["scale"]), settings["in_channels"])


def diffusion_start(settings: dict) -> str:
    """Where the bundle's residual shift starts (``diffusion.start``): ``prior`` needs a ``prior`` section."""
    start = str(settings["diffusion"].get("start", "bicubic"))
    if start not in ("bicubic", "prior"):
        raise ConfigError(f"{settings.get('name', 'bundle')}: diffusion.start {start!r}: use bicubic or prior")
    if start == "prior" and (settings.get("prior") or {"kind": "bicubic"}).get("kind", "cnn") != "cnn":
        raise ConfigError(f"{settings.get('name', 'bundle')}: diffusion.start 'prior' needs a 'prior' section of kind cnn")
    return start


def build_sr_module(settings: dict, load_first_stage: bool = False, qdm=None, first_stage=None, diffusion=None, prior=None):
    """The bundle's LR->SR module (:class:`qdm_med.inference.pipeline.QDMSuperResolution`); the parts not
    given are built from the settings (untrained, except a KL-VAE first stage with ``load_first_stage``)."""
    from qdm_med.inference.pipeline import QDMSuperResolution

    fs = first_stage if first_stage is not None else build_first_stage_from(settings, load_weights=load_first_stage)
    s = settings["sampling"]
    extra = {k: v for k, v in s.items() if k not in SAMPLING_KEYS}
    return QDMSuperResolution(fs, qdm if qdm is not None else build_qdm_from(settings, fs.latent_channels),
                              diffusion if diffusion is not None else build_diffusion_from(settings), scale=settings["scale"],
                              sampler=s["sampler"], steps=s["steps"], threshold=s["threshold"], sampler_params=extra or None,
                              prior=prior if prior is not None else build_prior_from(settings), start=diffusion_start(settings),
                              stochastic=bool(s.get("stochastic", True)))
