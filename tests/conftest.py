"""Fixtures shared by every test folder (folder-specific doubles live in ``<folder>/*_doubles.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The fetched real-CT corpus: skipped when absent, fetched when CI requires it (QDM_MED_REQUIRE_CORPUS=1)."""
    from qdm_med.data import corpus as corpus_mod

    d = corpus_mod.default_data_dir()
    if not (d / "manifest.json").is_file():
        if not os.environ.get("QDM_MED_REQUIRE_CORPUS"):
            pytest.skip("corpus not fetched (run `qdm-med data fetch`; CI sets QDM_MED_REQUIRE_CORPUS=1)")
        corpus_mod.fetch_corpus(d, quiet=True)
    return d
