"""Input side of the user jobs: what the input and output paths are, and loading the input.

Paths: :func:`detect_input` classifies the input without reading it, :func:`plan_output` picks the output
path and format, :func:`check_outputs` refuses existing/unwritable outputs before any work.

Loading: :func:`load_volume_input` reads a CT volume (``series``/``force``/``volume_index`` as the readers
take them), refuses non-finite voxels unless a fill value is given (:func:`qdm_med.io.checks.check_finite`),
warns when it does not look like CT, and finds its :class:`~qdm_med.io.orientation.AxialFrame`; the jobs
run the model on ``frame.to_axial(volume)`` and write ``frame.from_axial(result)``. :func:`load_image_input`
reads a picture with its alpha channel and bit depth (:class:`ImageInput`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from qdm_med._atomic import check_output_path
from qdm_med.errors import ConfigError, InputError, OutputError, QDMError
from qdm_med.io._util import IMAGE_SUFFIXES, one_line, suffix_of

__all__ = [
    "VOLUME_SUFFIXES", "IMAGE_SUFFIXES", "FORMATS", "InputSpec", "ImageInput", "detect_input", "format_of_output",
    "plan_output", "check_outputs", "one_line", "check_load_options", "load_volume_input", "load_image_input", "load_reference",
]

VOLUME_SUFFIXES = {".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "mha", ".mhd": "mha", ".dcm": "dicom"}
FORMATS = ("nifti", "nrrd", "mha", "dicom", "png")
FORMAT_SUFFIX = {"nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha", "png": ".png", "dicom": ""}


# ----------------------------------------------------------------------------------------------- paths
def _stem(path: Path) -> str:
    suf = suffix_of(path)
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
    suf = suffix_of(p)
    if suf in VOLUME_SUFFIXES:
        return InputSpec(p, "volume", VOLUME_SUFFIXES[suf])
    if suf in IMAGE_SUFFIXES:
        return InputSpec(p, "image", "png")
    raise InputError(
        f"{p}: unsupported file type {suf or '(no extension)'!r}; expected NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), "
        "MetaImage (.mha, .mhd), DICOM (folder or .dcm) or an image (.png, .jpg, .tif)"
    )


def format_of_output(path: Path) -> str | None:
    suf = suffix_of(path)
    if suf in IMAGE_SUFFIXES:
        return "png"
    if suf in VOLUME_SUFFIXES and suf not in (".dcm", ".nhdr"):  # .nhdr (detached header) is read, not written
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
        out_fmt = format_of_output(out)
        if out_fmt is None:
            raise ConfigError(f"{out}: unknown output extension {suffix_of(out)!r}; use .nii.gz, .nrrd, .mha, .png or a folder for DICOM")
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
            ext = suffix_of(spec.path)  # keep .nii vs .nii.gz, .mha vs .mhd
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


def check_outputs(paths: Sequence[tuple[str, Path | None]], overwrite: bool) -> None:
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
def load_volume_input(path: Path, series: str | None = None, force: bool = False, volume_index: int | None = None,
                      fill: float | None = None):
    """Load a CT volume for the model: ``(volume, frame)``.

    ``volume`` is in the input's own storage, finite (non-finite voxels refused, or replaced by ``fill``);
    ``frame`` (:class:`~qdm_med.io.orientation.AxialFrame`) maps it to axial storage and back. Warns when
    the volume does not look like CT. Anything but a 3D scalar volume, too oblique or too small in-plane
    is an InputError.
    """
    from qdm_med.io import load_volume
    from qdm_med.io.checks import check_finite, ct_warnings
    from qdm_med.io.orientation import axial_frame

    if volume_index is not None and int(volume_index) < 0:
        raise ConfigError(f"--volume-index {volume_index}: must be >= 0")
    try:
        vol = load_volume(path, series=series, force=force, volume_index=volume_index)
    except QDMError:
        raise
    except (Exception, MemoryError) as err:  # truncated / corrupt files surface as library errors
        raise InputError(f"{path}: cannot read the volume ({one_line(err)})") from None
    arr = np.asarray(vol.array)
    if arr.ndim == 4 and arr.shape[-1] in (3, 4):
        raise InputError(f"{path}: RGB volume (shape {arr.shape}) is not a CT volume")
    if arr.ndim != 3:
        raise InputError(f"{path}: {arr.ndim}D data (shape {arr.shape}) is not a CT volume")
    if arr.dtype.names is not None or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{path}: non-scalar voxels ({arr.dtype}) are not a CT volume")
    finite = check_finite(arr, str(path), fill)
    if finite is not arr:
        vol = dataclasses.replace(vol, array=finite)
    frame = axial_frame(vol.affine, str(path))
    in_plane = tuple(int(arr.shape[a]) for a in frame.perm[:2])
    if min(in_plane) < 2:
        raise InputError(f"{path}: in-plane size {in_plane} is too small to upscale")
    ct_warnings(vol.array, vol.meta, str(path))
    return vol, frame


@dataclasses.dataclass
class ImageInput:
    """A picture: ``data`` (C, H, W) float32 in [0, 1], C = 1 or 3; ``alpha`` (1, H, W) in [0, 1] or None;
    ``bit_depth`` of the stored samples (8 or 16)."""

    data: np.ndarray
    alpha: np.ndarray | None = None
    bit_depth: int = 8


def load_image_input(path: Path, fill: float | None = None) -> ImageInput:
    """Read a picture with its alpha channel and bit depth (InputError for anything else)."""
    from qdm_med.io.checks import check_finite
    from qdm_med.io.images import load_image

    try:
        img, info = load_image(path, return_info=True)
    except QDMError:
        raise
    except Exception as err:
        raise InputError(f"{path}: cannot read the image ({one_line(err)})") from None
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise InputError(f"{path}: expected a gray or RGB image, got shape {img.shape}")
    img = check_finite(img, str(path), fill, unit="pixel")
    return ImageInput(img, info.get("alpha"), int(info.get("bit_depth", 8)))


def load_reference(spec: InputSpec, fill: float | None = None):
    """The ``--ref`` volume in axial storage, or the reference picture (C, H, W)."""
    if spec.kind == "image":
        return load_image_input(spec.path, fill).data
    vol, frame = load_volume_input(spec.path, fill=fill)
    return frame.to_axial(vol)


def check_load_options(spec: InputSpec, series, force, volume_index) -> None:
    """--series/--force/--volume-index are for CT volumes (ConfigError for a picture)."""
    if spec.kind == "image" and (series is not None or force or volume_index is not None):
        raise ConfigError(f"{spec.path}: --series, --force and --volume-index apply to CT volumes, not images")
