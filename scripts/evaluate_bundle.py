"""Model-card table of a QDM bundle on held-out data: model vs bicubic, per LR preset and sampler.

Runs :func:`qdm_med.evaluate` (seeded degradation of the HR, upscale, score) for every
(preset, sampler setting) pair and prints a Markdown table plus a JSON file with the raw reports.

    python scripts/evaluate_bundle.py bundles/qdm_ct_x8 --hr $QDM_MED_DATA/ct/pyradiomics_lung2.nii.gz \
        --out runs/eval_qdm_ct_x8 [--slices 0,10,20] [--settings default,uniform7,full]

Settings: ``default`` (the bundle's sampler/steps/threshold), ``uniform7`` / ``tss7`` (7 steps, same
threshold), ``full`` (bundle sampler at threshold 0, the full mask), ``uniform1`` (one step: the x0
prediction from the prior).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SETTINGS = {
    "default": {},
    "uniform7": {"sampler": "uniform", "steps": 7},
    "tss7": {"sampler": "tss", "steps": 7},
    "full": {"threshold": 0.0},
    "uniform1": {"sampler": "uniform", "steps": 1},
}


def setting(name: str) -> dict:
    """A named setting, or ``s=<threshold>`` (bundle sampler at that quadtree threshold)."""
    if name.startswith("s="):
        return {"threshold": float(name[2:])}
    return SETTINGS[name]


def main() -> None:
    from qdm_med.jobs.evaluate import evaluate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--hr", required=True, help="held-out HR volume or image (repeatable with commas)")
    ap.add_argument("--scale", type=int, default=None, help="default: the bundle's scale")
    ap.add_argument("--presets", default="medical_test,bicubic")
    ap.add_argument("--settings", default="default,uniform7,full")
    ap.add_argument("--slices", default=None, help="comma-separated slice indices (default: all)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tag", default="table", help="name of the table files in --out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    bundle = Path(args.bundle)
    cfg = json.loads((bundle / "configs" / "train.json").read_text())
    scale = args.scale or int(cfg["scale"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slices = [int(s) for s in args.slices.split(",")] if args.slices else None
    rows, raw = [], {}
    for hr in args.hr.split(","):
        for preset in args.presets.split(","):
            for name in args.settings.split(","):
                t0 = time.perf_counter()
                rep = evaluate(hr, scale, preset=preset, bundle=str(bundle), seed=args.seed, slices=slices, quiet=True,
                               report=out / f"{Path(hr).name.split('.')[0]}_{preset}_{name}.json", overwrite=True, **setting(name))
                raw[f"{hr}|{preset}|{name}"] = rep
                m, b = rep["metrics"]["model"]["overall"], rep["metrics"]["bicubic"]["overall"]
                pick = lambda d, k: d.get(f"{k}_window", d.get(k))  # noqa: E731  CT: window; images: [0, 1]
                rows.append({
                    "input": Path(hr).name, "preset": preset, "setting": name,
                    "sampler": f"{rep.get('sampler')}-{rep.get('steps')} s={rep.get('threshold')}",
                    "psnr": pick(m, "psnr"), "psnr_bic": pick(b, "psnr"), "ssim": pick(m, "ssim"), "ssim_bic": pick(b, "ssim"),
                    "psnr_full": m.get("psnr_full"), "psnr_full_bic": b.get("psnr_full"),
                    "ssim_full": m.get("ssim_full"), "ssim_full_bic": b.get("ssim_full"),
                    "slices": m.get("slices"), "density": rep.get("mask_density"), "seconds": round(time.perf_counter() - t0, 1),
                })
                print(json.dumps(rows[-1]), flush=True)
    (out / f"{args.tag}.json").write_text(json.dumps(rows, indent=2) + "\n")
    head = ("| input | LR preset | sampling | PSNR model / bicubic | SSIM model / bicubic | PSNR full HU model / bicubic "
            "| SSIM full HU model / bicubic | mask density | slices |")
    lines = [head, "|" + "---|" * 9]
    f = lambda v, n: "-" if v is None else f"{float(v):.{n}f}"  # noqa: E731
    for r in rows:
        lines.append(
            f"| {r['input']} | {r['preset']} | {r['sampler']} | {f(r['psnr'], 2)} / {f(r['psnr_bic'], 2)} "
            f"| {f(r['ssim'], 4)} / {f(r['ssim_bic'], 4)} "
            f"| {f(r['psnr_full'], 2)} / {f(r['psnr_full_bic'], 2)} | {f(r['ssim_full'], 4)} / {f(r['ssim_full_bic'], 4)} "
            f"| {f(r['density'], 3)} | {r['slices']} |"
        )
    (out / f"{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
