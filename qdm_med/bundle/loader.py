"""A QDM bundle ready to run: :func:`load_bundle` builds the bundle's network and loads ``models/model.pt``
strictly (as ``qdm-med upscale --bundle`` and MONAI Deploy do)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn as nn

from qdm_med.bundle.factories import build_network
from qdm_med.bundle.settings import bundle_settings
from qdm_med.bundle.weights import read_weights
from qdm_med.errors import ConfigError
from qdm_med.transforms.window import DEFAULT_WINDOW

__all__ = ["LoadedBundle", "load_bundle"]


@dataclasses.dataclass
class LoadedBundle:
    """A bundle ready to run: ``pipeline`` maps (B, C, h, w) in [-1, 1] to (B, C, h*s, w*s)."""

    pipeline: nn.Module
    config: dict
    scale: int
    window: tuple[float, float]
    kind: str
    path: str


def load_bundle(bundle_dir: str | Path, device: str | torch.device = "cpu") -> LoadedBundle:
    """Build a QDM bundle's network and load its trained weights (ConfigError when there are none)."""
    bundle_dir = Path(bundle_dir)
    settings = bundle_settings(bundle_dir, "inference")
    if settings["stage"] != "qdm":
        raise ConfigError(f"{bundle_dir} is a first-stage (KL-VAE) bundle, not a super-resolution model; use a qdm_* bundle")
    weights = bundle_dir / "models" / "model.pt"
    if not weights.is_file():
        raise ConfigError(f"{bundle_dir} has no trained weights (models/model.pt); run `qdm-med train {bundle_dir} --corpus`")
    net = build_network(bundle_dir)
    try:
        net.load_state_dict(read_weights(weights), strict=True)
    except Exception as err:
        raise ConfigError(
            f"{weights}: does not fit the bundle's network ({type(err).__name__}: {' '.join(str(err).split())[:200]})"
        ) from None
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    kind = "natural" if settings["data"].get("kind") == "natural" else "ct"
    window = tuple(float(v) for v in settings.get("window") or DEFAULT_WINDOW)
    return LoadedBundle(net, settings, int(settings["scale"]), window, kind, str(bundle_dir))
