"""Training and validation data of a bundle: LR/HR pairs made on the fly, deterministically.

Every sample is a function of ``(seed, epoch, index)`` -- the crop, the flips and the degradation -- so a
resumed or distributed run sees exactly the samples an uninterrupted single-process run would.
"""

from __future__ import annotations

import logging

import numpy as np
from torch.utils.data import Dataset

from qdm_med.errors import ConfigError
from qdm_med.transforms import DegradationPipeline

__all__ = ["PairedDataset", "build_datasets", "sample_seed", "select_patients"]

logger = logging.getLogger("qdm_med.training")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (int(seed) * 7_919 + int(epoch) * 104_729 + int(index) * 31) % (2**31 - 1)


def _preset_mix(preset) -> tuple[list, np.ndarray]:
    """``preset`` (a name, a parameter dict, or ``{"mix": {name: weight, ...}}``) -> (presets, probabilities)."""
    if isinstance(preset, dict) and "mix" in preset:
        mix = preset["mix"]
        if not isinstance(mix, dict) or not mix:
            raise ConfigError(f"data.preset.mix {mix!r}: expected a mapping of preset name -> weight")
        names, weights = list(mix), np.asarray([float(v) for v in mix.values()])
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise ConfigError(f"data.preset.mix {mix!r}: weights must be >= 0 and not all 0")
        return names, weights / weights.sum()
    return [preset], np.ones(1)


class PairedDataset(Dataset):
    """Adds ``"lr"`` (C, H/s, W/s) in [-1, 1] to the ``"hr"`` samples of ``base`` with a seeded preset.

    ``preset`` may be ``{"mix": {"medical": 0.6, "bicubic": 0.4}}``: each sample draws its preset with
    these probabilities (from the same per-sample seed, so batches stay reproducible). A mix that includes
    clean ``bicubic`` downsampling keeps the model from mistaking a clean input for a degraded one.

    ``grain`` (a :class:`~qdm_med.transforms.grain.RandGrain` or None) adds CT grain to the HR before the
    LR is made from it, seeded per sample like the degradation.
    """

    def __init__(self, base, preset, scale: int, seed: int = 0, grain=None) -> None:
        self.base, self.scale, self.seed, self.grain = base, int(scale), int(seed), grain
        presets, self.probs = _preset_mix(preset)
        self.pipelines = [DegradationPipeline(p, self.scale) for p in presets]

    def with_preset(self, preset) -> "PairedDataset":
        """The same HR samples, seed and grain with another degradation preset (a training phase's)."""
        return PairedDataset(self.base, preset, self.scale, self.seed, self.grain)

    def __len__(self) -> int:
        return len(self.base)

    def get(self, index: int, epoch: int) -> dict:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)
        sample = dict(self.base[index])
        seed = sample_seed(self.seed, epoch, index)
        pick = int(np.random.RandomState(seed).choice(len(self.pipelines), p=self.probs)) if len(self.pipelines) > 1 else 0
        pipeline = self.pipelines[pick]
        if self.grain is not None:  # its own stream: the degradation's draws stay those of a run without grain
            self.grain.set_random_state(seed=(seed + 1) % (2**31 - 1))
            sample["hr"] = self.grain((sample["hr"] + 1) / 2) * 2 - 1
        pipeline.set_random_state(seed=seed)
        sample["lr"] = pipeline((sample["hr"] + 1) / 2) * 2 - 1
        return sample

    def __getitem__(self, index: int) -> dict:
        return self.get(index, 0)


def _records(settings: dict, data, corpus: bool):
    from qdm_med.data import index_corpus, index_dataset

    if data is not None:
        return index_dataset(data)
    if corpus:
        return index_corpus()
    raise ConfigError("no training data: pass --data DIR (HaN-Seg, SegRap2023 or a folder of CT) or --corpus")


def select_patients(records, patients):
    """``data.patients``: the patients a stage uses, so that a shipped recipe keeps training on the scans it was
    trained on when the corpus grows (None: every record). On other data (``--data``), where none of the names
    occur, every record is used; a data set holding only some of them is incomplete (ConfigError)."""
    if not patients:
        return records
    wanted, present = set(patients), {r.patient_id for r in records}
    missing = sorted(wanted - present)
    if len(missing) == len(wanted):
        logger.warning("data.patients %s are not in the data; using all of its %d patients", list(patients), len(present))
        return records
    if missing:
        raise ConfigError(f"data.patients {missing} are not in the data (patients: {', '.join(sorted(present))}); "
                          "run `qdm-med data fetch` to complete the corpus")
    return [r for r in records if r.patient_id in wanted]


def build_datasets(settings: dict, data=None, corpus: bool = False):
    """(train PairedDataset, validation list of {"hr", "lr", "name"} full images, split description)."""
    from qdm_med.data import CTSliceDataset, NaturalImageDataset, patient_split
    from qdm_med.data.slices import NATURAL_TRAIN, NATURAL_VAL

    d, seed, scale = settings["data"], int(settings["seed"]), int(settings.get("scale", 1) or 1)
    stage_scale = 4 if settings["stage"] == "vae" else scale  # the VAE trains on crops; any LR is unused
    if d.get("kind", "ct") == "natural":
        train = NaturalImageDataset(
            d.get("train_images") or NATURAL_TRAIN, crop_size=d["crop_size"], length=int(d.get("epoch_length", 2000)), seed=seed
        )
        val_base = NaturalImageDataset(d.get("val_images") or NATURAL_VAL, crop_size=None, flips=False, seed=seed)
        val_items = [val_base[i] for i in range(len(val_base))]
        split = {"train": list(train.names), "val": list(val_base.names)}
    else:
        records = select_patients(_records(settings, data, corpus), d.get("patients"))
        holdout = d.get("holdout")
        present = {r.patient_id for r in records}
        if holdout and not set(holdout) <= present:
            logger.warning("holdout patients %s are not in the data; using a seeded %.0f%% patient split", holdout, 100 * d["val_fraction"])
            holdout = None
        tr, va = patient_split(records, d["val_fraction"], seed, holdout)
        if not tr:
            raise ConfigError("the split left no training patient; add data or lower val_fraction")
        train = CTSliceDataset(
            tr,
            hr_size=d["hr_size"],
            window=settings["window"],
            min_foreground=d["min_foreground"],
            crop_size=d["crop_size"],
            flips=d["flips"],
            seed=seed,
        )
        val_items = []
        if va:
            vds = CTSliceDataset(va, hr_size=d["hr_size"], window=settings["window"], min_foreground=d["min_foreground"])
            n = min(int(d.get("val_slices", 4)), len(vds))
            picks = np.linspace(0, len(vds) - 1, n).round().astype(int) if n else []
            val_items = [vds[int(i)] for i in picks]
        split = {"train": sorted({r.patient_id for r in tr}), "val": sorted({r.patient_id for r in va})}
    # validation LR: ``data.val_preset`` (default: the fixed medical/natural test degradation), seeded per item
    test_preset = d.get("val_preset") or ("natural" if d.get("kind") == "natural" else "medical_test")
    vp = DegradationPipeline(test_preset, stage_scale)
    val = []
    for i, item in enumerate(val_items):
        hr = item["hr"]
        h, w = (hr.shape[-2] // stage_scale) * stage_scale, (hr.shape[-1] // stage_scale) * stage_scale
        hr = hr[..., :h, :w]
        vp.set_random_state(seed=seed + 1000 + i)
        val.append({"hr": hr, "lr": vp((hr + 1) / 2) * 2 - 1, "name": f"{item.get('patient')}:{item.get('slice')}"})
    return PairedDataset(train, d["preset"], stage_scale, seed, hr_grain(d.get("hr_grain"), settings["window"])), val, split


def hr_grain(spec, window):
    """``data.hr_grain`` (``{"prob", "sigma_hu": [lo, hi], "corr_px": [lo, hi]}``, HU of the model window) ->
    a :class:`~qdm_med.transforms.grain.RandGrain` in [0, 1] window units, or None when unset."""
    if spec is None:
        return None
    from qdm_med.transforms.grain import RandGrain

    if not isinstance(spec, dict) or set(spec) - {"prob", "sigma_hu", "corr_px"}:
        raise ConfigError(f"data.hr_grain {spec!r}: expected keys prob, sigma_hu, corr_px")
    width = float(window[1]) - float(window[0])
    try:
        return RandGrain(float(spec.get("prob", 0.5)), [float(v) / width for v in spec.get("sigma_hu", (0.0, 30.0))],
                         spec.get("corr_px", (0.5, 1.2)))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"data.hr_grain {spec!r}: {err}") from None
