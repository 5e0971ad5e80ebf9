"""``qdm-med train BUNDLE`` and the ``run`` entry of the bundles' ``train.json``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from qdm_med.errors import ConfigError
from qdm_med.training.config import bundle_settings

__all__ = ["train_bundle", "locate_bundle", "default_output"]

logger = logging.getLogger("qdm_med.training")


def locate_bundle(name: str) -> str:
    """Folder of bundle ``name``: the current folder if it is that bundle, else the search of
    :mod:`qdm_med.bundle_paths` (used by the bundle configs' ``bundle_root``; override with
    ``--bundle_root DIR`` in ``monai.bundle run``)."""
    from qdm_med.bundle_paths import bundle_roots, find_bundle

    cwd = Path.cwd()
    found = cwd if cwd.name == name and (cwd / "configs" / "train.json").is_file() else find_bundle(name)
    if found is None:
        looked = ", ".join(str(r / name) for r in bundle_roots())
        raise ConfigError(f"cannot find bundle {name!r} (looked in {cwd}, {looked}); pass --bundle_root DIR")
    return str(found.resolve())


def default_output(bundle_dir: Path, config: str = "train") -> Path:
    """``runs/<bundle name>`` in the current folder (``runs/<bundle name>-<config>`` for another config)."""
    name = Path(bundle_dir).resolve().name
    return Path("runs") / (name if config == "train" else f"{name}-{config}")


def train_bundle(bundle, data=None, corpus: bool = False, max_steps: int | None = None, resume: bool = False, device: str = "auto",
                 output=None, quiet: bool = False, overrides: dict | None = None, rank: int = 0, world: int = 1,
                 config: str = "train", init_from=None) -> dict:
    """Train a bundle's stage (VAE or QDM) and write ``<output>/models/model.pt``, ``checkpoint.pt``,
    ``log.jsonl`` and ``summary.json``. ``overrides`` updates the settings (e.g. ``{"train": {"batch_size": 2}}``).

    ``config`` names the training config, ``configs/<config>.json`` (a bundle trained in stages keeps one per
    stage); ``init_from`` (a path) overrides its ``train.init_from``, the weights a fine-tune starts from."""
    from qdm_med.inference.volume import resolve_device
    from qdm_med.training.data import build_datasets
    from qdm_med.training.loop import fit
    from qdm_med.training.stages import build_stage

    bundle = Path(bundle)
    if not bundle.exists():
        raise ConfigError(f"{bundle}: no such bundle folder")
    if config == "inference":
        raise ConfigError(f"--config {config}: name a training config of {bundle}/configs, not the inference one")
    settings = bundle_settings(bundle, config)
    if init_from is not None:
        settings["train"] = {**settings["train"], "init_from": str(Path(init_from).resolve())}
    for key, value in (overrides or {}).items():
        settings[key] = {**settings[key], **value} if isinstance(settings.get(key), dict) and isinstance(value, dict) else value
    if max_steps is not None and int(max_steps) < 1:
        raise ConfigError(f"--max-steps {max_steps}: must be >= 1")
    steps = int(max_steps) if max_steps is not None else int(settings["train"]["steps"])
    dev = resolve_device(device)
    if world > 1 and dev.type == "cuda":
        dev = torch.device("cuda", rank % torch.cuda.device_count())
    if not corpus and data is None and settings["data"].get("kind") != "natural":
        raise ConfigError("no training data: pass --data DIR (HaN-Seg, SegRap2023 or a folder of CT) or --corpus")
    out = Path(output) if output is not None else default_output(bundle, config)
    if (out / "checkpoint.pt").exists() and not resume and rank == 0:
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or --output for a new folder")
    torch.manual_seed(int(settings["seed"]))  # seeded initialisation: the training command reproduces its weights
    stage = build_stage(settings)
    train_ds, val, split = build_datasets(settings, data=data, corpus=corpus)
    logger.info("%s: %d training samples per epoch; patients train=%s val=%s", settings["name"], len(train_ds), split["train"], split["val"])
    summary = fit(stage, train_ds, val, settings, out, steps, resume=resume, device=dev, quiet=quiet, rank=rank, world=world)
    summary["split"] = split
    return summary
