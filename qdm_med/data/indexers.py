"""Find CT volumes in dataset folders: HaN-Seg, SegRap2023, the fetched corpus, or any folder.

Each indexer returns :class:`VolumeRecord` s sorted by patient id. Layouts:

- HaN-Seg: ``HaN-Seg/set_1/case_01/case_01_IMG_CT.nrrd`` (MR and ``_OAR_*.seg.nrrd`` files are ignored);
- SegRap2023: ``segrap_0001/image.nii.gz`` (and ``image_contrast.nii.gz``, a second scan of the same patient);
- corpus: ``manifest.json`` written by ``qdm-med data fetch``;
- folder: every NIfTI/NRRD/MHA file and every folder of DICOM files below the root.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from qdm_med.errors import InputError

__all__ = ["VolumeRecord", "index_hanseg", "index_segrap", "index_folder", "index_corpus", "index_dataset"]

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclasses.dataclass(frozen=True)
class VolumeRecord:
    """One CT volume: ``patient_id`` groups scans of one person (splits never separate them)."""

    patient_id: str
    path: Path
    source: str
    scan: str = "ct"


def _require(records: list[VolumeRecord], root: Path, what: str) -> list[VolumeRecord]:
    if not records:
        raise InputError(f"{root}: no {what} found")
    return sorted(records, key=lambda r: (r.patient_id, r.scan, str(r.path)))


def _root(root) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    return root


def index_hanseg(root) -> list[VolumeRecord]:
    """HaN-Seg: ``case_XX_IMG_CT.nrrd`` files (any ``set_*`` subfolder)."""
    root = _root(root)
    recs = []
    for p in root.rglob("case_*_IMG_CT.nrrd"):
        m = re.match(r"(case_\d+)_IMG_CT\.nrrd$", p.name)
        if m:
            recs.append(VolumeRecord(f"hanseg_{m.group(1)}", p, "HaN-Seg"))
    return _require(recs, root, "HaN-Seg CT (case_XX/case_XX_IMG_CT.nrrd)")


def index_segrap(root, include_contrast: bool = False) -> list[VolumeRecord]:
    """SegRap2023: ``segrap_XXXX/image.nii.gz`` (+ ``image_contrast.nii.gz`` when ``include_contrast``)."""
    root = _root(root)
    recs = []
    for d in sorted(p for p in root.rglob("segrap_*") if p.is_dir()):
        if (d / "image.nii.gz").is_file():
            recs.append(VolumeRecord(d.name, d / "image.nii.gz", "SegRap2023"))
        if include_contrast and (d / "image_contrast.nii.gz").is_file():
            recs.append(VolumeRecord(d.name, d / "image_contrast.nii.gz", "SegRap2023", scan="ct_contrast"))
    return _require(recs, root, "SegRap2023 CT (segrap_XXXX/image.nii.gz)")


def _is_dicom_file(p: Path) -> bool:
    from qdm_med.io._util import has_dicm_preamble

    return p.suffix.lower() == ".dcm" or has_dicm_preamble(p)


def _volume_suffix(p: Path) -> bool:
    name = p.name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def index_folder(root) -> list[VolumeRecord]:
    """Any folder: volume files (patient id = file stem) and DICOM series folders (id = folder name)."""
    root = _root(root)
    recs, dicom_dirs = [], set()
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        if _volume_suffix(p):
            if ".seg." in p.name.lower() or "_oar_" in p.name.lower():
                continue  # segmentations, not images
            stem = re.sub(r"\.(nii\.gz|nii|nrrd|nhdr|mha|mhd)$", "", p.name, flags=re.I)
            recs.append(VolumeRecord(stem, p, "folder"))
        elif p.parent not in dicom_dirs and _is_dicom_file(p):
            dicom_dirs.add(p.parent)
    recs += [VolumeRecord(d.name, d, "folder-dicom") for d in dicom_dirs]
    return _require(recs, root, "CT volumes (NIfTI, NRRD, MHA or DICOM series)")


def index_corpus(root=None) -> list[VolumeRecord]:
    """The corpus fetched by ``qdm-med data fetch`` (default folder: :func:`~qdm_med.data.corpus.default_data_dir`)."""
    from qdm_med.data.corpus import list_corpus

    return _require([VolumeRecord(r["patient"], Path(r["path"]), r.get("source", "corpus")) for r in list_corpus(root)],
                    Path(root) if root else Path("corpus"), "corpus volumes")


def index_dataset(root) -> list[VolumeRecord]:
    """Detect the layout of ``root`` (corpus, HaN-Seg, SegRap2023, else any folder) and index it."""
    root = _root(root)
    if (root / "manifest.json").is_file():
        return index_corpus(root)
    if next(root.rglob("case_*_IMG_CT.nrrd"), None) is not None:
        return index_hanseg(root)
    if any(p.is_dir() for p in root.rglob("segrap_*")):
        return index_segrap(root)
    return index_folder(root)
