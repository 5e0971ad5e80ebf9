"""The learned prior: a residual CNN that maps LR to a first SR estimate, the start of the residual shift.

ResShift/QDM shift the LR's *bicubic* upsampling towards the HR. A plain residual CNN trained briefly on
chest CT already gains 2.6-5 dB over bicubic on unseen anatomy (SPEC section 12), so the bundles can start
the shift from such a CNN's prediction instead (``y := prior(LR)``): inactive quadtree sites keep the CNN
output and the diffusion spends its steps on the residual detail of active windows. The prior is trained
first (stage ``prior``), frozen, and shipped inside the QDM bundle's weights (keys ``prior.*``).

:class:`ResidualCNN` works in pixel-unshuffle space (HR / 4) with a bicubic skip::

    up  = bicubic(LR)                        (B, C, H, W),  H = h * scale
    out = up + shuffle(body(unshuffle(up)))  body: 3x3 convs at (H/4, W/4) with 16C in/out channels

``blocks = 0`` is the plain stack of ``layers`` conv + ReLU (the baseline of SPEC section 12: 6 layers,
64 channels); ``blocks > 0`` is a head conv, ``blocks`` two-conv residual blocks and a tail conv. The last
conv starts at zero, so an untrained prior is exactly bicubic.

``context > 0`` adds a global degradation context: the log of the spatial mean of the first layer's ReLU
features (band energies of the whole LR image) goes through a two-layer MLP of width ``context`` that
scales and shifts those features (FiLM) before the rest of the stack. A 3x3 stack sees about 13 LR pixels,
too few to tell aliased LR (``F.interpolate``'s or SciPy's defaults: the fidelity mode sharpens its aliasing
and falls below bicubic) from antialiased LR; the image's band-energy ratios tell them apart. The MLP's last
layer starts at zero, so a context prior starts as the same prior without it (``init_from`` a plain one).
``context_floor`` averages those energies over the body only (pixels above the floor, e.g. -900 HU): the
air around the body then does not dilute them, so the same body in a wider field of view gets the same context.
When an image is tiled, the inferencers pin the whole image's band energies around its tiles
(:meth:`ResidualCNN.pinned_context`), so every tile gets the modulation the untiled image would.

:meth:`ResidualCNN.flip_ensemble` averages the prediction over the four mirror images of the LR (the
fidelity mode's test-time augmentation; deterministic, 4x the prior's cost).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from qdm_med.errors import ConfigError
from qdm_med.transforms.resample import bicubic_upsample

__all__ = ["ResidualCNN", "build_prior"]


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class ResidualCNN(nn.Module):
    """LR (B, C, h, w) in [-1, 1] -> SR (B, C, h*scale, w*scale) in [-1, 1] (see module docstring).

    Args:
        scale: SR factor.
        in_channels: image channels C.
        channels: feature width.
        layers: conv layers of the plain stack (``blocks = 0``).
        blocks: residual blocks (0: the plain stack).
        unshuffle: pixel-unshuffle factor of the working space (4, the first stage's).
        context: width of the global degradation-context MLP (0: none).
        context_floor: with a context, average the band energies over the pixels whose 4x4 (unshuffle) block
            mean exceeds this value (model units: -0.9193 is -900 HU in the CT window [-1024, 2048]), i.e. over
            the body, so air around it does not dilute them; None averages over every pixel.
    """

    kind = "cnn"
    #: prefix of the context MLP's parameters: a prior without them may start one with them (zero last layer)
    ADDED_BY_CONTEXT = "context."

    def __init__(self, scale: int, in_channels: int = 1, channels: int = 64, layers: int = 6, blocks: int = 0, unshuffle: int = 4,
                 context: int = 0, context_floor: float | None = None) -> None:
        super().__init__()
        if int(blocks) < 0 or (int(blocks) == 0 and int(layers) < 2):
            raise ConfigError(f"prior: blocks {blocks} / layers {layers}: need blocks >= 1 or layers >= 2")
        if int(context) < 0:
            raise ConfigError(f"prior: context {context}: need >= 0 (0: no global context)")
        if context_floor is not None and (int(context) == 0 or not -1.0 <= float(context_floor) < 1.0):
            raise ConfigError(f"prior: context_floor {context_floor}: needs a context (context > 0) and a value in [-1, 1) "
                              "(model units; -0.9193 is -900 HU in the CT window [-1024, 2048])")
        self.scale, self.unshuffle = int(scale), int(unshuffle)
        self.in_channels = int(in_channels)
        io = self.in_channels * self.unshuffle**2
        if int(blocks) > 0:
            body = [nn.Conv2d(io, channels, 3, padding=1), *[_ResBlock(channels) for _ in range(int(blocks))]]
        else:
            body = [nn.Conv2d(io, channels, 3, padding=1), nn.ReLU()]
            for _ in range(int(layers) - 2):
                body += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
        self.body = nn.Sequential(*body)
        self.tail = nn.Conv2d(channels, io, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)
        self.split = 1 if int(blocks) > 0 else 2  # the first layer: head conv, or conv + ReLU
        self.context = None
        self.context_floor = None if context_floor is None else float(context_floor)
        self._pinned: torch.Tensor | None = None  # the whole image's band energies (pinned_context)
        if int(context) > 0:
            self.context = nn.Sequential(nn.Linear(channels, int(context)), nn.ReLU(), nn.Linear(int(context), 2 * channels))
            nn.init.zeros_(self.context[-1].weight)
            nn.init.zeros_(self.context[-1].bias)

    @property
    def lr_multiple(self) -> int:
        """LR sizes must make the HR size a multiple of the unshuffle factor."""
        f = self.unshuffle
        return f // math.gcd(f, self.scale)

    def macs(self, sr_hw, batch: int = 1) -> int:
        """Multiply-accumulates of the convolutions for an SR output of size ``sr_hw`` (the bicubic skip and
        the reshuffles are not counted)."""
        pixels = (int(sr_hw[0]) // self.unshuffle) * (int(sr_hw[1]) // self.unshuffle)
        per_pixel = sum(
            m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] for m in self.modules() if isinstance(m, nn.Conv2d)
        )
        return int(batch) * pixels * per_pixel

    def _upsample(self, lr: torch.Tensor) -> torch.Tensor:
        up = bicubic_upsample(lr, self.scale).clamp(-1, 1)
        h, w = up.shape[-2:]
        if h % self.unshuffle or w % self.unshuffle:
            raise ValueError(f"SR size {h}x{w} is not divisible by the prior's unshuffle factor {self.unshuffle}")
        return up

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        up = self._upsample(lr)
        feat = self._first_layer(up)
        if self.context is not None:
            feat = self.modulate(feat, up)
        res = F.pixel_shuffle(self.tail(self.body[self.split :](feat)), self.unshuffle)
        return (up + res).clamp(-1, 1)

    def flip_ensemble(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, h*s, w*s): the mean of the predictions for the four mirror images of ``lr``
        (as is, left-right, up-down, both), each mirrored back: nnU-Net's mirroring test-time augmentation.
        Mirrors only, the flips the prior trains with; a transpose would swap pixel-unshuffle phases the
        network tells apart. The four share the global context of ``lr`` as given (or the one already pinned
        for a tiled image), so the ensemble of an image and of its tiles agree."""
        pin = self.pinned_context(lr) if self._pinned is None else contextlib.nullcontext()
        with pin:
            out = self(lr)
            for dims in ((-1,), (-2,), (-2, -1)):
                out = out + self(lr.flip(dims)).flip(dims)
        return out / 4

    def _first_layer(self, up: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) bicubic upsampling -> (B, F, H/u, W/u) features of the first layer (u = unshuffle)."""
        return self.body[: self.split](F.pixel_unshuffle(up, self.unshuffle))

    def _band_energy(self, feat: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """First-layer features (B, F, H', W') of the bicubic upsampling ``up`` (B, C, H, W) -> log band
        energies (B, F): the mean ReLU response over every pixel, or over the body (``context_floor``)."""
        act = F.relu(feat)
        if self.context_floor is None:
            return torch.log(act.mean(dim=(2, 3)) + 1e-4)
        body = (F.avg_pool2d(up, self.unshuffle).mean(1, keepdim=True) > self.context_floor).to(act.dtype)  # block means
        # an image with nothing above the floor (all air) falls back to the mean over every pixel
        body = torch.where(body.sum(dim=(2, 3), keepdim=True) > 0, body, torch.ones_like(body))
        return torch.log((act * body).sum(dim=(2, 3)) / body.sum(dim=(2, 3)) + 1e-4)

    def modulate(self, feat: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """FiLM of the first layer's features (B, F, H', W') of the bicubic upsampling ``up`` (B, C, H, W)
        by the image's log band energies (B, F): those of ``feat`` itself, or the whole image's inside
        :meth:`pinned_context`."""
        energy = self._band_energy(feat, up) if self._pinned is None else self._pinned
        if energy.shape[0] != feat.shape[0]:
            raise ValueError(f"pinned context of {energy.shape[0]} image(s) for a batch of {feat.shape[0]}")
        gamma, beta = self.context(energy).chunk(2, dim=1)
        return feat * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]

    @contextlib.contextmanager
    def pinned_context(self, lr: torch.Tensor):
        """Inside the block every call modulates by the band energies of ``lr`` (B, C, h, w), the whole image,
        instead of those of its own input: the tiles of an image then share the untiled image's modulation
        (no-op without a context). Costs one first-layer pass over the whole image (B, F, H/4, W/4)."""
        if self.context is None:
            yield
            return
        up = self._upsample(lr)
        self._pinned = self._band_energy(self._first_layer(up), up)
        try:
            yield
        finally:
            self._pinned = None


def build_prior(settings: dict | None, scale: int, in_channels: int = 1) -> ResidualCNN | None:
    """The prior named by a bundle's ``prior`` section (None or ``{"kind": "bicubic"}``: no learned prior)."""
    if not settings:
        return None
    cfg = dict(settings)
    kind = cfg.pop("kind", "cnn")
    cfg.pop("weights", None)  # where stage 2 reads the trained prior from; not an architecture setting
    if kind == "bicubic":
        return None
    if kind != "cnn":
        raise ConfigError(f"prior kind {kind!r}: use cnn or bicubic")
    try:
        return ResidualCNN(scale, in_channels, **cfg)
    except TypeError as err:
        raise ConfigError(f"prior: {err}") from None
