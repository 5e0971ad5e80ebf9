"""Quadtree masks of an LR input: QDM Algorithm 1 (what the diffusion uses) and a recursive quadtree
(what a user expects to see in a picture).

Algorithm 1 (SPEC 2) is a single-level decision: the LR image is cut into k x k blocks,
``k = 2**l`` with ``l = max(1, max(floor(log2(H/Hm)), floor(log2(W/Wm))))``; a block is *active*
(detail-rich, refined by the diffusion and the fine transformer stream) when its max-min range,
averaged over channels, is ``>= threshold``; the block decisions are resized (nearest) to the mask
size. The threshold is on the model's [-1, 1] intensity scale, so ``threshold=0`` gives a dense
(all-active) mask.

QDM needs two masks per LR image (:func:`qdm_masks`): the *diffusion mask* at latent size
``(H_lr*sf/f, W_lr*sf/f)`` (f = first-stage downsampling factor, 4) that decides where noise is added,
and the *token mask* at half that size (the downstream stream's 2x2-patch token grid). For sf = 4 and
sf = 8 both use k = 2, i.e. 2x2 LR-pixel blocks, so the diffusion mask is the token mask upsampled x2.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "quadtree_block",
    "quadtree_mask",
    "QDMMasks",
    "qdm_masks",
    "QuadLeaf",
    "recursive_quadtree",
    "mask_density",
]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = (int(v) for v in size)
    return h, w


def _as_bchw(image) -> torch.Tensor:
    """(H, W), (C, H, W) or (B, C, H, W) array/tensor -> float (B, C, H, W) tensor."""
    x = torch.as_tensor(image)
    if not torch.is_floating_point(x):
        x = x.float()
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None]
    elif x.ndim != 4:
        raise ValueError(f"quadtree input must be (H,W), (C,H,W) or (B,C,H,W); got shape {tuple(x.shape)}")
    return x


def quadtree_block(image_hw: Sequence[int], mask_hw: Sequence[int]) -> tuple[int, int]:
    """Level ``l`` and block size ``k = 2**l`` of Algorithm 1 for an image of size ``image_hw`` and a
    mask of size ``mask_hw``: ``l = max(1, max(floor(log2(H/Hm)), floor(log2(W/Wm))))``.

    Computed in integers (largest ``l`` with ``Hm * 2**l <= H``), so exact powers of two never round.
    """
    (h, w), (hm, wm) = _pair(image_hw), _pair(mask_hw)
    if min(h, w, hm, wm) < 1:
        raise ValueError(f"image size {(h, w)} and mask size {(hm, wm)} must be positive")
    level = 1
    while (hm << (level + 1)) <= h or (wm << (level + 1)) <= w:
        level += 1
    return level, 2**level


def quadtree_mask(lr, threshold: float, mask_size: int | Sequence[int]) -> torch.Tensor:
    """QDM Algorithm 1: which regions of ``lr`` are detail-rich.

    Args:
        lr: LR image(s) in [-1, 1], (B, C, H, W) (also (C, H, W) or (H, W), treated as B = 1).
        threshold: ``s`` on the [-1, 1] scale; a block is active when its channel-averaged max-min
            range is ``>= s``. ``s = 0`` gives all ones.
        mask_size: (Hm, Wm) or an int.

    Returns:
        bool tensor (B, Hm, Wm), True = active.

    Image sizes that are not a multiple of k are padded by edge replication before pooling (it changes
    neither a block's max nor its min), so border pixels form their own, smaller blocks.
    """
    x = _as_bchw(lr)
    hm, wm = _pair(mask_size)
    _, k = quadtree_block(x.shape[-2:], (hm, wm))
    ph, pw = (-x.shape[-2]) % k, (-x.shape[-1]) % k
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    vmax = F.max_pool2d(x, k, k)
    vmin = -F.max_pool2d(-x, k, k)
    block_range = (vmax - vmin).mean(dim=1, keepdim=True)
    active = (block_range >= threshold).to(x.dtype)
    active = F.interpolate(active, size=(hm, wm), mode="nearest")
    return active[:, 0] > 0.5


class QDMMasks(NamedTuple):
    """The two masks of one QDM run: ``diffusion`` (B, h, w) at latent size, ``token`` (B, h/2, w/2)."""

    diffusion: torch.Tensor
    token: torch.Tensor


def qdm_masks(lr, threshold: float, scale: int, first_stage_factor: int = 4) -> QDMMasks:
    """Diffusion mask at latent size and token mask at latent/2 for an LR input and a scale factor.

    Latent size is ``(H_lr * scale / f, W_lr * scale / f)`` with ``f = first_stage_factor``; the token
    grid is ``ceil(latent / 2)`` (the model pads odd latent sizes before patching).

    Args:
        lr: (B, C, H_lr, W_lr) in [-1, 1].
        threshold: Algorithm 1 threshold on the [-1, 1] scale.
        scale: super-resolution factor (e.g. 4 or 8).
        first_stage_factor: spatial downsampling of the first stage (4 for the KL-VAE and unshuffle).
    """
    x = _as_bchw(lr)
    hl, wl = x.shape[-2:]
    if (hl * scale) % first_stage_factor or (wl * scale) % first_stage_factor:
        raise ValueError(
            f"LR size {(hl, wl)} x{scale} is not divisible by the first-stage factor {first_stage_factor}"
        )
    h, w = hl * scale // first_stage_factor, wl * scale // first_stage_factor
    return QDMMasks(
        diffusion=quadtree_mask(x, threshold, (h, w)),
        token=quadtree_mask(x, threshold, ((h + 1) // 2, (w + 1) // 2)),
    )


class QuadLeaf(NamedTuple):
    """One leaf block of :func:`recursive_quadtree`: top-left ``(y, x)``, size ``(h, w)`` in pixels, and
    whether it is still detail-rich (range >= threshold; only possible at the size/depth limit)."""

    y: int
    x: int
    h: int
    w: int
    active: bool


def recursive_quadtree(
    image, threshold: float, min_size: int = 2, max_depth: int | None = None
) -> list[QuadLeaf]:
    """True quadtree of a picture: split a block into four while its range is ``>= threshold``.

    The range of a block is its max - min per channel, averaged over channels (as in Algorithm 1), on
    whatever scale ``image`` is given (use [-1, 1] to match the model threshold).

    Args:
        image: (H, W), (C, H, W) or (1, C, H, W) array or tensor.
        threshold: split while range >= threshold.
        min_size: a side is halved only if both halves are at least ``min_size`` pixels; when only one
            side can be halved the block splits in two along it (elongated images).
        max_depth: maximum number of splits from the root (None: limited by ``min_size`` only).

    Returns:
        leaves in depth-first order (NW, NE, SW, SE); they tile the image exactly.
    """
    x = _as_bchw(image)
    if x.shape[0] != 1:
        raise ValueError(f"recursive_quadtree takes one image; got a batch of {x.shape[0]}")
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    arr = x[0].detach().cpu().double().numpy()
    height, width = arr.shape[-2:]
    leaves: list[QuadLeaf] = []
    stack = [(0, 0, height, width, 0)]
    while stack:
        y, x0, h, w, depth = stack.pop()
        block = arr[:, y : y + h, x0 : x0 + w]
        rng = float((block.max(axis=(1, 2)) - block.min(axis=(1, 2))).mean())
        detailed = rng >= threshold
        split_h, split_w = h >= 2 * min_size, w >= 2 * min_size
        if not detailed or not (split_h or split_w) or (max_depth is not None and depth >= max_depth):
            leaves.append(QuadLeaf(y, x0, h, w, bool(detailed)))
            continue
        hs = [(y, h // 2), (y + h // 2, h - h // 2)] if split_h else [(y, h)]
        ws = [(x0, w // 2), (x0 + w // 2, w - w // 2)] if split_w else [(x0, w)]
        children = [(cy, cx, ch, cw, depth + 1) for cy, ch in hs for cx, cw in ws]
        stack.extend(reversed(children))  # pop order NW, NE, SW, SE
    return leaves


def mask_density(mask, per_sample: bool = False):
    """Fraction of active sites: a float over the whole mask, or a (B,) tensor with ``per_sample``."""
    m = torch.as_tensor(mask)
    m = m.reshape(m.shape[0], -1).float() if per_sample else m.float()
    if per_sample:
        return m.mean(dim=1)
    return float(m.mean()) if m.numel() else 0.0
