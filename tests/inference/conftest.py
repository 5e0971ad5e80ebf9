"""Fixtures for the inference tests; the test doubles live in ``inference_doubles.py``."""

from __future__ import annotations

import pytest
from inference_doubles import FakeLoadedBundle, FakeSRPipeline, make_volume, smooth_ct


@pytest.fixture
def fake_pipeline():
    return FakeSRPipeline


@pytest.fixture
def fake_bundle():
    return FakeLoadedBundle


@pytest.fixture
def volume_factory():
    return make_volume


@pytest.fixture
def ct_array():
    return smooth_ct
