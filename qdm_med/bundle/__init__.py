"""The bundle layer, between the models and training/inference: what a MONAI bundle folder says and builds.

- :mod:`.settings`: ``configs/*.json`` plain settings merged over :data:`DEFAULTS` (:func:`bundle_settings`).
- :mod:`.factories`: the ``build_*`` network factories and :func:`build_network` (the ``network_def`` id).
- :mod:`.weights`: :func:`read_weights`; :mod:`.loader`: :func:`load_bundle`, :class:`LoadedBundle`.
- :mod:`.paths`: where bundles are found (:func:`find_bundle`, :func:`locate_bundle` for ``bundle_root``).
- :mod:`.device`: :func:`resolve_device` (the ``device`` id).
- :mod:`.inferer`: :class:`SliceSRInferer` (the ``inferer`` id; imports MONAI's inferer module).

Names load on first use, so ``import qdm_med.bundle`` stays cheap (no MONAI).
"""

from __future__ import annotations

import importlib

_NAMES = {
    "DEFAULTS": "settings", "SAMPLING_KEYS": "settings", "read_json": "settings", "bundle_settings": "settings",
    "diffusion_start": "settings",
    "build_first_stage_from": "factories", "build_qdm_from": "factories", "build_diffusion_from": "factories",
    "build_prior_from": "factories", "build_sr_module": "factories", "build_network": "factories",
    "LoadedBundle": "loader", "read_weights": "weights", "load_bundle": "loader",
    "bundle_roots": "paths", "find_bundle": "paths", "available_bundles": "paths", "locate_bundle": "paths",
    "SliceSRInferer": "inferer", "resolve_device": "device",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f"qdm_med.bundle.{_NAMES[name]}"), name)
    if name in set(_NAMES.values()):
        return importlib.import_module(f"qdm_med.bundle.{name}")
    raise AttributeError(f"module 'qdm_med.bundle' has no attribute {name!r}")
