"""Shared inputs of the model tests: small QDMs with random (non-zero) weights and matching inputs."""

from __future__ import annotations

import torch

from qdm_med.models import build_qdm


def random_model(cz=16, c=1, name="tiny", seed=0, **kw):
    """A tiny model with random (non-zero) weights: zero-initialised adaLN would hide bugs."""
    torch.manual_seed(seed)
    m = build_qdm(name, cz, c, **kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
    return m


def inputs(b=2, cz=16, h=32, w=48, c=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, cz, h, w, generator=g), torch.tensor([3.0, 9.5])[:b], torch.rand(b, c, h // 2, w // 2, generator=g) * 2 - 1
