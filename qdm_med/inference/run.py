"""The user jobs behind ``qdm-med upscale``, ``qdm-med evaluate`` and ``qdm-med mask``.

Each function does the whole job and returns a JSON-ready report dict. Every user mistake is raised as
a one-line :class:`~qdm_med.errors.QDMError` (``InputError`` / ``OutputError`` / ``ConfigError``) and is
detected *before* the heavy work: input kind and extension, output/report/preview paths (existing
without ``overwrite``, unwritable folder), then the input itself (missing, truncated, 4D, RGB volume,
non-finite voxels, too oblique), then the bundle and its scale. Every file is written through
:func:`qdm_med._atomic.atomic_path`, so an error or Ctrl-C leaves no partial output.

Volumes run in axial storage (:mod:`qdm_med.io.orientation`): a scan stored slice-axis-first or
sagittal-major is permuted so its slice axis is axis 2, super-resolved, and written back in its own
storage order and world coordinates. Inputs: :mod:`.inputs`; models: :mod:`.resolve`; writing and the
report: :mod:`.outputs`; ``mask``: :mod:`.mask`. Every warning printed during a job is also in the report's ``warnings``.

Models: ``bundle`` is a bundle folder (loaded with :func:`qdm_med.inference.bundle.load_bundle`), None
for the shipped bundle of the input's kind and scale (``bundles/qdm_ct_x{s}``, ``bundles/qdm_natural_x{s}``
next to the package, or under ``$QDM_MED_BUNDLES``), the string ``"bicubic"`` for the bicubic baseline
(any scale), or -- programmatic use -- an already loaded bundle / SR module.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from qdm_med.errors import ConfigError, InputError
from qdm_med.inference import outputs as out_
from qdm_med.inference.inputs import (
    InputSpec,
    check_load_options,
    check_outputs,
    detect_input,
    format_of_output,
    load_image_input,
    load_reference,
    load_volume_input,
    one_line,
    plan_output,
)
from qdm_med.inference.mask import make_mask_picture
from qdm_med.inference.resolve import ResolvedModel, apply_overrides, default_bundle_dir, model_threshold, resolve_model
from qdm_med.inference.volume import SliceWiseInferencer, resolve_device, upscale_image
from qdm_med.reports import collect_warnings

logger = logging.getLogger("qdm_med")

LPIPS_MIN_SIZE = 32  # smallest image side the AlexNet LPIPS can score

__all__ = [
    "InputSpec", "ResolvedModel", "detect_input", "plan_output", "resolve_model", "default_bundle_dir", "upscale",
    "evaluate", "make_mask_picture",
]

# names kept for callers of the former single module
_format_of_output, _check_outputs, _one_line = format_of_output, check_outputs, one_line


def _load_image(path: Path) -> np.ndarray:
    return load_image_input(path).data


def _check_scale(scale) -> int:
    try:
        s = int(scale)
    except (TypeError, ValueError):
        raise ConfigError(f"scale {scale!r}: must be an integer such as 4 or 8") from None
    if s != scale or s < 2:
        raise ConfigError(f"scale {scale!r}: must be an integer >= 2 (4 or 8 for the shipped bundles)")
    return s


def _score(kind, sr, bicubic, ref, window, lpips_weights, device, slices=None) -> dict:
    """Model and bicubic scores against ``ref`` (per slice and overall for volumes)."""
    from qdm_med.inference.scoring import SliceScorer, default_lpips_path, load_lpips_or_none

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


def _infer(kind, model, data, scale, batch_size, tile_size, dev, amp, quiet, seed, slice_indices=None):
    """Run the model on an axial volume or a (C, H, W) picture: ``(result, stats)``."""
    if kind == "volume":
        inferencer = SliceWiseInferencer(
            model.sr_fn, scale, window=model.window, batch_size=batch_size, tile_size=tile_size,
            device=dev, amp=amp, progress=not quiet, seed=seed, slice_indices=slice_indices,
        )
        return inferencer.infer(data)
    return upscale_image(data, model.sr_fn, scale, tile_size=tile_size, device=dev, amp=amp, progress=not quiet,
                         seed=seed, return_stats=True)


# ----------------------------------------------------------------------------------------------- upscale
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
) -> dict:
    """Upscale a CT volume (NIfTI, NRRD/MHA, DICOM folder) or an image (PNG/JPEG/TIFF) by ``scale``.

    Returns the report dict (also written to ``report`` as JSON when given). See the module docstring for
    the error handling; ``ref`` (an HR volume/image aligned with the output) adds metrics for the model
    and for bicubic. ``series``/``force``/``volume_index`` pick what a DICOM folder or 4D file holds;
    ``fill_nonfinite`` replaces NaN/inf voxels (refused otherwise). ``seed`` gives every slice its own
    random stream, so ``batch_size`` never changes the output.
    """
    with collect_warnings() as warnings:
        rep = _upscale(input, output, scale, bundle, fmt, steps, sampler, threshold, device, batch_size, seed, ref, report,
                       preview, quiet, overwrite, preview_slice, tile_size, amp, lpips_weights, series, force,
                       volume_index, fill_nonfinite, command_line, warnings)
    return rep


def _upscale(input, output, scale, bundle, fmt, steps, sampler, threshold, device, batch_size, seed, ref, report, preview,
             quiet, overwrite, preview_slice, tile_size, amp, lpips_weights, series, force, volume_index, fill_nonfinite,
             command_line, warnings) -> dict:
    t_start = time.perf_counter()
    scale = _check_scale(scale)
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
    apply_overrides(model, steps, sampler, threshold)
    thr = model_threshold(model, threshold)
    t_load = time.perf_counter() - t0

    torch.manual_seed(int(seed))
    t0 = time.perf_counter()
    result, stats = _infer(spec.kind, model, data, scale, batch_size, tile_size, dev, amp, quiet, seed)
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
    rep.update(out_.model_section(model, stats, thr, {"steps": steps, "sampler": sampler}))
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
        rep["metrics"] = _score(spec.kind, out_arr, bicubic, ref_arr, model.window, lpips_weights, dev)
        rep["timings"]["metrics"] = time.perf_counter() - t0
    if preview_path is not None:
        from qdm_med.inference.preview import write_preview

        rep["preview"] = write_preview(
            preview_path, spec.kind, data, bicubic, result, ref_arr, scale, model.window, thr,
            slice_index=preview_slice, overwrite=overwrite,
        )
    rep["timings"]["total"] = time.perf_counter() - t_start
    return _finish(rep, warnings, report_path, overwrite)


def _finish(rep: dict, warnings: list[str], report_path: Path | None, overwrite: bool) -> dict:
    rep["warnings"] = list(warnings)
    out_.write_report(rep, report_path, overwrite)
    if report_path is not None:
        rep["report"] = str(report_path)
    return out_.jsonable(rep)


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


# ----------------------------------------------------------------------------------------------- evaluate
def evaluate(
    hr: str | os.PathLike,
    scale: int,
    preset: str | None = "medical_test",
    bundle=None,
    report: str | os.PathLike | None = None,
    preview: str | os.PathLike | None = None,
    seed: int = 0,
    steps: int | None = None,
    sampler: str | None = None,
    threshold: float | None = None,
    device: str = "auto",
    batch_size: int = 4,
    slices: Sequence[int] | None = None,
    output: str | os.PathLike | None = None,
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
) -> dict:
    """Simulate the LR input from an HR volume or image, upscale it, and score model and bicubic.

    The LR is made with :mod:`qdm_med.simulate` (seeded :class:`qdm_med.transforms.DegradationPipeline`;
    CT slice ``k`` uses seed ``seed + k`` and the sampler slice ``k``'s own stream, so scoring a subset
    ``slices`` reproduces the same slices as the whole volume). Slice indices count along the axial slice
    axis. HR in-plane sizes are cropped at the end to a multiple of ``scale``. ``preset`` None picks
    ``medical_test`` for CT and ``natural`` for images. ``output`` optionally saves the SR result (format
    from its extension; a slice subset keeps its own geometry; DICOM derives from the HR series).
    """
    with collect_warnings() as warnings:
        return _evaluate(hr, scale, preset, bundle, report, preview, seed, steps, sampler, threshold, device, batch_size,
                         slices, output, quiet, overwrite, preview_slice, tile_size, amp, lpips_weights, series, force,
                         volume_index, fill_nonfinite, command_line, warnings)


def _evaluate(hr, scale, preset, bundle, report, preview, seed, steps, sampler, threshold, device, batch_size, slices, output,
              quiet, overwrite, preview_slice, tile_size, amp, lpips_weights, series, force, volume_index, fill_nonfinite,
              command_line, warnings) -> dict:
    from qdm_med.io.volume import sub_volume
    from qdm_med.simulate import crop_to_multiple, degrade_image, degrade_volume

    t_start = time.perf_counter()
    scale = _check_scale(scale)
    spec = detect_input(hr)
    check_load_options(spec, series, force, volume_index)
    report_path = Path(report) if report is not None else None
    preview_path = Path(preview) if preview is not None else None
    out_path = out_fmt = None
    if output is not None:
        out_path, out_fmt = plan_output(spec, output, None, scale)
    check_outputs([("output", out_path), ("report", report_path), ("preview", preview_path)], overwrite)
    dev = resolve_device(device)
    if preset is None:
        preset = "natural" if spec.kind == "image" else "medical_test"

    t0 = time.perf_counter()
    if spec.kind == "volume":
        source, frame = load_volume_input(spec.path, series, force, volume_index, fill_nonfinite)
        data = frame.to_axial(source)
        nz = data.array.shape[2]
        ks = list(range(nz)) if slices is None else [int(k) for k in slices]
        bad = [k for k in ks if not 0 <= k < nz]
        if bad or not ks:
            raise ConfigError(f"{spec.path}: slice indices {bad or ks} outside 0..{nz - 1}")
        contiguous = ks == list(range(ks[0], ks[0] + len(ks)))
        if out_path is not None and not contiguous:
            raise ConfigError("--output with non-contiguous --slices has no single geometry; drop one of them")
    else:
        picture = load_image_input(spec.path, fill_nonfinite)
        if picture.alpha is not None:
            logger.warning("%s: the alpha channel is not evaluated (colour channels only)", spec.path)
        data = picture.data
    model = resolve_model(bundle, spec.kind, scale, dev)
    apply_overrides(model, steps, sampler, threshold)
    thr = model_threshold(model, threshold)
    t_load = time.perf_counter() - t0

    t0 = time.perf_counter()
    if spec.kind == "volume":
        hr_vol = dataclasses.replace(data, array=crop_to_multiple(np.asarray(data.array, np.float32), scale, (0, 1), str(spec.path)))
        # slice by slice so slice k keeps seed + k; a contiguous subset keeps its own geometry and headers
        parts = [degrade_volume(sub_volume(hr_vol, k, k + 1), scale, preset=preset, seed=seed + k) for k in ks]
        lr_geo = sub_volume(hr_vol, ks[0], ks[-1] + 1) if contiguous else sub_volume(hr_vol, ks[0], ks[0] + 1)
        lr_vol = dataclasses.replace(parts[0], array=np.concatenate([p.array for p in parts], axis=2),
                                     dicom_headers=lr_geo.dicom_headers if contiguous else None)
        hr_arr = hr_vol.array[:, :, ks]
        lr_data = lr_vol
    else:
        hr_arr = crop_to_multiple(np.asarray(data, np.float32), scale, (1, 2), str(spec.path))
        lr_data = degrade_image(hr_arr, scale, preset=preset, seed=seed, name=str(spec.path))
    t_degrade = time.perf_counter() - t0

    torch.manual_seed(int(seed))
    t0 = time.perf_counter()
    result, stats = _infer(spec.kind, model, lr_data, scale, batch_size, tile_size, dev, amp, quiet, seed,
                           slice_indices=ks if spec.kind == "volume" else None)
    t_inf = time.perf_counter() - t0
    if spec.kind == "volume":
        sr_arr = result.array
        bicubic = out_.bicubic_hu(np.asarray(lr_vol.array, np.float32), scale)
    else:
        sr_arr = result
        bicubic = out_.bicubic_image(lr_data, scale)

    t_write = 0.0
    if out_path is not None:
        t0 = time.perf_counter()
        derivation = f"In-plane super-resolution x{scale} of a simulated x{scale} low-resolution version ({preset}, seed {seed})"
        if spec.kind == "volume":
            out_.save_result(frame.from_axial(result), out_path, out_fmt, scale, overwrite, dicom_geometry_scale=1.0, derivation=derivation)
        else:
            out_.save_result(result, out_path, out_fmt, scale, overwrite)
        t_write = time.perf_counter() - t0

    t0 = time.perf_counter()
    metrics = _score(spec.kind, sr_arr, bicubic, hr_arr, model.window, lpips_weights, dev)
    if spec.kind == "volume":
        for name in ("model", "bicubic"):  # report original slice indices
            for row, k in zip(metrics[name]["per_slice"], ks):
                row["slice"] = k
    t_metrics = time.perf_counter() - t0

    rep: dict[str, Any] = out_.audit_fields("evaluate", command_line, seed, batch_size if spec.kind == "volume" else None)
    rep["scale"] = scale
    rep.update(out_.model_section(model, stats, thr, {"steps": steps, "sampler": sampler}))
    rep["degradation"] = {"preset": preset, "seed": int(seed), "per_slice_seed": "seed + slice index"}
    if spec.kind == "volume":
        rep["input"] = out_.volume_summary(source, spec.path, spec.fmt, frame=frame, hu_range=True)
        rep["input"]["evaluated_shape"] = list(hr_arr.shape)
        rep["slices"] = ks
        rep["output"] = out_.volume_summary(result if out_path is None else frame.from_axial(result), out_path, out_fmt, hu_range=True)
    else:
        rep["input"] = {"path": str(spec.path), "format": "image", "shape": list(np.asarray(data).shape), "evaluated_shape": list(hr_arr.shape)}
        rep["output"] = {"shape": list(np.asarray(result).shape), "path": None if out_path is None else str(out_path), "format": out_fmt}
    rep["metrics"] = metrics
    rep["timings"] = {
        "load": t_load, "degrade": t_degrade, "inference": t_inf, "write": t_write, "metrics": t_metrics,
        "inference_detail": stats["timings"],
    }
    if preview_path is not None:
        from qdm_med.inference.preview import write_preview

        local = None
        if preview_slice is not None and spec.kind == "volume":
            if int(preview_slice) not in ks:
                raise ConfigError(f"preview slice {preview_slice} is not among the evaluated slices")
            local = ks.index(int(preview_slice))
        rep["preview"] = write_preview(
            preview_path, spec.kind, lr_data, bicubic, result, hr_arr, scale, model.window, thr,
            slice_index=local, overwrite=overwrite,
        )
        if spec.kind == "volume":
            rep["preview"]["slice"] = ks[rep["preview"]["slice"]]
    rep["timings"]["total"] = time.perf_counter() - t_start
    return _finish(rep, warnings, report_path, overwrite)
