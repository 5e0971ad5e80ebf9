"""Preview montages and quadtree pictures for ``upscale``, ``evaluate`` and ``mask``.

Panels of the preview (one slice, all shown at SR size, CT in the model window mapped to gray):
LR (nearest-upsampled, so its pixels stay visible), bicubic, SR, reference (when there is one), the
quadtree partition of the LR at the model threshold drawn over the LR, and an error map: |SR - reference|
when a reference exists, else |SR - bicubic| (what the model changed), in window units.

The drawing (tiles, titles, colour maps) is :mod:`qdm_med.reports`'s; this module only picks the slice and
prepares the arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from qdm_med._atomic import atomic_path

__all__ = ["pick_slice", "to_display", "quadtree_leaves", "quadtree_picture", "write_preview"]


def pick_slice(volume_hu: np.ndarray, window: Sequence[float]) -> int:
    """The slice with the most in-window structure (largest std of the windowed slice); ties -> middle."""
    lo, hi = float(window[0]), float(window[1])
    clipped = np.clip(volume_hu, lo, hi)
    stds = clipped.reshape(-1, clipped.shape[2]).std(axis=0)
    if not np.any(stds > 0):
        return volume_hu.shape[2] // 2
    return int(np.argmax(stds))


def to_display(image: np.ndarray, window: Sequence[float] | None) -> np.ndarray:
    """A 2D HU slice (window given) or a (C, H, W) [0, 1] image -> float (H, W) or (H, W, 3) in [0, 1]."""
    a = np.asarray(image, dtype=np.float32)
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
        return (np.clip(a, lo, hi) - lo) / (hi - lo)
    a = np.clip(a, 0.0, 1.0)
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))


def _nearest_up(img: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


def _to_model_range(display: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, 3) in [0, 1] -> (1, C, H, W) in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(display, dtype=np.float32))
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return t[None] * 2.0 - 1.0


def quadtree_leaves(display: np.ndarray, threshold: float) -> tuple[Any, float]:
    """Recursive quadtree of an LR picture in [0, 1] at ``threshold`` (model [-1, 1] scale), and the
    Algorithm 1 mask density at the model-mask size (2x2 LR-pixel blocks)."""
    from qdm_med.quadtree import mask_density, quadtree_mask, recursive_quadtree

    x = _to_model_range(display)
    h, w = x.shape[-2:]
    leaves = recursive_quadtree(x, threshold)
    mask = quadtree_mask(x, threshold, (max(1, h // 2), max(1, w // 2)))
    return leaves, float(mask_density(mask))


def _lr_slice(kind: str, lr, window, k: int | None) -> tuple[np.ndarray, int | None]:
    if kind == "volume":
        arr = np.asarray(lr.array if hasattr(lr, "array") else lr, dtype=np.float32)
        if k is None:
            k = pick_slice(arr, window)
        return to_display(arr[:, :, k].T, window), k
    return to_display(lr, None), None


def quadtree_picture(
    kind: str, data, threshold: float, window: Sequence[float], slice_index: int | None = None
) -> tuple[np.ndarray, dict]:
    """The quadtree partition drawn over one slice/image: ((3, H, W) float [0, 1] picture, info)."""
    from qdm_med.errors import ConfigError
    from qdm_med.reports import draw_quadtree

    if kind == "volume" and slice_index is not None:
        nz = np.asarray(data.array).shape[2]
        if not -nz <= int(slice_index) < nz:
            raise ConfigError(f"slice {slice_index}: the volume has {nz} slices (0..{nz - 1})")
        slice_index = int(slice_index) % nz
    disp, k = _lr_slice(kind, data, window, slice_index)
    leaves, density = quadtree_leaves(disp, threshold)
    picture = _as_chw(draw_quadtree(disp, leaves, density=density))
    info = {"density": density, "leaves": len(leaves), "size": list(disp.shape[:2])}
    if k is not None:
        info["slice"] = k
    return picture, info


def _as_chw(img) -> np.ndarray:
    """An (H, W), (H, W, 3) uint8/float picture -> (C, H, W) float [0, 1] for ``save_image``."""
    a = np.asarray(img)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    if a.ndim == 2:
        return a[None]
    if a.shape[-1] in (3, 4) and a.shape[0] not in (1, 3):
        a = np.transpose(a[..., :3], (2, 0, 1))
    return np.clip(a, 0.0, 1.0)


def write_preview(
    path: str | Path,
    kind: str,
    lr,
    bicubic: np.ndarray,
    sr,
    ref: np.ndarray | None,
    scale: int,
    window: Sequence[float],
    threshold: float,
    slice_index: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Write the preview montage (see module docstring) atomically; returns {"path", "slice", "panels"}.

    Volumes: ``lr`` a Volume (or (X, Y, Z) HU array), ``bicubic``/``sr``/``ref`` (X*s, Y*s, Z) HU
    (``sr`` may be a Volume); images: (C, H, W) arrays in [0, 1].
    """
    from qdm_med.errors import ConfigError
    from qdm_med.reports import draw_quadtree, montage

    if kind == "volume":
        sr_arr = np.asarray(sr.array if hasattr(sr, "array") else sr, dtype=np.float32)
        nz = sr_arr.shape[2]
        if slice_index is None:
            slice_index = pick_slice(ref if ref is not None else sr_arr, window)
        if not 0 <= int(slice_index) < nz:
            raise ConfigError(f"preview slice {slice_index}: the volume has {nz} slices (0..{nz - 1})")
        k = int(slice_index)
        lr_disp, _ = _lr_slice(kind, lr, window, k)
        show = lambda a: to_display(np.asarray(a)[:, :, k].T, window)  # noqa: E731
        bic_d, sr_d = show(bicubic), show(sr_arr)
        ref_d = show(ref) if ref is not None else None
    else:
        k = None
        lr_disp = to_display(lr, None)
        bic_d, sr_d = to_display(bicubic, None), to_display(sr, None)
        ref_d = to_display(ref, None) if ref is not None else None
    leaves, density = quadtree_leaves(lr_disp, threshold)
    quad = _as_chw(draw_quadtree(lr_disp, leaves, density=density))
    quad_up = _nearest_up(np.transpose(quad, (1, 2, 0)), scale)
    err_ref = ref_d if ref_d is not None else bic_d
    err = np.abs(sr_d - err_ref)
    if err.ndim == 3:
        err = err.mean(axis=2)
    panels = [("LR (nearest)", _nearest_up(lr_disp, scale)), ("bicubic", bic_d), ("SR", sr_d)]
    if ref_d is not None:
        panels.append(("reference", ref_d))
    panels.append((f"quadtree s={threshold:g} ({100 * density:.1f}%)", quad_up))
    panels.append(("|SR - reference|" if ref_d is not None else "|SR - bicubic|", err))
    with atomic_path(path, overwrite) as tmp:
        montage([p for _, p in panels], [t for t, _ in panels], tmp)
    return {"path": str(path), "slice": k, "panels": [t for t, _ in panels], "mask_density": density}
