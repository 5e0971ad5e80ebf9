"""Small fake networks that follow the MODEL PROTOCOL, for the diffusion tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class FixedPredictionModel:
    """Dense model whose streams return fixed tensors (``down``, ``up``); records every call."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor | None = None) -> None:
        self.down = down
        self.up = down if up is None else up
        self.calls: list[dict] = []

    def __call__(self, x_in, t, lr):
        self.calls.append({"x_in": x_in.clone(), "t": t.clone(), "lr": lr})
        return self.down.clone(), self.up.clone()


class SparseFixedPredictionModel(FixedPredictionModel):
    """Adds ``forward_sparse``: windows of 8x8 tokens, MACs = base + per_window * active windows."""

    base_macs = 1000
    per_window_macs = 37

    def forward_sparse(self, x_in, t, lr, token_mask, chunk_size=64):
        self.calls.append({"x_in": x_in.clone(), "t": t.clone(), "lr": lr, "token_mask": token_mask.clone()})
        h, w = x_in.shape[-2:]
        m = F.interpolate(token_mask[:, None].float(), size=(h, w), mode="nearest") > 0.5
        pred = torch.where(m, self.down, self.up)
        windows = F.max_pool2d(token_mask[:, None].float(), 8, 8, ceil_mode=True)
        active = int(windows.sum())
        info = {"active_windows": active, "total_windows": int(windows.numel()),
                "macs": self.base_macs + self.per_window_macs * active}
        return pred, info


class ShrinkModel:
    """A non-oracle dense model: predicts ``c * x_in`` in both streams (depends on the noise)."""

    def __init__(self, c: float = 0.5) -> None:
        self.c = c

    def __call__(self, x_in, t, lr):
        return self.c * x_in, self.c * x_in
