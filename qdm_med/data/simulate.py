"""Simulate low-resolution inputs from high-resolution volumes and images (for test sets and evaluation).

The degradation works on the full CT range: HU in [-1024, 3071] are mapped linearly to [0, 1] (values
outside are clipped, as a 12-bit CT stores them), each axial slice is degraded with the seeded preset
pipeline of :mod:`qdm_med.transforms`, and mapped back to HU. Slice ``k`` uses seed ``seed + k`` so any
subset of slices is reproducible on its own.

Geometry: the in-plane axes shrink by ``scale``; the affine is the one MONAI's
``Zoom(zoom=(1/s, 1/s, 1), keep_size=False)`` gives (spacing * s, origin moved by half a voxel).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from qdm_med.errors import InputError
from qdm_med.transforms.window import FULL_HU_RANGE  # HU range mapped to [0, 1] before degrading

logger = logging.getLogger("qdm_med")



def _degrade_slices(slices: np.ndarray, scale: int, preset: str, seed: int, progress=None) -> np.ndarray:
    """Degrade a stack of [0, 1] images.

    Args:
        slices: (N, C, H, W) float32 in [0, 1], H and W divisible by ``scale``.
    Returns:
        (N, C, H/scale, W/scale) float32 in [0, 1].
    """
    from qdm_med.transforms import DegradationPipeline

    pipeline = DegradationPipeline(preset=preset, scale=scale)
    out = []
    for k, img in enumerate(slices):
        pipeline.set_random_state(seed=seed + k)
        lr = pipeline(torch.from_numpy(np.ascontiguousarray(img)))
        out.append(torch.as_tensor(lr).float().clamp(0, 1).numpy())
        if progress is not None:
            progress()
    return np.stack(out)


def crop_to_multiple(array: np.ndarray, scale: int, axes: tuple[int, int], name: str) -> np.ndarray:
    """Crop trailing pixels so the in-plane size divides by ``scale``.

    Cropping at the end keeps voxel (0, 0) and hence the affine's origin unchanged.
    """
    sizes = [array.shape[a] for a in axes]
    new = [s - s % scale for s in sizes]
    if min(new) == 0:
        raise InputError(f"{name}: in-plane size {tuple(sizes)} is smaller than the scale factor {scale}")
    if new != sizes:
        logger.warning("%s: in-plane size %s cropped to %s (a multiple of %d)", name, tuple(sizes), tuple(new), scale)
        index = [slice(None)] * array.ndim
        for a, n in zip(axes, new):
            index[a] = slice(0, n)
        array = array[tuple(index)]
    return array


def degrade_volume(volume, scale: int, preset: str = "medical_test", seed: int = 0, progress=None):
    """Make the low-resolution version of a CT volume.

    Args:
        volume: :class:`qdm_med.io.Volume`, HU array (X, Y, Z), slices along Z.
        scale: in-plane downscale factor.
        preset: degradation preset name (see :class:`qdm_med.transforms.DegradationPipeline`).
        seed: base seed; slice k uses ``seed + k``.
        progress: optional callable, called once per slice.
    Returns:
        A new ``Volume`` with array (X/s, Y/s, Z) in HU and the scaled affine.
    """
    from qdm_med.io.geometry import scaled_affine

    name = str(volume.meta.get("path", "volume"))
    hu = crop_to_multiple(np.asarray(volume.array, dtype=np.float32), scale, (0, 1), name)
    lo, hi = FULL_HU_RANGE
    unit = (np.clip(hu, lo, hi) - lo) / (hi - lo)
    # (X, Y, Z) -> (Z, 1, Y, X): slices as images with rows = Y.
    stack = np.transpose(unit, (2, 1, 0))[:, None]
    lr = _degrade_slices(stack, scale, preset, seed, progress)
    lr_hu = np.transpose(lr[:, 0], (2, 1, 0)) * (hi - lo) + lo
    meta = dict(volume.meta)
    meta.update(degradation={"preset": preset, "scale": scale, "seed": seed, "hu_range": list(FULL_HU_RANGE)})
    return dataclasses.replace(
        volume,
        array=lr_hu.astype(np.float32),
        affine=scaled_affine(volume.affine, (1.0 / scale, 1.0 / scale, 1.0)),
        meta=meta,
    )


def degrade_image(image: np.ndarray, scale: int, preset: str = "natural", seed: int = 0, name: str = "image"):
    """Low-resolution version of a (C, H, W) image in [0, 1]; returns (C, H/s, W/s) in [0, 1]."""
    image = crop_to_multiple(np.asarray(image, dtype=np.float32), scale, (1, 2), name)
    return _degrade_slices(image[None], scale, preset, seed)[0]


SCALES = (2, 4, 8)
