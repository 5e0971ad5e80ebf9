"""Bundle weights: :func:`read_weights` reads a ``models/model.pt`` state dict (``weights_only=True``)."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["read_weights"]


def read_weights(path: str | Path) -> dict:
    """A ``models/model.pt`` state dict (``weights_only=True``) with floating tensors in float32 (weights may
    ship in half precision)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float() if torch.is_floating_point(v) else v for k, v in state.items()}
