"""``qdm-med train BUNDLE`` and the ``run`` entry of the bundles' ``train.json``."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from qdm_med.bundle.settings import bundle_settings, read_json
from qdm_med.errors import ConfigError

__all__ = ["train_bundle", "train_recipe", "recipe_of", "default_output"]

logger = logging.getLogger("qdm_med.training")


def default_output(bundle_dir: Path, config: str = "train") -> Path:
    """``runs/<bundle name>`` in the current folder (``runs/<bundle name>-<config>`` for another config)."""
    name = Path(bundle_dir).resolve().name
    return Path("runs") / (name if config == "train" else f"{name}-{config}")


def recipe_of(bundle) -> list[str]:
    """The training configs a bundle runs in order (``recipe`` in ``configs/train.json``; ``["train"]`` without).

    Each config appears once, ``train`` among them, and the last one trains the bundle's network (the
    stage of ``train.json`` and the ``model`` section of ``inference.json``, or of ``train.json`` when
    ``inference.json`` has none): its run holds the weights the bundle ships. Stages after
    ``train`` are fine-tunes of it (e.g. ``train_detail``)."""
    bundle = Path(bundle)
    train = read_json(bundle / "configs" / "train.json")
    recipe = train.get("recipe") or ["train"]
    valid = isinstance(recipe, list) and all(isinstance(c, str) for c in recipe) and len(set(recipe)) == len(recipe)
    if not valid or "train" not in recipe:
        raise ConfigError(f"{bundle}: train.json 'recipe' must list the stage configs in order, each once, 'train' among them "
                          f"(got {recipe!r})")
    for name in recipe:
        if not (bundle / "configs" / f"{name}.json").is_file():
            raise ConfigError(f"{bundle}: recipe stage {name!r} has no configs/{name}.json")
    last = read_json(bundle / "configs" / f"{recipe[-1]}.json")
    inference = bundle / "configs" / "inference.json"
    # the shipped network: inference.json's model section when a last fine-tune changed the architecture, else train.json's
    model = (read_json(inference) if inference.is_file() else {}).get("model", train.get("model"))
    if (last.get("stage"), last.get("model")) != (train.get("stage"), model):
        raise ConfigError(f"{bundle}: the recipe's last stage {recipe[-1]!r} must train the bundle's network (train.json's 'stage', "
                          "and the 'model' of inference.json, else of train.json)")
    return recipe


def _stage_outputs(bundle: Path, recipe: list[str], output) -> dict[str, Path]:
    """Run folder of each recipe stage: ``runs/<bundle>[-<config>]`` (under ``output`` when given; a one-stage
    recipe's run folder is ``output`` itself)."""
    if output is not None and len(recipe) == 1:
        return {recipe[0]: Path(output)}
    outs = {c: default_output(bundle, c) for c in recipe}
    return outs if output is None else {c: Path(output) / p.name for c, p in outs.items()}


def _link_stages(settings: dict, outputs: dict[str, Path]) -> None:
    """Point a stage's references to earlier stages (``train.init_from``, ``prior.weights``, written as the
    default ``runs/<bundle>-<config>/...`` paths) at the run folders this recipe actually uses."""
    name = settings["name"]
    defaults = {str(Path("runs") / (name if c == "train" else f"{name}-{c}")): out for c, out in outputs.items()}

    def relink(value):
        if not value:
            return value
        for prefix, out in defaults.items():
            if Path(value).parts[: len(Path(prefix).parts)] == Path(prefix).parts:
                return str(out / Path(value).relative_to(prefix))
        return value

    settings["train"]["init_from"] = relink(settings["train"].get("init_from"))
    if isinstance(settings.get("prior"), dict) and settings["prior"].get("weights"):
        settings["prior"] = {**settings["prior"], "weights": relink(settings["prior"]["weights"])}


def _finished(run: Path, steps: int) -> bool:
    summary = run / "summary.json"
    if not summary.is_file():
        return False
    import json

    done = json.loads(summary.read_text())
    return int(done.get("steps", 0)) >= steps


def train_recipe(bundle, data=None, corpus: bool = False, max_steps: int | None = None, resume: bool = False, device: str = "auto",
                 output=None, quiet: bool = False, overrides: dict | None = None, rank: int = 0, world: int = 1) -> dict:
    """Train a bundle's whole recipe (``recipe_of``): each stage in order, later stages reading earlier
    stages' weights. ``max_steps`` caps every stage. With ``resume``, finished stages are skipped and the
    first unfinished one continues from its checkpoint. Returns {"stages": {config: summary}, "output": ...}."""
    bundle = Path(bundle)
    if not bundle.exists():
        raise ConfigError(f"{bundle}: no such bundle folder")
    recipe = recipe_of(bundle)
    outputs = _stage_outputs(bundle, recipe, output)
    done: dict[str, dict] = {}
    for config in recipe:
        out = outputs[config]
        steps = int(max_steps) if max_steps is not None else int(bundle_settings(bundle, config)["train"]["steps"])
        if resume and _finished(out, steps):
            logger.info("%s: stage %s already finished in %s", bundle.name, config, out)
            done[config] = {"skipped": True, "output": str(out)}
            continue
        done[config] = train_bundle(bundle, data=data, corpus=corpus, max_steps=max_steps, resume=resume, device=device, output=out,
                                    quiet=quiet, overrides=overrides, rank=rank, world=world, config=config, stage_outputs=outputs)
    return {"bundle": bundle.resolve().name, "recipe": recipe, "output": str(outputs[recipe[-1]]), "stages": done}


def train_bundle(bundle, data=None, corpus: bool = False, max_steps: int | None = None, resume: bool = False, device: str = "auto",
                 output=None, quiet: bool = False, overrides: dict | None = None, rank: int = 0, world: int = 1,
                 config: str = "train", init_from=None, stage_outputs: dict | None = None) -> dict:
    """Train a bundle's stage (VAE or QDM) and write ``<output>/models/model.pt``, ``checkpoint.pt``,
    ``log.jsonl`` and ``summary.json``. ``overrides`` updates the settings (e.g. ``{"train": {"batch_size": 2}}``).

    ``config`` names the training config, ``configs/<config>.json`` (a bundle trained in stages keeps one per
    stage); ``init_from`` (a path) overrides its ``train.init_from``, the weights a fine-tune starts from.
    ``stage_outputs`` (from :func:`train_recipe`) maps the recipe's configs to their run folders."""
    from qdm_med.bundle.device import resolve_device
    from qdm_med.training.data import build_datasets
    from qdm_med.training.loop import fit
    from qdm_med.training.stages import build_stage

    bundle = Path(bundle)
    if not bundle.exists():
        raise ConfigError(f"{bundle}: no such bundle folder")
    if config == "inference":
        raise ConfigError(f"--config {config}: name a training config of {bundle}/configs, not the inference one")
    settings = bundle_settings(bundle, config)
    if stage_outputs:
        _link_stages(settings, stage_outputs)
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
    if resume and (out / "checkpoint.pt").exists():
        # the checkpoint holds the weights: the starting point may since have moved or changed (a re-exported bundle)
        settings["train"] = {**settings["train"], "init_from": None}
    torch.manual_seed(int(settings["seed"]))  # seeded initialisation: the training command reproduces its weights
    stage = build_stage(settings)
    train_ds, val, split = build_datasets(settings, data=data, corpus=corpus)
    logger.info(
        "%s: %d training samples per epoch; patients train=%s val=%s", settings["name"], len(train_ds), split["train"], split["val"]
    )
    summary = fit(stage, train_ds, val, settings, out, steps, resume=resume, device=dev, quiet=quiet, rank=rank, world=world)
    summary["split"] = split
    return summary
