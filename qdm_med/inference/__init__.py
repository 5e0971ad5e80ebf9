"""Inference: the LR->SR module (:mod:`.pipeline`), bundles (:mod:`.bundle`), the slice-wise volume
inferencer (:mod:`.volume`, :mod:`.tiling`), and the user jobs behind ``upscale``/``evaluate``/``mask``
(:mod:`.run`, :mod:`.scoring`, :mod:`.preview`). Submodules load on first use."""

from __future__ import annotations

import importlib

_SUBMODULES = (
    "baseline", "bundle", "inputs", "mask", "outputs", "pipeline", "preview", "resolve", "run", "runtime", "scoring", "seeding", "tiling",
    "volume",
)


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"qdm_med.inference.{name}")
    raise AttributeError(f"module 'qdm_med.inference' has no attribute {name!r}")
