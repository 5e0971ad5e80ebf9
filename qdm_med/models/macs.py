"""Multiply-accumulate counting by forward hooks (the check on the analytic counts of the models).

Counted: ``nn.Linear`` (in x out per row), ``nn.Conv2d`` (Cin/groups x k x k per output element),
``nn.ConvTranspose2d`` (Cout/groups x k x k per input element) and :class:`~qdm_med.models.blocks.AttentionCore`
(QK^T and AV: 2 x N_q x N_k x d per head). Norms, activations, softmax, pooling and interpolation are
not counted, as in the analytic formulas.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

from qdm_med.models.blocks import AttentionCore

__all__ = ["MacCounter", "count_macs_hooks"]


def _module_macs(module: nn.Module, inputs, output) -> int:
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        return inputs[0].numel() * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, AttentionCore):
        q, k = inputs[0], inputs[1]
        return 2 * q.shape[:-1].numel() * k.shape[-2] * q.shape[-1]
    return 0


class MacCounter:
    """Context manager adding up the MACs of every counted module run inside it."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.total, self._handles = module, 0, []

    def _hook(self, module, inputs, output) -> None:
        self.total += int(_module_macs(module, inputs, output))

    def __enter__(self) -> "MacCounter":
        for m in self.module.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, AttentionCore)):
                self._handles.append(m.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@torch.no_grad()
def count_macs_hooks(module: nn.Module, *inputs, method: str = "forward", **kwargs) -> int:
    """MACs of one call ``module.<method>(*inputs, **kwargs)`` counted by hooks."""
    with MacCounter(module) as counter:
        getattr(module, method)(*inputs, **kwargs)
    return counter.total
