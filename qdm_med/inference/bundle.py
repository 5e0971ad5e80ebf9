"""Loading and running qdm-med MONAI bundles.

- :func:`build_network`: the bundle's ``network_def`` -- the LR->SR module of a QDM bundle
  (:class:`qdm_med.inference.pipeline.QDMSuperResolution`), or the KL-VAE of a first-stage bundle.
- :func:`load_bundle`: ``network_def`` with ``models/model.pt`` loaded strictly (``weights_only=True``),
  as used by ``qdm-med upscale --bundle``.
- :class:`SliceSRInferer`: the ``inferer`` id: a MONAI :class:`~monai.inferers.Inferer` that applies a 2D
  network to every axial slice of a (B, C, X, Y, Z) volume (or to a (B, C, H, W) batch).
- :func:`run_inference`: the ``run`` id of ``inference.json``: ``qdm-med upscale`` with this bundle.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from monai.inferers import Inferer

from qdm_med.errors import ConfigError

__all__ = ["LoadedBundle", "read_weights", "build_network", "load_bundle", "SliceSRInferer", "run_inference", "run_reconstruction"]

logger = logging.getLogger("qdm_med")


@dataclasses.dataclass
class LoadedBundle:
    """A bundle ready to run: ``pipeline`` maps (B, C, h, w) in [-1, 1] to (B, C, h*s, w*s)."""

    pipeline: nn.Module
    config: dict
    scale: int
    window: tuple[float, float]
    kind: str
    path: str


def read_weights(path: str | Path) -> dict:
    """A ``models/model.pt`` state dict (``weights_only=True``) with floating tensors in float32 (weights may
    ship in half precision)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float() if torch.is_floating_point(v) else v for k, v in state.items()}


def build_network(bundle_root: str | Path) -> nn.Module:
    """The bundle's network (random weights; MONAI Deploy and :func:`load_bundle` load ``models/model.pt``)."""
    from qdm_med.training.config import build_first_stage_from, build_sr_module, bundle_settings

    settings = bundle_settings(bundle_root, "inference")
    if settings["stage"] == "vae":
        return build_first_stage_from(settings, load_weights=False)
    return build_sr_module(settings)


def load_bundle(bundle_dir: str | Path, device: str | torch.device = "cpu") -> LoadedBundle:
    """Build a QDM bundle's network and load its trained weights (ConfigError when there are none)."""
    from qdm_med.training.config import bundle_settings

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
        raise ConfigError(f"{weights}: does not fit the bundle's network ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    kind = "natural" if settings["data"].get("kind") == "natural" else "ct"
    window = tuple(float(v) for v in settings.get("window") or (-1024.0, 2048.0))
    return LoadedBundle(net, settings, int(settings["scale"]), window, kind, str(bundle_dir))


class SliceSRInferer(Inferer):
    """Apply a 2D network slice by slice: (B, C, X, Y, Z) -> (B, C, X*s, Y*s, Z), or (B, C, H, W) -> (B, C, H*s, W*s).

    Axial slices are fed as images with rows = Y (as :class:`qdm_med.inference.volume.SliceWiseInferencer`).
    ``method`` names the network method to call (``"forward"``; ``"reconstruct"`` for a VAE).
    """

    def __init__(self, scale: int = 8, batch_size: int = 4, method: str = "forward") -> None:
        super().__init__()
        self.scale, self.batch_size, self.method = int(scale), int(batch_size), method

    def _apply(self, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        fn = network if self.method == "forward" else getattr(network, self.method)
        return torch.cat([fn(x[i : i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size)])

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = torch.as_tensor(inputs).float()
        if x.ndim == 4:
            return self._apply(network, x)
        if x.ndim != 5:
            raise ValueError(f"expected (B, C, H, W) or (B, C, X, Y, Z) inputs, got {tuple(x.shape)}")
        b, c, nx, ny, nz = x.shape
        slices = x.permute(0, 4, 1, 3, 2).reshape(b * nz, c, ny, nx)  # rows = Y, columns = X
        out = self._apply(network, slices)
        s = out.shape[-1] // nx
        return out.reshape(b, nz, c, ny * s, nx * s).permute(0, 2, 4, 3, 1)


def run_inference(bundle_root, input, output=None, scale: int | None = None, device: str = "auto", **kwargs) -> dict:
    """``monai.bundle run`` entry of a QDM bundle: upscale ``input`` to ``output`` (see ``qdm-med upscale``)."""
    from qdm_med.inference.run import upscale

    if input is None:
        raise ConfigError("no input: pass --input FILE (and optionally --output FILE) to monai.bundle run")
    loaded_scale = scale or int(load_bundle(bundle_root).scale)
    return upscale(input, output, scale=loaded_scale, bundle=str(bundle_root), device=str(device), **kwargs)


def run_reconstruction(bundle_root, input, output, device: str = "auto", batch_size: int = 4, overwrite: bool = False) -> dict:
    """``monai.bundle run`` entry of the KL-VAE bundle: encode and decode every axial slice of a CT volume."""
    from qdm_med._atomic import atomic_path, check_output_path
    from qdm_med.inference.volume import SliceWiseInferencer, resolve_device
    from qdm_med.io import load_volume, save_volume
    from qdm_med.training.config import bundle_settings

    if input is None or output is None:
        raise ConfigError("pass --input FILE and --output FILE to monai.bundle run")
    check_output_path(Path(output), overwrite)
    settings = bundle_settings(bundle_root, "inference")
    vae = build_network(bundle_root)
    weights = Path(bundle_root) / "models" / "model.pt"
    if not weights.is_file():
        raise ConfigError(f"{bundle_root} has no trained weights (models/model.pt); run `qdm-med train {bundle_root} --corpus`")
    vae.load_state_dict(read_weights(weights))
    dev = resolve_device(device)
    vae = vae.to(dev).eval()
    # whole 512x512 slices in one piece: 128-pixel tiles cost the VAE about 4 dB at the tile seams
    inferencer = SliceWiseInferencer(vae.reconstruct, 1, window=settings["window"], batch_size=batch_size, device=dev,
                                     progress=False, size_multiple=vae.factor, tile_size=512, tile_overlap=32)
    result, stats = inferencer.infer(load_volume(input))
    with atomic_path(Path(output), overwrite) as tmp:
        save_volume(result, tmp, overwrite=False)
    return {"output": str(output), "timings": stats.get("timings")}
