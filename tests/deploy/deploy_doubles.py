"""A small axial CT series written with pydicom (header from pydicom's CT_small.dcm), for the Deploy tests."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np


def phantom_hu(size: int, n_slices: int, seed: int = 0) -> np.ndarray:
    """(X, Y, Z) integer HU: air, a soft-tissue body with fat, lung-like and bone inserts, texture noise."""
    rng = np.random.RandomState(seed)
    c = (np.arange(size) - (size - 1) / 2) / (size / 2)
    x, y = np.meshgrid(c, c, indexing="ij")
    out = np.empty((size, size, n_slices), dtype=np.float32)
    for k in range(n_slices):
        hu = np.full((size, size), -1000.0)
        hu[(x / 0.85) ** 2 + (y / 0.7) ** 2 < 1] = -90.0
        hu[(x / 0.78) ** 2 + (y / 0.62) ** 2 < 1] = 40.0
        hu[((x - 0.35) / 0.22) ** 2 + (y / 0.3) ** 2 < 1] = -780.0
        hu[((x + 0.35) / 0.22) ** 2 + (y / 0.3) ** 2 < 1] = -820.0
        hu[(x / 0.1) ** 2 + ((y + 0.45 - 0.02 * k) / 0.08) ** 2 < 1] = 1200.0
        out[:, :, k] = np.rint(hu + rng.normal(0, 15, hu.shape))
    return out


def write_axial_ct(folder: Path, size: int = 32, n_slices: int = 4, spacing=(0.9, 0.8), step: float = 2.5,
                   origin=(-14.0, -12.0, 40.0), series_number: int = 2, description: str = "Axial CT",
                   modality: str = "CT", study_uid: str | None = None, seed: int = 0) -> tuple[list[Path], np.ndarray]:
    """One file per slice (names not in slice order, InstanceNumber descending); returns (files, HU (X, Y, Z))."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del base.PixelData
    hu = phantom_hu(size, n_slices, seed)
    series_uid = generate_uid()
    files = []
    for k in range(n_slices):
        ds = copy.deepcopy(base)
        ds.file_meta = copy.deepcopy(base.file_meta)
        sop = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SeriesInstanceUID = series_uid
        if study_uid:
            ds.StudyInstanceUID = study_uid
        ds.SeriesNumber, ds.SeriesDescription, ds.Modality = series_number, description, modality
        ds.PatientPosition = "HFS"
        ds.InstanceNumber = n_slices - k
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * step]
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = ds.SpacingBetweenSlices = step
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.set_pixel_data(np.rint(hu[:, :, k].T + 1024).astype(np.int16), "MONOCHROME2", 16, generate_instance_uid=False)
        path = folder / f"ct{series_number}_{(7 * k) % n_slices:03d}_{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files, hu
