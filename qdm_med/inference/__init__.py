"""Inference: the slice-wise volume inferencer (:mod:`.volume`, :mod:`.tiling`, :mod:`.runtime`,
:mod:`.seeding`), the bicubic baseline (:mod:`.baseline`) and the bundles at this layer (:mod:`.bundle`).
The user jobs are in :mod:`qdm_med.jobs`. Submodules load on first use."""

from __future__ import annotations

import importlib

_SUBMODULES = ("baseline", "bundle", "runtime", "seeding", "tiling", "volume")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"qdm_med.inference.{name}")
    raise AttributeError(f"module 'qdm_med.inference' has no attribute {name!r}")
