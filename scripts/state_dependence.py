"""How much a bundle's QDM reads its noisy state x_t, call by call (issue 16's sampler diagnostics).

For one axial slice (LR made by PIL's bicubic ``resize``) and each timestep t, the sparse path's x0 prediction is
computed twice, from x_t = y (the latent of the residual shift's start: the prior's prediction or bicubic) and from
x_t = x0 (the HR's latent), at the quadtree threshold s. ``change`` is the RMS difference of the two predictions
over RMS(x0 - y): 0 when the call ignores its state (every sampling plan then ends on the same image), 1 when it
copies it. ``err_y`` / ``err_x0`` are each prediction's RMS error against x0 over the same RMS. A jump-conditioned
QDM is told the jump of a full chain's call (1) unless ``--jump`` names another, e.g. a few-step plan's last jump.

    python scripts/state_dependence.py --bundle bundles/qdm_ct_x4 --threshold 0.9 \\
        --hr $QDM_MED_DATA/ct/totalsegmentator_abdomen.nii.gz --slice 10

Prints a Markdown table; ``--json`` writes the rows too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

TIMESTEPS = (14, 7, 2, 0)


def protocol_lr(slice_hu: np.ndarray, scale: int) -> np.ndarray:
    """(H, W) HU -> (H/s, W/s) HU: ``scripts/region_eval.py``'s ``pil_bicubic`` LR kind (a sibling script)."""
    spec = importlib.util.spec_from_file_location("region_eval", Path(__file__).with_name("region_eval.py"))
    region_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(region_eval)
    return region_eval.make_lr(slice_hu, scale, "pil_bicubic", 0.0, seed=0)


@torch.no_grad()
def state_dependence(sr, lr: torch.Tensor, hr: torch.Tensor, threshold: float, timesteps=TIMESTEPS,
                     jump: float | None = None) -> dict:
    """``{"token_density", "rows": [{"t", "change", "err_y", "err_x0"}]}`` for one (1, C, h, w) LR and its
    (1, C, h*s, w*s) HR, both in [-1, 1]; ``sr`` is a bundle's LR -> SR module (``load_bundle(...).pipeline``).
    ``jump``: the jump a jump-conditioned QDM is told (None: its default, one step)."""
    from qdm_med.quadtree import qdm_masks

    if jump is not None and not getattr(sr.qdm, "jump_conditioning", False):
        raise ValueError("a jump was given, but this QDM has no jump conditioning")
    jump_kw = {} if jump is None else {"jump": torch.full((1,), float(jump))}

    y = sr.first_stage.encode(sr.start_image(lr))
    x0 = sr.first_stage.encode(hr)
    masks = qdm_masks(lr, threshold, sr.scale, sr.first_stage.factor)
    cond = sr.qdm.conditioning(lr, y)
    scale = float((x0 - y).pow(2).mean().sqrt())
    if scale == 0.0:
        raise ValueError("the start equals the HR: nothing to measure")

    def rms(d: torch.Tensor) -> float:
        return float(d.pow(2).mean().sqrt()) / scale

    rows = []
    for t in timesteps:
        tt = torch.full((1,), float(t))
        from_y, _ = sr.qdm.forward_sparse(sr.diffusion.normalize(y, t), tt, cond, masks.token, **jump_kw)
        from_x0, _ = sr.qdm.forward_sparse(sr.diffusion.normalize(x0, t), tt, cond, masks.token, **jump_kw)
        rows.append({"t": t, "change": rms(from_x0 - from_y), "err_y": rms(from_y - x0), "err_x0": rms(from_x0 - x0)})
    return {"token_density": float(masks.token.float().mean()), "rows": rows}


def main() -> None:
    from qdm_med.errors import QDMError

    try:
        run()
    except QDMError as err:  # a bad bundle or volume: one line, no traceback
        raise SystemExit(f"error: {err}") from None


def run() -> None:
    from qdm_med.bundle.loader import load_bundle
    from qdm_med.io import load_volume
    from qdm_med.transforms.window import HUWindow

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--threshold", type=float, required=True, help="quadtree threshold s of the sparse path")
    ap.add_argument("--hr", required=True, help="an HR CT volume")
    ap.add_argument("--slice", type=int, default=None, help="axial slice index (default: the middle one)")
    ap.add_argument("--timesteps", default=",".join(str(t) for t in TIMESTEPS))
    ap.add_argument("--jump", type=float, default=None, help="the jump a jump-conditioned QDM is told (default 1)")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    sr, scale, (lo, hi) = bundle.pipeline.eval(), bundle.scale, bundle.window
    vol = load_volume(args.hr)
    k = vol.array.shape[2] // 2 if args.slice is None else args.slice
    if not 0 <= k < vol.array.shape[2]:
        raise SystemExit(f"{args.hr}: slice {k} is outside 0..{vol.array.shape[2] - 1}")
    hu = vol.array[:, :, k].T.astype(np.float32)
    m = sr.lr_multiple * scale
    hu = hu[: hu.shape[0] // m * m, : hu.shape[1] // m * m]

    window = HUWindow(lo, hi)

    def to_model(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(window(a))[None, None]

    try:
        result = state_dependence(sr, to_model(protocol_lr(hu, scale)), to_model(hu), args.threshold,
                                  tuple(int(t) for t in args.timesteps.split(",")), jump=args.jump)
    except ValueError as err:
        raise SystemExit(f"{args.bundle}: {err}") from None
    told = "" if args.jump is None else f", jump {args.jump:g}"
    print(f"{Path(args.bundle).name}, s = {args.threshold:g}{told}, slice {k}: token density {result['token_density']:.4f}\n")
    print("| t | change | err from y | err from x0 |\n|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['t']} | {r['change']:.3f} | {r['err_y']:.3f} | {r['err_x0']:.3f} |")
    if args.json:
        out = {"bundle": args.bundle, "threshold": args.threshold, "slice": k, "jump": args.jump, **result}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
