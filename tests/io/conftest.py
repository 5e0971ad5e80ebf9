"""Fixtures of the I/O tests (helpers live in io_doubles.py, importable by name)."""

from __future__ import annotations

import logging

import pytest
from io_doubles import write_ct_series


@pytest.fixture
def ct_series(tmp_path):
    """A 12 x 10 x 5 oblique synthetic CT series in tmp_path/series."""
    return write_ct_series(tmp_path / "series")


@pytest.fixture
def qdm_warnings(caplog):
    """Captured warnings of the qdm_med loggers (list of messages)."""
    caplog.set_level(logging.WARNING, logger="qdm_med")

    def messages() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name.startswith("qdm_med") and r.levelno >= logging.WARNING]

    return messages
