"""MONAI dictionary transforms of the CT intensity window (:mod:`.window` holds the window and the array transforms)."""

from __future__ import annotations

from typing import Hashable, Mapping

from monai.config import KeysCollection
from monai.transforms import MapTransform

from qdm_med.transforms.window import DEFAULT_WINDOW, HUWindow, InverseHUWindow

__all__ = ["HUWindowd", "InverseHUWindowd"]

class HUWindowd(MapTransform):
    """Dictionary version of :class:`HUWindow`."""

    def __init__(self, keys: KeysCollection, lo: float = DEFAULT_WINDOW[0], hi: float = DEFAULT_WINDOW[1],
                 clip: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.window = HUWindow(lo, hi, clip)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.window(d[key])
        return d


class InverseHUWindowd(MapTransform):
    """Dictionary version of :class:`InverseHUWindow`."""

    def __init__(self, keys: KeysCollection, lo: float = DEFAULT_WINDOW[0], hi: float = DEFAULT_WINDOW[1],
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.inverse = InverseHUWindow(lo, hi)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.inverse(d[key])
        return d
