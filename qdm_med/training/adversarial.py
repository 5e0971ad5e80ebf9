"""A least-squares patch adversary trained beside a stage's model (the VAE's and the QDM's optional term).

The discriminator is MONAI's ``PatchDiscriminator``; it has its own AdamW (betas 0.5 / 0.9, as GAN practice
has it) and is updated once per training step on the batch the generator just saw. Its weights, optimizer
and step count are part of the stage's checkpoint, so a resumed run continues exactly. Under data-parallel
training every rank keeps the same discriminator: rank 0's initial weights, gradients averaged over ranks.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["PatchAdversary"]


class PatchAdversary:
    """Least-squares patch GAN term for images (B, C, H, W).

    Args:
        in_channels: image channels C.
        lr: the discriminator's learning rate.
        start: the first generator step the term is on (the discriminator trains from the same step).
        view: maps images to what the discriminator sees (e.g. a HU window); identity by default.
        highpass: with a gain g > 0 the discriminator sees ``[v, g * (v - mean3x3(v))]`` of the view ``v``
            (2C channels): grain and edge sharpness of a few HU are a ~1 % signal in a soft-tissue window, which
            a patch discriminator does not pick out of the anatomy in a fine-tune's budget.
        channels, layers: width and depth of the ``PatchDiscriminator``. It has no normalisation layers: batch
            statistics taken over the real batch and the fake batch apart normalise away the amplitude of the
            texture it should judge.
    """

    def __init__(self, in_channels: int, lr: float, start: int = 0, view: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 highpass: float = 0.0, channels: int = 32, layers: int = 3) -> None:
        from monai.losses import PatchAdversarialLoss
        from monai.networks.nets import PatchDiscriminator

        self.highpass = float(highpass)
        seen_channels = in_channels * (2 if self.highpass > 0 else 1)
        self.discriminator = PatchDiscriminator(spatial_dims=2, channels=channels, in_channels=seen_channels, num_layers_d=layers,
                                                norm=None)
        self.optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=float(lr), betas=(0.5, 0.9))
        self.criterion = PatchAdversarialLoss(criterion="least_squares")
        self.start, self.view = int(start), view or (lambda x: x)
        self.step, self.world = 0, 1
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        v = self.view(x).float()
        if self.highpass > 0:
            local_mean = F.avg_pool2d(F.pad(v, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
            v = torch.cat([v, self.highpass * (v - local_mean)], dim=1)
        return v.contiguous()

    @property
    def active(self) -> bool:
        return self.step >= self.start

    def to(self, device) -> "PatchAdversary":
        self.discriminator.to(device)
        return self

    def set_world(self, world: int) -> None:
        """Data-parallel training: start every rank from rank 0's discriminator."""
        self.world = int(world)
        if self.world > 1:
            import torch.distributed as dist

            for t in [*self.discriminator.parameters(), *self.discriminator.buffers()]:
                dist.broadcast(t.data, src=0)

    def generator_loss(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Generator term for predictions ``fake`` (with grad) of the references ``real``; remembers the
        pair for :meth:`update`. Scalar."""
        self._last = (real.detach(), fake.detach())
        logits = self.discriminator(self._input(fake))[-1]
        return self.criterion(logits, target_is_real=True, for_discriminator=False)

    def update(self) -> dict:
        """One discriminator step on the last (real, fake) pair; counts the generator step. Returns logs."""
        self.step += 1
        if not self.active or self._last is None:
            return {}
        real, fake = (self._input(x) for x in self._last)
        d_loss = 0.5 * (self.criterion(self.discriminator(real)[-1], target_is_real=True, for_discriminator=True)
                        + self.criterion(self.discriminator(fake)[-1], target_is_real=False, for_discriminator=True))
        self.optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        if self.world > 1:
            self._sync()
        self.optimizer.step()
        self._last = None
        return {"adv_d": float(d_loss.detach())}

    def _sync(self) -> None:
        import torch.distributed as dist

        for p in self.discriminator.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= self.world

    def state_dict(self) -> dict:
        return {"discriminator": self.discriminator.state_dict(), "d_opt": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "discriminator" in state:
            self.discriminator.load_state_dict(state["discriminator"])
            self.optimizer.load_state_dict(state["d_opt"])
