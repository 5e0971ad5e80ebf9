"""``scripts/template_energy.py``: removing a tiled pattern per tissue class, against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from script_loader import load_script


@pytest.fixture(scope="module")
def template_energy():
    return load_script("template_energy")


def test_untile_removes_each_class_pattern_and_keeps_real_texture(template_energy):
    rng = np.random.default_rng(0)
    n, h, w, p = 2, 128, 128, 16
    hr = np.full((n, h, w), 40.0)  # soft tissue ...
    hr[:, :, :64] = -1000.0  # ... and air
    reference = hr + rng.normal(scale=5.0, size=hr.shape)
    soft_pattern, air_pattern = rng.normal(scale=10.0, size=(p, p)), rng.normal(scale=3.0, size=(p, p))
    soft_pattern, air_pattern = soft_pattern - soft_pattern.mean(), air_pattern - air_pattern.mean()
    outputs_offset = 25.0  # a shift of the soft tissue's mean stays in the output: it is no pattern
    tiled = np.where(hr > 0, np.tile(soft_pattern, (8, 8)), np.tile(air_pattern, (8, 8)))
    outputs = reference + tiled + np.where(hr > 0, outputs_offset, 0.0)
    untiled, part, share = template_energy.untile(outputs, reference, hr, p)
    np.testing.assert_allclose(untiled, reference + np.where(hr > 0, outputs_offset, 0.0), atol=1e-9)
    np.testing.assert_allclose(part, tiled, atol=1e-9)
    assert share["air"] == pytest.approx(1.0)  # the other classes have no pixels
    assert share["soft"] == pytest.approx(np.mean(soft_pattern**2) / (np.mean(soft_pattern**2) + outputs_offset**2))


def test_untile_leaves_untiled_texture_nearly_whole(template_energy):
    rng = np.random.default_rng(1)
    hr = np.full((4, 256, 256), 40.0)
    reference = hr.copy()
    outputs = reference + rng.normal(scale=10.0, size=hr.shape)
    untiled, part, share = template_energy.untile(outputs, reference, hr, 32)
    # each phase pools 4 * 8 * 8 = 256 tiles: the tiled estimate holds 1/256 of the energy
    assert share["soft"] == pytest.approx(1 / 256, rel=0.2)
    assert np.sqrt(np.mean(part**2)) == pytest.approx(10.0 / 16, rel=0.1)
