"""Multiply-accumulates of the models: the analytic count of a sparse QDM call (:func:`qdm_macs`), and counting by
forward hooks (the check on the analytic counts).

Counted: ``nn.Linear`` (in x out per row), ``nn.Conv2d`` (Cin/groups x k x k per output element),
``nn.ConvTranspose2d`` (Cout/groups x k x k per input element) and :class:`~qdm_med.models.blocks.AttentionCore`
(QK^T and AV: 2 x N_q x N_k x d per head). Norms, activations, softmax, pooling and interpolation are
not counted, as in the analytic formulas.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from qdm_med.models.blocks import AttentionCore

__all__ = ["MacCounter", "count_macs_hooks", "qdm_macs"]


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


def qdm_macs(model, latent_hw, active_windows: int, batch: int, per_token_t: bool = False,
         active_tokens: int | None = None, active_units: int | None = None, attention_pairs: int | None = None,
         detail_dense: bool = False) -> int:
    """Exact multiply-accumulates of one sparse call: linear layers, convolutions and attention matmuls
    (QK^T and AV), for the upstream on the padded latent and the downstream on ``active_windows``
    windows, of which ``active_tokens`` tokens are computed (default: all 64 of each) and
    ``active_units`` detail units (default: every unit of the windows), with ``attention_pairs``
    query-key pairs per head in the window self-attention (default: each window's full 64 x 64);
    ``detail_dense``: the detail branch ran once over the whole padded image (``active_units`` ignored).
    Norms, activations, softmax and the LR resize are not counted (they are not MACs)."""
    h, w = int(latent_hw[0]), int(latent_hw[1])
    hp, wp = -(-h // model.multiple) * model.multiple, -(-w // model.multiple) * model.multiple
    cin, cz = model.latent_channels + model.lr_channels, model.latent_channels
    d, dd, r = model.hidden, model.down_hidden, model.mlp_ratio
    nu = (hp // model.up_patch) * (wp // model.up_patch)
    f = model.up_t.freq_dim
    hid, hid_d = int(d * r), int(dd * r)

    embedders = 2 if getattr(model, "jump_conditioning", False) else 1  # the timestep's, and the jump's

    def temb(width: int, n: int) -> int:
        return embedders * n * (f * width + width * width)

    up_cond = batch * nu if per_token_t else batch
    total = batch * nu * cin * model.up_patch**2 * d  # patch embedding
    total += temb(d, up_cond)
    per_block = nu * (3 * d * d + 2 * nu * d + d * d + 2 * d * hid)
    total += model.depth * (batch * per_block + up_cond * d * 6 * d)
    total += up_cond * d * 2 * d + batch * nu * d * model.up_patch**2 * cz  # final layer
    if active_windows <= 0:
        return int(total)
    tw = model.window**2
    a = int(active_windows)
    n = a * tw if active_tokens is None else int(active_tokens)
    units = a * (model.window // model.DETAIL_UNIT) ** 2 if active_units is None else int(active_units)
    total += model.down_depth * batch * nu * d * 2 * dd  # K/V of the upstream states, once per call
    down_cond = n if per_token_t else batch
    total += temb(dd, down_cond)
    total += model.down_depth * down_cond * dd * 12 * dd + down_cond * dd * 2 * dd  # modulations
    total += n * cin * model.down_patch**2 * dd  # patch embedding of the computed tokens
    per_token = 3 * dd * dd + dd * dd + 2 * dd * hid_d  # window attention projections + MLP
    per_token += dd * dd + 2 * nu * dd + dd * dd + 2 * dd * hid_d  # cross-attention + MLP
    pairs = a * tw * tw if attention_pairs is None else int(attention_pairs)
    total += model.down_depth * (n * per_token + 2 * pairs * dd)  # + QK^T and AV on the windows' grids
    total += n * dd * model.down_patch**2 * cz  # final layer
    if model.detail is not None:  # valid 3x3 convolutions per unit (or over the image): the sides shrink by 2 each
        fc, side = model.detail_channels, model.DETAIL_UNIT * model.down_patch + 2 * model.detail_halo
        convs = [(cin + 1, fc)] + [(fc, fc)] * (2 * model.detail_blocks + 1) + [(fc, cz)]
        for i, (ci, co) in enumerate(convs, start=1):
            if detail_dense:
                r = 2 * model.detail_halo - 2 * i
                total += batch * 9 * (hp + r) * (wp + r) * ci * co
            else:
                total += units * 9 * (side - 2 * i) ** 2 * ci * co
    return int(total)
