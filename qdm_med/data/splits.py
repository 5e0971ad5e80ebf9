"""Patient-level train/validation splits (no patient's slices on both sides)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from qdm_med.data.indexers import VolumeRecord
from qdm_med.errors import ConfigError

__all__ = ["patient_split"]


def patient_split(
    records: Sequence[VolumeRecord], val_fraction: float = 0.1, seed: int = 0, holdout: Sequence[str] | None = None
) -> tuple[list[VolumeRecord], list[VolumeRecord]]:
    """Split records by patient: ``val_fraction`` of the patients (at least one when there are two or
    more) go to validation, chosen with ``seed``; ``holdout`` names patients that must be in validation
    (then no others are drawn). The paper's split is 9:1 (the default)."""
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction {val_fraction}: must be in [0, 1)")
    patients = sorted({r.patient_id for r in records})
    if holdout:
        unknown = sorted(set(holdout) - set(patients))
        if unknown:
            raise ConfigError(f"holdout patients {unknown} are not in the data (patients: {', '.join(patients)})")
        val_ids = set(holdout)
    else:
        n_val = int(round(len(patients) * float(val_fraction)))
        if len(patients) >= 2 and val_fraction > 0:
            n_val = min(max(n_val, 1), len(patients) - 1)
        order = np.random.RandomState(seed).permutation(len(patients))
        val_ids = {patients[i] for i in order[:n_val]}
    train = [r for r in records if r.patient_id not in val_ids]
    val = [r for r in records if r.patient_id in val_ids]
    return train, val
