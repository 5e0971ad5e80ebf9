"""Tune the TDS / TSS parameters for a T = 15 bundle on training-patient slices (SPEC section 5).

    python scripts/tune_tss.py bundles/qdm_ct_x8 --patient pyradiomics_lung1 --slices 8 --steps 7 --out runs/tune_tss

The paper's ranges were set for 1000-step backbones. This grid searches the polynomial TDS warp (n, a)
and then the SDS band around the best warp, at the bundle's threshold, on ``medical_test`` LR of a patient
the bundle trained on (never the held-out one: the model cards report the held-out numbers of whatever
this picks). Writes ``tune_tss.json`` and ``tune_tss.md`` (PSNR/SSIM in the bundle window per setting,
uniform first).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

TDS_GRID = [(n, a) for n in (1.5, 2.0, 3.0, 4.0, 6.0) for a in (0.05, 0.1, 0.2, 0.3, 0.5)]


def sds_grid(n: float, a: float) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """SDS bands around the TDS optimum (n, a): from uniform to it, centred on it narrow and wide."""
    lo = lambda d: max(0.02, a - d)  # noqa: E731  a stays inside (0, 1)
    return [((1.0, n), (lo(0.05), a + 0.05)), ((max(1.0, n - 0.25), n + 0.25), (lo(0.05), a + 0.05)),
            ((max(1.0, n - 0.5), n + 0.5), (lo(0.15), a + 0.15)), ((1.0, n), (lo(0.15), a + 0.15))]


def main() -> None:
    from qdm_med.bench.suites import _run_pipeline, _scores, prepare_context

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--patient", required=True, help="a training patient of the bundle (corpus name)")
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    ctx = prepare_context(args.bundle, n_slices=args.slices, patient=args.patient, seed=args.seed)
    holdout = (ctx.bundle.config.get("data") or {}).get("holdout") or []
    if args.patient in holdout:
        raise SystemExit(f"error: {args.patient} is the bundle's held-out patient; tune on a training patient")
    lr = ctx.to_model(ctx.lr_hu)
    pipe = ctx.pipeline
    rows = []

    def run(sampler: str, **params) -> dict:
        pipe.configure(sampler=sampler, steps=args.steps)
        pipe.sampler_params = params
        t0 = time.perf_counter()
        sr = _run_pipeline(ctx, lr)
        row = {"sampler": sampler, **{k: list(v) if isinstance(v, tuple) else v for k, v in params.items()},
               **_scores(ctx, sr), "seconds": round(time.perf_counter() - t0, 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    run("uniform")
    best = max((run("tds", n=n, a=a) for n, a in TDS_GRID), key=lambda r: r["psnr"])
    for n_range, a_range in sds_grid(best["n"], best["a"]):
        run("tss", n_range=n_range, a_range=a_range)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"bundle": str(args.bundle), "patient": args.patient, "slices": ctx.slices, "steps": args.steps, "seed": args.seed,
            "threshold": pipe.threshold, "lr": "medical_test"}
    (out / "tune_tss.json").write_text(json.dumps({"settings": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"TSS tuning: {args.bundle}, patient {args.patient} slices {ctx.slices}, {args.steps} steps, s = {pipe.threshold}",
             "", "| sampler | params | PSNR | SSIM |", "|---|---|---|---|"]
    for r in rows:
        params = ", ".join(f"{k}={r[k]}" for k in ("n", "a", "n_range", "a_range") if k in r)
        lines.append(f"| {r['sampler']} | {params or '-'} | {r['psnr']:.3f} | {r['ssim']:.4f} |")
    (out / "tune_tss.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
