"""Which SR model a job runs: a bundle folder, the shipped bundle, bicubic, or a loaded module; and the
sampling overrides (``steps``, ``sampler``, ``threshold``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from qdm_med.errors import ConfigError, QDMError
from qdm_med.io._util import one_line as _one_line
from qdm_med.transforms.window import DEFAULT_WINDOW

__all__ = [
    "ResolvedModel", "default_bundle_dir", "resolve_model", "operating_point", "apply_overrides", "model_threshold", "bundle_identity",
]

#: the operating points of a bundle: ``fidelity`` is its default ``sampling`` (the learned prior alone in the CT
#: bundles: deterministic, best PSNR/SSIM); ``detail`` its ``detail`` section (few-step TSS: lower LPIPS)
MODES = ("fidelity", "detail")

DEFAULT_THRESHOLD = 0.15


@dataclasses.dataclass
class ResolvedModel:
    """The SR callable and what the report says about it."""

    sr_fn: Any
    scale: int
    window: tuple[float, float]
    name: str
    path: str | None
    config: dict


def default_bundle_dir(kind: str, scale: int) -> Path:
    """The shipped bundle for ``kind`` ("volume"/"image") and ``scale``: ``qdm_ct_x{s}`` or
    ``qdm_natural_x{s}``, searched as :mod:`qdm_med.bundle.paths` says."""
    from qdm_med.bundle.paths import available_bundles, find_bundle

    name = f"qdm_{'natural' if kind == 'image' else 'ct'}_x{scale}"
    found = find_bundle(name)
    if found is not None:
        return found
    raise ConfigError(
        f"no shipped bundle {name} for x{scale} {'images' if kind == 'image' else 'CT'} "
        f"(available: {', '.join(available_bundles()) or 'none'}); pass --bundle DIR or --bundle bicubic"
    )


def _config_value(config: dict, *keys: str):
    for key in keys:
        if isinstance(config, dict) and key in config:
            return config[key]
    return None


def resolve_model(bundle, kind: str, scale: int, device: torch.device) -> ResolvedModel:
    """Load the SR model named by ``bundle`` (see module docstring) and check it supports ``scale``."""
    from qdm_med.inference.baseline import BicubicSR

    in_channels = 3 if kind == "image" else 1
    if isinstance(bundle, str) and bundle.lower() == "bicubic":
        return ResolvedModel(BicubicSR(scale, in_channels), scale, DEFAULT_WINDOW, "bicubic", None, {})
    if bundle is None or isinstance(bundle, (str, os.PathLike)):
        bundle_dir = Path(bundle) if bundle is not None else default_bundle_dir(kind, scale)
        if not bundle_dir.exists():
            raise ConfigError(f"{bundle_dir}: no such bundle folder")
        from qdm_med.bundle.loader import load_bundle

        try:
            loaded = load_bundle(bundle_dir, device)
        except QDMError:
            raise
        except Exception as err:
            raise ConfigError(f"{bundle_dir}: cannot load the bundle ({_one_line(err)})") from None
        name, path = bundle_dir.name, str(bundle_dir)
    else:
        loaded, name, path = bundle, type(bundle).__name__, None
    pipeline = getattr(loaded, "pipeline", loaded)
    config = dict(getattr(loaded, "config", None) or {})
    bscale = getattr(loaded, "scale", None) or getattr(pipeline, "scale", None)
    if bscale is not None and int(bscale) != int(scale):
        raise ConfigError(
            f"{path or name}: the bundle upscales x{int(bscale)}; x{scale} is not supported (pass a x{scale} bundle with --bundle)"
        )
    window = getattr(loaded, "window", None) or DEFAULT_WINDOW
    return ResolvedModel(pipeline, int(scale), (float(window[0]), float(window[1])), name, path, config)


def operating_point(model: ResolvedModel, mode: str | None, steps, sampler, threshold) -> tuple:
    """(steps, sampler, threshold, stochastic) of ``mode`` (see :data:`MODES`; None: fidelity); explicit options win.
    ``stochastic`` is the detail section's (None: the pipeline's own, i.e. leave it)."""
    if mode is None or mode == "fidelity":
        return steps, sampler, threshold, None
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r}: use {' or '.join(MODES)}")
    from qdm_med.bundle.settings import detail_sampling

    detail = detail_sampling(model.config)
    if model.name == "bicubic" or detail is None:
        raise ConfigError(f"{model.path or model.name}: has no detail operating point (a 'detail' section in configs/inference.json); "
                          "choose --steps/--sampler instead")
    return (steps if steps is not None else detail["steps"], sampler or detail["sampler"],
            threshold if threshold is not None else detail["threshold"], detail["stochastic"])


def apply_overrides(model: ResolvedModel, steps, sampler, threshold, stochastic: bool | None = None,
                    flip_ensemble: bool | None = None) -> None:
    """Set sampling options on the pipeline (``configure(...)`` when it has one, else attributes); None leaves one."""
    pairs = (("steps", steps), ("sampler", sampler), ("threshold", threshold), ("stochastic", stochastic), ("flip_ensemble", flip_ensemble))
    overrides = {k: v for k, v in pairs if v is not None}
    if not overrides or model.name == "bicubic":
        return
    pipe = model.sr_fn
    if steps is not None and int(steps) < 0:
        raise ConfigError(f"steps {steps}: must be >= 0 (0: the learned prior alone, the deterministic fidelity mode)")
    if threshold is not None and float(threshold) < 0:
        raise ConfigError(f"threshold {threshold}: must be >= 0")
    configure = getattr(pipe, "configure", None)
    if callable(configure):
        try:
            configure(**overrides)
        except QDMError:
            raise
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{model.name}: {_one_line(err)}") from None
        return
    for key, value in overrides.items():
        if not hasattr(pipe, key):
            raise ConfigError(f"{model.name}: this model has no {key!r} option")
        setattr(pipe, key, value)


def model_threshold(model: ResolvedModel, override) -> float:
    if override is not None:
        return float(override)
    for obj in (model.sr_fn, getattr(model.sr_fn, "sampler", None)):
        value = getattr(obj, "threshold", None)
        if isinstance(value, (int, float)):
            return float(value)
    value = _config_value(model.config, "threshold")
    return float(value) if isinstance(value, (int, float)) else DEFAULT_THRESHOLD



def bundle_identity(path: str | None) -> dict:
    """What a report needs to pin a bundle: its metadata version and the SHA-256 of ``models/model.pt``."""
    if path is None:
        return {"version": None, "weights_sha256": None}
    root = Path(path)
    version = None
    try:
        version = json.loads((root / "configs" / "metadata.json").read_text()).get("version")
    except (OSError, ValueError):
        pass
    weights, digest = root / "models" / "model.pt", None
    if weights.is_file():
        h = hashlib.sha256()
        with open(weights, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    return {"version": version, "weights": str(weights) if weights.is_file() else None, "weights_sha256": digest}
