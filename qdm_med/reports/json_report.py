"""JSON reports: numpy/torch/Path-safe, non-finite numbers as strings, written atomically."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np

from qdm_med._atomic import atomic_path

__all__ = ["to_jsonable", "write_json_report", "versions"]


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types: arrays -> lists, numpy scalars -> Python, Path -> str, inf/nan -> "inf"/"nan"."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # torch tensors
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def versions() -> dict[str, str]:
    """Versions of the software a result depends on (MONAI's from its package metadata when a job did not
    import it: importing MONAI costs seconds)."""
    import sys
    from importlib.metadata import version

    import torch

    from qdm_med._version import __version__

    return {
        "qdm_med": __version__,
        "torch": torch.__version__,
        "monai": sys.modules["monai"].__version__ if "monai" in sys.modules else version("monai"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_json_report(report: dict, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``report`` as indented JSON (atomic; refuses an existing file unless ``overwrite``)."""
    path = Path(path)
    with atomic_path(path, overwrite) as tmp:
        Path(tmp).write_text(json.dumps(to_jsonable(report), indent=2, allow_nan=False) + "\n")
    return path
