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

logger = logging.getLogger("qdm_med")

#: HU range mapped to [0, 1] before degrading (CT's 12-bit range).
FULL_HU_RANGE: tuple[float, float] = (-1024.0, 3071.0)


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


def degrade_file(
    hr,
    output,
    scale: int = 4,
    preset: str = "medical_test",
    seed: int = 0,
    series: str | None = None,
    force: bool = False,
    overwrite: bool = False,
    quiet: bool = True,
    volume_index: int | None = None,
    fill_nonfinite: float | None = None,
) -> dict:
    """``qdm-med degrade``: read an HR volume or image, degrade it, write the LR version atomically.

    The output kind follows the output path: ``.nii/.nii.gz``, ``.nrrd``, ``.mha`` or a folder (derived
    DICOM series, geometry per SPEC section 9 with factor ``1/scale``) for volumes; ``.png/.jpg/.tif`` for
    images. Every check (scale, preset, input kind, output path) runs before any work. A volume is loaded
    as for ``upscale`` (non-finite voxels refused unless ``fill_nonfinite``; the axial planes are degraded,
    whatever the storage order, and the result is written in the input's own orientation).

    Returns:
        dict with ``output``, ``kind``, ``shape``, ``spacing`` (volumes) and the degradation settings.
    """
    from pathlib import Path

    from qdm_med._atomic import atomic_path
    from qdm_med.errors import ConfigError, OutputError
    from qdm_med.inference import inputs as jobs

    if int(scale) not in SCALES:
        raise ConfigError(f"scale {scale}: use one of {', '.join(map(str, SCALES))}")
    scale = int(scale)
    spec = jobs.detect_input(hr)
    out = Path(output)
    out_fmt = jobs.format_of_output(out)
    if out_fmt is None:
        raise ConfigError(f"{out}: unsupported output type; use .nii.gz, .nrrd, .mha, a folder (DICOM) or .png")
    if (spec.kind == "image") != (out_fmt == "png"):
        raise ConfigError(f"{out}: a {'image' if spec.kind == 'image' else 'CT volume'} input needs a "
                          f"{'.png/.jpg/.tif' if spec.kind == 'image' else '.nii.gz/.nrrd/.mha/DICOM folder'} output")
    if out.resolve() == spec.path.resolve():
        raise OutputError(f"{out}: output would overwrite the input")
    jobs.check_outputs([("output", out)], overwrite)
    if preset != "bicubic":
        from qdm_med.transforms import PRESETS

        if preset not in PRESETS:
            raise ConfigError(f"preset {preset!r}: use one of {', '.join(sorted(PRESETS))}")

    info = {"input": str(spec.path), "output": str(out), "scale": scale, "preset": preset, "seed": int(seed)}
    if spec.kind == "image":
        img = jobs.load_image_input(spec.path).data
        lr = degrade_image(img, scale, preset=preset, seed=seed, name=str(spec.path))
        with atomic_path(out, overwrite) as tmp:
            from qdm_med.io.images import save_image

            save_image(lr, tmp, overwrite=False)
        info.update(kind="image", shape=list(lr.shape))
        return info

    from qdm_med.io import save_volume, write_dicom_series

    vol, frame = jobs.load_volume_input(spec.path, series, force, volume_index, fill_nonfinite)
    # degrade the axial planes, and write the result in the input's own storage order
    lr_vol = frame.from_axial(degrade_volume(frame.to_axial(vol), scale, preset=preset, seed=seed))
    with atomic_path(out, overwrite) as tmp:
        if out_fmt == "dicom":
            headers = lr_vol.dicom_headers
            if headers is not None and len(headers) != lr_vol.array.shape[2]:
                headers = None
            write_dicom_series(lr_vol, tmp, 1.0 / scale, headers, overwrite=False,
                               description_suffix=f" LR x{scale}", derivation_description=f"Simulated low resolution x{scale} ({preset}, seed {seed})",
                               study_template=None if headers is not None else lr_vol.meta.get("dicom_study_template"))
        else:
            save_volume(lr_vol, tmp, overwrite=False)
    info.update(kind="volume", shape=list(lr_vol.array.shape), spacing=[float(s) for s in lr_vol.spacing])
    return info
