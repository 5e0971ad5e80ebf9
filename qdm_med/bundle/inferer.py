"""The bundles' ``inferer`` id: a MONAI :class:`~monai.inferers.Inferer` applying a 2D SR network slice by slice.

Only ``monai.inferers.inferer`` is imported (not the ``monai.inferers`` package, which imports all of MONAI).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from monai.inferers.inferer import Inferer

__all__ = ["SliceSRInferer"]


class SliceSRInferer(Inferer):
    """Apply a 2D network slice by slice: (B, C, X, Y, Z) -> (B, C, X*s, Y*s, Z), or (B, C, H, W) -> (B, C, H*s, W*s).

    Axial slices are fed as images with rows = Y (as :class:`qdm_med.inference.volume.SliceWiseInferencer`).
    ``method`` names the network method to call (``"forward"``; ``"reconstruct"`` for a VAE).
    """

    def __init__(self, scale: int = 8, batch_size: int = 4, method: str = "forward") -> None:
        super().__init__()
        self.scale, self.batch_size, self.method = int(scale), int(batch_size), method

    def _apply(self, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        fn = network if self.method == "forward" else getattr(network, self.method)
        return torch.cat([fn(x[i : i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size)])

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = torch.as_tensor(inputs).float()
        if x.ndim == 4:
            return self._apply(network, x)
        if x.ndim != 5:
            raise ValueError(f"expected (B, C, H, W) or (B, C, X, Y, Z) inputs, got {tuple(x.shape)}")
        b, c, nx, ny, nz = x.shape
        slices = x.permute(0, 4, 1, 3, 2).reshape(b * nz, c, ny, nx)  # rows = Y, columns = X
        out = self._apply(network, slices)
        s = out.shape[-1] // nx
        return out.reshape(b, nz, c, ny * s, nx * s).permute(0, 2, 4, 3, 1)
