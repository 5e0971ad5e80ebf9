"""The patch adversary: it learns to tell grain from flat images, the QDM's adversarial term resumes exactly,
and a bad window is a clear error."""

from __future__ import annotations

import json

import pytest
import torch
from training_doubles import tiny_bundle

from qdm_med.errors import ConfigError
from qdm_med.training import train_bundle
from qdm_med.training.adversarial import PatchAdversary
from qdm_med.training.checkpoint import load_checkpoint


def test_discriminator_learns_grain_from_flat_and_pushes_the_generator_towards_grain():
    torch.manual_seed(0)
    adv = PatchAdversary(1, lr=2e-3)
    flat = torch.zeros(8, 1, 32, 32)
    grainy = 0.3 * torch.randn(8, 1, 32, 32)
    first = None
    for _ in range(60):
        g = adv.generator_loss(flat, grainy)
        logs = adv.update()
        first = first if first is not None else logs["adv_d"]
    assert logs["adv_d"] < 0.5 * first  # least squares: 0.25 when it cannot tell them apart
    # the generator term is higher for flat images than for grainy ones, and its gradient is non-zero
    fake = flat.clone().requires_grad_(True)
    g = adv.generator_loss(fake, grainy)
    g.backward()
    assert g > adv.generator_loss(grainy, grainy) and fake.grad.abs().sum() > 0


def test_adversary_waits_for_its_start_and_uses_its_view():
    torch.manual_seed(0)
    seen = []
    adv = PatchAdversary(1, lr=1e-3, start=2, view=lambda x: seen.append(x.shape) or x.clamp(-0.5, 0.5))
    before = {k: v.clone() for k, v in adv.discriminator.state_dict().items()}
    assert not adv.active and adv.update() == {}  # step 0 -> 1: still off, nothing trained
    assert adv.update() == {}  # step 1 -> 2: on, but no pair seen yet
    assert adv.active
    assert all(torch.equal(before[k], v) for k, v in adv.discriminator.state_dict().items())
    adv.generator_loss(torch.zeros(2, 1, 32, 32), torch.ones(2, 1, 32, 32))
    assert "adv_d" in adv.update() and len(seen) == 3  # the generator term and both discriminator inputs went through the view
    assert any(not torch.equal(before[k], v) for k, v in adv.discriminator.state_dict().items())


def _lpips_file(tmp_path):
    from qdm_med.metrics.lpips_offline import build_lpips

    torch.manual_seed(0)
    path = tmp_path / "alex.pt"
    torch.save(build_lpips().state_dict(), path)  # random AlexNet weights: the term's plumbing, not its quality
    return path


def test_qdm_adversarial_term_resumes_exactly(tmp_path, ct_folder):
    extra = {"train": {"adversarial_weight": 0.05, "adversarial_start": 1, "adversarial_window": [-160.0, 240.0],
                       "adversarial_highpass": 8.0, "lpips_weight": 0.5, "lpips_path": str(_lpips_file(tmp_path)),
                       "checkpoint_every": 1, "log_every": 1, "validate_every": 100, "warmup": 0}}
    bundle = tiny_bundle(tmp_path, "qdm_ct_x8", extra)
    train_bundle(bundle, data=ct_folder, max_steps=4, output=tmp_path / "full", quiet=True, device="cpu")
    train_bundle(bundle, data=ct_folder, max_steps=2, output=tmp_path / "part", quiet=True, device="cpu")
    train_bundle(bundle, data=ct_folder, max_steps=4, output=tmp_path / "part", resume=True, quiet=True, device="cpu")
    logs = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert "adv_g" not in logs[0] and "adv_g" in logs[-1] and "adv_d" in logs[-1] and "lpips" in logs[-1]
    a, b = load_checkpoint(tmp_path / "full" / "checkpoint.pt"), load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert a["extra"]["step"] == b["extra"]["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["extra"]["discriminator"]:
        assert torch.equal(a["extra"]["discriminator"][k], b["extra"]["discriminator"][k]), k
    first_conv = next(v for k, v in a["extra"]["discriminator"].items() if v.ndim == 4)
    assert first_conv.shape[1] == 2  # the gray view and its high-pass channel


def test_qdm_without_adversary_keeps_a_plain_checkpoint(tmp_path, ct_folder):
    bundle = tiny_bundle(tmp_path, "qdm_ct_x8")
    train_bundle(bundle, data=ct_folder, max_steps=1, output=tmp_path / "run", quiet=True, device="cpu")
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["extra"] is None


@pytest.mark.parametrize("bad", [{"adversarial_window": [240.0, -160.0]}, {"adversarial_window": [0.0]}, {"adversarial_highpass": -1.0}])
def test_bad_adversarial_setting_is_a_clear_error(tmp_path, ct_folder, bad):
    bundle = tiny_bundle(tmp_path, "qdm_ct_x8", {"train": {"adversarial_weight": 0.1, **bad}})
    with pytest.raises(ConfigError, match=next(iter(bad))):
        train_bundle(bundle, data=ct_folder, max_steps=1, output=tmp_path / "run", quiet=True, device="cpu")
