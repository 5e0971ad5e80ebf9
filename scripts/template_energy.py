"""How much of a detail mode's added texture is one pattern tiled on the model's patch grid (issue 16 diagnostics).

For each slice (LR made by ``scripts/region_eval.py``'s resamplers), each method's output minus the reference
method's (the fidelity mode: ``bundle=DIR?steps=0``) is split by the HR's tissue class (air < -900 HU, lung/fat
-900..-200, soft tissue -200..300, bone >= 300); in each class the ``--period``-tiled part of that residual is
estimated over all the slices of the volume and LR kind (:func:`qdm_med.metrics.periodic.tiled_component`).
Reported per method: the tiled share of the residual's energy in air and soft tissue, the tiled part's RMS in HU,
and LPIPS (soft-tissue and model window) and PSNR before and after the tiled part is subtracted. The HR itself is
scored the same way as a control (its texture has no tiled part).

    python scripts/template_energy.py --scale 8 --hr $QDM_MED_DATA/ct/totalsegmentator_abdomen.nii.gz \\
        --slices 2,6,10,14,18 --reference bundle=bundles/qdm_ct_x8?steps=0 --method detail:bundle=bundles/qdm_ct_x8

Prints a Markdown table; ``--json`` writes the rows too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from qdm_med.metrics.periodic import tiled_component

CLASSES = {"air": (-np.inf, -900.0), "lung_fat": (-900.0, -200.0), "soft": (-200.0, 300.0), "bone": (300.0, np.inf)}


def _region_eval():
    spec = importlib.util.spec_from_file_location("region_eval", Path(__file__).with_name("region_eval.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def untile(outputs: np.ndarray, reference: np.ndarray, hr: np.ndarray, period: int):
    """Split (N, H, W) HU outputs into reference + residual per tissue class and remove the residual's tiled part.

    The pattern of each class is estimated over the N slices together. Returns (untiled outputs, tiled part,
    {class: tiled share of the residual's energy}).
    """
    res = outputs - reference
    tiled = np.zeros_like(res, dtype=np.float64)
    share = {}
    for name, (lo, hi) in CLASSES.items():
        m = (hr >= lo) & (hr < hi)
        if m.sum() < 50 * period * period:  # fewer than 50 pixels per phase: no estimate
            continue
        part = tiled_component(res, period, m)
        tiled += part
        share[name] = float((part[m] ** 2).mean() / max((res[m] ** 2).mean(), 1e-12))
    return outputs - tiled, tiled, share


def main() -> None:
    from qdm_med.inference.volume import SliceWiseInferencer
    from qdm_med.io import Volume, load_volume
    from qdm_med.jobs.scoring import SliceScorer, load_lpips_or_none

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hr", required=True, help="HR volumes (comma-separated)")
    ap.add_argument("--scale", type=int, required=True)
    ap.add_argument("--reference", required=True, help="the smooth method residuals are taken against (region_eval spec)")
    ap.add_argument("--method", action="append", required=True, help="region_eval method spec (repeatable)")
    ap.add_argument("--lr-kind", default="pil_bicubic")
    ap.add_argument("--slices", default=None, help="slice indices (comma-separated; default: every slice)")
    ap.add_argument("--period", type=int, default=32, help="tile side in HR pixels (QDM upstream patch x first-stage factor)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    region_eval = _region_eval()
    lpips = load_lpips_or_none()
    if lpips is None:
        raise SystemExit("template_energy: the LPIPS weights are missing; run `qdm-med data fetch`")
    s = args.scale
    methods = [region_eval.build_method(m, s) for m in (args.reference, *args.method)]  # the reference first
    rows = []
    for path in args.hr.split(","):
        vol = load_volume(path)
        nx, ny = vol.array.shape[0] // s * s, vol.array.shape[1] // s * s
        hr_vol = vol.array[:nx, :ny]
        ks = [int(k) for k in args.slices.split(",")] if args.slices else list(range(hr_vol.shape[2]))
        hr = np.stack([hr_vol[:, :, k].T for k in ks]).astype(np.float64)
        lr = np.stack([region_eval.make_lr(h, s, args.lr_kind, 0.0, args.seed + k).T for h, k in zip(hr, ks)], axis=2)
        outs = []
        for _, sr_fn, window in methods:
            inf = SliceWiseInferencer(sr_fn, s, window=window, batch_size=4, progress=False, seed=args.seed, device="cpu")
            outs.append(np.stack([a.T for a in np.moveaxis(inf(Volume(lr, vol.affine, {"path": path})).array, 2, 0)]))
        scorer = SliceScorer(methods[0][2], lpips)
        named = [("HR (control)", hr)] + [(label, o) for (label, _, _), o in zip(methods[1:], outs[1:])]
        for label, out in named:
            untiled, tiled, share = untile(out, outs[0], hr, args.period)
            before = [scorer.score_ct_slice(o, h) for o, h in zip(out, hr)]
            after = [scorer.score_ct_slice(o, h) for o, h in zip(untiled, hr)]
            row = {"volume": Path(path).name, "method": label, "share": share, "tiled_rms_hu": float(np.sqrt((tiled**2).mean()))}
            for key in ("lpips_soft", "lpips", "psnr_full"):
                row[key] = float(np.mean([float(b[key]) for b in before]))  # an exact match scores "inf" dB
                row[key + "_untiled"] = float(np.mean([float(a[key]) for a in after]))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| volume | method | tiled share air / soft | tiled RMS (HU) | LPIPS soft (untiled) | LPIPS window (untiled) | PSNR (untiled) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        sh = " / ".join(f"{r['share'].get(c, float('nan')):.2f}" for c in ("air", "soft"))
        print(f"| {r['volume']} | {r['method']} | {sh} | {r['tiled_rms_hu']:.1f} | {r['lpips_soft']:.4f} ({r['lpips_soft_untiled']:.4f}) "
              f"| {r['lpips']:.4f} ({r['lpips_untiled']:.4f}) | {r['psnr_full']:.2f} ({r['psnr_full_untiled']:.2f}) |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
