"""A bundle's two operating points: ``fidelity`` (its default sampling) and ``detail`` (its ``detail`` section)."""

from __future__ import annotations

import pytest

from qdm_med.errors import ConfigError
from qdm_med.jobs.resolve import ResolvedModel, operating_point

DETAIL = {"sampler": "tss", "steps": 4, "threshold": 0.3}


def _model(config: dict, name: str = "qdm_ct_x4") -> ResolvedModel:
    return ResolvedModel(sr_fn=None, scale=4, window=(-1024.0, 2048.0), name=name, path=f"/bundles/{name}", config=config)


def test_detail_mode_takes_the_bundles_detail_section_and_explicit_options_win():
    model = _model({"detail": DETAIL, "sampling": {"sampler": "uniform", "steps": 0, "threshold": 0.15}})
    assert operating_point(model, "detail", None, None, None) == (4, "tss", 0.3)
    assert operating_point(model, "detail", 2, None, None) == (2, "tss", 0.3)
    assert operating_point(model, "detail", None, "uniform", 0.0) == (4, "uniform", 0.0)


def test_fidelity_mode_leaves_the_bundle_default_and_the_users_options():
    model = _model({"detail": DETAIL})
    assert operating_point(model, "fidelity", None, None, None) == (None, None, None)
    assert operating_point(model, None, 3, "tds", 0.1) == (3, "tds", 0.1)


@pytest.mark.parametrize("model, mode, message", [
    (_model({}), "detail", "/bundles/qdm_ct_x4: has no detail operating point"),
    (_model({"detail": DETAIL}, name="bicubic"), "detail", "no detail operating point"),
    (_model({"detail": DETAIL}), "sharp", "mode 'sharp': use fidelity or detail"),
])
def test_bad_modes_are_one_line_config_errors(model, mode, message):
    with pytest.raises(ConfigError, match=message) as err:
        operating_point(model, mode, None, None, None)
    assert "\n" not in str(err.value)


def test_detail_sampling_reads_the_section_and_fills_what_it_leaves_out():
    from qdm_med.bundle.settings import detail_sampling

    assert detail_sampling({"detail": DETAIL}) == DETAIL
    assert detail_sampling({"detail": {"steps": 4}}) == {"sampler": None, "steps": 4, "threshold": None}
    assert detail_sampling({"sampling": {"steps": 1}}) is None
    assert detail_sampling({"detail": "tss"}) is None
