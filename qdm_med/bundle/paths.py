"""Where bundles are found: one search order for ``qdm-med upscale``/``demo``/``bench`` and for the bundle
configs' ``bundle_root`` (``qdm-med train``, ``python -m monai.bundle run``).

Order: ``$QDM_MED_BUNDLES/<name>``, ``./bundles/<name>`` (a clone, after ``pip install .``), then the
repository's ``bundles/<name>`` next to the package (an editable install). A folder counts as a bundle
when it has ``configs/train.json``.
"""

from __future__ import annotations

import os
from pathlib import Path

from qdm_med.errors import ConfigError

__all__ = ["bundle_roots", "find_bundle", "available_bundles", "locate_bundle"]


def bundle_roots() -> list[Path]:
    """The folders searched for bundles, in order."""
    roots = [Path(os.environ["QDM_MED_BUNDLES"])] if os.environ.get("QDM_MED_BUNDLES") else []
    return roots + [Path.cwd() / "bundles", Path(__file__).resolve().parents[2] / "bundles"]


def _is_bundle(path: Path) -> bool:
    return (path / "configs" / "train.json").is_file()


def find_bundle(name: str) -> Path | None:
    """The first ``<root>/<name>`` that is a bundle, or None."""
    for root in bundle_roots():
        if _is_bundle(root / name):
            return root / name
    return None


def available_bundles() -> list[str]:
    """Names of the bundles in every search root (for error messages)."""
    return sorted({d.name for r in bundle_roots() if r.is_dir() for d in r.iterdir() if _is_bundle(d)})


def locate_bundle(name: str) -> str:
    """Folder of bundle ``name``: the current folder if it is that bundle, else the search of
    :func:`find_bundle` (used by the bundle configs' ``bundle_root``; override with
    ``--bundle_root DIR`` in ``monai.bundle run``)."""
    cwd = Path.cwd()
    found = cwd if cwd.name == name and (cwd / "configs" / "train.json").is_file() else find_bundle(name)
    if found is None:
        looked = ", ".join(str(r / name) for r in bundle_roots())
        raise ConfigError(f"cannot find bundle {name!r} (looked in {cwd}, {looked}); pass --bundle_root DIR")
    return str(found.resolve())
