"""Reconstruction quality of a KL-VAE bundle on a held-out CT volume: encode + decode every axial slice,
PSNR/SSIM per slice in the bundle's HU window, averaged (the number the model card reports).

    python scripts/evaluate_vae.py bundles/vae_ct --hr $QDM_MED_DATA/ct/pyradiomics_lung2.nii.gz [--weights FILE]

``--weights`` scores another state dict (e.g. a training run's ``models/model.pt``) in the bundle's network.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from qdm_med.bundle import build_network, bundle_settings, read_weights
    from qdm_med.io import load_volume
    from qdm_med.jobs.scoring import SliceScorer
    from qdm_med.transforms import HUWindow, InverseHUWindow

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--hr", required=True, type=Path)
    ap.add_argument("--weights", type=Path, default=None)
    args = ap.parse_args()
    settings = bundle_settings(args.bundle, "inference")
    lo, hi = (float(v) for v in settings["window"])
    vae = build_network(args.bundle)
    vae.load_state_dict(read_weights(args.weights or args.bundle / "models" / "model.pt"))
    vae.eval()
    vol = load_volume(args.hr).array  # (X, Y, Z) HU
    scorer = SliceScorer((lo, hi))
    rows = []
    with torch.inference_mode():
        for k in range(vol.shape[2]):
            ref = vol[:, :, k].T  # rows = Y, the orientation the models see
            x = torch.from_numpy(HUWindow(lo, hi)(ref))[None, None]
            h, w = x.shape[-2:]
            f = vae.factor
            xp = torch.nn.functional.pad(x, (0, (-w) % f, 0, (-h) % f), mode="replicate")
            rec = vae.reconstruct(xp)[..., :h, :w].clamp(-1, 1)
            pred = InverseHUWindow(lo, hi)(rec[0, 0].numpy())
            rows.append(scorer.score_ct_slice(pred, ref))
    out = {"slices": len(rows), "psnr_window": float(np.mean([r["psnr_window"] for r in rows])),
           "ssim_window": float(np.mean([r["ssim_window"] for r in rows])),
           "psnr_window_min": float(np.min([r["psnr_window"] for r in rows]))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
