"""Per-slice random streams, so the output of a slice never depends on how the run is split.

A diffusion pipeline draws its prior and per-step noise from a ``torch.Generator``. With one generator per
batch, slice ``k``'s noise depends on which other slices share its batch (batch size, device split). Here
every (slice, tile) call gets its own generator, seeded from ``(seed, slice index, tile index)`` through
``numpy.random.SeedSequence`` (well mixed: seed 0 / slice 1 and seed 1 / slice 0 are unrelated streams),
and the model runs on one slice per call. Batch size, the order of the calls and the device split
therefore never change the output; the tile index is fixed by the tile size, which is part of the recipe.

A callable without a ``generator`` argument (e.g. a test double or a plain interpolator) is run after
``torch.manual_seed`` with the same derived seed.
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np
import torch

__all__ = ["derived_seed", "slice_generator", "accepts_generator", "SeededCall", "SEED_RULE"]

#: How the per-call seed is derived (recorded in reports).
SEED_RULE = "numpy SeedSequence([seed, slice, tile]).generate_state(1, uint64)[0] >> 1"


def derived_seed(seed: int, slice_index: int, tile_index: int = 0) -> int:
    """A 63-bit seed for ``(seed, slice_index, tile_index)`` (all >= 0)."""
    words = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(slice_index), int(tile_index)]).generate_state(1, np.uint64)
    return int(words[0]) >> 1


def slice_generator(seed: int, slice_index: int, tile_index: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with :func:`derived_seed`."""
    return torch.Generator(device=torch.device(device)).manual_seed(derived_seed(seed, slice_index, tile_index))


def accepts_generator(fn) -> bool:
    """True when ``fn(x, generator=...)`` is accepted (``forward`` of a module, or the callable itself)."""
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class SeededCall:
    """Wrap ``fn`` for one slice: the ``t``-th call (tile ``t``) runs with the stream of ``(seed, slice, t)``.

    Args:
        fn: the SR callable, (1, C, h, w) -> (1, C, h*s, w*s).
        seed: the run's seed.
        slice_index: index of the slice in the volume (0 for an image).
        device: where the noise is drawn (the input's device).
        after: optional callback ``after(tile_input)`` run after each call (e.g. collecting ``last_info``).
    """

    def __init__(self, fn: Callable, seed: int, slice_index: int, device: torch.device, after: Callable | None = None,
                 use_generator: bool | None = None) -> None:
        self.fn, self.seed, self.slice_index, self.device, self.after = fn, int(seed), int(slice_index), device, after
        self.use_generator = accepts_generator(fn) if use_generator is None else bool(use_generator)
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 1:
            raise ValueError(f"SeededCall runs one slice per call, got a batch of {x.shape[0]}")
        tile = self.calls
        self.calls += 1
        if self.use_generator:
            out = self.fn(x, generator=slice_generator(self.seed, self.slice_index, tile, x.device))
        else:
            torch.manual_seed(derived_seed(self.seed, self.slice_index, tile))
            out = self.fn(x)
        if self.after is not None:
            self.after(x)
        return out
