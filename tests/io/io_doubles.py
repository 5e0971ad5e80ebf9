"""Synthetic CT data for the io tests: DICOM series built from pydicom's CT_small.dcm header, oblique
affines, small arrays (non-square so a transposition bug cannot hide)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """3x3 rotation matrix from Euler angles (radians) about x, then y, then z."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_affine(spacing=(0.8, 0.7, 2.5), origin=(-100.0, 40.0, 12.5), angles=(0.2, -0.15, 0.4)) -> np.ndarray:
    """A rotated, anisotropic, shifted voxel-to-RAS affine."""
    aff = np.eye(4)
    aff[:3, :3] = rotation(*angles) @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


def ct_values(shape, seed: int = 0) -> np.ndarray:
    """Integer HU in [-1024, 2000] with structure (a gradient plus noise), float32."""
    rng = np.random.RandomState(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    base = -1024 + 60 * x + 45 * y + 100 * z + rng.randint(0, 200, size=shape)
    return np.clip(base, -1024, 2000).astype(np.float32)


class SeriesSpec:
    """What a synthetic DICOM series holds: the HU array (X, Y, Z) in position order and its RAS affine."""

    def __init__(self, folder: Path, files: list[Path], hu: np.ndarray, affine: np.ndarray, series_uid: str):
        self.folder, self.files, self.hu, self.affine, self.series_uid = folder, files, hu, affine, series_uid


def write_ct_series(
    folder: Path,
    shape=(12, 10, 5),
    pixel_spacing=(0.7, 0.8),  # (between rows, between columns)
    step: float = 2.5,
    origin=(-120.0, -90.0, 30.0),  # LPS, first slice
    angles=(0.2, -0.15, 0.4),
    positions=None,  # slice offsets along the normal (mm); default k * step
    slope: float = 1.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    series_uid: str | None = None,
    series_number: int = 3,
    description: str = "Synthetic CT",
    instance_order: str = "descending",
    orientations=None,  # optional per-slice ImageOrientationPatient
    transfer_syntax: str | None = None,  # e.g. JPEG2000Lossless
    seed: int = 0,
) -> SeriesSpec:
    """Write a synthetic CT series (one file per slice, file names in shuffled order) and return its truth."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del base.PixelData
    del base.DataSetTrailingPadding  # so a truncated file loses pixel data, not padding
    nx, ny, nz = shape
    rot = rotation(*angles)
    row_dir, col_dir, normal = rot[:, 0], rot[:, 1], rot[:, 2]
    offsets = np.arange(nz) * step if positions is None else np.asarray(positions, dtype=float)
    hu = ct_values((nx, ny, len(offsets)), seed)
    series_uid = series_uid or generate_uid()
    study_uid = base.StudyInstanceUID
    rng = np.random.RandomState(seed + 1)
    names = rng.permutation(len(offsets))
    files = []
    for k, off in enumerate(offsets):
        ds = copy.deepcopy(base)
        ds.file_meta = copy.deepcopy(base.file_meta)
        sop = generate_uid()
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SeriesInstanceUID = series_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.Modality = modality
        ds.InstanceNumber = (k + 1) if instance_order == "ascending" else (len(offsets) - k)
        iop = np.concatenate([row_dir, col_dir]) if orientations is None else np.asarray(orientations[k])
        ds.ImageOrientationPatient = [float(f"{v:.10f}") for v in iop]
        ds.ImagePositionPatient = [float(f"{v:.8f}") for v in np.asarray(origin) + off * normal]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = step
        ds.SpacingBetweenSlices = step
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        stored = np.rint((hu[:, :, k].T - intercept) / slope).astype(np.int16)
        ds.set_pixel_data(stored, "MONOCHROME2", 16, generate_instance_uid=False)
        path = folder / f"img{series_number}_{names[k]:03d}.dcm"
        if transfer_syntax == pydicom.uid.ImplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = transfer_syntax
            ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
        else:
            if transfer_syntax is not None:
                ds.compress(transfer_syntax, stored)
            ds.save_as(path, enforce_file_format=True)
        files.append(path)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * pixel_spacing[1]
    lps[:3, 1] = col_dir * pixel_spacing[0]
    lps[:3, 2] = normal * (step if positions is None else 1.0)
    lps[:3, 3] = origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return SeriesSpec(folder, files, hu, affine, series_uid)


def assert_one_line_naming(err, name: str) -> str:
    """The error text is one line and names ``name``; returns the text."""
    text = str(err.value) if hasattr(err, "value") else str(err)
    assert "\n" not in text, text
    assert name in text, text
    return text
