"""Bundles at the inference layer: the public names of :mod:`qdm_med.bundle` (re-exported here for callers
such as MONAI Deploy operators) and :func:`run_reconstruction`, the ``run`` id of the KL-VAE bundle's
``inference.json``. The QDM bundles' ``run`` id is :func:`qdm_med.jobs.bundle_run.run_inference`."""

from __future__ import annotations

from pathlib import Path

from qdm_med.bundle.factories import build_network
from qdm_med.bundle.inferer import SliceSRInferer
from qdm_med.bundle.loader import LoadedBundle, load_bundle
from qdm_med.bundle.settings import bundle_settings
from qdm_med.bundle.weights import read_weights
from qdm_med.errors import ConfigError

__all__ = ["LoadedBundle", "read_weights", "build_network", "load_bundle", "SliceSRInferer", "run_reconstruction"]


def run_reconstruction(bundle_root, input, output, device: str = "auto", batch_size: int = 4, overwrite: bool = False) -> dict:
    """``monai.bundle run`` entry of the KL-VAE bundle: encode and decode every axial slice of a CT volume."""
    from qdm_med._atomic import atomic_path, check_output_path
    from qdm_med.inference.volume import SliceWiseInferencer, resolve_device
    from qdm_med.io import load_volume, save_volume

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
