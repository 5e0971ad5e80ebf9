"""Per-step inputs of :class:`~qdm_med.models.qdm.DualStreamQDM` besides the timestep embedding.

- :func:`table_at`: a learned table over the integer steps, read at real-valued (and per-pixel) steps (the
  state skip's gate).
- :func:`jump_like`: the jump (how many steps the chain moved to reach a state) shaped and padded like the
  model's prepared timestep.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["table_at", "jump_like"]


def table_at(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``table`` (n,) at steps ``t``, clamped to [0, n-1]: (B, 1, 1, 1) for t (B,), the map's
    shape for a map (B, 1, H, W)."""
    n = table.shape[0]
    pos = t.to(table.dtype).clamp(0, n - 1)
    lo = pos.floor().long().clamp(max=n - 2)
    g = torch.lerp(table[lo], table[lo + 1], pos - lo)
    return g.view(-1, 1, 1, 1) if t.ndim == 1 else g


def jump_like(jump, t: torch.Tensor, hw) -> torch.Tensor:
    """The jump (a number, (B,), or a (B, 1, h, w) map when ``t`` is a map) shaped like the prepared timestep ``t``
    ((B,) or (B, 1, Hp, Wp), padded from the latent size ``hw`` = (h, w)); a map is padded as the timestep is
    (replicate). ValueError for a jump that does not fit."""
    j = torch.as_tensor(jump, dtype=t.dtype, device=t.device)
    if j.ndim == 0 or (j.ndim == 1 and j.shape[0] == t.shape[0]):
        return j.expand_as(t) if t.ndim == 1 else j.view(-1, 1, 1, 1).expand_as(t)
    if t.ndim == 4 and j.ndim == 4 and j.shape[0] in (1, t.shape[0]) and j.shape[1] == 1 and tuple(j.shape[-2:]) == tuple(hw):
        return F.pad(j, (0, t.shape[-1] - hw[1], 0, t.shape[-2] - hw[0]), mode="replicate").expand_as(t)
    raise ValueError(f"jump {tuple(j.shape)} does not fit the timestep {tuple(t.shape)}: give a number, (B,), or a "
                     f"(B, 1, h, w) map with a timestep map")
