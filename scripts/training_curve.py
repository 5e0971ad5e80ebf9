"""Validation curve of a training run (all resumed segments of its ``log.jsonl``) over steps and wall time.

    python scripts/training_curve.py runs/vae_ct --png bundles/vae_ct/docs/curve.png [--title "KL-VAE"]

Prints a Markdown table (step, wall minutes, validation PSNR/SSIM and, for QDM runs, bicubic) and writes
an optional PNG of PSNR against wall-clock minutes. A resumed segment restarts its ``elapsed`` clock; the
segments are chained so the time axis is the total training time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_curve(run: Path) -> list[dict]:
    rows, offset, seg_max, prev = [], 0.0, 0.0, None
    for line in (run / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        e = float(r.get("elapsed", 0.0))
        if prev is not None and e < prev:  # a resumed segment
            offset += seg_max
            seg_max = 0.0
        seg_max, prev = max(seg_max, e), e
        if "validation" in r:
            v = r["validation"]
            rows.append({"step": r["step"], "minutes": (offset + e) / 60, "psnr": v["val_psnr"], "ssim": v["val_ssim"],
                         "psnr_bicubic": v.get("val_psnr_bicubic"), "ssim_bicubic": v.get("val_ssim_bicubic")})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--png", type=Path, default=None)
    ap.add_argument("--title", default=None)
    args = ap.parse_args()
    rows = read_curve(args.run)
    if not rows:
        raise SystemExit(f"{args.run}: no validation entries in log.jsonl")
    bic = rows[0]["psnr_bicubic"] is not None
    head = "| step | minutes | PSNR | SSIM |" + (" PSNR bicubic | SSIM bicubic |" if bic else "")
    print(head)
    print("|" + "---|" * (6 if bic else 4))
    for r in rows:
        extra = f" {r['psnr_bicubic']:.2f} | {r['ssim_bicubic']:.4f} |" if bic else ""
        print(f"| {r['step']} | {r['minutes']:.0f} | {r['psnr']:.2f} | {r['ssim']:.4f} |{extra}")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.plot([r["minutes"] for r in rows], [r["psnr"] for r in rows], "o-", label="model (validation)")
        if bic:
            ax.axhline(rows[0]["psnr_bicubic"], color="k", ls="--", label="bicubic")
        ax.set_xlabel("training wall time (minutes, 2-core CPU)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(args.title or args.run.name)
        ax.grid(alpha=0.3)
        ax.legend()
        args.png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=110, bbox_inches="tight")
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
