"""qdm-med: quadtree-masked residual-shift diffusion for CT (and photo) super-resolution on MONAI."""

from __future__ import annotations

from qdm_med._version import __version__

__all__ = ["__version__", "quadtree_mask"]


_SUBMODULES = (
    "io",
    "transforms",
    "data",
    "quadtree",
    "diffusion",
    "models",
    "bundle",
    "training",
    "inference",
    "jobs",
    "bench",
    "metrics",
    "reports",
    "cli",
)


def __getattr__(name: str):
    # `qdm_med.quadtree_mask` is public API; import lazily so `import qdm_med` stays cheap (no torch).
    if name == "quadtree_mask":
        from qdm_med.quadtree import quadtree_mask

        return quadtree_mask
    if name in _SUBMODULES:  # `$import qdm_med` in bundle configs, then qdm_med.bundle...
        import importlib

        return importlib.import_module(f"qdm_med.{name}")
    raise AttributeError(f"module 'qdm_med' has no attribute {name!r}")
