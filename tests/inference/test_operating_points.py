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
    assert operating_point(model, "detail", None, None, None) == (4, "tss", 0.3, None)
    assert operating_point(model, "detail", 2, None, None) == (2, "tss", 0.3, None)
    assert operating_point(model, "detail", None, "uniform", 0.0) == (4, "uniform", 0.0, None)
    deterministic = _model({"detail": {**DETAIL, "steps": 1, "stochastic": False}})
    assert operating_point(deterministic, "detail", None, None, None) == (1, "tss", 0.3, False)


def test_fidelity_mode_leaves_the_bundle_default_and_the_users_options():
    model = _model({"detail": DETAIL})
    assert operating_point(model, "fidelity", None, None, None) == (None, None, None, None)
    assert operating_point(model, None, 3, "tds", 0.1) == (3, "tds", 0.1, None)


@pytest.mark.parametrize("model, mode, message", [
    (_model({}), "detail", "/bundles/qdm_ct_x4: has no detail operating point"),
    (_model({"detail": DETAIL}, name="bicubic"), "detail", "no detail operating point"),
    (_model({"detail": DETAIL}), "sharp", "mode 'sharp': use fidelity or detail"),
    (_model({"detail": {**DETAIL, "stochastic": "no"}}), "detail", "detail.stochastic 'no': use true or false"),
])
def test_bad_modes_are_one_line_config_errors(model, mode, message):
    with pytest.raises(ConfigError, match=message) as err:
        operating_point(model, mode, None, None, None)
    assert "\n" not in str(err.value)


def test_detail_sampling_reads_the_section_and_fills_what_it_leaves_out():
    from qdm_med.bundle.settings import detail_sampling

    assert detail_sampling({"detail": DETAIL}) == {**DETAIL, "stochastic": None}
    assert detail_sampling({"detail": {"steps": 4}}) == {"sampler": None, "steps": 4, "threshold": None, "stochastic": None}
    assert detail_sampling({"sampling": {"steps": 1}}) is None
    assert detail_sampling({"detail": "tss"}) is None


def test_a_deterministic_detail_point_reaches_the_pipeline_and_its_output_does_not_depend_on_the_seed():
    """``detail.stochastic: false`` (posterior means only) is set on the pipeline by ``apply_overrides``; the
    sample is then the same for any generator, and the explicit fidelity options leave the flag alone."""
    import torch

    from qdm_med.diffusion import ResShiftDiffusion
    from qdm_med.jobs.resolve import apply_overrides
    from qdm_med.models import build_first_stage, build_qdm
    from qdm_med.models.sr import QDMSuperResolution

    torch.manual_seed(0)
    fs = build_first_stage("pixel_unshuffle", 1)
    qdm = build_qdm("tiny", fs.latent_channels, 1).eval()
    with torch.no_grad():  # random, non-zero weights: zero-initialised adaLN would make every output the skip
        for w in qdm.parameters():
            w.normal_(0, 0.1)
    sr = QDMSuperResolution(fs, qdm, ResShiftDiffusion(), scale=4).eval()
    model = ResolvedModel(sr_fn=sr, scale=4, window=(-1024.0, 2048.0), name="tiny", path=None,
                          config={"detail": {"sampler": "tss", "steps": 2, "threshold": 0.0, "stochastic": False}})
    apply_overrides(model, *operating_point(model, "fidelity", 2, None, None))
    assert sr.stochastic is True and sr.steps == 2
    apply_overrides(model, *operating_point(model, "detail", None, None, None))
    assert (sr.stochastic, sr.steps, sr.sampler, sr.threshold) == (False, 2, "tss", 0.0)
    lr = torch.rand(1, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        a, b = (sr(lr, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    assert torch.equal(a, b) and sr.last_info["stochastic"] is False


def test_the_fidelity_modes_flip_ensemble_is_the_shipped_default_and_can_be_turned_off(tmp_path):
    """The CT bundles ship ``sampling.flip_ensemble: true`` (their networks average four mirrored prior passes);
    ``apply_overrides(flip_ensemble=False)`` (``--disable-tta``) turns it off; a non-boolean is a one-line error."""
    import json
    import shutil
    from pathlib import Path

    from qdm_med.bundle import build_network
    from qdm_med.jobs.resolve import apply_overrides

    repo = Path(__file__).resolve().parents[2]
    for name in ("qdm_ct_x4", "qdm_ct_x8"):
        assert json.loads((repo / "bundles" / name / "configs" / "inference.json").read_text())["sampling"]["flip_ensemble"] is True
        sr = build_network(repo / "bundles" / name)
        assert sr.flip_ensemble is True and sr.steps == 0
    model = ResolvedModel(sr_fn=sr, scale=8, window=(-1024.0, 2048.0), name="qdm_ct_x8", path=None, config={})
    apply_overrides(model, None, None, None)
    assert sr.flip_ensemble is True
    apply_overrides(model, None, None, None, flip_ensemble=False)
    assert sr.flip_ensemble is False and sr.steps == 0
    bad = tmp_path / "qdm_ct_x8"
    shutil.copytree(repo / "bundles" / "qdm_ct_x8" / "configs", bad / "configs")
    cfg = json.loads((bad / "configs" / "inference.json").read_text())
    cfg["sampling"]["flip_ensemble"] = "yes"
    (bad / "configs" / "inference.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="sampling.flip_ensemble 'yes': use true or false") as err:
        build_network(bad)
    assert "\n" not in str(err.value)
