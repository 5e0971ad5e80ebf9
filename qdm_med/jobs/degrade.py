"""``qdm-med degrade``: write the simulated low-resolution version of an HR volume or picture."""

from __future__ import annotations

from qdm_med.data.simulate import SCALES, degrade_image, degrade_volume

__all__ = ["degrade_file"]


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
    from qdm_med.jobs import inputs as jobs

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
            write_dicom_series(
                lr_vol,
                tmp,
                1.0 / scale,
                headers,
                overwrite=False,
                description_suffix=f" LR x{scale}",
                derivation_description=f"Simulated low resolution x{scale} ({preset}, seed {seed})",
                study_template=None if headers is not None else lr_vol.meta.get("dicom_study_template"),
            )
        else:
            save_volume(lr_vol, tmp, overwrite=False)
    info.update(kind="volume", shape=list(lr_vol.array.shape), spacing=[float(s) for s in lr_vol.spacing])
    return info
