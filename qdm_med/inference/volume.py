"""Slice-wise super-resolution of CT volumes and natural images, with device and precision handling.

:class:`SliceWiseInferencer` upscales a :class:`qdm_med.io.Volume` in-plane (axes 0 and 1) slice by slice:

1. axial slices ``array[:, :, k]`` are taken as images with rows = Y (j) and columns = X (i) -- the same
   orientation :mod:`qdm_med.data.simulate` degrades them in -- and stacked into batches ``(B, 1, Y, X)``;
2. HU -> [-1, 1] with the model window (:class:`qdm_med.transforms.HUWindow`, clipped);
3. the SR callable runs on the batch through :class:`~qdm_med.inference.tiling.TiledSR` (padding to the
   model stride, overlapping tiles above ``tile_size`` LR pixels);
4. [-1, 1] -> HU (:class:`qdm_med.transforms.InverseHUWindow`);
5. **out-of-window merge**: the model only sees the window, so anything it outputs at the window's edges
   is a clipped value. Where the bicubic upsampling of the *unclipped* LR HU lies outside the window the
   output is the bicubic HU, so bone above the window and air/padding below it (e.g. -3024 HU outside the
   field of view) keep their values. A hard switch would leave a visible contour where tissue crosses the
   window edge, so the switch is a linear ramp over ``edge_ramp`` HU just inside each edge::

       a = clip(max(bic - (hi - r), (lo + r) - bic) / r, 0, 1)      # 0 inside, 1 at/outside an edge
       out = (1 - a) * sr_hu + a * bic_hu

   With the default ``r = 32`` HU, soft tissue, fat and lung (well inside [-1024, 2048]) are pure model
   output; pixels whose bicubic value is beyond the window are pure bicubic.

The output volume has array ``(X*s, Y*s, Z)`` float32 HU, affine
``qdm_med.io.geometry.scaled_affine(affine, (s, s, 1))`` (what ``monai.transforms.Zoom(zoom=(s, s, 1),
keep_size=False)`` gives), a copy of ``meta`` with a ``"super_resolution"`` entry, and the source
``dicom_headers`` (the DICOM writer derives the new series from them).

6. **HU floor**: the bicubic values used outside the window are clamped to the range of the 3x3 LR
   neighbourhood of each pixel (no ringing below air or above bone next to sharp edges, e.g. -3024 HU
   padding), and no output voxel goes below the minimum of its input slice (so never below the input's
   minimum, and a slice's output does not depend on the other slices).

Determinism (:mod:`qdm_med.inference.seeding`): with ``seed`` set, the model runs one slice per call and
every (slice, tile) call gets its own generator derived from ``(seed, slice index, tile index)``, so the
batch size (which then only groups the HU windowing and the merge), the call order and the device split
never change the output. ``seed=None`` runs whole batches on the global torch RNG.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from qdm_med.errors import ConfigError, InputError
from qdm_med.inference.runtime import InfoAggregator, Timer, amp_dtype, autocast_context, progress_bar, resolve_device
from qdm_med.inference.seeding import SeededCall, accepts_generator
from qdm_med.inference.tiling import TiledSR
from qdm_med.transforms.window import DEFAULT_WINDOW  # noqa: F401  (part of this module's API: the model window)

logger = logging.getLogger("qdm_med")

__all__ = [
    "resolve_device",
    "autocast_context",
    "InfoAggregator",
    "SliceWiseInferencer",
    "upscale_image",
    "outside_window_alpha",
    "neighbourhood_clamp",
    "DEFAULT_WINDOW",
]

_progress = progress_bar  # the name qdm_med.bench imports


SRFn = Callable[[torch.Tensor], torch.Tensor]


def outside_window_alpha(bic_hu: torch.Tensor, window: Sequence[float], ramp: float) -> torch.Tensor:
    """Weight of the bicubic HU in the out-of-window merge (see module docstring): 0 deep inside the
    window, rising linearly over ``ramp`` HU to 1 at the window edges and beyond."""
    lo, hi = float(window[0]), float(window[1])
    if ramp <= 0:
        return ((bic_hu < lo) | (bic_hu > hi)).to(bic_hu.dtype)
    over = torch.maximum(bic_hu - (hi - ramp), (lo + ramp) - bic_hu) / ramp
    return over.clamp(0.0, 1.0)


def neighbourhood_clamp(up_hu: torch.Tensor, lr_hu: torch.Tensor, scale: int) -> torch.Tensor:
    """Clamp an upsampled (B, C, h*s, w*s) image to the [min, max] of the 3x3 LR neighbourhood (B, C, h, w)
    of each pixel's source LR pixel: bicubic overshoot (ringing) is removed, edges stay sharp."""
    hi = F.max_pool2d(lr_hu, 3, stride=1, padding=1)
    lo = -F.max_pool2d(-lr_hu, 3, stride=1, padding=1)
    size = tuple(up_hu.shape[-2:])
    hi = F.interpolate(hi, size=size, mode="nearest")
    lo = F.interpolate(lo, size=size, mode="nearest")
    return torch.maximum(torch.minimum(up_hu, hi), lo)


def _sr_attr(sr_fn, name: str, default=None):
    return getattr(sr_fn, name, default)


def _run_tiles(sr_fn, tiler: TiledSR, call, x: torch.Tensor, on_tile=None) -> torch.Tensor:
    """``tiler(call, x)``; when ``x`` (B, C, h, w) is tiled and the SR callable has a global context
    (``pinned_context``: a prior with ``context``), every tile gets the whole image's."""
    pin = _sr_attr(sr_fn, "pinned_context")
    with pin(x) if pin is not None and tiler.n_tiles(*x.shape[-2:]) > 1 else contextlib.nullcontext():
        return tiler(call, x, on_tile=on_tile)


# ----------------------------------------------------------------------------------------------- volumes
class SliceWiseInferencer:
    """Upscale a CT :class:`qdm_med.io.Volume` in-plane, axial slice by axial slice.

    Args:
        sr_fn: callable mapping an LR batch (B, 1, h, w) in [-1, 1] to SR (B, 1, h*s, w*s) in [-1, 1]
            (an ``SRPipeline``; its ``size_multiple`` and ``last_info`` are used when present).
        scale: in-plane factor s.
        window: (hu_min, hu_max) model window.
        batch_size: slices per batch (windowing, merge; model calls too when ``seed`` is None).
        tile_size: LR tile size (pixels) above which slices are tiled; None never tiles.
        tile_overlap: LR overlap of neighbouring tiles.
        device: "auto" | "cpu" | "cuda" | "cuda:N" | torch.device. An ``nn.Module`` sr_fn is moved there.
        amp: autocast on CUDA (True, "bfloat16", "float16"); ignored on CPU.
        progress: show a rich progress bar per volume on stderr; False prints nothing.
        edge_ramp: HU width of the out-of-window merge ramp (0 = hard switch).
        size_multiple: model stride in LR pixels; default ``sr_fn.size_multiple`` or 4.
        seed: per-slice random streams (see module docstring); None runs whole batches on torch's global RNG.
        slice_indices: index in the full scan of each slice of the volume (default ``0 .. Z-1``), so a subset
            of slices keeps its slices' random streams.
        console: a rich Console for the progress bar (default: stderr).

    ``infer(volume) -> (sr_volume, stats)``; calling the object returns the volume only and keeps the
    stats in ``self.stats`` (timings in seconds for window/forward/unwindow/total, the pipeline's
    aggregated ``last_info``, slices, batches, tiles per slice, device, amp dtype).
    """

    def __init__(
        self,
        sr_fn: SRFn,
        scale: int,
        window: Sequence[float] = DEFAULT_WINDOW,
        batch_size: int = 4,
        tile_size: int | None = 128,
        tile_overlap: int = 16,
        device: str | torch.device = "auto",
        amp: bool | str = False,
        progress: bool = True,
        edge_ramp: float = 32.0,
        size_multiple: int | None = None,
        seed: int | None = None,
        console=None,
        slice_indices: Sequence[int] | None = None,
    ) -> None:
        from qdm_med.transforms.window import HUWindow, InverseHUWindow

        self.scale = int(scale)
        model_scale = _sr_attr(sr_fn, "scale")
        if model_scale is not None and int(model_scale) != self.scale:
            raise ConfigError(f"scale x{self.scale} does not match the model's x{int(model_scale)}")
        in_ch = _sr_attr(sr_fn, "in_channels")
        if in_ch is not None and int(in_ch) != 1:
            raise ConfigError(f"the model takes {int(in_ch)}-channel images; CT volumes need a 1-channel CT bundle")
        self.window = (float(window[0]), float(window[1]))
        if not self.window[1] > self.window[0]:
            raise ConfigError(f"window {tuple(window)}: hu_max must exceed hu_min")
        if int(batch_size) < 1:
            raise ConfigError(f"batch size {batch_size}: must be >= 1")
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        self.amp = amp
        self.progress = bool(progress)
        self.edge_ramp = float(edge_ramp)
        self.seed = seed
        self.slice_indices = None if slice_indices is None else [int(k) for k in slice_indices]
        self.console = console
        if size_multiple is None:
            size_multiple = _sr_attr(sr_fn, "size_multiple", 4)
        self.tiler = TiledSR(self.scale, tile_size, tile_overlap, size_multiple=int(size_multiple))
        if isinstance(sr_fn, torch.nn.Module):
            sr_fn = sr_fn.to(self.device).eval()
        self.sr_fn = sr_fn
        self._gen = accepts_generator(sr_fn)
        self.to_unit = HUWindow(self.window[0], self.window[1])
        self.to_hu = InverseHUWindow(self.window[0], self.window[1])
        self.stats: dict[str, Any] = {}

    # one LR batch in [-1, 1] -> SR batch in [-1, 1], through the tiler, collecting last_info per call;
    # with a seed one slice per call, each with the streams of (seed, slice index, tile index)
    def _forward(self, x: torch.Tensor, agg: InfoAggregator, ids: Sequence[int] = ()) -> torch.Tensor:
        def collect(t: torch.Tensor) -> None:
            agg.add(_sr_attr(self.sr_fn, "last_info"), float(t.shape[0] * t.shape[-2] * t.shape[-1]))

        def call(t: torch.Tensor) -> torch.Tensor:
            out = self.sr_fn(t)
            collect(t)
            return out

        with autocast_context(self.device, self.amp):
            if self.seed is None:
                out = _run_tiles(self.sr_fn, self.tiler, call, x)
            else:
                out = torch.cat([
                    _run_tiles(self.sr_fn, self.tiler, SeededCall(self.sr_fn, self.seed, ids[b], x.device, collect, self._gen),
                               x[b : b + 1])
                    for b in range(x.shape[0])
                ])
        return out.float().clamp(-1.0, 1.0)

    def infer(self, volume) -> tuple[Any, dict[str, Any]]:
        """Upscale ``volume``; returns the SR volume and the run statistics."""
        from qdm_med.io.geometry import scaled_affine
        from qdm_med.transforms import bicubic_upsample

        name = str(volume.meta.get("path", "volume")) if isinstance(volume.meta, dict) else "volume"
        array = np.asarray(volume.array)
        if array.ndim != 3:
            raise InputError(f"{name}: expected a 3D CT volume (X, Y, Z), got shape {array.shape}")
        nx, ny, nz = array.shape
        s = self.scale
        out_bytes = nx * ny * s * s * nz * 4
        if out_bytes > 4 * 2**30:
            logger.warning("%s: the x%d output needs %.1f GB of memory", name, s, out_bytes / 2**30)
        out = np.empty((nx * s, ny * s, nz), dtype=np.float32)
        timer = Timer()
        agg = InfoAggregator()
        n_batches = 0
        ids = list(range(nz)) if self.slice_indices is None else self.slice_indices
        if len(ids) != nz:
            raise ConfigError(f"{name}: {len(ids)} slice indices for {nz} slices")
        bar = progress_bar(self.progress, self.console)
        t_start = time.perf_counter()
        with contextlib.ExitStack() as stack:
            if bar is not None:
                stack.enter_context(bar)
                task = bar.add_task(f"x{s} {_short(name)}", total=nz, unit="slices")
            stack.enter_context(torch.inference_mode())
            for k0 in range(0, nz, self.batch_size):
                k1 = min(k0 + self.batch_size, nz)
                with timer("window", self.device):
                    # (X, Y, b) -> (b, 1, Y, X): images with rows = Y
                    hu = torch.from_numpy(np.ascontiguousarray(np.transpose(array[:, :, k0:k1], (2, 1, 0))))
                    hu = hu.to(self.device, torch.float32)[:, None]
                    lr = torch.as_tensor(self.to_unit(hu), dtype=torch.float32, device=self.device).clamp(-1.0, 1.0)
                with timer("forward", self.device):
                    sr = self._forward(lr, agg, ids[k0:k1])
                with timer("unwindow", self.device):
                    sr_hu = torch.as_tensor(self.to_hu(sr), dtype=torch.float32, device=self.device)
                    bic_hu = torch.as_tensor(bicubic_upsample(hu, s), dtype=torch.float32, device=self.device)
                    bic_hu = neighbourhood_clamp(bic_hu, hu, s)
                    alpha = outside_window_alpha(bic_hu, self.window, self.edge_ramp)
                    floor = hu.amin(dim=(-2, -1), keepdim=True)  # no output voxel below its slice's minimum (air)
                    merged = torch.maximum(sr_hu + alpha * (bic_hu - sr_hu), floor)
                    out[:, :, k0:k1] = np.transpose(merged[:, 0].cpu().numpy(), (2, 1, 0))
                n_batches += 1
                if bar is not None:
                    bar.update(task, advance=k1 - k0)
        timings = dict(timer.times)
        timings["total"] = time.perf_counter() - t_start
        meta = dict(volume.meta) if isinstance(volume.meta, dict) else {}
        meta["super_resolution"] = {
            "scale": s,
            "window": list(self.window),
            "edge_ramp_hu": self.edge_ramp,
            "hu_floor": "each slice's input minimum",
            "input_shape": [nx, ny, nz],
            "output_shape": [nx * s, ny * s, nz],
        }
        sr_volume = dataclasses.replace(
            volume,
            array=out,
            affine=scaled_affine(np.asarray(volume.affine, dtype=np.float64), (s, s, 1)),
            meta=meta,
        )
        stats = {
            "slices": nz,
            "batches": n_batches,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "tiles_per_slice": self.tiler.n_tiles(ny, nx),
            "tile_size": self.tiler.tile_size,
            "device": str(self.device),
            "amp": str(amp_dtype(self.amp, self.device)).replace("torch.", "") if amp_dtype(self.amp, self.device) else None,
            "timings": timings,
            "pipeline": agg.result(),
        }
        self.stats = stats
        return sr_volume, stats

    def __call__(self, volume):
        return self.infer(volume)[0]


def _short(name: str, width: int = 40) -> str:
    from pathlib import Path

    base = Path(name).name or name
    return base if len(base) <= width else "..." + base[-(width - 3) :]


# ----------------------------------------------------------------------------------------------- images
def upscale_image(
    image: np.ndarray,
    sr_fn: SRFn,
    scale: int,
    tile_size: int | None = 128,
    tile_overlap: int = 16,
    device: str | torch.device = "auto",
    amp: bool | str = False,
    progress: bool = True,
    size_multiple: int | None = None,
    seed: int | None = None,
    console=None,
    return_stats: bool = False,
):
    """Upscale a natural (or gray) image.

    Args:
        image: (C, H, W) float array in [0, 1], C = 1 or 3.
        sr_fn: callable (B, C', h, w) in [-1, 1] -> (B, C', h*s, w*s) in [-1, 1]. When the model's
            ``in_channels`` differs from C: a gray image is replicated to 3 channels for an RGB model (the
            output channels are averaged back to gray); an RGB image goes through a 1-channel model as
            three gray images.
        scale: SR factor.
    Returns:
        (C, H*s, W*s) float32 in [0, 1]; with ``return_stats`` also a stats dict like
        :class:`SliceWiseInferencer`'s.
    """
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise InputError(f"expected an image (C, H, W) with C = 1 or 3, got shape {arr.shape}")
    s = int(scale)
    model_scale = _sr_attr(sr_fn, "scale")
    if model_scale is not None and int(model_scale) != s:
        raise ConfigError(f"scale x{s} does not match the model's x{int(model_scale)}")
    dev = resolve_device(device)
    if isinstance(sr_fn, torch.nn.Module):
        sr_fn = sr_fn.to(dev).eval()
    if size_multiple is None:
        size_multiple = _sr_attr(sr_fn, "size_multiple", 4)
    tiler = TiledSR(s, tile_size, tile_overlap, size_multiple=int(size_multiple))
    c = arr.shape[0]
    in_ch = int(_sr_attr(sr_fn, "in_channels", c) or c)
    x = torch.from_numpy(arr).to(dev) * 2.0 - 1.0
    if in_ch == c:
        batch = x[None]
    elif c == 1 and in_ch == 3:
        batch = x[None].expand(1, 3, *x.shape[1:]).contiguous()
    elif c == 3 and in_ch == 1:
        batch = x[:, None]
    else:
        raise ConfigError(f"the model takes {in_ch}-channel images; this image has {c} channel(s)")
    agg = InfoAggregator()
    timer = Timer()
    bar = progress_bar(progress, console)

    def collect(t: torch.Tensor) -> None:
        agg.add(_sr_attr(sr_fn, "last_info"), float(t.shape[0] * t.shape[-2] * t.shape[-1]))

    def call(t: torch.Tensor) -> torch.Tensor:
        out = sr_fn(t)
        collect(t)
        return out

    t_start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        on_tile = None
        if bar is not None:
            stack.enter_context(bar)
            total = tiler.n_tiles(*arr.shape[1:])
            task = bar.add_task(f"x{s} image", total=total, unit="tiles")

            def on_tile(done: int, n: int) -> None:
                bar.update(task, completed=done)

        stack.enter_context(torch.inference_mode())
        with timer("forward", dev), autocast_context(dev, amp):
            if seed is None:
                sr = _run_tiles(sr_fn, tiler, call, batch, on_tile)
            else:  # one stream per (seed, channel-image, tile), as for CT slices
                sr = torch.cat([_run_tiles(sr_fn, tiler, SeededCall(sr_fn, seed, b, dev, collect), batch[b : b + 1], on_tile)
                                for b in range(batch.shape[0])])
            sr = sr.float().clamp(-1.0, 1.0)
    if c == in_ch:
        sr = sr[0]
    elif c == 1:
        sr = sr[0].mean(dim=0, keepdim=True)
    else:
        sr = sr[:, 0]
    result = ((sr + 1.0) * 0.5).clamp(0.0, 1.0).cpu().numpy().astype(np.float32)
    if not return_stats:
        return result
    timings = dict(timer.times)
    timings["total"] = time.perf_counter() - t_start
    stats = {
        "slices": 1,
        "tiles_per_slice": tiler.n_tiles(*arr.shape[1:]),
        "device": str(dev),
        "amp": str(amp_dtype(amp, dev)).replace("torch.", "") if amp_dtype(amp, dev) else None,
        "timings": timings,
        "pipeline": agg.result(),
    }
    return result, stats
