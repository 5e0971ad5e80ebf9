"""Pieces shared by the ``upscale`` and ``evaluate`` jobs: the scale check, running the model on a volume
or a picture, scoring against a reference, and finishing the report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from qdm_med.errors import ConfigError
from qdm_med.inference.volume import SliceWiseInferencer, upscale_image
from qdm_med.jobs import outputs as out_
from qdm_med.reports.json_report import to_jsonable

logger = logging.getLogger("qdm_med")

LPIPS_MIN_SIZE = 32  # smallest image side the AlexNet LPIPS can score

__all__ = ["LPIPS_MIN_SIZE", "check_scale", "score", "infer", "finish"]


def check_scale(scale) -> int:
    """``scale`` as an int >= 2 (ConfigError otherwise)."""
    try:
        s = int(scale)
    except (TypeError, ValueError):
        raise ConfigError(f"scale {scale!r}: must be an integer such as 4 or 8") from None
    if s != scale or s < 2:
        raise ConfigError(f"scale {scale!r}: must be an integer >= 2 (4 or 8 for the shipped bundles)")
    return s


def score(kind, sr, bicubic, ref, window, lpips_weights, device, slices=None) -> dict:
    """Model and bicubic scores against ``ref`` (per slice and overall for volumes)."""
    from qdm_med.jobs.scoring import SliceScorer, default_lpips_path, load_lpips_or_none

    lp = load_lpips_or_none(lpips_weights, device)
    plane = ref.shape[:2] if kind == "volume" else ref.shape[-2:]
    if lp is not None and min(plane) < LPIPS_MIN_SIZE:  # AlexNet's pooling needs 32 x 32 pixels
        logger.warning("LPIPS not computed: images of %s pixels are below its %d x %d minimum", "x".join(map(str, plane)),
                       LPIPS_MIN_SIZE, LPIPS_MIN_SIZE)
        lp = None
    scorer = SliceScorer(window, lp, device)
    out: dict[str, Any] = {"window": list(window), "lpips_weights": str(lpips_weights or default_lpips_path()) if lp is not None else None}
    for name, pred in (("model", sr), ("bicubic", bicubic)):
        if kind == "volume":
            per_slice, overall = scorer.score_ct_volume(np.asarray(pred), np.asarray(ref), slices)
            out[name] = {"overall": overall, "per_slice": per_slice}
        else:
            out[name] = {"overall": scorer.score_image(pred, ref)}
    return out


def infer(kind, model, data, scale, batch_size, tile_size, dev, amp, quiet, seed, slice_indices=None):
    """Run the model on an axial volume or a (C, H, W) picture: ``(result, stats)``."""
    if kind == "volume":
        inferencer = SliceWiseInferencer(
            model.sr_fn, scale, window=model.window, batch_size=batch_size, tile_size=tile_size,
            device=dev, amp=amp, progress=not quiet, seed=seed, slice_indices=slice_indices,
        )
        return inferencer.infer(data)
    return upscale_image(data, model.sr_fn, scale, tile_size=tile_size, device=dev, amp=amp, progress=not quiet,
                         seed=seed, return_stats=True)


def finish(rep: dict, warnings: list[str], report_path: Path | None, overwrite: bool) -> dict:
    """Add the collected warnings, write the report (when asked) and return it JSON-ready."""
    rep["warnings"] = list(warnings)
    out_.write_report(rep, report_path, overwrite)
    if report_path is not None:
        rep["report"] = str(report_path)
    return to_jsonable(rep)
