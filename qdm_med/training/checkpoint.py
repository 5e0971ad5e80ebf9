"""Training checkpoints: model, optimizer, EMA, step and every RNG state, saved atomically and loaded
with ``torch.load(weights_only=True)`` (RNG states are stored as tensors and plain lists for that)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from qdm_med._atomic import atomic_path
from qdm_med.errors import ConfigError

__all__ = ["rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint"]


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
