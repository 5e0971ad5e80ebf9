"""2D pictures (PNG, JPEG, TIFF) through Pillow, as (C, H, W) float32 arrays in [0, 1].

Gray pictures have C=1, colour ones C=3 (palettes and CMYK are converted to RGB). 8-bit data is divided
by 255 and 16-bit data by 65535; float TIFFs are clipped to [0, 1] with a warning. The alpha channel
(LA, RGBA, PA, transparent palettes) and the bit depth are returned with ``return_info=True`` and can be
written back by :func:`save_image` (``alpha=``, ``bit_depth=``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from qdm_med._atomic import atomic_path
from qdm_med.errors import InputError, OutputError
from qdm_med.io._util import IMAGE_SUFFIXES, one_line, suffix_of, warn

__all__ = ["load_image", "save_image", "is_image_path"]


def is_image_path(path: str | os.PathLike) -> bool:
    """True for a .png, .jpg, .jpeg, .tif or .tiff path (case-insensitive); does not read the file."""
    return suffix_of(path) in IMAGE_SUFFIXES


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth per sample from a PNG's IHDR (Pillow reads 16-bit colour PNGs as 8-bit RGB)."""
    try:
        with open(path, "rb") as f:
            head = f.read(25)
    except OSError:
        return None
    if len(head) == 25 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int(head[24])
    return None


def _split_alpha(img):
    """(image without alpha, alpha (H, W) float32 in [0, 1] or None)."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("LA", "PA", "RGBA", "La", "RGBa"):
        alpha = np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0
        return img.convert("L" if img.mode in ("LA", "La") else "RGB"), alpha
    return img, None


def _to_unit(path: Path, img) -> np.ndarray:
    """Pillow image -> (H, W) or (H, W, 3) float32 in [0, 1]."""
    mode = img.mode
    if mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        if mode in ("L", "LA", "1"):
            img = img.convert("L")
        elif mode != "RGB":
            img = img.convert("RGB")
        return np.asarray(img, dtype=np.float32) / 255.0  # an RGB file of gray values stays C=3
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float64)
        if arr.min() < 0 or arr.max() > 65535:
            raise InputError(f"{path}: 32-bit integer image with values outside 0..65535 is not supported")
        return (arr / 65535.0).astype(np.float32)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{path}: float image contains NaN or infinite values")
        if arr.min() < 0 or arr.max() > 1:
            warn(path, f"float image values {arr.min():.4g}..{arr.max():.4g} clipped to [0, 1]")
        return np.clip(arr, 0.0, 1.0)
    raise InputError(f"{path}: unsupported image mode {mode!r}")


def load_image(path: str | os.PathLike, return_info: bool = False):
    """Read a PNG/JPEG/TIFF picture as float32 (C, H, W) in [0, 1], C = 1 (gray) or 3 (colour).

    With ``return_info`` also a dict: ``alpha`` ((1, H, W) float32 in [0, 1] or None), ``bit_depth`` (8 or 16,
    the precision of the returned values) and ``mode`` (Pillow's). A 16-bit colour PNG is read with 8 bits
    per channel (a Pillow limit) with a warning.

    Raises:
        InputError: missing file, unsupported extension, unreadable/truncated file, multi-page TIFF.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if not is_image_path(path):
        raise InputError(f"{path}: unsupported image type {suffix_of(path) or '(no extension)'!r}; expected .png, .jpg, .tif")
    try:
        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            if frames > 1 and suffix_of(path) in (".tif", ".tiff"):
                raise InputError(f"{path}: multi-page TIFF ({frames} pages) is not one image; save the page you want")
            img.load()
            mode = img.mode
            img, alpha = _split_alpha(img)
            arr = _to_unit(path, img)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:  # SyntaxError: Pillow's parser errors
        raise InputError(f"{path}: cannot read the image, file truncated or corrupt ({one_line(err)})") from None
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = np.transpose(arr, (2, 0, 1))
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not return_info:
        return arr
    depth = 16 if (mode.startswith("I;16") or mode in ("I", "F")) else 8
    if depth == 8 and suffix_of(path) == ".png" and (_png_bit_depth(path) or 8) > 8:
        warn(path, "16-bit colour PNG read with 8 bits per channel (Pillow cannot hold 16-bit colour); the output is 8-bit")
    return arr, {"alpha": None if alpha is None else alpha[None], "bit_depth": depth, "mode": mode}


def save_image(array, path: str | os.PathLike, overwrite: bool = False, bit_depth: int | None = None, alpha=None) -> Path:
    """Write a (C, H, W) or (H, W) picture, C = 1 or 3, atomically.

    Args:
        array: float values in [0, 1] (clipped), or uint8 / uint16 stored as they are; numpy or torch.
        path: .png, .jpg/.jpeg or .tif/.tiff.
        overwrite: replace an existing file.
        bit_depth: 8 or 16 for float input (default 8); 16 bits is for gray PNG/TIFF without alpha only.
        alpha: optional (1, H, W) or (H, W) float alpha in [0, 1], written as an 8-bit alpha channel (LA or
            RGBA; PNG/TIFF only).
    Raises:
        OutputError: existing path without ``overwrite``, unsupported extension or bit depth.
        ValueError: wrong array shape.
    """
    from PIL import Image

    path = Path(path)
    if not is_image_path(path):
        raise OutputError(f"{path}: unsupported image type {suffix_of(path) or '(no extension)'!r}; use .png, .jpg or .tif")
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    arr = np.asarray(array)
    if arr.ndim == 3:
        if arr.shape[0] not in (1, 3):
            raise ValueError(f"expected (C, H, W) with C = 1 or 3, got shape {arr.shape}")
        arr = arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))
    elif arr.ndim != 2:
        raise ValueError(f"expected (C, H, W) or (H, W), got shape {arr.shape}")
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        depth = 8 if arr.dtype == np.uint8 else 16
        if bit_depth not in (None, depth):
            raise OutputError(f"{path}: {arr.dtype} data cannot be written with {bit_depth} bits")
        data = arr
    else:
        depth = 8 if bit_depth is None else int(bit_depth)
        if depth not in (8, 16):
            raise OutputError(f"{path}: bit depth must be 8 or 16, got {bit_depth}")
        unit = np.clip(np.nan_to_num(arr.astype(np.float64), nan=0.0), 0.0, 1.0)
        top = 255 if depth == 8 else 65535
        data = np.rint(unit * top).astype(np.uint8 if depth == 8 else np.uint16)
    suf = suffix_of(path)
    if depth == 16 and (data.ndim == 3 or suf in (".jpg", ".jpeg") or alpha is not None):
        raise OutputError(f"{path}: 16-bit output is only for gray PNG/TIFF without alpha")
    if alpha is not None:
        if suf in (".jpg", ".jpeg"):
            raise OutputError(f"{path}: JPEG has no alpha channel; use .png or .tif")
        if hasattr(alpha, "detach"):
            alpha = alpha.detach().cpu().numpy()
        a = np.asarray(alpha, dtype=np.float64).reshape(data.shape[:2])
        a8 = np.rint(np.clip(np.nan_to_num(a, nan=1.0), 0.0, 1.0) * 255).astype(np.uint8)
        data = np.dstack([data, a8])  # (H, W, 2) -> LA, (H, W, 4) -> RGBA
    img = Image.fromarray(np.ascontiguousarray(data))
    options = {"quality": 95} if suf in (".jpg", ".jpeg") else {}
    with atomic_path(path, overwrite) as tmp:
        fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}[suf]
        img.save(tmp, format=fmt, **options)
    return path
