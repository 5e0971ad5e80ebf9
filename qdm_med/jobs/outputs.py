"""Output side of the user jobs: writing the result atomically, the bicubic baselines, and the report.

The report a user can audit (:func:`audit_fields`, :func:`model_section`, :func:`volume_summary`): the
command line and a UTC timestamp, versions, the bundle's version and weights SHA-256, seed and batch size,
input orientation and affine, output shape, spacing and HU range, and every warning printed during the job.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
import torch

from qdm_med._atomic import atomic_path
from qdm_med.errors import InputError, QDMError
from qdm_med.reports.json_report import to_jsonable

__all__ = [
    "save_result", "bicubic_hu", "bicubic_image", "align_reference", "model_section", "volume_summary", "audit_fields",
    "write_report",
]


# ----------------------------------------------------------------------------------------------- writing
def save_result(result, out_path: Path, fmt: str, scale: int, overwrite: bool, alpha=None, bit_depth: int = 8,
                dicom_geometry_scale: float | None = None, derivation: str | None = None) -> None:
    """Write an SR volume (nifti/nrrd/mha/dicom) or image (png) atomically.

    Args:
        alpha / bit_depth: for pictures (see :func:`qdm_med.io.images.save_image`).
        dicom_geometry_scale: in-plane factor between ``result.dicom_headers`` and ``result`` (default
            ``scale``; 1 when the headers are those of the high-resolution scan, as in ``evaluate``).
        derivation: DerivationDescription of a DICOM output.
    Errors name ``out_path``, never the temporary file.
    """
    with atomic_path(out_path, overwrite) as tmp:
        try:
            _write(result, tmp, fmt, scale, alpha, bit_depth, dicom_geometry_scale, derivation)
        except QDMError as err:
            raise type(err)(str(err).replace(str(tmp), str(out_path))) from None


def _write(result, tmp: Path, fmt: str, scale: int, alpha, bit_depth, geometry_scale, derivation) -> None:
    if fmt == "png":
        from qdm_med.io.images import save_image

        save_image(result, tmp, overwrite=False, bit_depth=bit_depth, alpha=alpha)
    elif fmt == "dicom":
        from qdm_med.io import write_dicom_series

        meta = result.meta if isinstance(result.meta, dict) else {}
        write_dicom_series(result, tmp, scale if geometry_scale is None else geometry_scale, result.dicom_headers,
                           overwrite=False, description_suffix=f" SR x{scale}", derivation_description=derivation,
                           study_template=None if result.dicom_headers is not None else meta.get("dicom_study_template"))
    else:
        from qdm_med.io import save_volume

        save_volume(result, tmp, overwrite=False)


def bicubic_hu(lr_hu: np.ndarray, scale: int, batch: int = 8) -> np.ndarray:
    """Bicubic upsampling of an (X, Y, Z) HU array in-plane (unclipped), as (X*s, Y*s, Z) float32."""
    from qdm_med.transforms import bicubic_upsample

    nx, ny, nz = lr_hu.shape
    out = np.empty((nx * scale, ny * scale, nz), dtype=np.float32)
    with torch.inference_mode():
        for k0 in range(0, nz, batch):
            k1 = min(k0 + batch, nz)
            x = torch.from_numpy(np.ascontiguousarray(np.transpose(lr_hu[:, :, k0:k1], (2, 1, 0)), dtype=np.float32))
            up = torch.as_tensor(bicubic_upsample(x[:, None], scale)).float()
            out[:, :, k0:k1] = np.transpose(up[:, 0].numpy(), (2, 1, 0))
    return out


def bicubic_image(lr: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic upsampling of a (C, H, W) picture in [0, 1], clipped to [0, 1]."""
    from qdm_med.transforms import bicubic_upsample

    with torch.inference_mode():
        up = torch.as_tensor(bicubic_upsample(torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32))[None], scale))
    return up[0].float().clamp(0.0, 1.0).numpy()


def align_reference(ref_arr: np.ndarray, shape: tuple, ref_path: Path) -> np.ndarray:
    """The reference cropped at the end to ``shape`` (``degrade`` crops trailing pixels the same way)."""
    if ref_arr.shape == tuple(shape):
        return ref_arr
    if ref_arr.ndim == len(shape) and all(r >= s for r, s in zip(ref_arr.shape, shape)) and all(
        r - s < 64 for r, s in zip(ref_arr.shape, shape)
    ):
        return ref_arr[tuple(slice(0, s) for s in shape)]
    raise InputError(f"{ref_path}: reference shape {ref_arr.shape} does not match the SR output {tuple(shape)}")


# ----------------------------------------------------------------------------------------------- report
def audit_fields(command: str, command_line: str | None, seed: int, batch_size: int | None) -> dict:
    """Report header: command, command line, UTC timestamp, versions, seed, batch size."""
    from qdm_med.reports import versions

    return {
        "command": command,
        "command_line": command_line,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "seed": int(seed),
        "batch_size": None if batch_size is None else int(batch_size),
    }


def model_section(model, stats: dict, threshold: float, overrides: dict) -> dict:
    """Bundle (name, path, window, version, weights SHA-256), sampling settings, mask density, MACs, device."""
    from qdm_med.jobs.resolve import bundle_identity

    info = stats.get("pipeline", {})
    bundle = {"name": model.name, "path": model.path, "window": list(model.window)}
    bundle.update(bundle_identity(model.path))
    return {
        "bundle": bundle,
        "mode": overrides.get("mode"),
        "sampler": overrides.get("sampler") or info.get("sampler"),
        "steps": overrides.get("steps") if overrides.get("steps") is not None else info.get("steps"),
        "threshold": threshold if model.name != "bicubic" else None,
        "stochastic": info.get("stochastic"),
        "flip_ensemble": info.get("flip_ensemble"),
        "mask_density": info.get("mask_density"),
        "macs": info.get("macs"),
        "pipeline_info": info,
        "device": stats.get("device"),
        "amp": stats.get("amp"),
        "tile_size": stats.get("tile_size"),
        "per_slice_seed": None if stats.get("seed") is None else "own stream per (seed, slice, tile)",
    }


def volume_summary(vol, path: Path | None = None, fmt: str | None = None, frame=None, hu_range: bool = False) -> dict:
    """Shape, spacing, orientation codes, affine (voxel -> RAS mm), optionally HU min/max, of a volume."""
    from qdm_med.io.orientation import axis_codes

    arr = np.asarray(vol.array)
    out = {
        "shape": list(arr.shape),
        "spacing": [float(x) for x in np.asarray(vol.spacing)],
        "orientation": axis_codes(vol.affine),
        "affine": np.asarray(vol.affine, dtype=np.float64).round(6).tolist(),
    }
    if frame is not None:
        out["axial_frame"] = frame.describe()
    if hu_range and arr.size:
        out["hu_range"] = [float(arr.min()), float(arr.max())]
    if path is not None:
        out["path"] = str(path)
    if fmt is not None:
        out["format"] = fmt
    return out


def write_report(report: dict, path: Path | None, overwrite: bool) -> None:
    if path is None:
        return
    from qdm_med.reports import write_json_report

    write_json_report(to_jsonable(report), path, overwrite=overwrite)
