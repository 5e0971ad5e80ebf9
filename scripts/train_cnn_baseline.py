"""Train the plain-CNN reference of SPEC section 12 for the same CPU time as a bundle's prior run.

The reference a diffusion model must beat: a plain residual CNN (6 conv layers, 64 channels, pixel-unshuffle
space, bicubic skip, L1, 0.2 M parameters) trained on the same data with clean antialiased-bicubic LR. This
runs the bundle's prior stage (``configs/train_prior.json``: same data, split and seed) with that
architecture and degradation, stopped at a CPU-time budget: by default the CPU time the bundle's own prior
run took (``--match RUN``, its ``summary.json``), so the comparison is equal-time even on a shared machine.

    python scripts/train_cnn_baseline.py bundles/qdm_ct_x4 --corpus --match runs/qdm_ct_x4-train_prior \\
        --output runs/cnn_baseline_x4
    python scripts/region_eval.py --scale 4 --hr $QDM_MED_DATA/ct/totalsegmentator_abdomen.nii.gz --method bicubic \\
        --method cnn:prior=runs/cnn_baseline_x4/baseline_config.json@runs/cnn_baseline_x4/models/model.pt ...

Run it with the thread count the matched run had (``OMP_NUM_THREADS=1`` for the shipped priors): CPU time
of a multi-threaded run includes its threads' overhead. Writes ``<output>/baseline_config.json`` (the effective
prior/data/train settings, for region_eval) besides
the usual run files. ``--preset`` changes the LR degradation (e.g. the bundle's own mix, for the SPEC's
second comparison).

Since ``qdm_ct_x4`` 0.4.0 / ``qdm_ct_x8`` 0.5.0 the bundles' own prior *is* this CNN (it won the equal-time
comparison against the residual prior recipe, ``docs/issue16_probes.md``): ``configs/train_prior.json`` is
this script's run with its step count fixed (6522 / 9520), so the script now serves to compare a changed
prior recipe against the reference at that recipe's CPU time (``--match``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PLAIN_CNN = {"kind": "cnn", "channels": 64, "layers": 6, "blocks": 0, "unshuffle": 4}


def main() -> None:
    from qdm_med.bundle import bundle_settings
    from qdm_med.training import train_bundle

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--output", required=True)
    ap.add_argument("--corpus", action="store_true", help="train on the offline corpus (else --data)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--match", default=None, help="a prior run whose CPU time (summary.json) is the budget")
    ap.add_argument("--cpu-minutes", type=float, default=None, help="the budget (default: --match's CPU time)")
    ap.add_argument("--preset", default="bicubic", help="LR degradation (SPEC's reference: clean antialiased bicubic)")
    ap.add_argument("--steps", type=int, default=100000, help="upper bound; the budget normally ends the run first")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    minutes = args.cpu_minutes
    if minutes is None:
        if not args.match:
            ap.error("give --cpu-minutes or --match RUN")
        minutes = json.loads((Path(args.match) / "summary.json").read_text())["cpu_time_s"] / 60.0
    out = Path(args.output)
    preset = json.loads(args.preset) if args.preset.startswith("{") else args.preset
    overrides = {
        "prior": PLAIN_CNN,
        "data": {"preset": preset, "val_preset": "bicubic"},
        "train": {"max_cpu_minutes": minutes, "steps": args.steps, "lr_schedule": "constant", "phases": []},
    }
    summary = train_bundle(
        args.bundle, data=args.data, corpus=args.corpus, output=out, resume=args.resume, overrides=overrides, config="train_prior"
    )
    settings = bundle_settings(args.bundle, "train_prior")
    effective = {
        k: ({**settings[k], **overrides[k]} if k in overrides else settings[k]) for k in ("scale", "window", "prior", "data", "train")
    }
    (out / "baseline_config.json").write_text(json.dumps(effective, indent=2) + "\n")
    print(f"{out}: {summary['steps']} steps, {summary['cpu_time_s'] / 60:.1f} CPU-minutes (budget {minutes:.1f})")


if __name__ == "__main__":
    main()
