"""The five benchmark suites of ``qdm-med bench``, measured on real CT slices of a bundle's held-out patient.

Every suite takes a :class:`BenchContext` (the loaded bundle, the held-out HR/LR slices, device, repeats)
and returns a list of rows (dicts of plain numbers), one per setting:

1. :func:`threshold_sweep` - the quadtree threshold s: mask density, active windows, MACs, time per
   slice and peak memory of the sparse path, the dense path's time on the same input (same run), and
   PSNR/SSIM in the bundle window and LPIPS.
2. :func:`sampler_sweep` - uniform 15/7/4, TDS and TSS 7/4 (and the bundle's default) at the default
   threshold: PSNR/SSIM/LPIPS and time.
3. :func:`slice_scaling` / :func:`volume_scaling` - output slices of 256/512/1024 pixels and LR volumes
   of 8/32/128 slices, dense and sparse: time and peak memory against pixel count.
4. :func:`gather_vs_loop` - the batched active-window gather against the reference code's per-item,
   per-window Python loop on the same input (max abs difference recorded).
5. :func:`end_to_end` - ``qdm_med.upscale`` of a 64x64xN NIfTI at x8 (x4: 128x128xN), split into load,
   encode, sampling, decode, the slice-wise rest and write.

The LR input is made from the HR with the ``medical_test`` degradation (seeded, slice k uses seed + k)
on the full HU range, as ``qdm-med evaluate`` does.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from qdm_med.bench.measure import time_call, time_calls
from qdm_med.errors import ConfigError

__all__ = [
    "BenchContext", "prepare_context", "threshold_sweep", "sampler_sweep", "slice_scaling", "volume_scaling",
    "gather_vs_loop", "end_to_end", "THRESHOLDS", "SAMPLER_SETTINGS", "sweep_thresholds",
]

#: the sweep of issue 7 (the full mask is the dense path, listed separately)
THRESHOLDS: tuple[float, ...] = (0.0, 0.05, 0.15, 0.3, 0.6, 0.9)
#: (sampler, steps) pairs of the sampler suite: the perception-distortion curve of each sampler (one step is
#: the same x0 prediction for all three)
SAMPLER_SETTINGS: tuple[tuple[str, int], ...] = (
    ("uniform", 1), *((sampler, k) for sampler in ("uniform", "tds", "tss") for k in (2, 4, 7, 15)),
)


@dataclasses.dataclass
class BenchContext:
    """What every suite needs.

    Attributes:
        bundle: :class:`qdm_med.bundle.LoadedBundle` (its pipeline is reconfigured by the suites
            and restored afterwards).
        hr_hu / lr_hu: (N, H, W) and (N, H/s, W/s) float32 HU slices (rows = Y), the held-out patient.
        lr_volume: the whole degraded held-out volume (:class:`qdm_med.io.Volume`, X, Y, Z).
        slices: indices of ``hr_hu`` in the patient's volume.
    """

    bundle: object
    hr_hu: np.ndarray
    lr_hu: np.ndarray
    lr_volume: object
    patient: str
    slices: list[int]
    device: torch.device
    repeats: int
    seed: int
    lpips: object = None
    defaults: dict = dataclasses.field(default_factory=dict)

    @property
    def pipeline(self):
        return self.bundle.pipeline

    @property
    def scale(self) -> int:
        return int(self.bundle.scale)

    def to_model(self, hu: np.ndarray) -> torch.Tensor:
        """(N, h, w) HU -> (N, 1, h, w) in [-1, 1] (the bundle window) on the device."""
        from qdm_med.transforms import HUWindow

        return torch.from_numpy(np.ascontiguousarray(HUWindow(*self.bundle.window)(hu)))[:, None].to(self.device)

    def to_hu(self, x: torch.Tensor) -> np.ndarray:
        """(N, 1, H, W) in [-1, 1] -> (N, H, W) HU."""
        from qdm_med.transforms import InverseHUWindow

        return InverseHUWindow(*self.bundle.window)(x[:, 0].float().cpu().numpy())

    def configure(self, **kw) -> None:
        """Set sampler/steps/threshold (None: ``defaults``, the diffusion's operating point: see
        :func:`prepare_context`) and ``sparse``; ``stochastic`` is always the operating point's."""
        p = self.pipeline
        p.sparse = bool(kw.get("sparse", True))
        p.configure(
            sampler=kw.get("sampler") or self.defaults["sampler"],
            steps=kw["steps"] if kw.get("steps") is not None else (self.defaults["steps"] or 1),
            threshold=self.defaults["threshold"] if kw.get("threshold") is None else kw["threshold"],
            stochastic=self.defaults.get("stochastic"),
        )

    def restore(self) -> None:
        self.configure()


def prepare_context(bundle_dir, data_dir=None, device: str | torch.device = "cpu", n_slices: int = 4, repeats: int = 3,
                    seed: int = 0, lpips_weights=None, patient: str | None = None) -> BenchContext:
    """Load the bundle and its held-out CT patient (or ``patient``, e.g. a training patient for tuning)
    from the corpus; pick ``n_slices`` evenly spaced slices (from the central 80% of the volume, away from
    the scan's empty ends)."""
    from qdm_med.bundle.loader import load_bundle
    from qdm_med.bundle.settings import detail_sampling
    from qdm_med.data.corpus import corpus_paths
    from qdm_med.data.simulate import degrade_volume
    from qdm_med.io import load_volume
    from qdm_med.jobs.scoring import load_lpips_or_none

    device = torch.device(device)
    bundle = load_bundle(bundle_dir, device)
    if bundle.kind != "ct":
        raise ConfigError(f"{bundle_dir}: bench measures CT bundles (qdm_ct_x4, qdm_ct_x8); this is a {bundle.kind} bundle")
    paths = corpus_paths(data_dir)
    if patient is not None:
        if patient not in paths:
            raise ConfigError(f"patient {patient!r} is not in the corpus ({', '.join(sorted(paths))})")
    else:
        holdout = list((bundle.config.get("data") or {}).get("holdout") or [])
        patient = next((p for p in holdout if p in paths), None)
        if patient is None:
            raise ConfigError(f"{bundle_dir}: its held-out patient {holdout or '(none named)'} is not in the corpus "
                              f"({', '.join(sorted(paths))})")
    hr = load_volume(paths[patient])
    lr = degrade_volume(hr, bundle.scale, preset="medical_test", seed=seed)
    nz = hr.array.shape[2]
    lo, hi = int(0.1 * nz), max(int(0.1 * nz) + 1, int(math.ceil(0.9 * nz)))
    ks = sorted({int(round(v)) for v in np.linspace(lo, hi - 1, max(1, int(n_slices)))})
    s = bundle.scale
    hr_arr = hr.array[: lr.array.shape[0] * s, : lr.array.shape[1] * s]
    to_rows = lambda a: np.ascontiguousarray(np.transpose(a[:, :, ks], (2, 1, 0)), dtype=np.float32)  # noqa: E731  (N, Y, X)
    p = bundle.pipeline
    defaults = {"sampler": p.sampler, "steps": p.steps, "threshold": p.threshold, "stochastic": p.stochastic}
    if p.steps == 0:  # the default is the prior alone (fidelity): the suites measure the diffusion's operating point,
        detail = detail_sampling(bundle.config) or {}  # the detail mode's, else one step at the bundle's threshold
        defaults = {k: detail[k] if detail.get(k) is not None else v for k, v in {**defaults, "steps": 1}.items()}
    return BenchContext(
        bundle=bundle, hr_hu=to_rows(hr_arr), lr_hu=to_rows(lr.array), lr_volume=lr, patient=patient, slices=ks,
        device=device, repeats=int(repeats), seed=int(seed), lpips=load_lpips_or_none(lpips_weights, device),
        defaults=defaults,
    )


# --------------------------------------------------------------------------------------------- helpers
def _run_pipeline(ctx: BenchContext, lr: torch.Tensor) -> torch.Tensor:
    g = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
    with torch.inference_mode():
        return ctx.pipeline(lr, generator=g)


def _scores(ctx: BenchContext, sr: torch.Tensor, with_lpips: bool = False) -> dict:
    """Mean PSNR/SSIM (bundle window) and LPIPS over the context's slices."""
    from qdm_med.jobs.scoring import SliceScorer

    scorer = SliceScorer(ctx.bundle.window, ctx.lpips if with_lpips else None, ctx.device)
    pred = ctx.to_hu(sr)
    rows = [scorer.score_ct_slice(p, r) for p, r in zip(pred, ctx.hr_hu)]
    out = {"psnr": float(np.mean([r["psnr_window"] for r in rows])), "ssim": float(np.mean([r["ssim_window"] for r in rows]))}
    if with_lpips:
        vals = [r["lpips"] for r in rows if isinstance(r["lpips"], float)]
        out["lpips"] = float(np.mean(vals)) if vals else None
    return out


def _bicubic_scores(ctx: BenchContext, with_lpips: bool = False) -> dict:
    from qdm_med.transforms import bicubic_upsample

    up = bicubic_upsample(ctx.to_model(ctx.lr_hu), ctx.scale).clamp(-1, 1)
    return _scores(ctx, up, with_lpips)


def _per_slice(t: dict, n_items: int) -> dict:
    return {"seconds_per_slice": t["seconds"] / n_items, "seconds_per_slice_min": t["seconds_min"] / n_items,
            "peak_mb": None if t["peak_bytes"] is None else t["peak_bytes"] / 2**20}


def _timed(ctx: BenchContext, fn: Callable[[], object], n_items: int, warmup: int = 1) -> dict:
    return _per_slice(time_call(fn, ctx.device, repeats=ctx.repeats, warmup=warmup), n_items)


# ------------------------------------------------------------------------------------------- 1. threshold
def sweep_thresholds(default: float | None) -> tuple[float, ...]:
    """:data:`THRESHOLDS` plus the operating point's own threshold (so its targets are read at it), ascending."""
    return tuple(sorted({*THRESHOLDS, *([] if default is None else [float(default)])}))


def threshold_sweep(ctx: BenchContext, thresholds: Sequence[float] = THRESHOLDS) -> list[dict]:
    """Rows for the full mask (dense path) and each threshold (sparse path; dense time on the same mask)."""
    lr = ctx.to_model(ctx.lr_hu)
    n = lr.shape[0]
    rows = []
    try:
        ctx.configure(threshold=0.0, sparse=False)
        full_sr = _run_pipeline(ctx, lr)
        full = {"setting": "full mask (dense)", "threshold": None, "path": "dense",
                **_timed(ctx, lambda: _run_pipeline(ctx, lr), n, warmup=0)}
        full.update(density=1.0, active_windows=1.0, computed_tokens=1.0, gmacs_per_slice=None, **_scores(ctx, full_sr, True))
        ctx.configure(threshold=0.0, sparse=True)
        _run_pipeline(ctx, lr)
        full["gmacs_per_slice"] = ctx.pipeline.last_info["macs"] / n / 1e9  # every window runs: the dense path's work
        rows.append(full)
        for s in thresholds:
            ctx.configure(threshold=float(s), sparse=True)
            sr = _run_pipeline(ctx, lr)
            info = ctx.pipeline.last_info
            scores = _scores(ctx, sr, True)

            def run(sparse: bool, s=float(s)):
                ctx.configure(threshold=s, sparse=sparse)
                return _run_pipeline(ctx, lr)

            # sparse and dense interleaved, so drift of the machine's speed cannot bias their ratio
            t_sparse, t_dense = time_calls([lambda: run(True), lambda: run(False)], ctx.device, repeats=ctx.repeats, warmup=1)
            sparse, dense = _per_slice(t_sparse, n), _per_slice(t_dense, n)
            row = {"setting": f"s = {s:g}", "threshold": float(s), "path": "sparse", **sparse}
            row.update(
                density=info["mask_density"], active_windows=info["active_windows"] / max(1, info["total_windows"]),
                computed_tokens=info["active_tokens"] / info["total_tokens"] if info.get("total_tokens") else None,
                gmacs_per_slice=info["macs"] / n / 1e9, **scores,
            )
            row["dense_seconds_per_slice"] = dense["seconds_per_slice"]
            row["dense_seconds_per_slice_min"] = dense["seconds_per_slice_min"]
            row["speedup_vs_dense"] = dense["seconds_per_slice"] / row["seconds_per_slice"]
            row["mac_reduction"] = full["gmacs_per_slice"] / row["gmacs_per_slice"]
            row["psnr_minus_full"] = row["psnr"] - full["psnr"]
            rows.append(row)
    finally:
        ctx.restore()
    return rows


# -------------------------------------------------------------------------------------------- 2. samplers
def sampler_sweep(ctx: BenchContext, settings: Sequence[tuple[str, int]] = SAMPLER_SETTINGS) -> list[dict]:
    """Rows per (sampler, steps) at the bundle's threshold, plus the bundle default and bicubic."""
    lr = ctx.to_model(ctx.lr_hu)
    n = lr.shape[0]
    rows = [{"setting": "bicubic", "sampler": "bicubic", "steps": 0, "seconds_per_slice": None, **_bicubic_scores(ctx, True)}]
    d = ctx.defaults
    todo = [(f"default ({d['sampler']}-{d['steps']})", d["sampler"], d["steps"])] + [(f"{s}-{k}", s, k) for s, k in settings]
    try:
        for name, sampler, steps in todo:
            ctx.configure(sampler=sampler, steps=steps)
            outs = []
            t = time_call(lambda outs=outs: outs.append(_run_pipeline(ctx, lr)), ctx.device, repeats=max(1, ctx.repeats - 1), warmup=0)
            sr = outs[-1]  # seeded: every repeat gives the same output
            rows.append({"setting": name, "sampler": sampler, "steps": steps, "seconds_per_slice": t["seconds"] / n,
                         **_scores(ctx, sr, True)})
    finally:
        ctx.restore()
    return rows


# --------------------------------------------------------------------------------------------- 3. scaling
def _resize_hu(hu: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) HU -> (N, size, size): antialiased bicubic, the way a larger or smaller field of view
    sampled at another pixel count looks."""
    x = torch.from_numpy(hu)[:, None]
    y = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=size < hu.shape[-1])
    return y[:, 0].numpy()


def _loglog_slope(x: Sequence[float], y: Sequence[float | None]) -> float | None:
    pts = [(math.log(a), math.log(b)) for a, b in zip(x, y) if b]
    if len(pts) < 2:
        return None
    xs, ys = zip(*pts)
    return float(np.polyfit(xs, ys, 1)[0])


def _with_slopes(rows: list[dict]) -> list[dict]:
    """Add ``seconds_exponent`` / ``peak_mb_exponent`` (log-log slope against ``pixels``) per path."""
    for path in ("dense", "sparse"):
        sub = [r for r in rows if r["path"] == path]
        for key in ("seconds", "peak_mb"):
            slope = _loglog_slope([r["pixels"] for r in sub], [r[key] for r in sub])
            for r in sub:
                r[f"{key}_exponent"] = slope
    return rows


def slice_scaling(ctx: BenchContext, sizes: Sequence[int] = (256, 512, 1024)) -> list[dict]:
    """One slice upscaled to ``size`` x ``size`` output, dense and sparse (default threshold)."""
    from qdm_med.transforms import bicubic_downsample

    rows = []
    mid = ctx.hr_hu[len(ctx.hr_hu) // 2 : len(ctx.hr_hu) // 2 + 1]
    try:
        for size in sizes:
            hr = _resize_hu(mid, int(size))
            lr = bicubic_downsample(ctx.to_model(hr), ctx.scale).clamp(-1, 1)
            for sparse in (False, True):
                ctx.configure(sparse=sparse)
                t = time_call(lambda lr=lr: _run_pipeline(ctx, lr), ctx.device, repeats=ctx.repeats, warmup=1)
                rows.append({
                    "output_size": int(size), "pixels": int(size) ** 2, "path": "sparse" if sparse else "dense",
                    "seconds": t["seconds"], "peak_mb": None if t["peak_bytes"] is None else t["peak_bytes"] / 2**20,
                    "density": ctx.pipeline.last_info["mask_density"],
                })
    finally:
        ctx.restore()
    return _with_slopes(rows)


def _volume_of(ctx: BenchContext, n: int):
    """The held-out LR volume cut or repeated along Z to ``n`` slices."""
    vol = ctx.lr_volume
    nz = vol.array.shape[2]
    idx = np.arange(n) % nz
    return dataclasses.replace(vol, array=np.ascontiguousarray(vol.array[:, :, idx]), dicom_headers=None)


def volume_scaling(ctx: BenchContext, lengths: Sequence[int] = (8, 32, 128), batch_size: int = 4) -> list[dict]:
    """Slice-wise inference of LR volumes of ``lengths`` slices, dense and sparse."""
    from qdm_med.inference.volume import SliceWiseInferencer

    rows = []
    try:
        for n in lengths:
            vol = _volume_of(ctx, int(n))
            for sparse in (False, True):
                ctx.configure(sparse=sparse)
                inf = SliceWiseInferencer(ctx.pipeline, ctx.scale, window=ctx.bundle.window, batch_size=batch_size,
                                          device=ctx.device, progress=False, seed=ctx.seed)
                t = time_call(lambda inf=inf, vol=vol: inf.infer(vol), ctx.device, repeats=1, warmup=0)
                out_px = int(n) * vol.array.shape[0] * vol.array.shape[1] * ctx.scale**2
                rows.append({
                    "slices": int(n), "pixels": out_px, "path": "sparse" if sparse else "dense", "seconds": t["seconds"],
                    "slices_per_second": int(n) / t["seconds"], "peak_mb": None if t["peak_bytes"] is None else t["peak_bytes"] / 2**20,
                })
    finally:
        ctx.restore()
    return _with_slopes(rows)


# -------------------------------------------------------------------------------------- 4. gather vs loop
def gather_vs_loop(ctx: BenchContext, thresholds: Sequence[float] | None = None) -> list[dict]:
    """One QDM call at the prior (t = T-1) on the context's slices: batched gather vs per-window loop."""
    from qdm_med.quadtree import qdm_masks
    from qdm_med.transforms import bicubic_upsample

    p = ctx.pipeline
    model = p.qdm
    lr = ctx.to_model(ctx.lr_hu)
    thresholds = [ctx.defaults["threshold"], 0.0] if thresholds is None else list(thresholds)
    rows = []
    with torch.inference_mode():
        up = bicubic_upsample(lr, ctx.scale).clamp(-1, 1)
        y = p.first_stage.encode(up)
        cond = model.conditioning(lr, y)
        t = torch.full((lr.shape[0],), float(p.diffusion.num_timesteps - 1), device=ctx.device)
        g = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
        x_in = y + torch.randn(y.shape, generator=g, device=ctx.device) * 0.5
        for s in thresholds:
            tok = qdm_masks(lr, float(s), ctx.scale, p.first_stage.factor).token
            batched, info = model.forward_sparse(x_in, t, cond, tok, chunk_size=p.chunk_size)
            loop = model.forward_window_loop(x_in, t, cond, tok)
            # the two calls above are the warm-up
            tb = time_call(lambda tok=tok: model.forward_sparse(x_in, t, cond, tok, chunk_size=p.chunk_size), ctx.device,
                           repeats=ctx.repeats, warmup=0)
            tl = time_call(lambda tok=tok: model.forward_window_loop(x_in, t, cond, tok), ctx.device, repeats=ctx.repeats, warmup=0)
            rows.append({
                "threshold": float(s), "batch": int(lr.shape[0]), "active_windows": info["active_windows"],
                "total_windows": info["total_windows"], "batched_seconds": tb["seconds"], "loop_seconds": tl["seconds"],
                "speedup": tl["seconds"] / tb["seconds"], "max_abs_diff": float((batched - loop).abs().max()),
            })
    return rows


# ------------------------------------------------------------------------------------------ 5. end to end
def end_to_end(ctx: BenchContext, n_slices: int = 32, batch_size: int = 4) -> list[dict]:
    """``qdm_med.upscale`` of the held-out LR volume (first ``n_slices``, as NIfTI) with the bundle's
    defaults: seconds per stage and slices per second."""
    from qdm_med.io import save_volume
    from qdm_med.jobs.upscale import upscale

    vol = _volume_of(ctx, min(int(n_slices), ctx.lr_volume.array.shape[2]))
    rows = []
    with tempfile.TemporaryDirectory(prefix="qdm_bench_") as tmp:
        src = save_volume(vol, Path(tmp) / "lr.nii.gz")
        t0 = time.perf_counter()
        rep = upscale(src, Path(tmp) / "sr.nii.gz", scale=ctx.scale, bundle=ctx.bundle.path, device=str(ctx.device),
                      batch_size=batch_size, seed=ctx.seed, quiet=True)
        wall = time.perf_counter() - t0
    tm = rep["timings"]
    detail = tm["inference_detail"]
    stages = (rep.get("pipeline_info") or {}).get("timings") or {}
    enc, samp, dec = (float(stages.get(k, 0.0)) for k in ("encode", "sample", "decode"))
    n = vol.array.shape[2]
    rows.append({
        "input_shape": list(vol.array.shape), "output_shape": rep["output"]["shape"], "slices": n, "batch_size": batch_size,
        "load": tm["load"], "encode": enc, "sampling": samp, "decode": dec,
        "slicewise_other": max(0.0, float(detail["total"]) - enc - samp - dec), "write": tm["write"], "total": wall,
        "slices_per_second": n / wall, "sampler": rep.get("sampler"), "steps": rep.get("steps"), "threshold": rep.get("threshold"),
    })
    return rows
