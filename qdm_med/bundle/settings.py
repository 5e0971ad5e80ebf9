"""Bundle settings: read ``configs/train.json`` / ``inference.json`` of a bundle and build its parts.

The JSON files are MONAI bundle configs: ``$``-expressions and ``@``-references serve MONAI's runner
(``run``, ``bundle_root``, ``network_def``...), and plain sections hold the settings this module reads:
``stage`` ("vae" or "qdm"), ``scale``, ``in_channels``, ``window``, ``first_stage``, ``model``,
``diffusion``, ``data``, ``train``, ``sampling``.
"""

from __future__ import annotations

import json
from pathlib import Path

from qdm_med.errors import ConfigError
from qdm_med.transforms.window import DEFAULT_WINDOW

__all__ = ["DEFAULTS", "SAMPLING_KEYS", "read_json", "bundle_settings", "diffusion_start", "detail_sampling"]

DEFAULTS = {
    "seed": 0,
    "in_channels": 1,
    "window": list(DEFAULT_WINDOW),
    "first_stage": {"kind": "pixel_unshuffle"},
    "model": {"config": "cpu_small"},
    "diffusion": {"T": 15, "kappa": 2.0, "min_noise_level": 0.04, "etas_end": 0.99, "power": 0.3, "start": "bicubic",
                  "unmasked_mean": "x0"},
    "sampling": {"sampler": "uniform", "steps": 1, "threshold": 0.15},  # for a bundle without its own (the CT bundles set theirs)
    "data": {"kind": "ct", "hr_size": 512, "crop_size": 128, "preset": "medical", "val_fraction": 0.1, "holdout": None, "patients": None,
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
    return {
        k: v for k, v in d.items() if not (isinstance(v, str) and v[:1] in "$@") and k not in ("imports", "run", "initialize", "finalize")
    }


def bundle_settings(bundle_dir: str | Path, which: str = "train") -> dict:
    """Plain settings of a bundle (``train`` or ``inference`` config) merged over :data:`DEFAULTS`."""
    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / "configs").is_dir():
        raise ConfigError(f"{bundle_dir}: not a bundle (no configs/ folder)")
    raw = _plain(read_json(bundle_dir / "configs" / f"{which}.json"))
    if which == "inference":  # the architecture lives in train.json (inference.json may override its sections)
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


SAMPLING_KEYS = ("sampler", "steps", "threshold", "stochastic")


def diffusion_start(settings: dict) -> str:
    """Where the bundle's residual shift starts (``diffusion.start``): ``prior`` needs a ``prior`` section."""
    start = str(settings["diffusion"].get("start", "bicubic"))
    if start not in ("bicubic", "prior"):
        raise ConfigError(f"{settings.get('name', 'bundle')}: diffusion.start {start!r}: use bicubic or prior")
    if start == "prior" and (settings.get("prior") or {"kind": "bicubic"}).get("kind", "cnn") != "cnn":
        raise ConfigError(f"{settings.get('name', 'bundle')}: diffusion.start 'prior' needs a 'prior' section of kind cnn")
    return start


def detail_sampling(config: dict) -> dict | None:
    """The bundle's detail operating point: ``{"sampler", "steps", "threshold", "stochastic"}`` from the ``detail``
    section of ``configs/inference.json`` (keys it leaves out are None), or None when the bundle has no such section;
    a ``stochastic`` that is not a boolean is a ConfigError."""
    detail = config.get("detail")
    if not isinstance(detail, dict):
        return None
    stochastic = detail.get("stochastic")
    if stochastic is not None and not isinstance(stochastic, bool):
        raise ConfigError(f"{config.get('bundle_dir', 'bundle')}: detail.stochastic {stochastic!r}: use true or false")
    return {key: detail.get(key) for key in SAMPLING_KEYS}
