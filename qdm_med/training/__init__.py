"""Training: the VAE and QDM stages (:mod:`.stages`), the loop with exact resume (:mod:`.loop`,
:mod:`.checkpoint`, :mod:`.ema`), data (:mod:`.data`), DDP (:mod:`.ddp`) and the entry point (:mod:`.api`)."""

from qdm_med.training.api import train_bundle, train_recipe

__all__ = ["train_bundle", "train_recipe"]
