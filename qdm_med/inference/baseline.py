"""Bicubic interpolation with the SR-pipeline interface: the baseline every report compares against.

``BicubicSR`` maps an LR batch (B, C, h, w) in [-1, 1] to (B, C, h*s, w*s) in [-1, 1] with
:func:`qdm_med.transforms.bicubic_upsample`, clamped to the model range, and exposes the attributes the
volume inferencer reads from a real ``SRPipeline`` (``scale``, ``in_channels``, ``size_multiple``,
``last_info``). ``qdm-med upscale --bundle bicubic`` uses it, for any scale.
"""

from __future__ import annotations

import torch

__all__ = ["BicubicSR"]


class BicubicSR(torch.nn.Module):
    """Bicubic upsampling by ``scale`` (no parameters).

    Args:
        scale: integer factor.
        in_channels: channels it accepts (1 for CT, 3 for photos); informational, any C works.
    """

    def __init__(self, scale: int, in_channels: int = 1) -> None:
        super().__init__()
        self.scale = int(scale)
        self.in_channels = int(in_channels)
        self.size_multiple = 1
        self.last_info: dict = {}

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) in [-1, 1] -> (B, C, h*s, w*s) in [-1, 1]."""
        from qdm_med.transforms import bicubic_upsample

        out = torch.as_tensor(bicubic_upsample(lr, self.scale)).clamp(-1.0, 1.0)
        self.last_info = {"sampler": "bicubic", "steps": 0, "macs": 0}
        return out
