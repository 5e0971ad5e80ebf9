"""Training checkpoints: model, optimizer, EMA, step and every RNG state, saved atomically and loaded
with ``torch.load(weights_only=True)`` (RNG states are stored as tensors and plain lists for that).

In data-parallel training every rank draws its own random numbers (augmentation, diffusion noise), so a
checkpoint keeps the RNG state of every rank: :func:`gather_rng_states` (a collective, called on all
ranks) returns them in rank order, and :func:`rank_rng_state` picks a rank's state back on resume."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from qdm_med._atomic import atomic_path
from qdm_med.errors import ConfigError

__all__ = [
    "resolve_weights_path", "rng_state", "set_rng_state", "gather_rng_states", "rank_rng_state", "save_checkpoint", "load_checkpoint",
]


def resolve_weights_path(value: str, bundle_dir: str) -> Path:
    """A stage's weights reference (``train.init_from``, ``prior.weights``): absolute, inside the bundle, or
    else relative to the working folder (where a previous stage's ``runs/`` output is)."""
    path = Path(value)
    if path.is_absolute():
        return path
    return Path(bundle_dir) / path if (Path(bundle_dir) / path).is_file() else path


def rng_state(generator: torch.Generator | None = None) -> dict:
    """Python, numpy, torch (and a training generator's) RNG states in weights_only-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "generator": generator.get_state() if generator is not None else None,
    }


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])


def gather_rng_states(generator: torch.Generator | None = None) -> list[dict]:
    """Every rank's :func:`rng_state` in rank order (one entry when not distributed).

    With an initialised ``torch.distributed`` process group this is a collective (``all_gather_object``):
    every rank must call it, also those that do not write the checkpoint.
    """
    own = rng_state(generator)
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [own]
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, own)
    return states


def rank_rng_state(saved, rank: int) -> dict | None:
    """The RNG state of ``rank`` in a checkpoint's ``"rng"`` entry: a per-rank list (this module) or one
    dict (single-process runs and older checkpoints, used for rank 0). None when the checkpoint was written
    by fewer ranks (resuming with a larger world: that rank starts a fresh stream)."""
    if isinstance(saved, dict):
        return saved if rank == 0 else None
    if isinstance(saved, (list, tuple)) and 0 <= rank < len(saved):
        return saved[rank]
    return None


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` atomically (a killed run never leaves a half-written checkpoint)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no checkpoint to resume from")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ConfigError(f"{path}: cannot read the checkpoint ({type(err).__name__}: {' '.join(str(err).split())[:160]})") from None
