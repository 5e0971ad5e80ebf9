"""Fixtures of the MONAI Deploy tests (helpers in deploy_doubles.py, importable by name)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def deploy_sdk():
    """The MONAI Deploy App SDK: skipped when absent, a failure when QDM_MED_REQUIRE_DEPLOY=1 (CI installs it)."""
    try:
        import monai.deploy.core  # noqa: F401
    except ImportError as err:
        if os.environ.get("QDM_MED_REQUIRE_DEPLOY"):
            pytest.fail(f"QDM_MED_REQUIRE_DEPLOY=1 but the MONAI Deploy App SDK does not import ({err})")
        pytest.skip('MONAI Deploy App SDK not installed (pip install ".[deploy]")')
    return True
