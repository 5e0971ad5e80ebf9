"""Reading CT from DICOM: listing the series in a folder and loading one series (or one file) as a Volume.

Slices are ordered by their position along the slice normal (ImageOrientationPatient row x column
direction), not by InstanceNumber. RescaleSlope/Intercept (or a Modality LUT) turn stored values into HU.
Compressed transfer syntaxes decode through pydicom's pixel handlers (JPEG 2000 via pylibjpeg-openjpeg).

Defined behaviour for awkward input (every message is one line naming the file or folder):

========================================  =========================================================
folder with several image series          InputError listing each series (SeriesNumber, UID,
                                          description, slice count); pick one with ``series``
                                          (UID, unique UID prefix or SeriesNumber)
non-CT modality                           InputError, or a warning with ``force=True``
missing slices (a step > 1.5x the         InputError naming the gap, or with ``force=True`` a
smallest step)                            warning: slices kept, affine uses the regular step
uneven slice spacing (no gap)             warning; slices kept, affine uses the mean step (first and
                                          last slice exact); ``dicom_headers`` keep every true position
mixed orientations in one series          InputError
two slices at one position                InputError (same SOPInstanceUID: duplicate file, dropped
                                          with a warning)
slices of different size/pixel spacing    InputError
RGB / colour DICOM                        InputError
multi-frame (enhanced) DICOM              InputError (not supported)
single slice (2D)                         Z=1 volume; slice step from SpacingBetweenSlices or
                                          SliceThickness (else 1 mm) along the normal
unreadable / truncated file               InputError naming that file
========================================  =========================================================
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from qdm_med.errors import InputError
from qdm_med.io._util import as_int, float_vector, has_dicm_preamble, logger, one_line, warn
from qdm_med.io.geometry import dicom_affine
from qdm_med.io.types import Volume

__all__ = ["DicomSeriesInfo", "list_dicom_series", "load_dicom", "PIXEL_DATA_KEYWORDS"]

#: Elements holding pixel data; removed from the headers kept in ``Volume.dicom_headers``.
PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData", "DataSetTrailingPadding")

_ORIENTATION_TOL = 1e-4  # direction cosines written with 6+ decimals agree to this
_GAP_RATIO = 1.5  # a step this many times the median step means at least one slice is missing
_UNEVEN_REL, _UNEVEN_ABS = 0.01, 0.01  # spacing spread tolerated silently: 1 % of the step + 0.01 mm


@dataclasses.dataclass
class DicomSeriesInfo:
    """One series found in a folder (from headers only, no pixel data read)."""

    series_uid: str
    series_number: int | None
    description: str
    modality: str
    study_uid: str
    files: list[Path]
    n_images: int  # instances with pixel data (Rows/Columns present)

    @property
    def n_slices(self) -> int:
        return self.n_images

    @property
    def is_image(self) -> bool:
        return self.n_images > 0

    def describe(self) -> str:
        """Short one-line description used in messages."""
        num = "?" if self.series_number is None else str(self.series_number)
        return f"#{num} {self.series_uid} '{self.description}' ({self.n_images} slices, {self.modality or 'no modality'})"


def _read_header(path: Path):
    """Header of a DICOM file (no pixel data), or None when the file is not DICOM at all."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return None
    except Exception as err:
        if has_dicm_preamble(path):
            raise InputError(f"{path}: unreadable DICOM header, file truncated or corrupt ({one_line(err)})") from None
        return None


def _iter_files(folder: Path):
    """Regular files under ``folder`` (recursively), skipping hidden names (e.g. partial outputs)."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeriesInfo]:
    """All DICOM series under ``folder`` (searched recursively; non-DICOM files are ignored).

    Returns:
        One :class:`DicomSeriesInfo` per SeriesInstanceUID, sorted by SeriesNumber then UID; series without
        images (e.g. structured reports, RT structures, DICOMDIR) have ``n_images == 0``.
    Raises:
        InputError: the folder is missing, or a file with a DICOM preamble cannot be parsed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    groups: dict[str, DicomSeriesInfo] = {}
    for f in _iter_files(folder):
        ds = _read_header(f)
        if ds is None:
            logger.debug("%s: not a DICOM file, ignored", f)
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        info = groups.get(uid)
        if info is None:
            info = groups[uid] = DicomSeriesInfo(
                series_uid=uid,
                series_number=as_int(ds.get("SeriesNumber")),
                description=str(ds.get("SeriesDescription", "") or ""),
                modality=str(ds.get("Modality", "") or ""),
                study_uid=str(ds.get("StudyInstanceUID", "") or ""),
                files=[],
                n_images=0,
            )
        info.files.append(f)
        if "Rows" in ds and "Columns" in ds:
            info.n_images += 1
    return sorted(groups.values(), key=lambda i: (i.series_number is None, i.series_number or 0, i.series_uid))


def _select_series(folder: Path, infos: list[DicomSeriesInfo], series: str | None) -> DicomSeriesInfo:
    """Pick the series to load: the only image series, or the one ``series`` names."""
    listing = "; ".join(i.describe() for i in infos)
    if series is None:
        if len(infos) == 1:
            return infos[0]
        raise InputError(
            f"{folder}: holds {len(infos)} DICOM series; pick one with --series (SeriesNumber, SeriesInstanceUID, "
            f"UID prefix or SeriesDescription): {listing}"
        )
    key = str(series).strip()
    exact = [i for i in infos if i.series_uid == key]
    if exact:
        return exact[0]
    if key.isdigit():
        by_number = [i for i in infos if i.series_number == int(key)]
        if len(by_number) == 1:
            return by_number[0]
        if len(by_number) > 1:
            raise InputError(
                f"{folder}: SeriesNumber {key} is used by {len(by_number)} series; pick one by UID: "
                + "; ".join(i.describe() for i in by_number)
            )
    prefixed = [i for i in infos if i.series_uid.startswith(key)]
    if len(prefixed) == 1:
        return prefixed[0]
    if len(prefixed) > 1:
        raise InputError(
            f"{folder}: --series {key!r} matches {len(prefixed)} series; give more of the UID: "
            + "; ".join(i.describe() for i in prefixed)
        )
    described = [i for i in infos if i.description.strip().casefold() == key.casefold()]
    if len(described) == 1:
        return described[0]
    if len(described) > 1:
        raise InputError(
            f"{folder}: SeriesDescription {key!r} is used by {len(described)} series; pick one by SeriesNumber or UID: "
            + "; ".join(i.describe() for i in described)
        )
    raise InputError(f"{folder}: no DICOM series matches --series {key!r}; available: {listing}")


def _check_pixels_module(path: Path, ds) -> None:
    samples = as_int(ds.get("SamplesPerPixel", 1)) or 1
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples > 1 or not photometric.startswith("MONOCHROME"):
        raise InputError(f"{path}: colour DICOM ({photometric}, {samples} samples per pixel) is not a CT image")
    frames = as_int(ds.get("NumberOfFrames", 1)) or 1
    if frames > 1:
        raise InputError(
            f"{path}: multi-frame DICOM ({frames} frames) is not supported; convert it to NIfTI (e.g. dcm2niix) first"
        )
    if "Rows" not in ds or "Columns" not in ds:
        raise InputError(f"{path}: DICOM file holds no image (no Rows/Columns)")


def _to_hu(path: Path, ds) -> np.ndarray:
    """Decode a slice and apply the modality transform; returns (rows, cols) float32 HU."""
    try:
        px = ds.pixel_array
    except Exception as err:  # truncated data, missing decoder, bad group 0028 values
        raise InputError(f"{path}: cannot decode pixel data, file truncated or corrupt ({one_line(err)})") from None
    if px.ndim != 2:
        raise InputError(f"{path}: expected one 2D image, decoded pixel data of shape {px.shape}")
    if "ModalityLUTSequence" in ds and "RescaleSlope" not in ds:
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(px, ds), dtype=np.float32)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return px.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _slice_step_mm(ds) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(ds.get(keyword))
        except (TypeError, ValueError):
            continue
        if np.isfinite(value) and value > 0:
            return value
    return 1.0


def _order_slices(label: Path, files: list[Path], datasets: list, force: bool, warnings: list[str]):
    """Sort slices along the normal and check their spacing.

    Returns:
        ``(order, iop, pixel_spacing, step, first_position, positions)``: indices into ``datasets`` in k order
        (duplicates dropped), unit ImageOrientationPatient, PixelSpacing (row, column), the LPS vector from
        slice k to k+1, the LPS position of slice 0 and the sorted positions along the normal (mm).
    """
    n = len(datasets)
    iops = [float_vector(ds, "ImageOrientationPatient", 6) for ds in datasets]
    ipps = [float_vector(ds, "ImagePositionPatient", 3) for ds in datasets]
    missing = [f for f, o, p in zip(files, iops, ipps) if o is None or p is None]
    if missing:
        if n > 1:
            raise InputError(
                f"{missing[0]}: no valid ImageOrientationPatient/ImagePositionPatient; the slices of {label} cannot be ordered"
            )
        warn(missing[0], "no ImageOrientationPatient/ImagePositionPatient; assuming an axial slice at the origin", warnings)
        iops, ipps = [np.array([1.0, 0, 0, 0, 1, 0])], [np.zeros(3)]

    iop = iops[0]
    distinct = {tuple(np.round(o, 4)) for o in iops}
    if any(np.max(np.abs(o - iop)) > _ORIENTATION_TOL for o in iops):
        raise InputError(
            f"{label}: mixed orientations in one series ({len(distinct)} different ImageOrientationPatient values); "
            "a volume must be one stack of parallel slices"
        )
    row_dir, col_dir = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    iop = np.concatenate([row_dir, col_dir])
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)

    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(sizes) > 1:
        raise InputError(f"{label}: slices of different sizes in one series ({sorted(sizes)})")
    spacings = [float_vector(ds, "PixelSpacing", 2) for ds in datasets]
    if any(s is None for s in spacings):
        warn(label, "no PixelSpacing; assuming 1 mm pixels", warnings)
        spacings = [np.ones(2)] * n
    if any(not np.allclose(s, spacings[0], rtol=1e-3, atol=1e-6) for s in spacings):
        raise InputError(f"{label}: slices with different PixelSpacing in one series")
    pixel_spacing = spacings[0]

    positions = np.array([float(p @ normal) for p in ipps])
    order = list(np.argsort(positions, kind="stable"))

    # Two slices at one position: a duplicated file is dropped, anything else is a mixed series.
    keep = [order[0]]
    for idx in order[1:]:
        prev = keep[-1]
        if abs(positions[idx] - positions[prev]) > 1e-3:
            keep.append(idx)
            continue
        same_sop = str(datasets[idx].get("SOPInstanceUID", "")) == str(datasets[prev].get("SOPInstanceUID", ""))
        if same_sop and datasets[idx].get("SOPInstanceUID"):
            warn(files[idx], f"duplicate of {files[prev].name} (same SOPInstanceUID); ignored", warnings)
            continue
        raise InputError(
            f"{label}: two slices at the same position {positions[idx]:.3f} mm ({files[prev].name}, {files[idx].name}); "
            "the series mixes acquisitions or time points"
        )
    order = keep
    d = positions[order]

    if len(order) == 1:
        step_mm = _slice_step_mm(datasets[order[0]])
        step = normal * step_mm
    else:
        steps = np.diff(d)
        # The smallest step is the nominal one: a step over 1.5x it means slices are missing there
        # (robust even when most steps are gaps, unlike the median).
        base = float(steps.min())
        gaps = np.nonzero(steps > _GAP_RATIO * base)[0]
        if gaps.size:
            regular = float(np.mean(steps[steps <= _GAP_RATIO * base]))
            g = int(gaps[0])
            missing_n = int(sum(max(1, round(steps[i] / regular) - 1) for i in gaps))
            text = (
                f"about {missing_n} missing slice(s): gap of {steps[g]:.4g} mm between {files[order[g]].name} and "
                f"{files[order[g + 1]].name} (slice step {regular:.4g} mm)"
                + (f" and {gaps.size - 1} more gap(s)" if gaps.size > 1 else "")
            )
            if not force:
                raise InputError(f"{label}: {text}; pass --force to load the slices present")
            warn(
                label,
                f"{text}; loading the slices present (--force): the affine uses the {regular:.4g} mm step, so positions "
                "past a gap are off (a derived DICOM series keeps each slice's true position)",
                warnings,
            )
            step_mm = regular
        else:
            step_mm = float((d[-1] - d[0]) / (len(d) - 1))
            spread = float(steps.max() - steps.min())
            if spread > _UNEVEN_REL * step_mm + _UNEVEN_ABS:
                err = float(np.max(np.abs(d - (d[0] + step_mm * np.arange(len(d))))))
                warn(
                    label,
                    f"uneven slice spacing ({steps.min():.4g} to {steps.max():.4g} mm); keeping all slices with the mean "
                    f"spacing {step_mm:.4g} mm (largest position error {err:.3g} mm; a derived DICOM series keeps each "
                    "slice's true position)",
                    warnings,
                )
        # Per mm along the normal, the IPPs move by this vector (tilted gantry: not parallel to the normal).
        per_mm = (ipps[order[-1]] - ipps[order[0]]) / (d[-1] - d[0])
        step = per_mm * step_mm
    return order, iop, pixel_spacing, step, ipps[order[0]], d


def load_dicom(
    path: str | os.PathLike,
    series: str | None = None,
    force: bool = False,
    volume_index: int | None = None,
) -> Volume:
    """Read one DICOM series (from a folder) or one DICOM file as a :class:`Volume`.

    Args:
        path: a folder (searched recursively) or a single DICOM file (loaded alone, as a Z=1 volume).
        series: SeriesInstanceUID, unique UID prefix, SeriesNumber or SeriesDescription of the series to load.
        force: load a non-CT modality or a series with missing slices (with a warning) instead of refusing.
        volume_index: only None or 0 (DICOM series are 3D).
    Returns:
        HU float32 (X, Y, Z) with the RAS affine, ``meta`` (series UID, description, number, modality, files
        in k order, slice positions) and ``dicom_headers`` (pixel data removed) in k order.
    """
    import pydicom

    path = Path(path)
    warnings: list[str] = []
    if volume_index not in (None, 0):
        raise InputError(f"{path}: --volume-index {volume_index} given but a DICOM series is one 3D volume")
    if path.is_dir():
        infos = list_dicom_series(path)
        images = [i for i in infos if i.is_image]
        if not images:
            checked = sum(len(i.files) for i in infos)
            raise InputError(f"{path}: no DICOM images found ({checked} DICOM files without pixel data)")
        if series is None and len(images) < len(infos):
            logger.info("%s: ignoring %d series without images", path, len(infos) - len(images))
        info = _select_series(path, images, series)
    else:
        header = _read_header(path)
        if header is None:
            raise InputError(f"{path}: not a DICOM file")
        info = DicomSeriesInfo(
            series_uid=str(header.get("SeriesInstanceUID", "") or ""),
            series_number=as_int(header.get("SeriesNumber")),
            description=str(header.get("SeriesDescription", "") or ""),
            modality=str(header.get("Modality", "") or ""),
            study_uid=str(header.get("StudyInstanceUID", "") or ""),
            files=[path],
            n_images=int("Rows" in header),
        )
        if series is not None:
            _select_series(path, [info], series)  # refuse a --series that names another series
    label = path

    modality = info.modality.upper()
    if not modality:
        warn(label, "no Modality tag; assuming CT", warnings)
    elif modality != "CT":
        if not force:
            raise InputError(f"{label}: modality {modality} is not CT; pass --force to load it anyway")
        warn(label, f"modality {modality} is not CT; loading it anyway (--force), values may not be HU", warnings)

    files, datasets = [], []
    for f in info.files:
        try:
            ds = pydicom.dcmread(f)
        except Exception as err:
            raise InputError(f"{f}: unreadable DICOM, file truncated or corrupt ({one_line(err)})") from None
        if "Rows" not in ds and "PixelData" not in ds:
            continue  # a non-image instance sharing the series UID (e.g. a dose report)
        _check_pixels_module(f, ds)
        files.append(f)
        datasets.append(ds)
    if not datasets:
        raise InputError(f"{label}: the selected DICOM series holds no images")

    order, iop, pixel_spacing, step, first_position, sorted_positions = _order_slices(label, files, datasets, force, warnings)
    rows, cols = int(datasets[order[0]].Rows), int(datasets[order[0]].Columns)
    array = np.empty((cols, rows, len(order)), dtype=np.float32)
    headers = []
    for k, idx in enumerate(order):
        ds = datasets[idx]
        array[:, :, k] = _to_hu(files[idx], ds).T  # (rows, cols) -> (i = column, j = row)
        for keyword in PIXEL_DATA_KEYWORDS:
            if keyword in ds:
                delattr(ds, keyword)
        headers.append(ds)

    affine = dicom_affine(iop, first_position, pixel_spacing, step)
    first = headers[0]
    meta = {
        "path": str(path),
        "format": "dicom",
        "modality": modality or None,
        "series_uid": info.series_uid,
        "series_description": info.description,
        "series_number": info.series_number,
        "study_uid": info.study_uid,
        "patient_id": str(first.get("PatientID", "") or ""),
        "files": [str(files[i]) for i in order],
        "slice_positions": [float(p) for p in sorted_positions],
        "transfer_syntax": str(getattr(getattr(first, "file_meta", None), "TransferSyntaxUID", "")),
        "warnings": warnings,
    }
    return Volume(array=array, affine=affine, meta=meta, dicom_headers=headers)
