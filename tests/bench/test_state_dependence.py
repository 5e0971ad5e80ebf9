"""``scripts/state_dependence.py``: the measure of how much a QDM reads its noisy state, against closed forms."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from script_loader import load_script

from qdm_med.diffusion.resshift import ResShiftDiffusion


@pytest.fixture(scope="module")
def state_dependence():
    return load_script("state_dependence")


class _Identity(torch.nn.Module):
    """First stage stand-in: the image is its own latent (factor 1)."""

    factor = 1

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Network:
    """QDM stand-in: ``mode`` "copy" un-normalises and returns its input x_t, "ignore" returns the conditioning,
    "jump" (a jump-conditioned network) copies after a jump longer than one step and ignores its state otherwise."""

    def __init__(self, diffusion: ResShiftDiffusion, mode: str) -> None:
        self.diffusion, self.mode = diffusion, mode
        self.jump_conditioning = mode == "jump"

    def conditioning(self, lr: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y

    def forward_sparse(self, x_in, t, cond, token_mask, jump=None):
        assert jump is None or self.jump_conditioning
        if self.mode == "ignore" or (self.mode == "jump" and (jump is None or float(jump[0]) == 1.0)):
            return cond.clone(), {}
        return x_in / self.diffusion.normalize(torch.ones_like(x_in), int(t[0])), {}


def _sr(mode: str, start: torch.Tensor) -> SimpleNamespace:
    diffusion = ResShiftDiffusion()
    return SimpleNamespace(first_stage=_Identity(), qdm=_Network(diffusion, mode), diffusion=diffusion, scale=1,
                           start_image=lambda lr: start)


def _pair():
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(1, 1, 32, 32, generator=g) * 2 - 1
    start = (hr + 0.1 * torch.randn(1, 1, 32, 32, generator=g)).clamp(-1, 1)
    return start, hr


def test_a_call_that_copies_its_state_changes_by_the_whole_residual(state_dependence):
    start, hr = _pair()
    out = state_dependence.state_dependence(_sr("copy", start), start, hr, threshold=0.0, timesteps=(14, 0))
    for row in out["rows"]:
        assert row["change"] == pytest.approx(1.0, abs=1e-5)  # from y it returns y, from x0 it returns x0
        assert row["err_y"] == pytest.approx(1.0, abs=1e-5) and row["err_x0"] == pytest.approx(0.0, abs=1e-5)
    assert out["token_density"] == 1.0  # threshold 0: every token active


def test_a_call_that_ignores_its_state_does_not_change(state_dependence):
    start, hr = _pair()
    out = state_dependence.state_dependence(_sr("ignore", start), start, hr, threshold=0.9, timesteps=(7,))
    (row,) = out["rows"]
    assert row["t"] == 7 and row["change"] == 0.0
    assert row["err_y"] == row["err_x0"] == pytest.approx(1.0, abs=1e-5)


def test_the_jump_reaches_a_jump_conditioned_call_and_is_refused_without_one(state_dependence):
    start, hr = _pair()
    sr = _sr("jump", start)
    told = state_dependence.state_dependence(sr, start, hr, threshold=0.0, timesteps=(0,), jump=6.8)
    default = state_dependence.state_dependence(sr, start, hr, threshold=0.0, timesteps=(0,))
    assert told["rows"][0]["change"] == pytest.approx(1.0, abs=1e-5) and default["rows"][0]["change"] == 0.0
    with pytest.raises(ValueError, match="no jump conditioning"):
        state_dependence.state_dependence(_sr("copy", start), start, hr, threshold=0.0, jump=2.0)


def test_a_start_equal_to_the_hr_is_refused(state_dependence):
    _, hr = _pair()
    with pytest.raises(ValueError, match="nothing to measure"):
        state_dependence.state_dependence(_sr("copy", hr), hr, hr, threshold=0.0)


def test_pil_lr_is_the_block_size_of_the_scale(state_dependence):
    hu = np.full((64, 48), 40.0, np.float32)
    lr = state_dependence.protocol_lr(hu, 4)
    assert lr.shape == (16, 12) and np.allclose(lr, 40.0, atol=1e-3)


def test_a_folder_that_is_not_a_bundle_is_one_line(state_dependence, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["state_dependence.py", "--bundle", str(tmp_path), "--threshold", "0.3", "--hr", "x.nii.gz"])
    with pytest.raises(SystemExit, match=f"error: {tmp_path}: not a bundle"):
        state_dependence.main()
