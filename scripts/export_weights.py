"""Copy a training run's exported weights into a bundle's ``models/model.pt``, in half precision.

    python scripts/export_weights.py runs/qdm_ct_x8 bundles/qdm_ct_x8 [--fp32] [--overwrite]
    python scripts/export_weights.py bundles/qdm_ct_x8 bundles/qdm_ct_x8 --prior runs/qdm_ct_x8-train_prior --overwrite

``--prior RUN`` puts a prior stage's weights (``RUN/models/model.pt``) in as the ``prior.*`` keys (the run
may be the bundle itself: its QDM weights are kept and the prior replaced).

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
    from qdm_med.bundle import build_network, read_weights

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("bundle")
    ap.add_argument("--fp32", action="store_true", help="keep float32")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--prior", default=None, help="a prior-stage run whose weights become the prior.* keys")
    args = ap.parse_args()
    src, dst = Path(args.run) / "models" / "model.pt", Path(args.bundle) / "models" / "model.pt"
    state = read_weights(src)
    if args.prior:
        state = {k: v for k, v in state.items() if not k.startswith("prior.")}
        state.update({f"prior.{k}": v for k, v in read_weights(Path(args.prior) / "models" / "model.pt").items()})
    build_network(args.bundle).load_state_dict(state, strict=True)
    if not args.fp32:
        state = {k: v.half() if torch.is_floating_point(v) else v for k, v in state.items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst, overwrite=args.overwrite) as tmp:
        torch.save(state, tmp)
    def step(run: str):
        ck = Path(run) / "checkpoint.pt"
        return torch.load(ck, map_location="cpu", weights_only=True).get("step") if ck.is_file() else None

    prior = f", prior from {args.prior} (step {step(args.prior)})" if args.prior else ""
    print(f"{dst}: {dst.stat().st_size / 1e6:.2f} MB from {src} (step {step(args.run)}){prior}")


if __name__ == "__main__":
    main()
