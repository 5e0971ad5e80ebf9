"""``qdm-med mask``: a picture of the quadtree partition of an LR slice (or image) and its density."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from qdm_med._atomic import atomic_path
from qdm_med.errors import ConfigError
from qdm_med.jobs.inputs import check_load_options, check_outputs, detect_input, format_of_output, load_image_input, load_volume_input
from qdm_med.transforms.window import DEFAULT_WINDOW

__all__ = ["make_mask_picture"]


def make_mask_picture(
    input: str | os.PathLike,
    threshold: float,
    output: str | os.PathLike,
    slice_index: int | None = None,
    window: Sequence[float] = DEFAULT_WINDOW,
    overwrite: bool = False,
    series: str | None = None,
    force: bool = False,
    volume_index: int | None = None,
    fill_nonfinite: float | None = None,
) -> dict:
    """Draw the recursive quadtree partition of an LR slice (or image) at ``threshold`` and write it.

    ``threshold`` is on the model's [-1, 1] scale (SPEC section 2). The reported ``density`` is the
    fraction of active 2x2-LR-pixel blocks of Algorithm 1 (the model mask for x4 and x8), i.e. the share
    of the image the sparse model refines. A volume is shown in its axial planes.
    """
    from qdm_med.jobs.preview import quadtree_picture

    if threshold is None or float(threshold) < 0:
        raise ConfigError(f"threshold {threshold}: must be >= 0")
    spec = detect_input(input)
    check_load_options(spec, series, force, volume_index)
    out = Path(output)
    if format_of_output(out) != "png":
        raise ConfigError(f"{out}: the mask picture is an image; use a .png output")
    check_outputs([("output", out)], overwrite)
    if spec.kind == "volume":
        vol, frame = load_volume_input(spec.path, series, force, volume_index, fill_nonfinite)
        data = frame.to_axial(vol)
    else:
        data = load_image_input(spec.path, fill_nonfinite).data
    picture, info = quadtree_picture(spec.kind, data, float(threshold), window, slice_index)
    with atomic_path(out, overwrite) as tmp:
        from qdm_med.io.images import save_image

        save_image(picture, tmp, overwrite=False)
    info.update({"input": str(spec.path), "output": str(out), "threshold": float(threshold)})
    from qdm_med.reports import to_jsonable

    return to_jsonable(info)
