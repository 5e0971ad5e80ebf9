"""First stages: map images (B, C, H, W) in [-1, 1] to the diffusion latent (B, Cz, H/4, W/4) and back.

Both kinds share one interface: ``encode``, ``decode``, ``latent_channels``, ``factor`` (4), a
``scale_factor`` buffer stored with the weights (latents are multiplied by it), ``decode_macs``.

- :class:`KLVAEFirstStage`: MONAI's ``AutoencoderKL`` (channels 32/64/64, two downsamplings, latent 3).
  It must be trained (``qdm-med train bundles/vae_ct``); the ``trained`` buffer says whether it was.
- :class:`PixelUnshuffleFirstStage`: space-to-depth by 4 (C -> 16C channels), lossless and exact, no
  weights. SPEC section 11: a briefly CPU-trained VAE reconstructs below bicubic, so this is the
  default of the CT bundles until a VAE is measured to do better.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from qdm_med.errors import ConfigError

__all__ = ["FirstStage", "KLVAEFirstStage", "PixelUnshuffleFirstStage", "build_first_stage", "FIRST_STAGES"]


class FirstStage(nn.Module):
    """Common interface (see module docstring)."""

    kind: str = ""
    factor: int = 4

    def __init__(self, in_channels: int, latent_channels: int, scale_factor: float = 1.0) -> None:
        super().__init__()
        self.in_channels, self.latent_channels = int(in_channels), int(latent_channels)
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        self._decode_macs_cache: dict[tuple[int, int], int] = {}

    def check_size(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(f"image size {h}x{w} is not divisible by the first-stage factor {self.factor}")

    def decode_macs(self, latent_hw, batch: int = 1) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))`` (B, C, H, W) -> same shape; the reconstruction a first stage caps SR quality at."""
        return self.decode(self.encode(x)).clamp(-1, 1)


class PixelUnshuffleFirstStage(FirstStage):
    """Lossless space-to-depth by 4: (B, C, H, W) -> (B, 16C, H/4, W/4); ``decode(encode(x)) == x``."""

    kind = "pixel_unshuffle"

    def __init__(self, in_channels: int = 1, factor: int = 4, scale_factor: float = 1.0) -> None:
        self.factor = int(factor)
        super().__init__(in_channels, in_channels * self.factor**2, scale_factor)
        self.register_buffer("trained", torch.tensor(True))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.check_size(x)
        return F.pixel_unshuffle(x, self.factor) * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(z / self.scale_factor, self.factor)

    def decode_macs(self, latent_hw, batch: int = 1) -> int:
        return 0  # a reshuffle of memory


class KLVAEFirstStage(FirstStage):
    """MONAI ``AutoencoderKL`` (2D) with f = 4; ``encode`` returns the posterior mean (x scale_factor)."""

    kind = "kl_vae"

    def __init__(
        self,
        in_channels: int = 1,
        latent_channels: int = 3,
        channels: tuple[int, ...] = (32, 64, 64),
        num_res_blocks: int = 1,
        scale_factor: float = 1.0,
        norm_num_groups: int = 16,
    ) -> None:
        from monai.networks.nets import AutoencoderKL

        super().__init__(in_channels, latent_channels, scale_factor)
        self.factor = 2 ** (len(channels) - 1)
        self.autoencoder = AutoencoderKL(
            spatial_dims=2, in_channels=in_channels, out_channels=in_channels, channels=tuple(channels),
            latent_channels=latent_channels, num_res_blocks=num_res_blocks, norm_num_groups=norm_num_groups,
            attention_levels=tuple(False for _ in channels), with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
        )
        self.register_buffer("trained", torch.tensor(False))

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        self.check_size(x)
        mu, sigma = self.autoencoder.encode(x)
        z = mu if not sample else mu + sigma * torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return z * self.scale_factor

    def encode_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, sigma) of the posterior, unscaled (for the VAE's KL loss)."""
        return self.autoencoder.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z / self.scale_factor)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None):
        """Training pass: (reconstruction from a posterior sample, mu, sigma); ``noise`` (B, Cz, H/f, W/f)."""
        mu, sigma = self.autoencoder.encode(x)
        z = mu if noise is None else mu + sigma * noise
        return self.autoencoder.decode(z), mu, sigma

    def decode_macs(self, latent_hw, batch: int = 1) -> int:
        """Exact decoder MACs at ``latent_hw`` (counted once per size by hooks, then cached)."""
        key = (int(latent_hw[0]), int(latent_hw[1]))
        if key not in self._decode_macs_cache:
            from qdm_med.models.macs import count_macs_hooks

            p = next(self.parameters())
            z = torch.zeros(1, self.latent_channels, *key, device=p.device, dtype=p.dtype)
            self._decode_macs_cache[key] = count_macs_hooks(self.autoencoder, z, method="decode")
        return int(batch) * self._decode_macs_cache[key]


FIRST_STAGES = {"pixel_unshuffle": PixelUnshuffleFirstStage, "kl_vae": KLVAEFirstStage}


def build_first_stage(kind: str, in_channels: int = 1, **kwargs) -> FirstStage:
    """A first stage by kind: ``pixel_unshuffle`` or ``kl_vae`` (keyword arguments go to its class)."""
    if kind not in FIRST_STAGES:
        raise ConfigError(f"first stage {kind!r}: use one of {', '.join(FIRST_STAGES)}")
    return FIRST_STAGES[kind](in_channels=in_channels, **kwargs)
