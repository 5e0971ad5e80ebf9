"""Copy a training run's exported weights into a bundle's ``models/model.pt``, in half precision.

    python scripts/export_weights.py runs/qdm_ct_x8 bundles/qdm_ct_x8 [--fp32] [--overwrite]

The run's ``models/model.pt`` (EMA weights of the LR->SR module) is checked against the bundle's network
(strict load) before anything is written; floating tensors are stored as float16 (``load_bundle`` casts
them back to float32), which halves the file. Prints the file size and the step it came from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    from qdm_med._atomic import atomic_path
    from qdm_med.inference.bundle import build_network

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("bundle")
    ap.add_argument("--fp32", action="store_true", help="keep float32")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    src, dst = Path(args.run) / "models" / "model.pt", Path(args.bundle) / "models" / "model.pt"
    state = torch.load(src, map_location="cpu", weights_only=True)
    build_network(args.bundle).load_state_dict(state, strict=True)
    if not args.fp32:
        state = {k: v.half() if torch.is_floating_point(v) else v for k, v in state.items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst, overwrite=args.overwrite) as tmp:
        torch.save(state, tmp)
    step = torch.load(Path(args.run) / "checkpoint.pt", map_location="cpu", weights_only=True).get("step")
    print(f"{dst}: {dst.stat().st_size / 1e6:.2f} MB from {src} (step {step})")


if __name__ == "__main__":
    main()
