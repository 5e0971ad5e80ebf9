"""Slice datasets for training and validation: axial CT slices in the model window, natural photos.

:class:`CTSliceDataset` indexes every axial slice of a list of volumes that is not nearly all air,
serves it as ``{"hr": (1, H, W) float32 in [-1, 1], "patient", "slice"}`` resized to ``hr_size`` (the
paper uses 512), optionally random-cropped and flipped, then passes the dict through ``transform`` (training's pairing adds ``"lr"``,
:mod:`qdm_med.training.data`). Decoded volumes are cached in memory
(least recently used first out), so an epoch reads each file once.

Randomness (crops, flips) is a function of ``(seed, epoch, index)``: call :meth:`set_epoch` each epoch;
a resumed run sees exactly the same samples.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from qdm_med.data.indexers import VolumeRecord
from qdm_med.errors import InputError
from qdm_med.transforms.window import DEFAULT_WINDOW, HUWindow

__all__ = ["CTSliceDataset", "NaturalImageDataset", "NATURAL_TRAIN", "NATURAL_VAL", "random_crop_flip"]

#: HU above which a pixel counts as body (not air) for the air-slice filter.
BODY_HU = -900.0


def _generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch) * 9_176 + int(index)) % (2**63 - 1))


def random_crop_flip(img: torch.Tensor, crop: int | None, flips: bool, gen: torch.Generator) -> torch.Tensor:
    """Random ``crop`` x ``crop`` window (whole image if None or larger) and random h/v flips of (C, H, W)."""
    if crop is not None:
        h, w = img.shape[-2:]
        ch, cw = min(crop, h), min(crop, w)
        y = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        x = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        img = img[..., y : y + ch, x : x + cw]
    if flips:
        if bool(torch.randint(0, 2, (1,), generator=gen)):
            img = img.flip(-1)
        if bool(torch.randint(0, 2, (1,), generator=gen)):
            img = img.flip(-2)
    return img.contiguous()


class CTSliceDataset(Dataset):
    """Axial slices of CT volumes in the model window.

    Args:
        records: volumes (:func:`qdm_med.data.indexers.index_dataset`).
        hr_size: slices are resized (antialiased bilinear) to ``hr_size`` x ``hr_size``; None keeps the size.
        window: HU window mapped to [-1, 1].
        min_foreground: skip slices whose fraction of pixels above -900 HU is below this.
        crop_size / flips: training augmentation (after resizing).
        transform: called on the sample dict (e.g. LR/HR pair making).
        cache_volumes: how many decoded volumes to keep in memory.
        seed: base seed of the augmentation.
    """

    def __init__(
        self,
        records: Sequence[VolumeRecord],
        hr_size: int | None = 512,
        window: Sequence[float] = DEFAULT_WINDOW,
        min_foreground: float = 0.05,
        crop_size: int | None = None,
        flips: bool = False,
        transform: Callable[[dict], dict] | None = None,
        cache_volumes: int = 8,
        seed: int = 0,
        loader: Callable | None = None,
    ) -> None:
        if not records:
            raise InputError("no CT volumes to build slices from")
        self.records = list(records)
        self.hr_size, self.window = hr_size, (float(window[0]), float(window[1]))
        self.min_foreground, self.crop_size, self.flips = float(min_foreground), crop_size, bool(flips)
        self.transform, self.cache_volumes, self.seed = transform, max(1, int(cache_volumes)), int(seed)
        self.epoch = 0
        self.loads = 0  # number of volume decodes (cache misses)
        self._loader = loader
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._to_unit = HUWindow(*self.window)
        self.index: list[tuple[int, int]] = []
        for v in range(len(self.records)):
            hu = self._volume(v)
            fg = (hu > BODY_HU).mean(axis=(0, 1))
            self.index += [(v, int(k)) for k in np.nonzero(fg >= self.min_foreground)[0]]
        if not self.index:
            raise InputError(f"no slice of the {len(self.records)} volume(s) has >= {self.min_foreground:.0%} body pixels")

    def _volume(self, v: int) -> np.ndarray:
        if v in self._cache:
            self._cache.move_to_end(v)
            return self._cache[v]
        rec = self.records[v]
        if self._loader is not None:
            arr = self._loader(rec.path)
        else:
            from qdm_med.io import load_volume

            arr = load_volume(rec.path).array
        arr = np.asarray(arr)
        if arr.ndim != 3:
            raise InputError(f"{rec.path}: {arr.ndim}D data is not a CT volume")
        self.loads += 1
        self._cache[v] = arr.astype(np.int16) if np.allclose(arr, np.round(arr)) else arr.astype(np.float32)
        while len(self._cache) > self.cache_volumes:
            self._cache.popitem(last=False)
        return self._cache[v]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def slice_hu(self, i: int) -> np.ndarray:
        """The HU slice ``i`` as (H, W) = (Y, X), the orientation the inferencer uses."""
        v, k = self.index[i]
        return np.asarray(self._volume(v)[:, :, k], dtype=np.float32).T

    def __getitem__(self, i: int) -> dict:
        v, k = self.index[i]
        img = torch.from_numpy(np.ascontiguousarray(self._to_unit(self.slice_hu(i))))[None]
        if self.hr_size is not None and tuple(img.shape[-2:]) != (self.hr_size, self.hr_size):
            img = F.interpolate(img[None], size=(self.hr_size, self.hr_size), mode="bilinear", align_corners=False, antialias=True)[0]
        img = (
            random_crop_flip(img, self.crop_size, self.flips, _generator(self.seed, self.epoch, i))
            if (self.crop_size or self.flips)
            else img
        )
        sample = {"hr": img.clamp(-1, 1), "patient": self.records[v].patient_id, "slice": k}
        return self.transform(sample) if self.transform is not None else sample


#: scikit-image photos for the natural-image bundle; validation photos are never trained on.
#: (``cat`` is the same photo as ``chelsea``, so it is in neither list.)
NATURAL_TRAIN = (
    "astronaut",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "brick",
    "grass",
    "gravel",
    "camera",
    "moon",
    "clock",
)
NATURAL_VAL = ("chelsea", "retina", "coins")


class NaturalImageDataset(Dataset):
    """Photos from ``skimage.data`` as ``{"hr": (3, H, W) in [-1, 1]}`` random crops (gray photos as 3 channels).

    ``length`` samples per epoch, each a random crop of a random photo, a function of (seed, epoch, index).
    """

    def __init__(
        self,
        names: Sequence[str] = NATURAL_TRAIN,
        crop_size: int | None = 128,
        length: int = 1000,
        flips: bool = True,
        transform: Callable[[dict], dict] | None = None,
        seed: int = 0,
    ) -> None:
        from skimage import data as skdata

        self.images = []
        for name in names:
            fn = getattr(skdata, name, None)
            if fn is None:
                raise InputError(f"skimage.data has no photo {name!r}")
            a = np.asarray(fn(), dtype=np.float32)
            a = a / 255.0 if a.max() > 1.0 else a
            if a.ndim == 2:
                a = np.repeat(a[..., None], 3, axis=-1)
            self.images.append(torch.from_numpy(np.ascontiguousarray(a[..., :3].transpose(2, 0, 1))) * 2 - 1)
        self.names, self.crop_size, self.length, self.flips = list(names), crop_size, int(length), flips
        self.transform, self.seed, self.epoch = transform, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length if self.crop_size is not None else len(self.images)

    def __getitem__(self, i: int) -> dict:
        gen = _generator(self.seed, self.epoch, i)
        j = int(torch.randint(0, len(self.images), (1,), generator=gen)) if self.crop_size is not None else i
        img = random_crop_flip(self.images[j], self.crop_size, self.flips, gen)
        sample = {"hr": img, "patient": self.names[j], "slice": 0}
        return self.transform(sample) if self.transform is not None else sample
