"""User jobs, one module each: :mod:`.upscale`, :mod:`.evaluate`, :mod:`.mask`, :mod:`.degrade`, :mod:`.demo`,
and the bundles' ``run`` entry (:mod:`.bundle_run`). Shared pieces: inputs and output paths (:mod:`.inputs`),
which model runs (:mod:`.resolve`), writing and reports (:mod:`.outputs`), scores (:mod:`.scoring`),
previews (:mod:`.preview`), the upscale/evaluate common steps (:mod:`.common`). Import a job from its module
(``from qdm_med.jobs.upscale import upscale``: the module and the function share the name). Names load on first use."""

from __future__ import annotations

import importlib

_NAMES = {
    "make_mask_picture": "mask", "degrade_file": "degrade",
    "run_demo": "demo", "default_bundle_dir": "resolve", "resolve_model": "resolve", "detect_input": "inputs",
    "plan_output": "inputs", "run_inference": "bundle_run",
}
_MODULES = ("bundle_run", "common", "degrade", "demo", "evaluate", "inputs", "mask", "outputs", "preview", "resolve", "scoring",
            "upscale")

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f"qdm_med.jobs.{_NAMES[name]}"), name)
    if name in _MODULES:
        return importlib.import_module(f"qdm_med.jobs.{name}")
    raise AttributeError(f"module 'qdm_med.jobs' has no attribute {name!r}")
