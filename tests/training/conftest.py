"""Fixtures of the training and bundle tests (helpers live in training_doubles.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_doubles import synthetic_ct


@pytest.fixture()
def ct_folder(tmp_path) -> Path:
    return synthetic_ct(tmp_path / "ct")
