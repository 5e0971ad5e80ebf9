"""Held-out-region evaluation: SR methods on CT the models never trained on, LR made by other libraries.

The protocol of SPEC section 12, on data we may validate on (the corpus' abdomen when the models train on
chest): each axial slice is made low-resolution by a common antialiased resampler (PIL's bicubic,
scikit-image's ``resize(anti_aliasing=True)``), clean and with white CT-like noise (``--noise-hu``,
default 12 HU), then upscaled by each method through the project's slice-wise inferencer. Scores per slice:
PSNR/SSIM over [-1024, 3071] HU (``*_full``), in the model window (``*_window``) and in a soft-tissue window
(W 400 / L 40, ``*_soft``), and LPIPS in the model and soft-tissue windows (:class:`qdm_med.jobs.scoring.SliceScorer`,
the scores of ``qdm-med evaluate``).

    python scripts/region_eval.py --scale 4 --hr $QDM_MED_DATA/ct/totalsegmentator_abdomen.nii.gz \\
        --method bicubic --method prior=bundles/qdm_ct_x4/configs/train_prior.json@runs/qdm_ct_x4-train_prior/models/model.pt \\
        --method bundle=bundles/qdm_ct_x4 --method "bundle=bundles/qdm_ct_x4?sampler=tss&steps=7" --out runs/region_x4

Methods: ``bicubic``; ``prior=CONFIG@WEIGHTS`` (a prior-stage config and its weights, e.g. a run's
``models/model.pt``); ``bundle=DIR[?key=value&...]`` (a QDM bundle with sampling overrides: ``sampler``,
``steps``, ``threshold``, ``stochastic``, ``flip_ensemble`` and the sampler's own parameters, e.g.
``n_range=1,2&a_range=0.3,0.5``). ``label:`` before a method names its row. Prints a Markdown table (mean
over slices; gain over bicubic on average and for the worst slice) and writes it with the raw scores.

LR kinds (``--lr-kinds``): ``pil_bicubic``, ``skimage_resize`` and, as robustness checks outside the protocol,
other libraries' downsamplers (``torch_bicubic``: PyTorch's ``interpolate`` defaults, aliased; ``area``: block mean;
``sitk_gauss_linear``: SimpleITK Gaussian smoothing then linear resampling; ``scipy_zoom``: SciPy's spline zoom,
aliased) and ``medical_test`` (the project's own blur/noise/JPEG test degradation); ``_noise`` adds white noise.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import torch

from qdm_med.transforms.window import FULL_HU_RANGE as FULL


def make_lr(slice_hu: np.ndarray, scale: int, kind: str, noise_hu: float, seed: int) -> np.ndarray:
    """(H, W) HU -> (H/s, W/s) HU with another library's resampler (+ white noise for ``*_noise``)."""
    from PIL import Image
    from skimage.transform import resize

    from qdm_med.transforms.external import downsample_plane

    h, w = slice_hu.shape[0] // scale, slice_hu.shape[1] // scale
    base = kind.removesuffix("_noise")
    if base == "pil_bicubic":
        lr = np.asarray(Image.fromarray(slice_hu.astype(np.float32), mode="F").resize((w, h), Image.BICUBIC), dtype=np.float64)
    elif base == "skimage_resize":
        lr = resize(slice_hu.astype(np.float64), (h, w), order=3, anti_aliasing=True, preserve_range=True)
    elif base == "torch_bicubic":  # F.interpolate's defaults (a = -0.75, no antialiasing: aliased LR; with it, it is PIL's)
        t = torch.from_numpy(slice_hu.astype(np.float32))[None, None]
        lr = torch.nn.functional.interpolate(t, size=(h, w), mode="bicubic", align_corners=False)[0, 0].double().numpy()
    elif base == "area":  # block mean (OpenCV's INTER_AREA at integer factors): a thick-pixel detector model
        lr = downsample_plane(slice_hu[: h * scale, : w * scale].astype(np.float64), "skimage_local_mean", scale)
    elif base == "sitk_gauss_linear":  # ITK's usual recipe: Gaussian smoothing (sigma = scale/2 px), linear resampling
        import SimpleITK as sitk

        img = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(slice_hu.astype(np.float32)), scale / 2.0)
        ref = sitk.Image([w, h], sitk.sitkFloat32)
        ref.SetSpacing([float(scale)] * 2)
        ref.SetOrigin([(scale - 1) / 2.0] * 2)  # pixel centres of the coarse grid, as the block-mean's
        lr = sitk.GetArrayFromImage(sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear)).astype(np.float64)
    elif base == "scipy_zoom":  # SciPy's cubic spline zoom, no antialiasing: aliased LR (edges reflected, unlike
        from scipy.ndimage import zoom  # the external preset's "nearest": the sixth session's tables used this)

        lr = zoom(slice_hu.astype(np.float64), 1.0 / scale, order=3, grid_mode=True, mode="reflect")
    elif base == "medical_test":  # our own blur/noise/JPEG test degradation: a robustness check, not the protocol
        from qdm_med.data.simulate import degrade_image

        lo, hi = FULL  # the HU range degrade_volume maps to [0, 1]
        unit = (np.clip(slice_hu, lo, hi) - lo) / (hi - lo)
        lr = degrade_image(unit[None], scale, "medical_test", seed)[0].astype(np.float64) * (hi - lo) + lo
    else:
        raise ValueError(f"LR kind {kind!r}: use pil_bicubic, skimage_resize, torch_bicubic, area, sitk_gauss_linear, "
                         "scipy_zoom or medical_test (+ _noise)")
    if kind.endswith("_noise"):
        lr = lr + np.random.RandomState(seed).normal(0.0, noise_hu, lr.shape)
    return np.clip(lr, FULL[0], FULL[1]).astype(np.float32)


def build_method(spec: str, scale: int):
    """(label, sr_fn, window) of a method spec (see module docstring)."""
    from qdm_med.transforms import bicubic_upsample

    label, _, spec = spec.partition(":") if ":" in spec.split("=")[0] else ("", "", spec)
    kind, _, arg = spec.partition("=")
    if kind == "bicubic":
        return label or "bicubic", (lambda lr: bicubic_upsample(lr, scale).clamp(-1, 1)), (-1024.0, 2048.0)
    if kind == "prior":
        from qdm_med.bundle import read_weights
        from qdm_med.models.prior import build_prior

        config, _, weights = arg.partition("@")
        cfg = json.loads(Path(config).read_text())
        net = build_prior(cfg["prior"], scale, 1)
        net.load_state_dict(read_weights(weights))
        net.scale, net.size_multiple = scale, net.lr_multiple
        return label or f"prior {Path(weights).parent.parent.name}", net.eval(), tuple(cfg["window"])
    if kind == "bundle":
        from qdm_med.bundle import load_bundle

        path, _, query = arg.partition("?")
        loaded = load_bundle(path)
        opts = dict(parse_qsl(query))
        sr = loaded.pipeline
        flags = {f: opts.pop(f).lower() in ("1", "true", "yes") for f in ("stochastic", "flip_ensemble") if f in opts}
        sr.configure(steps=int(opts.pop("steps")) if "steps" in opts else None, sampler=opts.pop("sampler", None),
                     threshold=float(opts.pop("threshold")) if "threshold" in opts else None, **flags)
        if opts:  # the rest are the sampler's own parameters, e.g. n_range=1,2&a_range=0.3,0.5
            sr.sampler_params = {k: _sampler_value(v) for k, v in opts.items()}
        sr.size_multiple = sr.lr_multiple
        return label or f"{Path(path).name} {query or 'default'}", sr, loaded.window
    raise ValueError(f"method {spec!r}: use bicubic, prior=CONFIG@WEIGHTS or bundle=DIR[?k=v&...]")


def _sampler_value(text: str):
    """A sampler parameter from a query value: "1,2" -> [1.0, 2.0], "6" -> 6.0, else the text."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        return text
    return values if "," in text else values[0]


def main() -> None:
    from qdm_med.inference.volume import SliceWiseInferencer
    from qdm_med.io import Volume, load_volume
    from qdm_med.jobs.scoring import SliceScorer, load_lpips_or_none, summarize

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hr", required=True, help="held-out HR volumes (comma-separated)")
    ap.add_argument("--scale", type=int, required=True)
    ap.add_argument("--method", action="append", required=True)
    ap.add_argument("--lr-kinds", default="pil_bicubic,skimage_resize,pil_bicubic_noise,skimage_resize_noise")
    ap.add_argument("--noise-hu", type=float, default=12.0)
    ap.add_argument("--slices", default=None, help="slice indices (comma-separated; default: every slice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    lpips = load_lpips_or_none()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = [build_method(m, args.scale) for m in args.method]
    rows = []
    for path in args.hr.split(","):
        vol = load_volume(path)
        s = args.scale
        nx, ny, nz = vol.array.shape[0] // s * s, vol.array.shape[1] // s * s, vol.array.shape[2]
        hr = vol.array[:nx, :ny]
        ks = [int(k) for k in args.slices.split(",")] if args.slices else list(range(nz))
        for kind in args.lr_kinds.split(","):
            lr = np.stack([make_lr(hr[:, :, k].T, s, kind, args.noise_hu, args.seed + k).T for k in ks], axis=2)
            lr_vol = Volume(lr, vol.affine, {"path": path})
            for label, sr_fn, window in methods:
                t0 = time.perf_counter()
                inf = SliceWiseInferencer(sr_fn, s, window=window, batch_size=4, progress=False, seed=args.seed, device="cpu")
                sr = inf(lr_vol).array
                scorer = SliceScorer(window, lpips)  # the project's scores: full range, model window, soft tissue
                per = [scorer.score_ct_slice(sr[:, :, i].T, hr[:, :, k].T) for i, k in enumerate(ks)]
                rows.append(
                    {
                        "volume": Path(path).name,
                        "lr": kind,
                        "method": label,
                        "seconds": time.perf_counter() - t0,
                        "per_slice": per,
                        **{k: v for k, v in summarize(per).items() if k != "slices"},
                    }
                )
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_slice"}), flush=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
    table = markdown(rows)
    (out / "table.md").write_text(table)
    print(table)


def markdown(rows: list[dict]) -> str:
    """Per (volume, LR kind): each method's means, and its PSNR gain over bicubic (mean and worst slice)."""
    lines = ["| volume | LR | method | PSNR full | gain (worst slice) | SSIM full | PSNR soft | SSIM soft | LPIPS soft |", "|" + "---|" * 9]
    by_case: dict = {}
    for r in rows:
        by_case.setdefault((r["volume"], r["lr"]), []).append(r)
    for (vol, kind), group in by_case.items():
        bic = next((r for r in group if r["method"] == "bicubic"), None)
        for r in group:
            gain = "-"
            if bic is not None:
                d = [p["psnr_full"] - b["psnr_full"] for p, b in zip(r["per_slice"], bic["per_slice"])]
                gain = f"{np.mean(d):+.2f} ({min(d):+.2f})"
            lp = f"{r['lpips_soft']:.4f}" if isinstance(r["lpips_soft"], float) else "-"
            lines.append(
                f"| {vol} | {kind} | {r['method']} | {r['psnr_full']:.2f} | {gain} | {r['ssim_full']:.4f} | {r['psnr_soft']:.2f} "
                f"| {r['ssim_soft']:.4f} | {lp} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
