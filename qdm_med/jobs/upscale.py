"""``qdm-med upscale``: super-resolve a CT volume (NIfTI, NRRD/MHA, DICOM) or a picture with a bundle.

The job returns a JSON-ready report dict. Every user mistake is raised as a one-line
:class:`~qdm_med.errors.QDMError` (``InputError`` / ``OutputError`` / ``ConfigError``) and is detected
*before* the heavy work: input kind and extension, output/report/preview paths (existing without
``overwrite``, unwritable folder), then the input itself (missing, truncated, 4D, RGB volume, non-finite
voxels, too oblique), then the bundle and its scale. Every file is written through
:func:`qdm_med._atomic.atomic_path`, so an error or Ctrl-C leaves no partial output.

Volumes run in axial storage (:mod:`qdm_med.io.orientation`): a scan stored slice-axis-first or
sagittal-major is permuted so its slice axis is axis 2, super-resolved, and written back in its own
storage order and world coordinates. Inputs: :mod:`.inputs`; models: :mod:`.resolve`; writing and the
report: :mod:`.outputs`. Every warning printed during a job is also in the report's ``warnings``.

Models: ``bundle`` is a bundle folder (loaded with :func:`qdm_med.bundle.load_bundle`), None for the
shipped bundle of the input's kind and scale (``bundles/qdm_ct_x{s}``, ``bundles/qdm_natural_x{s}`` next to
the package, or under ``$QDM_MED_BUNDLES``), the string ``"bicubic"`` for the bicubic baseline (any scale),
or -- programmatic use -- an already loaded bundle / SR module.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qdm_med.bundle.device import resolve_device
from qdm_med.errors import ConfigError, InputError
from qdm_med.jobs import outputs as out_
from qdm_med.jobs.common import check_scale, finish, infer, score
from qdm_med.jobs.inputs import (
    check_load_options,
    check_outputs,
    detect_input,
    load_image_input,
    load_reference,
    load_volume_input,
    plan_output,
)
from qdm_med.jobs.resolve import apply_overrides, model_threshold, operating_point, resolve_model
from qdm_med.reports import collect_warnings

logger = logging.getLogger("qdm_med")

__all__ = ["upscale"]


def upscale(
    input: str | os.PathLike,
    output: str | os.PathLike | None = None,
    scale: int = 8,
    bundle=None,
    fmt: str | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    threshold: float | None = None,
    device: str = "auto",
    batch_size: int = 4,
    seed: int = 0,
    ref: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    preview: str | os.PathLike | None = None,
    quiet: bool = False,
    overwrite: bool = False,
    preview_slice: int | None = None,
    tile_size: int | None = 128,
    amp: bool | str = False,
    lpips_weights: str | os.PathLike | None = None,
    series: str | None = None,
    force: bool = False,
    volume_index: int | None = None,
    fill_nonfinite: float | None = None,
    command_line: str | None = None,
    mode: str | None = None,
    tta: bool = True,
) -> dict:
    """Upscale a CT volume (NIfTI, NRRD/MHA, DICOM folder) or an image (PNG/JPEG/TIFF) by ``scale``.

    Returns the report dict (also written to ``report`` as JSON when given). See the module docstring for
    the error handling; ``ref`` (an HR volume/image aligned with the output) adds metrics for the model
    and for bicubic. ``series``/``force``/``volume_index`` pick what a DICOM folder or 4D file holds;
    ``fill_nonfinite`` replaces NaN/inf voxels (refused otherwise). ``seed`` gives every slice its own
    random stream, so ``batch_size`` never changes the output. ``mode`` picks the bundle's operating point
    (``fidelity``, the default sampling, or ``detail``); explicit ``steps``/``sampler``/``threshold`` win.
    ``tta=False`` turns off the fidelity mode's mirroring test-time augmentation (one pass of the prior).
    """
    with collect_warnings() as warnings:
        rep = _upscale(input, output, scale, bundle, fmt, steps, sampler, threshold, device, batch_size, seed, ref, report,
                       preview, quiet, overwrite, preview_slice, tile_size, amp, lpips_weights, series, force,
                       volume_index, fill_nonfinite, command_line, warnings, mode, tta)
    return rep


def _upscale(input, output, scale, bundle, fmt, steps, sampler, threshold, device, batch_size, seed, ref, report, preview,
             quiet, overwrite, preview_slice, tile_size, amp, lpips_weights, series, force, volume_index, fill_nonfinite,
             command_line, warnings, mode=None, tta=True) -> dict:
    t_start = time.perf_counter()
    scale = check_scale(scale)
    spec = detect_input(input)
    check_load_options(spec, series, force, volume_index)
    out_path, out_fmt = plan_output(spec, output, fmt, scale)
    report_path = Path(report) if report is not None else None
    preview_path = Path(preview) if preview is not None else None
    ref_spec = detect_input(ref) if ref is not None else None
    check_outputs([("output", out_path), ("report", report_path), ("preview", preview_path)], overwrite)
    dev = resolve_device(device)
    if int(batch_size) < 1:
        raise ConfigError(f"batch size {batch_size}: must be >= 1")

    t0 = time.perf_counter()
    frame = picture = None
    if spec.kind == "volume":
        source, frame = load_volume_input(spec.path, series, force, volume_index, fill_nonfinite)
        data = frame.to_axial(source)
        if frame.identity is False:
            logger.info("%s: stored %s; super-resolving its axial planes (slice axis %d)", spec.path, frame.axcodes, frame.slice_axis)
    else:
        picture = load_image_input(spec.path, fill_nonfinite)
        data = picture.data
    if ref_spec is not None and ref_spec.kind != spec.kind:
        raise InputError(f"{ref_spec.path}: reference is an {ref_spec.kind}, the input is an {spec.kind}")
    reference = load_reference(ref_spec, fill_nonfinite) if ref_spec is not None else None
    model = resolve_model(bundle, spec.kind, scale, dev)
    steps, sampler, threshold, stochastic = operating_point(model, mode, steps, sampler, threshold)
    apply_overrides(model, steps, sampler, threshold, stochastic, flip_ensemble=None if tta else False)
    thr = model_threshold(model, threshold)
    t_load = time.perf_counter() - t0

    torch.manual_seed(int(seed))
    t0 = time.perf_counter()
    result, stats = infer(spec.kind, model, data, scale, batch_size, tile_size, dev, amp, quiet, seed)
    t_inf = time.perf_counter() - t0

    t0 = time.perf_counter()
    alpha = bit_depth = None
    if spec.kind == "volume":
        out_arr, final = result.array, frame.from_axial(result)
        out_.save_result(final, out_path, out_fmt, scale, overwrite)
    else:
        out_arr = result
        alpha, bit_depth = _picture_extras(picture, scale, out_path)
        out_.save_result(result, out_path, out_fmt, scale, overwrite, alpha=alpha, bit_depth=bit_depth)
    t_write = time.perf_counter() - t0

    rep: dict[str, Any] = out_.audit_fields("upscale", command_line, seed, batch_size if spec.kind == "volume" else None)
    rep["scale"] = scale
    rep.update(out_.model_section(model, stats, thr, {"steps": steps, "sampler": sampler, "mode": mode or "fidelity"}))
    if spec.kind == "volume":
        rep["input"] = out_.volume_summary(source, spec.path, spec.fmt, frame=frame, hu_range=True)
        rep["output"] = out_.volume_summary(final, out_path, out_fmt, hu_range=True)
    else:
        rep["input"] = {"path": str(spec.path), "format": "image", "shape": list(data.shape), "bit_depth": picture.bit_depth,
                        "alpha": picture.alpha is not None}
        rep["output"] = {"path": str(out_path), "format": out_fmt, "shape": list(result.shape), "bit_depth": bit_depth,
                         "alpha": alpha is not None}
    rep["timings"] = {"load": t_load, "inference": t_inf, "write": t_write, "inference_detail": stats["timings"]}

    bicubic = None
    if reference is not None or preview_path is not None:
        bicubic = out_.bicubic_hu(np.asarray(data.array, np.float32), scale) if spec.kind == "volume" else out_.bicubic_image(data, scale)
    ref_arr = None
    if reference is not None:
        t0 = time.perf_counter()
        ref_arr = out_.align_reference(np.asarray(getattr(reference, "array", reference), np.float32), out_arr.shape, ref_spec.path)
        rep["reference"] = str(ref_spec.path)
        rep["metrics"] = score(spec.kind, out_arr, bicubic, ref_arr, model.window, lpips_weights, dev)
        rep["timings"]["metrics"] = time.perf_counter() - t0
    if preview_path is not None:
        from qdm_med.jobs.preview import write_preview

        rep["preview"] = write_preview(
            preview_path, spec.kind, data, bicubic, result, ref_arr, scale, model.window, thr,
            slice_index=preview_slice, overwrite=overwrite,
        )
    rep["timings"]["total"] = time.perf_counter() - t_start
    return finish(rep, warnings, report_path, overwrite)


def _picture_extras(picture, scale: int, out_path: Path):
    """(alpha upscaled bicubic or None, bit depth) for writing a picture; says what cannot be kept."""
    from qdm_med.io._util import suffix_of, warn

    alpha, depth = picture.alpha, picture.bit_depth
    jpeg = suffix_of(out_path) in (".jpg", ".jpeg")
    if alpha is not None:
        if jpeg:
            warn(out_path, "JPEG has no alpha channel: the input's alpha is dropped (use .png to keep it)")
            alpha = None
        else:
            alpha = out_.bicubic_image(alpha, scale)
    if depth == 16 and (jpeg or alpha is not None or picture.data.shape[0] != 1):
        why = "JPEG" if jpeg else ("an alpha channel" if alpha is not None else "colour")
        warn(out_path, f"16-bit input written with 8 bits per channel (no 16-bit output with {why})")
        depth = 8
    return alpha, depth
