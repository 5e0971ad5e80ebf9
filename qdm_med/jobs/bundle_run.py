"""The ``run`` id of the QDM bundles' ``inference.json`` (``python -m monai.bundle run``): ``qdm-med upscale``
with that bundle."""

from __future__ import annotations

from qdm_med.bundle.loader import load_bundle
from qdm_med.errors import ConfigError

__all__ = ["run_inference"]


def run_inference(bundle_root, input, output=None, scale: int | None = None, device: str = "auto", **kwargs) -> dict:
    """``monai.bundle run`` entry of a QDM bundle: upscale ``input`` to ``output`` (see ``qdm-med upscale``)."""
    from qdm_med.jobs.upscale import upscale

    if input is None:
        raise ConfigError("no input: pass --input FILE (and optionally --output FILE) to monai.bundle run")
    loaded_scale = scale or int(load_bundle(bundle_root).scale)
    return upscale(input, output, scale=loaded_scale, bundle=str(bundle_root), device=str(device), **kwargs)
