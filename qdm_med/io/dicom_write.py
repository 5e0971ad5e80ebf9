"""Writing a derived DICOM series (SPEC section 9) from an upscaled volume.

With source headers (the input was DICOM), each output slice is a copy of its source instance with new
series/instance identity, the derived-image tags, the new pixels and the in-plane geometry scaled by ``s``.
Without them (the input was NIfTI/NRRD), minimal valid CT Image Storage headers are built from the
volume's affine. Output: ``out_dir/slice_0001.dcm ...``, Explicit VR Little Endian, uncompressed, written
atomically (a temporary sibling folder renamed into place).
"""

from __future__ import annotations

import copy
import datetime
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from qdm_med._atomic import atomic_path
from qdm_med.errors import InputError
from qdm_med.io._util import as_int, float_vector
from qdm_med.io.geometry import dicom_derived_position, dicom_slice_geometry, flip_lps_ras
from qdm_med.io.types import Volume

__all__ = ["write_dicom_series", "complete_type2", "DERIVED_IMAGE_TYPE", "DROPPED_KEYWORDS", "TYPE2_KEYWORDS"]

DERIVED_IMAGE_TYPE = ["DERIVED", "SECONDARY", "AXIAL"]

#: Elements that describe the source pixels and would be wrong for the new ones.
DROPPED_KEYWORDS = (
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "PixelPaddingValue",  # interpolated pixels are no longer exactly the padding value
    "PixelPaddingRangeLimit",
    "IconImageSequence",  # a thumbnail of the source image
    "ModalityLUTSequence",  # replaced by RescaleSlope/Intercept
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "DataSetTrailingPadding",
)

#: Type 2 attributes of the CT Image IOD (Patient, General Study, General Series, Frame of Reference,
#: General Equipment, Image Plane, CT Image modules): present, possibly empty, in every derived instance.
TYPE2_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "PositionReferenceIndicator", "Manufacturer", "SliceThickness", "KVP", "AcquisitionNumber",
    "Laterality",  # Type 2C (paired body parts): empty = unknown, which is what a derived series knows
)

#: Copied from a study template when the slices are new (a reoriented DICOM source): who and what study the
#: series belongs to, its frame of reference and equipment.
STUDY_KEYWORDS = (
    "SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "StudyInstanceUID",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription", "FrameOfReferenceUID",
    "PositionReferenceIndicator", "Manufacturer", "ManufacturerModelName", "InstitutionName", "KVP", "BodyPartExamined",
    "SeriesDescription", "SeriesNumber",
)

_INT16_MIN, _INT16_MAX = -32768, 32767
_FALLBACK_RESCALE = (1.0, -1024.0)  # slope, intercept: int16 stores HU -33792..31743


def _ds(value: float):
    """A DS value formatted to fit the 16-character limit."""
    from pydicom.valuerep import DSfloat

    return DSfloat(float(value), auto_format=True)


def _now() -> tuple[str, str]:
    now = datetime.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _geometry_from_headers(out_dir: Path, vol: Volume, headers: Sequence, scale: float):
    """Per-slice (orientation, pixel spacing, position) per SPEC 9, checked against ``vol.affine``.

    Returns None when a header lacks the geometry tags (then the volume's affine is used).
    """

    geo = []
    for ds in headers:
        iop, ipp, ps = (
            float_vector(ds, "ImageOrientationPatient", 6),
            float_vector(ds, "ImagePositionPatient", 3),
            float_vector(ds, "PixelSpacing", 2),
        )
        if iop is None or ipp is None or ps is None:
            return None
        geo.append((iop, ps / scale, dicom_derived_position(ipp, iop, ps, scale)))
    # The volume must be the source upscaled by ``scale`` in-plane: same in-plane axes and first pixel.
    lps = flip_lps_ras(vol.affine)
    iop, ps, ipp = geo[0]
    expected = np.stack([iop[:3] * ps[1], iop[3:] * ps[0], ipp], axis=1)
    actual = lps[:3, [0, 1, 3]]
    if not np.allclose(actual, expected, atol=1e-3):  # mm; float32 NIfTI round trips stay far below
        raise InputError(
            f"{out_dir}: the volume's geometry (spacing {np.round(vol.spacing[:2], 4).tolist()}, origin "
            f"{np.round(vol.affine[:3, 3], 3).tolist()}) is not its source DICOM series upscaled x{scale:g} in-plane "
            f"(spacing {np.round(ps[::-1], 4).tolist()})"
        )
    return geo


def _geometry_from_affine(out_dir: Path, vol: Volume):
    try:
        orientation, pixel_spacing, position = dicom_slice_geometry(vol.affine)
    except ValueError as err:
        raise InputError(f"{out_dir}: cannot express this volume as DICOM slices ({err})") from None
    return [(orientation, pixel_spacing, position(k)) for k in range(vol.array.shape[2])]


def _minimal_ct_header(vol: Volume, study_uid: str, frame_uid: str, slice_thickness: float):
    """Minimal CT Image Storage header for a volume without DICOM source (Patient/Study/Series/FoR/Equipment)."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.uid import CTImageStorage

    from qdm_med._version import __version__

    src = Path(str(vol.meta.get("path", "volume"))).name
    stem = src[: -len(".nii.gz")] if src.lower().endswith(".nii.gz") else Path(src).stem
    date, time = _now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.PatientName = str(vol.meta.get("patient_name", "ANONYMOUS"))
    ds.PatientID = str(vol.meta.get("patient_id") or stem)[:64]
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.StudyDate, ds.StudyTime = date, time
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = str(vol.meta.get("series_description") or stem)[:64]
    ds.SeriesNumber = 0
    ds.PatientPosition = ""
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = ""
    ds.SoftwareVersions = f"qdm-med {__version__}"[:64]
    ds.KVP = ""
    ds.AcquisitionNumber = ""
    ds.SliceThickness = _ds(slice_thickness)
    ds.RescaleType = "HU"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()  # replaced per slice; SourceImageSequence is not set
    return ds


def complete_type2(ds, study_uid: str, frame_uid: str) -> None:
    """Make ``ds`` carry every attribute the CT Image IOD requires, whatever its source lacked: Type 2
    attributes are written empty (:data:`TYPE2_KEYWORDS`), a missing Modality is CT, and missing Type 1
    Study / Frame of Reference UIDs get the series' shared new ones."""
    for keyword in TYPE2_KEYWORDS:
        if keyword not in ds:
            setattr(ds, keyword, None)  # pydicom writes None as an empty (zero-length) value
    if not ds.get("Modality"):
        ds.Modality = "CT"
    if not ds.get("StudyInstanceUID"):
        ds.StudyInstanceUID = study_uid
    if not ds.get("FrameOfReferenceUID"):
        ds.FrameOfReferenceUID = frame_uid


def _stored_values(slices_hu: list[np.ndarray], rescale: list[tuple[float, float]]) -> list[np.ndarray] | None:
    """int16 stored values for each slice with its (slope, intercept), or None if any value overflows."""
    out = []
    for hu, (slope, intercept) in zip(slices_hu, rescale):
        stored = np.rint((hu.astype(np.float64) - intercept) / slope)
        if stored.size and (stored.min() < _INT16_MIN or stored.max() > _INT16_MAX):
            return None
        out.append(stored.astype(np.int16))
    return out


def write_dicom_series(
    vol: Volume,
    out_dir: str | os.PathLike,
    scale: float,
    source_headers: Sequence | None,
    overwrite: bool = False,
    description_suffix: str | None = None,
    series_number: int | None = None,
    derivation_description: str | None = None,
    study_template=None,
) -> Path:
    """Write ``vol`` (already upscaled in-plane by ``scale``) as a derived DICOM series in ``out_dir``.

    Args:
        vol: the volume to write, HU (X, Y, Z); ``vol.affine`` must be the source's affine scaled by
            ``scaled_affine(affine, (s, s, 1))`` when ``source_headers`` are given (checked).
        out_dir: output folder (created; must not exist unless ``overwrite``).
        scale: in-plane factor s between the source slices and ``vol``: PixelSpacing is divided by s and
            ImagePositionPatient moved by ``-0.5*(1-1/s)*(row_dir*col_spacing + col_dir*row_spacing)``.
        source_headers: one pydicom Dataset per slice in k order (``Volume.dicom_headers`` of the source),
            or None to build minimal CT headers from ``vol.affine`` (new Study/Series/FrameOfReference UIDs).
        overwrite: replace an existing ``out_dir``.
        description_suffix: appended to SeriesDescription; default ``" SR x{s}"``.
        series_number: SeriesNumber of the new series; default source SeriesNumber + 1000 (1000 without source).
        derivation_description: DerivationDescription text; default names the in-plane super-resolution.
        study_template: without ``source_headers``, a source Dataset whose patient, study, frame of reference
            and equipment attributes (:data:`STUDY_KEYWORDS`) the new series keeps (a DICOM source whose
            slices were reoriented, so no source slice matches an output slice).
    Returns:
        ``out_dir``.
    Raises:
        InputError: slice count or geometry of ``vol`` does not match the source headers, or the in-plane
            axes are not orthogonal. OutputError: ``out_dir`` exists without ``overwrite``, not writable.

    Pixels are int16 stored values with each source slice's RescaleSlope/Intercept; when a value would not
    fit (or there is no source), slope 1 and intercept -1024 are used for the whole series.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    from qdm_med._version import __version__

    out_dir = Path(out_dir)
    s = float(scale)
    if not np.isfinite(s) or s <= 0:
        raise InputError(f"{out_dir}: scale must be a positive number, got {scale!r}")
    nz = vol.array.shape[2]
    if source_headers is not None:
        headers = list(source_headers)
        if len(headers) != nz:
            raise InputError(f"{out_dir}: the volume has {nz} slices but there are {len(headers)} source DICOM headers")
        geometry = _geometry_from_headers(out_dir, vol, headers, s) or _geometry_from_affine(out_dir, vol)
        templates = headers
        rescale = [(float(h.get("RescaleSlope", 1.0) or 1.0), float(h.get("RescaleIntercept", 0.0) or 0.0)) for h in headers]
        if any(m == 0 for m, _ in rescale):
            rescale = [_FALLBACK_RESCALE] * nz
    else:
        geometry = _geometry_from_affine(out_dir, vol)
        thickness = float(vol.spacing[2])
        template = _minimal_ct_header(vol, generate_uid(), generate_uid(), thickness)
        if study_template is not None:
            for keyword in STUDY_KEYWORDS:
                if keyword in study_template:
                    setattr(template, keyword, copy.deepcopy(study_template[keyword].value))
        templates = [template] * nz
        rescale = [_FALLBACK_RESCALE] * nz

    hu = np.nan_to_num(np.asarray(vol.array, dtype=np.float32), nan=-1024.0)
    slices_hu = [hu[:, :, k].T for k in range(nz)]  # native DICOM order: (rows, columns) = (j, i)
    stored = _stored_values(slices_hu, rescale)
    if stored is None:
        rescale = [_FALLBACK_RESCALE] * nz
        stored = [np.clip(np.rint(x.astype(np.float64) + 1024.0), _INT16_MIN, _INT16_MAX).astype(np.int16) for x in slices_hu]

    has_source = source_headers is not None or study_template is not None
    source_number = (as_int(templates[0].get("SeriesNumber")) or 0) if has_source else 0
    number = int(series_number) if series_number is not None else source_number + 1000
    suffix = f" SR x{s:g}" if description_suffix is None else description_suffix
    base = str(templates[0].get("SeriesDescription", "") or "")
    description = (base[: max(0, 64 - len(suffix))] + suffix)[:64]
    derivation = derivation_description or (
        f"In-plane super-resolution x{s:g} by qdm-med {__version__}"
        + ("" if source_headers is not None else f" from {Path(str(vol.meta.get('path', 'volume'))).name}")
    )
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()  # the last two only when missing
    date, time = _now()
    width = max(4, len(str(nz)))

    with atomic_path(out_dir, overwrite) as tmp:
        tmp.mkdir()
        for k in range(nz):
            src = templates[k]
            ds = copy.deepcopy(src)
            for keyword in DROPPED_KEYWORDS:
                if keyword in ds:
                    delattr(ds, keyword)
            sop_uid = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds.file_meta = meta
            ds.SOPInstanceUID = sop_uid
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = number
            ds.SeriesDescription = description
            ds.ImageType = list(DERIVED_IMAGE_TYPE)
            ds.DerivationDescription = derivation[:1024]
            complete_type2(ds, study_uid, frame_uid)
            ds.InstanceNumber = k + 1
            ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
            ds.SeriesDate, ds.SeriesTime = date, time
            ds.ContentDate, ds.ContentTime = date, time
            if source_headers is not None:
                ref = Dataset()
                ref.ReferencedSOPClassUID = src.SOPClassUID
                ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
                ds.SourceImageSequence = [ref]
            orientation, pixel_spacing, position = geometry[k]
            ds.ImageOrientationPatient = [_ds(v) for v in orientation]
            ds.PixelSpacing = [_ds(v) for v in pixel_spacing]
            ds.ImagePositionPatient = [_ds(v) for v in position]
            if source_headers is None:
                normal = np.cross(orientation[:3], orientation[3:])
                ds.SliceLocation = _ds(float(np.asarray(position) @ normal))
            ds.set_pixel_data(stored[k], "MONOCHROME2", 16, generate_instance_uid=False)
            slope, intercept = rescale[k]
            ds.RescaleSlope = _ds(slope)
            ds.RescaleIntercept = _ds(intercept)
            if "RescaleType" not in ds:
                ds.RescaleType = "HU"
            ds.save_as(tmp / f"slice_{k + 1:0{width}d}.dcm", enforce_file_format=True)
    return out_dir
