"""``qdm-med evaluate``: simulate the LR input from an HR volume or picture, upscale it, and score the model
and bicubic against the HR (same error handling and reports as :mod:`qdm_med.jobs.upscale`)."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from qdm_med.bundle.device import resolve_device
from qdm_med.data.simulate import crop_to_multiple, degrade_image, degrade_volume
from qdm_med.errors import ConfigError
from qdm_med.io.types import sub_volume
from qdm_med.jobs import outputs as out_
from qdm_med.jobs.common import check_scale, finish, infer, score
from qdm_med.jobs.inputs import check_load_options, check_outputs, detect_input, load_image_input, load_volume_input, plan_output
from qdm_med.jobs.resolve import apply_overrides, model_threshold, operating_point, resolve_model
from qdm_med.reports import collect_warnings

logger = logging.getLogger("qdm_med")

__all__ = ["evaluate"]


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
    mode: str | None = None,
    tta: bool = True,
) -> dict:
    """Simulate the LR input from an HR volume or image, upscale it, and score model and bicubic.

    The LR is made with :mod:`qdm_med.data.simulate` (seeded :class:`qdm_med.transforms.DegradationPipeline`;
    CT slice ``k`` uses seed ``seed + k`` and the sampler slice ``k``'s own stream, so scoring a subset
    ``slices`` reproduces the same slices as the whole volume). Slice indices count along the axial slice
    axis. HR in-plane sizes are cropped at the end to a multiple of ``scale``. ``preset`` None picks
    ``medical_test`` for CT and ``natural`` for images. ``output`` optionally saves the SR result (format
    from its extension; a slice subset keeps its own geometry; DICOM derives from the HR series). ``mode``:
    the bundle's operating point and ``tta`` the fidelity mode's mirroring, as in :func:`qdm_med.jobs.upscale.upscale`.
    """
    with collect_warnings() as warnings:
        return _evaluate(hr, scale, preset, bundle, report, preview, seed, steps, sampler, threshold, device, batch_size,
                         slices, output, quiet, overwrite, preview_slice, tile_size, amp, lpips_weights, series, force,
                         volume_index, fill_nonfinite, command_line, warnings, mode, tta)


def _evaluate(hr, scale, preset, bundle, report, preview, seed, steps, sampler, threshold, device, batch_size, slices, output,
              quiet, overwrite, preview_slice, tile_size, amp, lpips_weights, series, force, volume_index, fill_nonfinite,
              command_line, warnings, mode=None, tta=True) -> dict:
    t_start = time.perf_counter()
    scale = check_scale(scale)
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
    steps, sampler, threshold, stochastic = operating_point(model, mode, steps, sampler, threshold)
    apply_overrides(model, steps, sampler, threshold, stochastic, flip_ensemble=None if tta else False)
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
    result, stats = infer(spec.kind, model, lr_data, scale, batch_size, tile_size, dev, amp, quiet, seed,
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
    metrics = score(spec.kind, sr_arr, bicubic, hr_arr, model.window, lpips_weights, dev)
    if spec.kind == "volume":
        for name in ("model", "bicubic"):  # report original slice indices
            for row, k in zip(metrics[name]["per_slice"], ks):
                row["slice"] = k
    t_metrics = time.perf_counter() - t0

    rep: dict[str, Any] = out_.audit_fields("evaluate", command_line, seed, batch_size if spec.kind == "volume" else None)
    rep["scale"] = scale
    rep.update(out_.model_section(model, stats, thr, {"steps": steps, "sampler": sampler, "mode": mode or "fidelity"}))
    rep["degradation"] = {"preset": preset, "seed": int(seed), "per_slice_seed": "seed + slice index"}
    if spec.kind == "volume":
        rep["input"] = out_.volume_summary(source, spec.path, spec.fmt, frame=frame, hu_range=True)
        rep["input"]["evaluated_shape"] = list(hr_arr.shape)
        rep["slices"] = ks
        rep["output"] = out_.volume_summary(result if out_path is None else frame.from_axial(result), out_path, out_fmt, hu_range=True)
    else:
        rep["input"] = {"path": str(spec.path), "format": "image", "shape": list(np.asarray(data).shape),
                        "evaluated_shape": list(hr_arr.shape)}
        rep["output"] = {"shape": list(np.asarray(result).shape), "path": None if out_path is None else str(out_path), "format": out_fmt}
    rep["metrics"] = metrics
    rep["timings"] = {
        "load": t_load,
        "degrade": t_degrade,
        "inference": t_inf,
        "write": t_write,
        "metrics": t_metrics,
        "inference_detail": stats["timings"],
    }
    if preview_path is not None:
        from qdm_med.jobs.preview import write_preview

        local = None
        if preview_slice is not None and spec.kind == "volume":
            if int(preview_slice) not in ks:
                raise ConfigError(f"preview slice {preview_slice} is not among the evaluated slices")
            local = ks.index(int(preview_slice))
        rep["preview"] = write_preview(
            preview_path,
            spec.kind,
            lr_data,
            bicubic,
            result,
            hr_arr,
            scale,
            model.window,
            thr,
            slice_index=local,
            overwrite=overwrite,
        )
        if spec.kind == "volume":
            rep["preview"]["slice"] = ks[rep["preview"]["slice"]]
    rep["timings"]["total"] = time.perf_counter() - t_start
    return finish(rep, warnings, report_path, overwrite)
