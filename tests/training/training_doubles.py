"""Tiny bundles and synthetic CT folders for the training and bundle tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "model": {"config": "tiny", "cond": "latent"},
    "data": {"hr_size": 64, "crop_size": 32, "val_slices": 2, "val_fraction": 0.34, "holdout": None},
    "train": {"batch_size": 2, "lr": 1e-3, "checkpoint_every": 2, "validate_every": 3, "log_every": 1, "warmup": 0, "ema_decay": 0.9,
              "init_from": None},
    "sampling": {"sampler": "tss", "steps": 3, "threshold": 0.15},
}


TINY_PRIOR = {"kind": "cnn", "channels": 8, "blocks": 1}


def tiny_bundle(dest: Path, name: str, extra: dict | None = None, recipe: bool = False) -> Path:
    """A copy of ``bundles/<name>`` with tiny model/data settings (``extra`` merged per section) and without
    the shipped weights (they belong to the full-size network). Its prior stage (``train_prior.json``) trains
    a tiny prior; the QDM stages drop the bundle's ``prior`` section and ``recipe`` (so one stage trains on
    its own) unless ``recipe`` keeps the staged recipe, or ``extra`` sets a prior."""
    out = dest / name
    shutil.copytree(REPO / "bundles" / name, out, ignore=shutil.ignore_patterns("model.pt"))
    merged = {k: {**TINY[k], **v} if isinstance(v, dict) and k in TINY else v for k, v in (extra or {}).items()}
    for path in sorted((out / "configs").glob("train*.json")):  # train.json and the stage configs of staged recipes
        cfg = json.loads(path.read_text())
        for key, value in {**TINY, **merged}.items():
            if cfg["stage"] == "vae" and key in ("model", "sampling"):
                continue
            cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
        if cfg["stage"] == "vae":
            cfg["first_stage"] = {
                "kind": "kl_vae",
                "latent_channels": 3,
                "channels": [8, 16, 16],
                "num_res_blocks": 1,
                "norm_num_groups": 8,
            }
            cfg["data"]["crop_size"] = 32
        if cfg.get("prior") and "prior" not in merged:
            if cfg["stage"] == "prior" or recipe:
                cfg["prior"] = {**cfg["prior"], **TINY_PRIOR}
            else:
                cfg.pop("prior")
                cfg.get("diffusion", {}).pop("start", None)
        if not recipe:
            cfg.pop("recipe", None)
        path.write_text(json.dumps(cfg, indent=2))
    inf = json.loads((out / "configs" / "inference.json").read_text())
    if "sampling" in inf:
        inf["sampling"] = TINY["sampling"]
    if "model" in inf:  # a last fine-tune's architecture (e.g. jump conditioning): shrunk like the stage configs,
        if recipe:  # or, when one stage trains on its own, train.json's network instead
            inf["model"] = {**inf["model"], **TINY["model"], **merged.get("model", {})}
        else:
            inf.pop("model")
    if not json.loads((out / "configs" / "train.json").read_text()).get("prior"):
        inf.pop("diffusion", None)  # the shipped bundles run from their prior; without one, run as train.json trains
    (out / "configs" / "inference.json").write_text(json.dumps(inf, indent=2))
    return out


def synthetic_ct(folder: Path, n: int = 3, shape=(64, 64, 4)) -> Path:
    """``n`` small NIfTI CT volumes with structure (body disc, bone ring, noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.RandomState(i)
        x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        r = np.hypot(x - shape[0] / 2, y - shape[1] / 2)
        arr = np.full(shape, -1000.0)
        body = r < shape[0] * 0.4
        arr[body] = 40
        arr[(r > shape[0] * 0.3) & body] = 700
        arr += rng.randn(*shape) * 20
        arr[10 + i : 20 + i, 30:40] = -600  # a lung-like patch
        nib.save(nib.Nifti1Image(arr.astype(np.int16), np.diag([0.8, 0.8, 3.0, 1.0])), str(folder / f"pt{i}.nii.gz"))
    return folder
