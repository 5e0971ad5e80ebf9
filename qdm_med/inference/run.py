"""The user jobs behind ``qdm-med upscale``, ``qdm-med evaluate`` and ``qdm-med mask``.

Each function does the whole job and returns a JSON-ready report dict. Every user mistake is raised as
a one-line :class:`~qdm_med.errors.QDMError` (``InputError`` / ``OutputError`` / ``ConfigError``) and is
detected *before* the heavy work: input kind and extension, output/report/preview paths (existing
without ``overwrite``, unwritable folder), then the input itself (missing, truncated, 4D, RGB volume),
then the bundle and its scale. Every file is written through :func:`qdm_med._atomic.atomic_path`, so an
error or Ctrl-C leaves no partial output.

Models: ``bundle`` is a bundle folder (loaded with :func:`qdm_med.inference.bundle.load_bundle`), None
for the shipped bundle of the input's kind and scale (``bundles/qdm_ct_x{s}``, ``bundles/qdm_natural_x{s}``
next to the package, or under ``$QDM_MED_BUNDLES``), the string ``"bicubic"`` for the bicubic baseline
(any scale), or -- programmatic use -- an already loaded bundle / SR module.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from qdm_med._atomic import atomic_path, check_output_path
from qdm_med.errors import ConfigError, InputError, OutputError, QDMError
from qdm_med.inference.volume import DEFAULT_WINDOW, SliceWiseInferencer, resolve_device, upscale_image

logger = logging.getLogger("qdm_med")

__all__ = [
    "InputSpec",
    "ResolvedModel",
    "detect_input",
    "plan_output",
    "resolve_model",
    "default_bundle_dir",
    "upscale",
    "evaluate",
    "make_mask_picture",
]

VOLUME_SUFFIXES = {".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".mha": "mha", ".mhd": "mha", ".dcm": "dicom"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
FORMATS = ("nifti", "nrrd", "mha", "dicom", "png")
FORMAT_SUFFIX = {"nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha", "png": ".png", "dicom": ""}
DEFAULT_THRESHOLD = 0.15


# ----------------------------------------------------------------------------------------------- paths
def _suffix(path: Path) -> str:
    """Lower-case suffix, ``.nii.gz`` counted as one."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def _stem(path: Path) -> str:
    suf = _suffix(path)
    return path.name[: len(path.name) - len(suf)] if suf else path.name


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the input path is: ``kind`` "volume" or "image", ``fmt`` one of :data:`FORMATS`."""

    path: Path
    kind: str
    fmt: str


def detect_input(path: str | os.PathLike) -> InputSpec:
    """Classify an input path without reading it (InputError when missing, empty or of unknown type)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_dir():
        if not any(p.iterdir()):
            raise InputError(f"{p}: folder is empty (expected a DICOM series)")
        return InputSpec(p, "volume", "dicom")
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: file is not readable (permission denied)")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: file is empty")
    suf = _suffix(p)
    if suf in VOLUME_SUFFIXES:
        return InputSpec(p, "volume", VOLUME_SUFFIXES[suf])
    if suf in IMAGE_SUFFIXES:
        return InputSpec(p, "image", "png")
    raise InputError(
        f"{p}: unsupported file type {suf or '(no extension)'!r}; expected NIfTI (.nii, .nii.gz), NRRD (.nrrd), "
        "MetaImage (.mha, .mhd), DICOM (folder or .dcm) or an image (.png, .jpg, .tif)"
    )


def _format_of_output(path: Path) -> str | None:
    suf = _suffix(path)
    if suf in IMAGE_SUFFIXES:
        return "png"
    if suf in VOLUME_SUFFIXES and suf != ".dcm":
        return VOLUME_SUFFIXES[suf]
    if suf == "":
        return "dicom"
    return None


def plan_output(spec: InputSpec, output: str | os.PathLike | None, fmt: str | None, scale: int) -> tuple[Path, str]:
    """The output path and format: ``fmt`` or the output's extension or the input's kind; default path
    next to the input, named ``<stem>_sr_x{scale}<ext>`` (a folder for DICOM)."""
    if fmt is not None:
        fmt = fmt.lower().strip().lstrip(".")
        fmt = {"nii": "nifti", "nii.gz": "nifti", "dcm": "dicom", "image": "png", "mhd": "mha"}.get(fmt, fmt)
        if fmt not in FORMATS:
            raise ConfigError(f"format {fmt!r}: use one of nifti, nrrd, dicom, png")
    if output is not None:
        out = Path(output)
        out_fmt = _format_of_output(out)
        if out_fmt is None:
            raise ConfigError(f"{out}: unknown output extension {_suffix(out)!r}; use .nii.gz, .nrrd, .mha, .png or a folder for DICOM")
        if fmt is None:
            fmt = out_fmt
        elif fmt != out_fmt:
            raise ConfigError(f"{out}: extension does not match --format {fmt}")
    elif fmt is None:
        fmt = spec.fmt
    if spec.kind == "image" and fmt != "png":
        raise ConfigError(f"{spec.path}: an image input can only be written as an image (png), not {fmt}")
    if spec.kind == "volume" and fmt == "png":
        raise ConfigError(f"{spec.path}: a volume cannot be written as png; use nifti, nrrd or dicom")
    if output is None:
        ext = FORMAT_SUFFIX[fmt]
        if fmt == spec.fmt and fmt in ("nifti", "mha"):
            ext = _suffix(spec.path)  # keep .nii vs .nii.gz, .mha vs .mhd
            ext = ".mha" if ext == ".mhd" else ext
        out = spec.path.parent / f"{_stem(spec.path)}_sr_x{scale}{ext}"
    if out.resolve() == spec.path.resolve():
        raise OutputError(f"{out}: output would overwrite the input")
    return out, fmt


def _probe_writable(path: Path) -> None:
    """Create and delete a file next to ``path``: ``os.access`` says yes to root and on some network
    file systems even where the write would fail."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
    except OSError as err:
        raise OutputError(f"{path}: output folder {path.parent} is not writable ({err.strerror})") from None
    os.close(fd)
    os.unlink(name)


def _check_outputs(paths: Sequence[tuple[str, Path | None]], overwrite: bool) -> None:
    """Refuse existing/unwritable outputs and two outputs on the same path, before any work."""
    seen: dict[Path, str] = {}
    for what, p in paths:
        if p is None:
            continue
        parent = Path(p).parent
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{p}: {parent} is a file, not a folder")
        check_output_path(p, overwrite)
        _probe_writable(Path(p))
        key = Path(p).resolve()
        if key in seen:
            raise OutputError(f"{p}: used both as {seen[key]} and {what}")
        seen[key] = what


# ----------------------------------------------------------------------------------------------- loading
def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _load_volume(path: Path):
    """Load a CT volume; anything but a 3D scalar volume is an InputError."""
    from qdm_med.io import load_volume

    try:
        vol = load_volume(path)
    except QDMError:
        raise
    except (Exception, MemoryError) as err:  # truncated / corrupt files surface as library errors
        raise InputError(f"{path}: cannot read the volume ({_one_line(err)})") from None
    arr = np.asarray(vol.array)
    if arr.ndim == 4 and arr.shape[-1] in (3, 4):
        raise InputError(f"{path}: RGB volume (shape {arr.shape}) is not a CT volume")
    if arr.ndim != 3:
        raise InputError(f"{path}: {arr.ndim}D data (shape {arr.shape}) is not a CT volume")
    if arr.dtype.names is not None or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{path}: non-scalar voxels ({arr.dtype}) are not a CT volume")
    if min(arr.shape[:2]) < 2:
        raise InputError(f"{path}: in-plane size {arr.shape[:2]} is too small to upscale")
    return vol


def _load_image(path: Path) -> np.ndarray:
    from qdm_med.io.images import load_image

    try:
        img = load_image(path)
    except QDMError:
        raise
    except Exception as err:
        raise InputError(f"{path}: cannot read the image ({_one_line(err)})") from None
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise InputError(f"{path}: expected a gray or RGB image, got shape {img.shape}")
    return img


def _load(spec: InputSpec):
    return _load_image(spec.path) if spec.kind == "image" else _load_volume(spec.path)


# ----------------------------------------------------------------------------------------------- models
@dataclasses.dataclass
class ResolvedModel:
    """The SR callable and what the report says about it."""

    sr_fn: Any
    scale: int
    window: tuple[float, float]
    name: str
    path: str | None
    config: dict


def default_bundle_dir(kind: str, scale: int) -> Path:
    """The shipped bundle for ``kind`` ("volume"/"image") and ``scale``: ``qdm_ct_x{s}`` or
    ``qdm_natural_x{s}``, searched as :mod:`qdm_med.bundle_paths` says."""
    from qdm_med.bundle_paths import available_bundles, find_bundle

    name = f"qdm_{'natural' if kind == 'image' else 'ct'}_x{scale}"
    found = find_bundle(name)
    if found is not None:
        return found
    raise ConfigError(
        f"no shipped bundle {name} for x{scale} {'images' if kind == 'image' else 'CT'} "
        f"(available: {', '.join(available_bundles()) or 'none'}); pass --bundle DIR or --bundle bicubic"
    )


def _config_value(config: dict, *keys: str):
    for key in keys:
        if isinstance(config, dict) and key in config:
            return config[key]
    return None


def resolve_model(bundle, kind: str, scale: int, device: torch.device) -> ResolvedModel:
    """Load the SR model named by ``bundle`` (see module docstring) and check it supports ``scale``."""
    from qdm_med.inference.baseline import BicubicSR

    in_channels = 3 if kind == "image" else 1
    if isinstance(bundle, str) and bundle.lower() == "bicubic":
        return ResolvedModel(BicubicSR(scale, in_channels), scale, DEFAULT_WINDOW, "bicubic", None, {})
    if bundle is None or isinstance(bundle, (str, os.PathLike)):
        bundle_dir = Path(bundle) if bundle is not None else default_bundle_dir(kind, scale)
        if not bundle_dir.exists():
            raise ConfigError(f"{bundle_dir}: no such bundle folder")
        from qdm_med.inference.bundle import load_bundle

        try:
            loaded = load_bundle(bundle_dir, device)
        except QDMError:
            raise
        except Exception as err:
            raise ConfigError(f"{bundle_dir}: cannot load the bundle ({_one_line(err)})") from None
        name, path = bundle_dir.name, str(bundle_dir)
    else:
        loaded, name, path = bundle, type(bundle).__name__, None
    pipeline = getattr(loaded, "pipeline", loaded)
    config = dict(getattr(loaded, "config", None) or {})
    bscale = getattr(loaded, "scale", None) or getattr(pipeline, "scale", None)
    if bscale is not None and int(bscale) != int(scale):
        raise ConfigError(f"{path or name}: the bundle upscales x{int(bscale)}; x{scale} is not supported (pass a x{scale} bundle with --bundle)")
    window = getattr(loaded, "window", None) or DEFAULT_WINDOW
    return ResolvedModel(pipeline, int(scale), (float(window[0]), float(window[1])), name, path, config)


def _apply_overrides(model: ResolvedModel, steps, sampler, threshold) -> None:
    """Set sampling options on the pipeline (``configure(...)`` when it has one, else attributes)."""
    overrides = {k: v for k, v in (("steps", steps), ("sampler", sampler), ("threshold", threshold)) if v is not None}
    if not overrides or model.name == "bicubic":
        return
    pipe = model.sr_fn
    if steps is not None and int(steps) < 1:
        raise ConfigError(f"steps {steps}: must be >= 1")
    if threshold is not None and float(threshold) < 0:
        raise ConfigError(f"threshold {threshold}: must be >= 0")
    configure = getattr(pipe, "configure", None)
    if callable(configure):
        try:
            configure(**overrides)
        except QDMError:
            raise
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{model.name}: {_one_line(err)}") from None
        return
    for key, value in overrides.items():
        if not hasattr(pipe, key):
            raise ConfigError(f"{model.name}: this model has no {key!r} option")
        setattr(pipe, key, value)


def _model_threshold(model: ResolvedModel, override) -> float:
    if override is not None:
        return float(override)
    for obj in (model.sr_fn, getattr(model.sr_fn, "sampler", None)):
        value = getattr(obj, "threshold", None)
        if isinstance(value, (int, float)):
            return float(value)
    value = _config_value(model.config, "threshold")
    return float(value) if isinstance(value, (int, float)) else DEFAULT_THRESHOLD


# ----------------------------------------------------------------------------------------------- report
def _versions() -> dict[str, str]:
    import monai

    import qdm_med

    return {
        "qdm_med": qdm_med.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, torch.device):
        return str(obj)
    return obj


def _write_report(report: dict, path: Path | None, overwrite: bool) -> None:
    if path is None:
        return
    from qdm_med.reports import write_json_report

    write_json_report(_jsonable(report), path, overwrite=overwrite)


def _model_section(model: ResolvedModel, stats: dict, threshold: float, overrides: dict) -> dict:
    info = stats.get("pipeline", {})
    return {
        "bundle": {"name": model.name, "path": model.path, "window": list(model.window)},
        "sampler": overrides.get("sampler") or info.get("sampler"),
        "steps": overrides.get("steps") if overrides.get("steps") is not None else info.get("steps"),
        "threshold": threshold if model.name != "bicubic" else None,
        "mask_density": info.get("mask_density"),
        "macs": info.get("macs"),
        "pipeline_info": info,
        "device": stats.get("device"),
        "amp": stats.get("amp"),
    }


def _volume_summary(vol, path: Path | None = None, fmt: str | None = None) -> dict:
    arr = np.asarray(vol.array)
    out = {"shape": list(arr.shape), "spacing": [float(x) for x in np.asarray(vol.spacing)]}
    if path is not None:
        out["path"] = str(path)
    if fmt is not None:
        out["format"] = fmt
    return out


# ----------------------------------------------------------------------------------------------- writing
def _save_result(result, out_path: Path, fmt: str, scale: int, overwrite: bool) -> None:
    """Write an SR volume (nifti/nrrd/mha/dicom) or image (png) atomically."""
    with atomic_path(out_path, overwrite) as tmp:
        if fmt == "png":
            from qdm_med.io.images import save_image

            save_image(result, tmp, overwrite=False)
        elif fmt == "dicom":
            from qdm_med.io import write_dicom_series

            write_dicom_series(result, tmp, scale, result.dicom_headers, overwrite=False, description_suffix=f" SR x{scale}")
        else:
            from qdm_med.io import save_volume

            save_volume(result, tmp, overwrite=False)


def _bicubic_hu(lr_hu: np.ndarray, scale: int, batch: int = 8) -> np.ndarray:
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


def _bicubic_image(lr: np.ndarray, scale: int) -> np.ndarray:
    from qdm_med.transforms import bicubic_upsample

    with torch.inference_mode():
        up = torch.as_tensor(bicubic_upsample(torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32))[None], scale))
    return up[0].float().clamp(0.0, 1.0).numpy()


def _align_reference(ref_arr: np.ndarray, shape: tuple, ref_path: Path) -> np.ndarray:
    """The reference cropped at the end to ``shape`` (``degrade`` crops trailing pixels the same way)."""
    if ref_arr.shape == tuple(shape):
        return ref_arr
    if ref_arr.ndim == len(shape) and all(r >= s for r, s in zip(ref_arr.shape, shape)) and all(
        r - s < 64 for r, s in zip(ref_arr.shape, shape)
    ):
        return ref_arr[tuple(slice(0, s) for s in shape)]
    raise InputError(f"{ref_path}: reference shape {ref_arr.shape} does not match the SR output {tuple(shape)}")


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
) -> dict:
    """Upscale a CT volume (NIfTI, NRRD/MHA, DICOM folder) or an image (PNG/JPEG/TIFF) by ``scale``.

    Returns the report dict (also written to ``report`` as JSON when given). See the module docstring for
    the error handling; ``ref`` (an HR volume/image aligned with the output) adds metrics for the model
    and for bicubic.
    """
    t_start = time.perf_counter()
    scale = _check_scale(scale)
    spec = detect_input(input)
    out_path, out_fmt = plan_output(spec, output, fmt, scale)
    report_path = Path(report) if report is not None else None
    preview_path = Path(preview) if preview is not None else None
    ref_spec = detect_input(ref) if ref is not None else None
    _check_outputs([("output", out_path), ("report", report_path), ("preview", preview_path)], overwrite)
    dev = resolve_device(device)
    if int(batch_size) < 1:
        raise ConfigError(f"batch size {batch_size}: must be >= 1")

    t0 = time.perf_counter()
    data = _load(spec)
    if out_fmt == "dicom" and spec.kind == "volume" and not getattr(data, "dicom_headers", None):
        logger.info("%s: no DICOM headers in the input; the writer derives the series from the geometry", spec.path)
    reference = _load(ref_spec) if ref_spec is not None else None
    if ref_spec is not None and ref_spec.kind != spec.kind:
        raise InputError(f"{ref_spec.path}: reference is an {ref_spec.kind}, the input is an {spec.kind}")
    model = resolve_model(bundle, spec.kind, scale, dev)
    _apply_overrides(model, steps, sampler, threshold)
    overrides = {"steps": steps, "sampler": sampler}
    thr = _model_threshold(model, threshold)
    t_load = time.perf_counter() - t0

    torch.manual_seed(int(seed))
    t0 = time.perf_counter()
    if spec.kind == "volume":
        inferencer = SliceWiseInferencer(
            model.sr_fn, scale, window=model.window, batch_size=batch_size, tile_size=tile_size,
            device=dev, amp=amp, progress=not quiet, seed=seed,
        )
        result, stats = inferencer.infer(data)
    else:
        result, stats = upscale_image(
            data, model.sr_fn, scale, tile_size=tile_size, device=dev, amp=amp, progress=not quiet,
            seed=seed, return_stats=True,
        )
    t_inf = time.perf_counter() - t0

    t0 = time.perf_counter()
    _save_result(result, out_path, out_fmt, scale, overwrite)
    t_write = time.perf_counter() - t0

    rep: dict[str, Any] = {"command": "upscale", "versions": _versions(), "seed": int(seed), "scale": scale}
    rep.update(_model_section(model, stats, thr, overrides))
    if spec.kind == "volume":
        rep["input"] = _volume_summary(data, spec.path, spec.fmt)
        rep["output"] = _volume_summary(result, out_path, out_fmt)
    else:
        rep["input"] = {"path": str(spec.path), "format": "image", "shape": list(data.shape)}
        rep["output"] = {"path": str(out_path), "format": out_fmt, "shape": list(result.shape)}
    rep["timings"] = {"load": t_load, "inference": t_inf, "write": t_write, "inference_detail": stats["timings"]}

    bicubic = None
    if reference is not None or preview_path is not None:
        bicubic = _bicubic_hu(np.asarray(data.array, np.float32), scale) if spec.kind == "volume" else _bicubic_image(data, scale)
    ref_arr = None
    if reference is not None:
        t0 = time.perf_counter()
        out_arr = result.array if spec.kind == "volume" else result
        ref_arr = _align_reference(np.asarray(getattr(reference, "array", reference), np.float32), out_arr.shape, ref_spec.path)
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
    _write_report(rep, report_path, overwrite)
    if report_path is not None:
        rep["report"] = str(report_path)
    return _jsonable(rep)


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
    from qdm_med.inference.scoring import SliceScorer, load_lpips_or_none

    lp = load_lpips_or_none(lpips_weights, device)
    scorer = SliceScorer(window, lp, device)
    out: dict[str, Any] = {"lpips": "available" if lp is not None else "unavailable", "window": list(window)}
    for name, pred in (("model", sr), ("bicubic", bicubic)):
        if kind == "volume":
            per_slice, overall = scorer.score_ct_volume(np.asarray(pred), np.asarray(ref), slices)
            out[name] = {"overall": overall, "per_slice": per_slice}
        else:
            out[name] = {"overall": scorer.score_image(pred, ref)}
    return out


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
) -> dict:
    """Simulate the LR input from an HR volume or image, upscale it, and score model and bicubic.

    The LR is made with :mod:`qdm_med.simulate` (seeded :class:`qdm_med.transforms.DegradationPipeline`;
    CT slice ``k`` uses seed ``seed + k``, so scoring a subset ``slices`` reproduces the same LR slices as
    the whole volume). HR in-plane sizes are cropped at the end to a multiple of ``scale``. ``preset``
    None picks ``medical_test`` for CT and ``natural`` for images. ``output`` optionally saves the SR
    result (format from its extension).
    """
    from qdm_med.simulate import crop_to_multiple, degrade_image, degrade_volume

    t_start = time.perf_counter()
    scale = _check_scale(scale)
    spec = detect_input(hr)
    report_path = Path(report) if report is not None else None
    preview_path = Path(preview) if preview is not None else None
    out_path = out_fmt = None
    if output is not None:
        out_path, out_fmt = plan_output(spec, output, None, scale)
    _check_outputs([("output", out_path), ("report", report_path), ("preview", preview_path)], overwrite)
    dev = resolve_device(device)
    if preset is None:
        preset = "natural" if spec.kind == "image" else "medical_test"

    t0 = time.perf_counter()
    data = _load(spec)
    model = resolve_model(bundle, spec.kind, scale, dev)
    _apply_overrides(model, steps, sampler, threshold)
    thr = _model_threshold(model, threshold)
    t_load = time.perf_counter() - t0

    t0 = time.perf_counter()
    if spec.kind == "volume":
        name = str(spec.path)
        hr_arr = crop_to_multiple(np.asarray(data.array, np.float32), scale, (0, 1), name)
        nz = hr_arr.shape[2]
        ks = list(range(nz)) if slices is None else [int(k) for k in slices]
        bad = [k for k in ks if not 0 <= k < nz]
        if bad or not ks:
            raise ConfigError(f"{spec.path}: slice indices {bad or ks} outside 0..{nz - 1}")
        hr_vol = dataclasses.replace(data, array=hr_arr)
        if slices is None:
            lr_vol = degrade_volume(hr_vol, scale, preset=preset, seed=seed)
        else:  # slice by slice so slice k keeps seed + k
            parts = [
                degrade_volume(dataclasses.replace(hr_vol, array=hr_arr[:, :, k : k + 1]), scale, preset=preset, seed=seed + k)
                for k in ks
            ]
            lr_vol = dataclasses.replace(parts[0], array=np.concatenate([p.array for p in parts], axis=2))
            hr_arr = hr_arr[:, :, ks]
    else:
        hr_arr = crop_to_multiple(np.asarray(data, np.float32), scale, (1, 2), str(spec.path))
        lr_img = degrade_image(hr_arr, scale, preset=preset, seed=seed, name=str(spec.path))
    t_degrade = time.perf_counter() - t0

    torch.manual_seed(int(seed))
    t0 = time.perf_counter()
    if spec.kind == "volume":
        inferencer = SliceWiseInferencer(
            model.sr_fn, scale, window=model.window, batch_size=batch_size, tile_size=tile_size,
            device=dev, amp=amp, progress=not quiet, seed=seed,
        )
        result, stats = inferencer.infer(lr_vol)
        sr_arr = result.array
        lr_data = lr_vol
        bicubic = _bicubic_hu(np.asarray(lr_vol.array, np.float32), scale)
    else:
        result, stats = upscale_image(
            lr_img, model.sr_fn, scale, tile_size=tile_size, device=dev, amp=amp, progress=not quiet,
            seed=seed, return_stats=True,
        )
        sr_arr = result
        lr_data = lr_img
        bicubic = _bicubic_image(lr_img, scale)
    t_inf = time.perf_counter() - t0

    t_write = 0.0
    if out_path is not None:
        t0 = time.perf_counter()
        if spec.kind == "volume" and slices is not None and ks != list(range(ks[0], ks[0] + len(ks))):
            raise ConfigError("--output with non-contiguous --slices has no single geometry; drop one of them")
        _save_result(result, out_path, out_fmt, scale, overwrite)
        t_write = time.perf_counter() - t0

    t0 = time.perf_counter()
    metrics = _score(spec.kind, sr_arr, bicubic, hr_arr, model.window, lpips_weights, dev)
    if spec.kind == "volume":
        for name in ("model", "bicubic"):  # report original slice indices
            for row, k in zip(metrics[name]["per_slice"], ks):
                row["slice"] = k
    t_metrics = time.perf_counter() - t0

    rep: dict[str, Any] = {"command": "evaluate", "versions": _versions(), "seed": int(seed), "scale": scale}
    rep.update(_model_section(model, stats, thr, {"steps": steps, "sampler": sampler}))
    rep["degradation"] = {"preset": preset, "seed": int(seed), "per_slice_seed": "seed + slice index"}
    if spec.kind == "volume":
        rep["input"] = _volume_summary(data, spec.path, spec.fmt)
        rep["input"]["evaluated_shape"] = list(hr_arr.shape)
        rep["slices"] = ks
    else:
        rep["input"] = {"path": str(spec.path), "format": "image", "shape": list(np.asarray(data).shape), "evaluated_shape": list(hr_arr.shape)}
    if out_path is not None:
        rep["output"] = {"path": str(out_path), "format": out_fmt}
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
    _write_report(rep, report_path, overwrite)
    if report_path is not None:
        rep["report"] = str(report_path)
    return _jsonable(rep)


# ----------------------------------------------------------------------------------------------- mask
def make_mask_picture(
    input: str | os.PathLike,
    threshold: float,
    output: str | os.PathLike,
    slice_index: int | None = None,
    window: Sequence[float] = DEFAULT_WINDOW,
    overwrite: bool = False,
) -> dict:
    """Draw the recursive quadtree partition of an LR slice (or image) at ``threshold`` and write it.

    ``threshold`` is on the model's [-1, 1] scale (SPEC section 2). The reported ``density`` is the
    fraction of active 2x2-LR-pixel blocks of Algorithm 1 (the model mask for x4 and x8), i.e. the share
    of the image the sparse model refines.
    """
    from qdm_med.inference.preview import quadtree_picture

    if threshold is None or float(threshold) < 0:
        raise ConfigError(f"threshold {threshold}: must be >= 0")
    spec = detect_input(input)
    out = Path(output)
    if _format_of_output(out) != "png":
        raise ConfigError(f"{out}: the mask picture is an image; use a .png output")
    _check_outputs([("output", out)], overwrite)
    data = _load(spec)
    picture, info = quadtree_picture(spec.kind, data, float(threshold), window, slice_index)
    with atomic_path(out, overwrite) as tmp:
        from qdm_med.io.images import save_image

        save_image(picture, tmp, overwrite=False)
    info.update({"input": str(spec.path), "output": str(out), "threshold": float(threshold)})
    return _jsonable(info)
