"""Pictures for reports: quadtree partitions, error maps and titled montages (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["draw_quadtree", "error_map", "montage"]

ACTIVE_RGB = (1.0, 0.25, 0.1)  # detail-rich leaf (refined by the sparse model)
LEAF_RGB = (0.1, 0.8, 1.0)  # homogeneous leaf border


def _rgb(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.transpose(a, (1, 2, 0))
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.clip(a[..., :3], 0.0, 1.0).copy()


def draw_quadtree(image: np.ndarray, leaves, density: float | None = None, tint: float = 0.25) -> np.ndarray:
    """Draw quadtree leaf borders on a display image.

    Args:
        image: (H, W), (H, W, 3) or (C, H, W) in [0, 1].
        leaves: :class:`qdm_med.quadtree.QuadLeaf` list (y, x, h, w, active) or an (H, W) bool mask of
            active pixels (drawn as a red tint).
        density: shown in nothing but kept for API symmetry with the report (the caller titles it).
    Returns:
        (H, W, 3) float32 in [0, 1]: leaf borders in cyan; blocks that are still detail-rich at the
        smallest size tinted red.
    """
    out = _rgb(image)
    if isinstance(leaves, np.ndarray) and leaves.dtype == bool:
        m = leaves.astype(bool)
        out[m] = (1 - tint) * out[m] + tint * np.asarray(ACTIVE_RGB, np.float32)
        return out
    h_img, w_img = out.shape[:2]
    for leaf in leaves:
        y, x, h, w = int(leaf.y), int(leaf.x), int(leaf.h), int(leaf.w)
        if getattr(leaf, "active", False):
            block = out[y : y + h, x : x + w]
            block[:] = (1 - tint) * block + tint * np.asarray(ACTIVE_RGB, np.float32)
        if h >= 4 and w >= 4:  # borders only where a block is large enough to see
            color = np.asarray(LEAF_RGB, np.float32)
            out[y, x : x + w] = color
            out[min(y + h - 1, h_img - 1), x : x + w] = color
            out[y : y + h, x] = color
            out[y : y + h, min(x + w - 1, w_img - 1)] = color
    return out


def error_map(pred: np.ndarray, ref: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """|pred - ref| (mean over channels) as an (H, W, 3) 'inferno' colour image; ``vmax`` defaults to the 99th percentile."""
    from matplotlib import colormaps

    err = np.abs(np.asarray(pred, np.float32) - np.asarray(ref, np.float32))
    if err.ndim == 3:
        err = err.mean(axis=0 if err.shape[0] in (1, 3) and err.shape[-1] not in (1, 3) else -1)
    vmax = float(np.percentile(err, 99)) if vmax is None else float(vmax)
    return colormaps["inferno"](np.clip(err / max(vmax, 1e-8), 0, 1))[..., :3].astype(np.float32)


def montage(
    panels: Sequence[np.ndarray], titles: Sequence[str], path: str | Path, ncols: int | None = None, panel_inches: float = 3.0
) -> Path:
    """Save titled panels side by side as a PNG (matplotlib, Agg). Panels: (H, W) or (H, W, 3) in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if len(panels) != len(titles):
        raise ValueError("montage: one title per panel")
    n = len(panels)
    ncols = ncols or min(n, 3)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_inches * ncols, panel_inches * nrows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, panel, title in zip(axes.flat, panels, titles):
        ax.imshow(_rgb(panel), interpolation="nearest")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(str(path), format="png", dpi=100)
    plt.close(fig)
    return Path(path)
