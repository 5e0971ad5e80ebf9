"""Training: both stages learn, exact resume, DDP replicas agree, untrained-VAE error, CLI."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from training_doubles import tiny_bundle
from typer.testing import CliRunner

from qdm_med.cli import app
from qdm_med.errors import ConfigError
from qdm_med.training import train_bundle
from qdm_med.training.checkpoint import load_checkpoint
from qdm_med.training.loop import batch_indices
from qdm_med.transforms import bicubic_upsample


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vae_ct", "qdm_ct_x8", "qdm_ct_x4"])
def test_stage_smoke_loss_goes_down(tmp_path, ct_folder, name):
    # cond "lr": the network starts from a zero prediction, so learning shows in the loss within a few steps
    bundle = tiny_bundle(tmp_path, name, {"train": {"lr": 2e-3, "ema_decay": 0.5, "log_every": 1, "validate_every": 100},
                                          "model": {"config": "tiny", "cond": "lr"}})
    summary = train_bundle(bundle, data=ct_folder, max_steps=30, output=tmp_path / "run", quiet=True, device="cpu")
    losses = _losses(tmp_path / "run")
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    state = torch.load(tmp_path / "run" / "models" / "model.pt", weights_only=True)
    assert state and summary["steps"] == 30 and summary["validation"]


def test_resume_continues_exactly(tmp_path, ct_folder):
    bundle = tiny_bundle(tmp_path, "qdm_ct_x8")
    full = tmp_path / "full"
    train_bundle(bundle, data=ct_folder, max_steps=5, output=full, quiet=True, device="cpu")
    part = tmp_path / "part"
    train_bundle(bundle, data=ct_folder, max_steps=3, output=part, quiet=True, device="cpu")  # "killed" after step 3
    with pytest.raises(ConfigError, match="--resume"):
        train_bundle(bundle, data=ct_folder, max_steps=5, output=part, quiet=True, device="cpu")
    train_bundle(bundle, data=ct_folder, max_steps=5, output=part, resume=True, quiet=True, device="cpu")
    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(part / "checkpoint.pt")
    assert a["step"] == b["step"] == 5
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    assert _losses(full) == _losses(part)


def test_batch_indices_split_global_batch_between_ranks():
    """Two ranks with per-rank batch 2 see, together and in rank order, exactly the single-process batch of 4."""
    n, seed = 10, 0

    def perm(epoch):  # independent reference: the epoch's shuffle of the n samples
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()

    for step in range(6):  # steps 2 and 4 cross an epoch boundary (global samples 8..11 and 16..19)
        single = batch_indices(step, 4, n, seed=seed, rank=0, world=1)
        two = [batch_indices(step, 2, n, seed=seed, rank=r, world=2) for r in (0, 1)]
        assert two[0] + two[1] == single
        assert single == [(g // n, perm(g // n)[g % n]) for g in range(4 * step, 4 * step + 4)]
    assert set(batch_indices(3, 2, n, seed, 0, 2)).isdisjoint(batch_indices(3, 2, n, seed, 1, 2))
    assert batch_indices(0, 10, 10, 0) == [(0, i) for i in perm(0)]


def test_qdm_on_untrained_vae_is_refused(tmp_path, ct_folder):
    vae = tiny_bundle(tmp_path, "vae_ct")
    qdm = tiny_bundle(
        tmp_path, "qdm_ct_x8", {"first_stage": {"kind": "kl_vae", "bundle": "../vae_ct", "channels": [8, 16, 16], "norm_num_groups": 8}}
    )
    with pytest.raises(ConfigError, match="no trained weights"):
        train_bundle(qdm, data=ct_folder, max_steps=1, output=tmp_path / "r1", quiet=True, device="cpu")
    fs = json.loads((vae / "configs" / "train.json").read_text())["first_stage"]
    from qdm_med.models import build_first_stage

    kw = {k: v for k, v in fs.items() if k != "kind"}
    (vae / "models").mkdir(exist_ok=True)
    torch.save(build_first_stage("kl_vae", 1, **kw).state_dict(), vae / "models" / "model.pt")  # trained flag False
    with pytest.raises(ConfigError, match="untrained"):
        train_bundle(qdm, data=ct_folder, max_steps=1, output=tmp_path / "r2", quiet=True, device="cpu")
    # after training the VAE, QDM trains on it
    train_bundle(vae, data=ct_folder, max_steps=2, output=vae, quiet=True, device="cpu")
    train_bundle(qdm, data=ct_folder, max_steps=2, output=tmp_path / "r3", quiet=True, device="cpu")
    assert (tmp_path / "r3" / "models" / "model.pt").is_file()
    # the VAE stored in half precision loads the same, and the QDM bundle's latent scale overrides the VAE's
    from qdm_med.bundle import build_first_stage_from, bundle_settings

    state = torch.load(vae / "models" / "model.pt", weights_only=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, vae / "models" / "model.pt")
    settings = bundle_settings(qdm)
    settings["first_stage"]["scale_factor"] = 0.25
    fs = build_first_stage_from(settings)
    assert float(fs.scale_factor) == 0.25 and bool(fs.trained)
    got = fs.state_dict()
    for k, v in state.items():
        if v.is_floating_point() and k != "scale_factor":
            torch.testing.assert_close(got[k], v.half().float())


def test_cli_train_errors(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["train", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no such bundle" in r.output
    bundle = tiny_bundle(tmp_path, "qdm_ct_x8")
    r = runner.invoke(app, ["train", str(bundle)])
    assert r.exit_code == 2 and "--corpus" in r.output
    r = runner.invoke(app, ["train", str(bundle), "--data", str(tmp_path / "empty_missing")])
    assert r.exit_code == 2 and "no such folder" in r.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, bundle: str, data: str, out: str, name: str = "replica") -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from qdm_med.training.ddp import init_distributed

    torch.set_num_threads(1)
    init_distributed("cpu")
    captured = {}
    import qdm_med.training.loop as loop

    original = loop.fit

    def fit_and_capture(stage, *a, **k):
        res = original(stage, *a, **k)
        captured["state"] = {n: p.detach().clone() for n, p in stage.model.state_dict().items()}
        if getattr(stage, "discriminator", None) is not None:
            captured["state"].update({f"disc.{n}": p.detach().clone() for n, p in stage.discriminator.state_dict().items()})
        return res

    loop.fit = fit_and_capture
    try:
        train_bundle(bundle, data=data, max_steps=3, output=out, quiet=True, device="cpu", rank=rank, world=world)
        torch.save(captured["state"], Path(out).parent / f"{name}{rank}.pt")
    finally:
        loop.fit = original
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_keep_identical_replicas(tmp_path, ct_folder):
    import torch.multiprocessing as mp

    bundle = tiny_bundle(tmp_path, "qdm_ct_x8")
    out = tmp_path / "ddp" / "run"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(bundle), str(ct_folder), str(out)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "ddp" / "replica0.pt", weights_only=True), torch.load(tmp_path / "ddp" / "replica1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (out / "models" / "model.pt").is_file()  # rank 0 wrote
    init = tiny_bundle(tmp_path / "fresh", "qdm_ct_x8")  # weights moved away from initialisation
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["step"] == 3 and init.exists()
    assert len(ck["rng"]) == 2 and not torch.equal(ck["rng"][0]["generator"], ck["rng"][1]["generator"])  # every rank's stream


@pytest.mark.slow
def test_ddp_keeps_one_discriminator_for_the_adversarial_vae(tmp_path, ct_folder):
    import torch.multiprocessing as mp

    bundle = tiny_bundle(tmp_path, "vae_ct", {"train": {"adversarial_weight": 0.1, "adversarial_start": 0}})
    out = tmp_path / "ddp" / "run"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(bundle), str(ct_folder), str(out), "vae"), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "ddp" / "vae0.pt", weights_only=True), torch.load(tmp_path / "ddp" / "vae1.pt", weights_only=True)
    disc = [k for k in a if k.startswith("disc.")]
    assert disc and a.keys() == b.keys()
    for k in a:  # the autoencoder (DDP) and the discriminator (averaged gradients) agree on both ranks
        assert torch.equal(a[k], b[k]), k


def test_initialisation_is_seeded(tmp_path, ct_folder):
    bundle = tiny_bundle(tmp_path, "qdm_ct_x8", {"train": {"checkpoint_every": 1}})
    torch.manual_seed(123)  # whatever the caller's RNG state, the run starts from the same weights
    train_bundle(bundle, data=ct_folder, max_steps=1, output=tmp_path / "a", quiet=True, device="cpu")
    torch.manual_seed(456)
    train_bundle(bundle, data=ct_folder, max_steps=1, output=tmp_path / "b", quiet=True, device="cpu")
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_vae_optional_perceptual_and_adversarial_terms_resume_exactly(tmp_path, ct_folder):
    lp = tmp_path / "alex.pt"
    from qdm_med.metrics.lpips_offline import build_lpips

    torch.manual_seed(0)
    torch.save(build_lpips().state_dict(), lp)  # random AlexNet weights: the term's plumbing, not its quality
    extra = {
        "train": {
            "perceptual_weight": 0.1,
            "adversarial_weight": 0.05,
            "adversarial_start": 1,
            "lpips_path": str(lp),
            "checkpoint_every": 1,
            "validate_every": 100,
            "log_every": 1,
            "warmup": 0,
        }
    }
    bundle = tiny_bundle(tmp_path, "vae_ct", extra)
    train_bundle(bundle, data=ct_folder, max_steps=4, output=tmp_path / "full", quiet=True, device="cpu")
    train_bundle(bundle, data=ct_folder, max_steps=2, output=tmp_path / "part", quiet=True, device="cpu")
    train_bundle(bundle, data=ct_folder, max_steps=4, output=tmp_path / "part", resume=True, quiet=True, device="cpu")
    logs = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines() if "loss" in line]
    assert "perceptual" in logs[0] and "adv_g" not in logs[0] and "adv_g" in logs[-1] and "adv_d" in logs[-1]
    assert _losses(tmp_path / "full") == _losses(tmp_path / "part")
    a, b = load_checkpoint(tmp_path / "full" / "checkpoint.pt"), load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    for k in a["extra"]["discriminator"]:
        assert torch.equal(a["extra"]["discriminator"][k], b["extra"]["discriminator"][k]), k


def test_perceptual_term_without_lpips_weights_is_a_clear_error(tmp_path, ct_folder):
    bundle = tiny_bundle(tmp_path, "vae_ct", {"train": {"perceptual_weight": 0.1, "lpips_path": str(tmp_path / "missing.pt")}})
    with pytest.raises(ConfigError, match="no LPIPS weights"):
        train_bundle(bundle, data=ct_folder, max_steps=1, output=tmp_path / "run", quiet=True, device="cpu")


def test_qdm_lpips_finetune_from_trained_model(tmp_path, ct_folder):
    lp = tmp_path / "alex.pt"
    from qdm_med.metrics.lpips_offline import build_lpips

    torch.save(build_lpips().state_dict(), lp)
    bundle = tiny_bundle(tmp_path, "qdm_ct_x8")
    train_bundle(bundle, data=ct_folder, max_steps=2, output=tmp_path / "base", quiet=True, device="cpu")
    base = tmp_path / "base" / "models" / "model.pt"
    ft = tiny_bundle(
        tmp_path / "ft", "qdm_ct_x8", {"train": {"lpips_weight": 0.1, "lpips_path": str(lp), "init_from": str(base), "log_every": 1}}
    )
    from qdm_med.bundle import bundle_settings
    from qdm_med.training.stages import QDMStage

    stage = QDMStage(bundle_settings(ft, "train"))
    state = torch.load(base, weights_only=True)
    for k, v in stage.model.state_dict().items():
        assert torch.equal(v, state["qdm." + k]), k
    train_bundle(ft, data=ct_folder, max_steps=2, output=tmp_path / "ftrun", quiet=True, device="cpu")
    logs = [json.loads(line) for line in (tmp_path / "ftrun" / "log.jsonl").read_text().splitlines() if "loss" in line]
    assert all("lpips" in r for r in logs)
    bad = tiny_bundle(tmp_path / "bad", "qdm_ct_x8", {"train": {"init_from": str(tmp_path / "nope.pt")}})
    with pytest.raises(ConfigError, match="init_from"):
        QDMStage(bundle_settings(bad, "train"))


def test_init_from_accepts_added_detail_blocks_and_rejects_other_changes(tmp_path, ct_folder):
    from qdm_med.bundle import bundle_settings
    from qdm_med.training.stages import QDMStage

    detail = {"config": "tiny", "cond": "latent", "detail_channels": 8}
    bundle = tiny_bundle(tmp_path, "qdm_ct_x8", {"model": detail})
    train_bundle(bundle, data=ct_folder, max_steps=2, output=tmp_path / "base", quiet=True, device="cpu")
    base = tmp_path / "base" / "models" / "model.pt"
    state = torch.load(base, weights_only=True)
    deep = tiny_bundle(tmp_path / "deep", "qdm_ct_x8", {"model": {**detail, "detail_blocks": 2}, "train": {"init_from": str(base)}})
    stage = QDMStage(bundle_settings(deep, "train"))
    for k, v in stage.model.state_dict().items():
        if k.startswith(stage.model.ADDED_BY_DETAIL_BLOCKS):
            assert k.startswith("detail.res.0.") or k.startswith("detail.res.1.")
        else:
            assert torch.equal(v, state["qdm." + k]), k
    wide = tiny_bundle(tmp_path / "wide", "qdm_ct_x8", {"model": {**detail, "detail_channels": 16}, "train": {"init_from": str(base)}})
    with pytest.raises(ConfigError, match="does not fit"):
        QDMStage(bundle_settings(wide, "train"))
    plain = tiny_bundle(tmp_path / "plain", "qdm_ct_x8", {"model": {"config": "tiny", "cond": "latent"}, "train": {"init_from": str(base)}})
    with pytest.raises(ConfigError, match="unexpected keys: detail"):
        QDMStage(bundle_settings(plain, "train"))


def test_init_from_accepts_an_added_state_gate_and_jump_embedders(tmp_path, ct_folder):
    from qdm_med.bundle import bundle_settings
    from qdm_med.training.stages import QDMStage

    plain = {"config": "tiny", "cond": "latent"}
    train_bundle(tiny_bundle(tmp_path, "qdm_ct_x8", {"model": plain}), data=ct_folder, max_steps=1, output=tmp_path / "base",
                 quiet=True, device="cpu")
    base = tmp_path / "base" / "models" / "model.pt"
    gated = tiny_bundle(tmp_path / "gated", "qdm_ct_x8", {"model": {**plain, "state_skip_steps": 15}, "train": {"init_from": str(base)}})
    stage = QDMStage(bundle_settings(gated, "train"))
    assert torch.equal(stage.model.state_gate, torch.zeros(15))
    assert any(p is stage.model.state_gate for p in stage.model.parameters())  # the optimizer trains it
    jumped = tiny_bundle(tmp_path / "jumped", "qdm_ct_x8",
                         {"model": {**plain, "jump_conditioning": True}, "train": {"init_from": str(base)}})
    stage = QDMStage(bundle_settings(jumped, "train"))
    assert torch.equal(stage.model.up_jump.mlp[2].weight, torch.zeros_like(stage.model.up_jump.mlp[2].weight))
    assert any(p is stage.model.down_jump.mlp[2].weight for p in stage.model.parameters())


def test_degradation_mix_draws_each_preset_reproducibly():
    from qdm_med.training.data import PairedDataset
    from qdm_med.transforms import bicubic_downsample

    g = torch.Generator().manual_seed(0)
    base = [{"hr": torch.rand(1, 32, 32, generator=g) * 2 - 1} for _ in range(40)]
    ds = PairedDataset(base, {"mix": {"medical": 0.5, "bicubic": 0.5}}, 4, seed=3)
    clean = 0
    for i in range(len(base)):
        lr = ds.get(i, epoch=1)["lr"]
        torch.testing.assert_close(lr, ds.get(i, epoch=1)["lr"], rtol=0, atol=0)  # same (seed, epoch, index) -> same pair
        ref = bicubic_downsample((base[i]["hr"][None] + 1) / 2, 4)[0].clamp(0, 1) * 2 - 1
        clean += bool(torch.allclose(lr, ref, atol=1e-6))
    assert 10 <= clean <= 30  # both presets drawn, about half each
    only = PairedDataset(base, {"mix": {"medical": 0.0, "bicubic": 1.0}}, 4)
    assert all(
        torch.allclose(only.get(i, 0)["lr"], bicubic_downsample((base[i]["hr"][None] + 1) / 2, 4)[0].clamp(0, 1) * 2 - 1, atol=1e-6)
        for i in range(5)
    )
    for bad, msg in (({"mix": {}}, "mapping"), ({"mix": {"medical": -1.0}}, ">= 0"), ({"mix": {"blurry": 1.0}}, "blurry")):
        with pytest.raises(ConfigError, match=msg):
            PairedDataset(base, bad, 4)


def test_learning_rate_schedules():
    from qdm_med.training.loop import learning_rate

    assert [learning_rate(s, 1.0, warmup=4) for s in (0, 1, 3, 4, 100)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    cos = [learning_rate(s, 2.0, warmup=10, schedule="cosine", total=110) for s in (9, 10, 60, 110, 500)]
    assert cos[0] == cos[1] == 2.0 and cos[2] == pytest.approx(1.0) and cos[3] == pytest.approx(0.0) and cos[4] == pytest.approx(0.0)
    assert learning_rate(60, 2.0, 10, "cosine", 110, final_fraction=0.1) == pytest.approx(0.2 + 1.8 * 0.5)
    assert learning_rate(110, 2.0, 10, "cosine", 110, final_fraction=0.1) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate(50, 1.0, 0, "step", 100)


def test_bad_lr_schedule_is_a_config_error(tmp_path, ct_folder):
    bundle = tiny_bundle(tmp_path, "qdm_ct_x8", {"train": {"lr_schedule": "linear"}})
    with pytest.raises(ConfigError, match="lr_schedule"):
        train_bundle(bundle, data=ct_folder, max_steps=1, output=tmp_path / "r", quiet=True, device="cpu")


def test_phases_equal_a_run_resumed_at_each_boundary(tmp_path, ct_folder):
    """One run through ``train.phases`` == stopping at the boundary and resuming with the next phase's config."""
    later = {"preset": {"mix": {"clean": 0.5, "medical": 0.5}}, "lr_schedule": "cosine"}
    common = {
        "steps": 6,
        "warmup": 0,
        "checkpoint_every": 3,
        "validate_every": 100,
        "log_every": 1,
        "phases": [],  # not the bundle's
        "lr_schedule": "constant",
    }
    phased = tiny_bundle(
        tmp_path / "phased", "qdm_ct_x8", {"data": {"preset": "bicubic"}, "train": {**common, "phases": [{"until": 3}, later]}}
    )
    train_bundle(phased, data=ct_folder, output=tmp_path / "one", quiet=True, device="cpu")
    first = tiny_bundle(tmp_path / "a", "qdm_ct_x8", {"data": {"preset": "bicubic"}, "train": common})
    second = tiny_bundle(tmp_path / "b", "qdm_ct_x8", {"data": {"preset": later["preset"]}, "train": {**common, "lr_schedule": "cosine"}})
    train_bundle(first, data=ct_folder, max_steps=3, output=tmp_path / "staged", quiet=True, device="cpu")
    train_bundle(second, data=ct_folder, resume=True, output=tmp_path / "staged", quiet=True, device="cpu")
    assert _losses(tmp_path / "one") == _losses(tmp_path / "staged")
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "one" / "log.jsonl").read_text().splitlines()) if "lr" in r]
    assert lrs[0] == lrs[1] == lrs[2] > lrs[3] > lrs[4] > lrs[5]  # constant, then the cosine
    plain = tiny_bundle(tmp_path / "plain", "qdm_ct_x8", {"data": {"preset": "bicubic"}, "train": common})
    train_bundle(plain, data=ct_folder, output=tmp_path / "plain_run", quiet=True, device="cpu")
    assert _losses(tmp_path / "plain_run")[:3] == _losses(tmp_path / "one")[:3] != _losses(tmp_path / "plain_run")


@pytest.mark.parametrize(
    "phases, message",
    [
        ([{"until": 3}, {"until": 2}], "must be above"),
        ([{}, {"until": 5}], "only the last phase"),
        ([{"until": 3, "steps": 9}], "unknown keys"),
        ([{"until": 3, "lr_schedule": "step"}], "lr_schedule"),
        ({"until": 3}, "expected a list"),
    ],
)
def test_bad_phases_are_config_errors(tmp_path, ct_folder, phases, message):
    bundle = tiny_bundle(tmp_path, "qdm_ct_x8", {"train": {"phases": phases}})
    with pytest.raises(ConfigError, match=message):
        train_bundle(bundle, data=ct_folder, max_steps=1, output=tmp_path / "run", quiet=True, device="cpu")


def _drawn_steps(folder, train: dict, n: int = 40):
    """The training steps t a tiny x8 QDM stage draws over n batches of 4 (seed 0), and its T."""
    from qdm_med.bundle import bundle_settings
    from qdm_med.training.stages import QDMStage

    stage = QDMStage(bundle_settings(tiny_bundle(folder, "qdm_ct_x8", {"train": train}), "train"))
    seen = []
    stage.diffusion.training_loss = lambda model, x0, y, cond, mask, t, **kw: (
        seen.append(t.clone()) or {"loss": torch.zeros(()), "mse_down": torch.zeros(()), "mse_up": torch.zeros(())}
    )
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        stage.loss(stage.model, torch.rand(4, 1, 32, 32) * 2 - 1, torch.rand(4, 1, 4, 4) * 2 - 1, g)
    return torch.cat(seen), stage.diffusion.num_timesteps


def test_t_final_prob_trains_that_share_at_the_prior_step(tmp_path):
    t0, T = _drawn_steps(tmp_path / "0", {"t_final_prob": 0.0})
    t1, _ = _drawn_steps(tmp_path / "1", {"t_final_prob": 1.0})
    th, _ = _drawn_steps(tmp_path / "h", {"t_final_prob": 0.5})
    assert (t1 == T - 1).all() and 0.03 < float((t0 == T - 1).float().mean()) < 0.15  # uniform: 1/T
    assert 0.4 < float((th == T - 1).float().mean()) < 0.65
    # without it the random stream is the one runs had before the option existed
    g = torch.Generator().manual_seed(0)
    assert torch.equal(t0[:4], torch.randint(0, T, (4,), generator=g))
    with pytest.raises(ConfigError, match="t_final_prob"):
        _drawn_steps(tmp_path / "bad", {"t_final_prob": 1.5})


def test_t_zero_prob_trains_that_share_at_the_last_step(tmp_path):
    all_zero, _ = _drawn_steps(tmp_path / "1", {"t_zero_prob": 1.0})
    assert (all_zero == 0).all()
    both, T = _drawn_steps(tmp_path / "both", {"t_zero_prob": 0.4, "t_final_prob": 0.3})
    share_zero, share_final = float((both == 0).float().mean()), float((both == T - 1).float().mean())
    # expected 0.4 + 0.3/T at t = 0 and 0.3 + 0.3/T at T - 1 (the uniform remainder adds 0.3/T to each step)
    assert 0.3 < share_zero < 0.5 and 0.2 < share_final < 0.4
    # t_final_prob alone draws what it drew before t_zero_prob existed: a uniform step, then one uniform number
    # per sample that sends it to T - 1 below t_final_prob
    only_final, _ = _drawn_steps(tmp_path / "final", {"t_final_prob": 0.5})
    g = torch.Generator().manual_seed(0)
    t, u = torch.randint(0, T, (4,), generator=g), torch.rand(4, generator=g)
    assert torch.equal(only_final[:4], torch.where(u < 0.5, torch.full_like(t, T - 1), t))
    with pytest.raises(ConfigError, match="t_zero_prob"):
        _drawn_steps(tmp_path / "neg", {"t_zero_prob": -0.1})
    with pytest.raises(ConfigError, match="at most 1"):
        _drawn_steps(tmp_path / "sum", {"t_zero_prob": 0.6, "t_final_prob": 0.6})


def test_token_sparse_model_trains_on_per_sample_token_masks(tmp_path):
    """A token-sparse model is called with the quadtree token masks of its LR crops, each sample at a
    threshold drawn from train.token_mask_thresholds; a window model is called without one."""
    from qdm_med.bundle import bundle_settings
    from qdm_med.quadtree import qdm_masks
    from qdm_med.training.stages import QDMStage

    def calls(model_cfg, train_cfg):
        bundle = tiny_bundle(tmp_path / str(len(list(tmp_path.iterdir()))), "qdm_ct_x8", {"model": model_cfg, "train": train_cfg})
        stage = QDMStage(bundle_settings(bundle, "train"))
        seen = []
        stage.diffusion.training_loss = lambda model, *a, model_kwargs=None, **kw: (
            seen.append(model_kwargs or {}) or {"loss": torch.zeros(()), "mse_down": torch.zeros(()), "mse_up": torch.zeros(())}
        )
        lr = torch.zeros(4, 1, 8, 8)
        lr[:, :, :4, :4] = torch.linspace(-1, 1, 16).view(4, 4) * 0.4  # block ranges 0.05 to 0.35
        for seed in range(6):
            stage.loss(stage.model, torch.zeros(4, 1, 64, 64), lr, torch.Generator().manual_seed(seed))
        return seen, lr

    seen, lr = calls({"config": "tiny", "token_sparse": True}, {"token_mask_thresholds": [0.0, 0.3]})
    masks = {s: qdm_masks(lr[:1], s, 8, 4).token[0] for s in (0.0, 0.3)}
    drawn = [next(s for s, m in masks.items() if torch.equal(row, m)) for kw in seen for row in kw["token_mask"]]
    assert set(drawn) == {0.0, 0.3} and not torch.equal(masks[0.0], masks[0.3])
    seen, _ = calls({"config": "tiny", "token_sparse": False}, {"token_mask_thresholds": [0.0, 0.3]})
    assert all("token_mask" not in kw for kw in seen)
    with pytest.raises(ConfigError, match="token_mask_thresholds"):
        calls({"config": "tiny", "token_sparse": True}, {"token_mask_thresholds": [-1.0]})


def test_staged_recipe_base_config_then_fine_tune_from_its_run(tmp_path, ct_folder, monkeypatch):
    """``--config train_base`` trains configs/train_base.json into runs/<bundle>-train_base; the fine-tune
    config names that run in train.init_from (relative to the working folder) or gets it from --init-from."""
    from qdm_med.bundle import bundle_settings
    from qdm_med.training.stages import QDMStage

    bundle = tiny_bundle(tmp_path, "qdm_ct_x8", {"model": {"token_sparse": False}})
    cfg = json.loads((bundle / "configs" / "train.json").read_text())
    (bundle / "configs" / "train_base.json").write_text(json.dumps(cfg))
    cfg["model"]["token_sparse"] = True
    cfg["train"]["init_from"] = "runs/qdm_ct_x8-train_base/models/model.pt"
    (bundle / "configs" / "train.json").write_text(json.dumps(cfg))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    missing = runner.invoke(app, ["train", str(bundle), "--data", str(ct_folder), "--max-steps", "1", "-q"])
    assert missing.exit_code != 0 and "init_from names no file" in missing.output and "train_base" in missing.output
    base = runner.invoke(app, ["train", str(bundle), "--data", str(ct_folder), "--max-steps", "2", "-q", "--config", "train_base"])
    assert base.exit_code == 0, base.output
    weights = tmp_path / "runs" / "qdm_ct_x8-train_base" / "models" / "model.pt"
    stage = QDMStage(bundle_settings(bundle, "train"))  # train.init_from now resolves in the working folder
    state = torch.load(weights, weights_only=True)
    assert stage.model.token_sparse and all(torch.equal(v, state["qdm." + k]) for k, v in stage.model.state_dict().items())
    moved = tmp_path / "elsewhere.pt"
    weights.rename(moved)
    fine = runner.invoke(app, ["train", str(bundle), "--data", str(ct_folder), "--max-steps", "2", "-q", "--config", "train",
                                "--init-from", str(moved)])
    assert fine.exit_code == 0, fine.output
    assert (tmp_path / "runs" / "qdm_ct_x8" / "models" / "model.pt").is_file()
    for bad, message in (("inference", "not the inference one"), ("nope", "nope.json: missing")):
        out = runner.invoke(app, ["train", str(bundle), "--data", str(ct_folder), "--config", bad, "-q"])
        assert out.exit_code != 0 and message in out.output


def _rng_worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from qdm_med.training.checkpoint import gather_rng_states, save_checkpoint

    dist.init_process_group("gloo")
    try:
        gen = torch.Generator().manual_seed(1000 + rank)  # each rank has its own stream, as in the loop
        torch.manual_seed(7 + rank)
        torch.rand(3, generator=gen)  # advance the streams a little before the checkpoint
        states = gather_rng_states(gen)
        if rank == 0:
            save_checkpoint(Path(folder) / "ck.pt", {"rng": states})
        after = torch.stack([torch.rand(4, generator=gen), torch.rand(4)])  # what this rank draws next
        torch.save(after, Path(folder) / f"next{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_checkpoint_keeps_every_ranks_rng_state(tmp_path):
    """Two gloo ranks: the checkpoint holds both ranks' streams, and each rank resumes exactly its own."""
    import torch.multiprocessing as mp

    from qdm_med.training.checkpoint import rank_rng_state, set_rng_state

    mp.spawn(_rng_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    saved = load_checkpoint(tmp_path / "ck.pt")["rng"]
    assert isinstance(saved, list) and len(saved) == 2
    assert not torch.equal(saved[0]["generator"], saved[1]["generator"])
    for rank in (0, 1):
        gen = torch.Generator().manual_seed(12345)
        set_rng_state(rank_rng_state(saved, rank), gen)
        resumed = torch.stack([torch.rand(4, generator=gen), torch.rand(4)])
        assert torch.equal(resumed, torch.load(tmp_path / f"next{rank}.pt"))
    assert rank_rng_state(saved, 2) is None  # a larger world: that rank starts a fresh stream
    assert rank_rng_state(saved[0], 0) is saved[0]  # single-process checkpoints hold one dict


def test_window_view_maps_hu_windows_in_closed_form():
    from qdm_med.training.stages import window_view

    model = (-1024.0, 2048.0)
    hu = torch.tensor([-1024.0, -160.0, 40.0, 240.0, 2048.0])
    x = (hu - model[0]) / (model[1] - model[0]) * 2 - 1
    view = window_view(x, model, (-160.0, 240.0))
    assert torch.allclose(view, torch.tensor([-1.0, -1.0, 0.0, 1.0, 1.0]), atol=1e-5)
    assert torch.allclose(window_view(x, model, model), x, atol=1e-6)


def test_lpips_windows_average_the_term_over_views_and_reject_bad_windows(tmp_path):
    from qdm_med.bundle import bundle_settings
    from qdm_med.training.stages import QDMStage, window_view

    class AbsDiff(torch.nn.Module):  # stands in for LPIPS: a per-image mean absolute difference
        def forward(self, a, b):
            return (a - b).abs().mean(dim=(1, 2, 3))

    views = [[-1024, 2048], [-160, 240]]
    lp = tmp_path / "alex.pt"
    from qdm_med.metrics.lpips_offline import build_lpips

    torch.save(build_lpips().state_dict(), lp)
    bundle = tiny_bundle(tmp_path, "qdm_ct_x8", {"train": {"lpips_weight": 1.0, "lpips_path": str(lp), "lpips_windows": views}})
    stage = QDMStage(bundle_settings(bundle, "train"))
    stage.lpips = AbsDiff()
    pred, hr = torch.rand(2, 1, 16, 16) * 2 - 1, torch.rand(2, 1, 16, 16) * 2 - 1
    window = stage.settings["window"]
    expected = sum((window_view(pred, window, v) - window_view(hr, window, v)).abs().mean() for v in views) / 2
    assert torch.allclose(stage._lpips_term(pred, hr), expected)
    # weights 3:1 give the term of the list that repeats the first window three times
    base = {"lpips_weight": 1.0, "lpips_path": str(lp)}
    repeated = tiny_bundle(tmp_path / "rep", "qdm_ct_x8", {"train": {**base, "lpips_windows": [views[0]] * 3 + [views[1]]}})
    weighted = tiny_bundle(tmp_path / "w", "qdm_ct_x8", {"train": {**base, "lpips_windows": views, "lpips_window_weights": [3, 1]}})
    terms = []
    for b in (repeated, weighted):
        st = QDMStage(bundle_settings(b, "train"))
        st.lpips = AbsDiff()
        terms.append(st._lpips_term(pred, hr))
    closed = (3 * (window_view(pred, window, views[0]) - window_view(hr, window, views[0])).abs().mean()
              + (window_view(pred, window, views[1]) - window_view(hr, window, views[1])).abs().mean()) / 4
    assert torch.allclose(terms[0], closed) and torch.allclose(terms[1], closed)
    assert not torch.allclose(terms[1], expected)
    for i, (bad_train, match) in enumerate([
        ({"lpips_windows": [[240, -160]]}, "lpips_windows"),
        ({"lpips_windows": views, "lpips_window_weights": [1.0]}, "lpips_window_weights"),
        ({"lpips_windows": views, "lpips_window_weights": [1.0, 0.0]}, "lpips_window_weights"),
        ({"lpips_window_weights": [1.0]}, "needs train.lpips_windows"),
    ]):
        bad = tiny_bundle(tmp_path / f"bad{i}", "qdm_ct_x8", {"train": {**base, **bad_train}})
        with pytest.raises(ConfigError, match=match):
            QDMStage(bundle_settings(bad, "train"))


def _lpips_recorder(tmp_path):
    """(offline LPIPS weights path, the list of images LPIPS was called on, a stand-in LPIPS class that records
    its first argument and returns a mean absolute difference)."""
    from qdm_med.metrics.lpips_offline import build_lpips

    lp = tmp_path / "alex.pt"
    torch.save(build_lpips().state_dict(), lp)
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, a, b):
            seen.append(a.detach().clone())
            return (a - b).abs().mean(dim=(1, 2, 3))

    return lp, seen, Recorder


def test_composite_threshold_judges_the_sparse_paths_prediction(tmp_path):
    """With ``train.composite_threshold`` s the LPIPS term sees the downstream prediction at the quadtree's active
    sites of threshold s and the upstream one elsewhere: what the sparse path returns at s."""
    from qdm_med.bundle import bundle_settings
    from qdm_med.quadtree import qdm_masks
    from qdm_med.training.stages import QDMStage

    lp, seen, Recorder = _lpips_recorder(tmp_path)

    def stage_for(threshold):
        train = {"lpips_weight": 1.0, "lpips_path": str(lp), "composite_threshold": threshold}
        stage = QDMStage(bundle_settings(tiny_bundle(tmp_path / str(threshold), "qdm_ct_x8", {"train": train}), "train"))
        stage.lpips = Recorder()
        return stage

    lr = torch.zeros(2, 1, 4, 4)
    lr[:, :, :2, :2] = torch.tensor([[-1.0, 1.0], [1.0, -1.0]])  # one detail-rich corner, flat elsewhere
    hr = torch.zeros(2, 1, 32, 32)
    for threshold in (0.5, None):
        stage = stage_for(threshold)
        z = stage.first_stage.encode(hr)
        down, up = torch.full_like(z, 0.5), torch.full_like(z, -0.5)
        out = {"loss": torch.zeros(()), "mse_down": torch.zeros(()), "mse_up": torch.zeros(()), "down": down, "up": up}
        stage.diffusion.training_loss = lambda *a, out=out, **kw: out
        seen.clear()
        stage.loss(stage.model, hr, lr, torch.Generator().manual_seed(0))
        if threshold is None:
            expected = stage.first_stage.decode(down).clamp(-1, 1)
        else:
            active = qdm_masks(lr, threshold, stage.scale, stage.first_stage.factor).diffusion
            assert 0 < float(active.float().mean()) < 1
            expected = stage.first_stage.decode(torch.where(active[:, None], down, up)).clamp(-1, 1)
        assert torch.allclose(seen[0], expected)
    with pytest.raises(ConfigError, match="composite_threshold -1"):
        stage_for(-1)


def test_unroll_judges_the_deterministic_plans_output_and_trains_through_every_step(tmp_path):
    """With ``train.unroll`` the LPIPS term sees the decoded output of the deterministic plan at
    ``composite_threshold`` (what ``sample(sparse=False, stochastic=False)`` returns), its MSE joins the loss, and
    the gradient reaches the model through the plan's calls; bad settings fail with one line."""
    from qdm_med.bundle import bundle_settings
    from qdm_med.diffusion import make_plan
    from qdm_med.quadtree import qdm_masks
    from qdm_med.training.stages import QDMStage

    lp, seen, Recorder = _lpips_recorder(tmp_path)

    def stage_for(name, **train):
        train = {"lpips_weight": 1.0, "lpips_path": str(lp), **train}
        return QDMStage(bundle_settings(tiny_bundle(tmp_path / name, "qdm_ct_x8", {"train": train}), "train"))

    stage = stage_for("ok", composite_threshold=0.5, unroll={"sampler": "tss", "steps": 2}, unroll_weight=2.0)
    stage.lpips = Recorder()
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1
    hr = torch.rand(2, 1, 32, 32, generator=g) * 2 - 1
    loss, logs = stage.loss(stage.model, hr, lr, torch.Generator().manual_seed(0))
    assert "mse_unrolled" in logs and "lpips" in logs
    with torch.no_grad():
        up = (stage.prior(lr) if stage.start == "prior" else bicubic_upsample(lr, stage.scale).clamp(-1, 1))
        y = stage.first_stage.encode(up)
        masks = qdm_masks(lr, 0.5, stage.scale, stage.first_stage.factor)
        plan = make_plan("tss", 2, stage.diffusion.num_timesteps, lr=lr, latent_size=tuple(y.shape[-2:]))
        x0, _ = stage.diffusion.sample(stage.model, y, stage.model.conditioning(lr, y), masks.diffusion, masks.token, plan,
                                       sparse=False, stochastic=False)
    torch.testing.assert_close(seen[0][:, :1], stage.first_stage.decode(x0).clamp(-1, 1), rtol=1e-4, atol=1e-5)  # gray as RGB
    stage.model.zero_grad()
    loss.backward()
    assert all(p.grad is not None for p in stage.model.parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="composite_threshold"):
        stage_for("nothreshold", unroll={"sampler": "tss", "steps": 2})
    with pytest.raises(ConfigError, match="needs a sampler"):
        stage_for("nosteps", composite_threshold=0.5, unroll={"sampler": "tss"})
    with pytest.raises(ConfigError, match="unknown"):
        stage_for("badsampler", composite_threshold=0.5, unroll={"sampler": "ddim", "steps": 2})
    with pytest.raises(ConfigError, match="unroll.stochastic 'yes': must be true or false"):
        stage_for("badflag", composite_threshold=0.5, unroll={"sampler": "tss", "steps": 2, "stochastic": "yes"})

    # "stochastic": the plan runs as the stochastic sampler, its noise from the training generator
    stage = stage_for("noisy", composite_threshold=0.5, unroll={"sampler": "tss", "steps": 2, "stochastic": True})
    stage.lpips = Recorder()
    calls, unrolled = [], stage.diffusion.unrolled
    stage.diffusion.unrolled = lambda *a, **k: calls.append(k) or unrolled(*a, **k)
    gen = torch.Generator().manual_seed(0)
    stage.loss(stage.model, hr, lr, gen)
    assert calls[0]["stochastic"] is True and calls[0]["generator"] is gen
    plain = stage_for("plain", composite_threshold=0.5, unroll={"sampler": "tss", "steps": 2})
    assert stage.unroll_stochastic and not plain.unroll_stochastic


def test_tile_weight_adds_the_tiled_energy_of_the_output_in_hu_and_rejects_bad_settings(tmp_path, monkeypatch):
    """``train.tile_weight`` adds weight x the mean square (HU^2) of the ``tile_period``-periodic part of the decoded
    prediction minus the start image: the same loss without it differs by exactly that."""
    from qdm_med.bundle import bundle_settings
    from qdm_med.metrics.periodic import tiled_energy
    from qdm_med.training.stages import QDMStage

    def stage_for(name, **train):
        bundle = tiny_bundle(tmp_path / name, "qdm_ct_x8", {"train": {"composite_threshold": 0.5, **train}})
        return QDMStage(bundle_settings(bundle, "train"))

    g = torch.Generator().manual_seed(0)
    lr = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1
    hr = torch.rand(2, 1, 32, 32, generator=g) * 2 - 1
    plain, tiled = stage_for("plain"), stage_for("tiled", tile_weight=0.5, tile_period=8)
    with torch.no_grad():  # the output layers start at zero (the prediction is the start): give them weights
        for p in plain.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    tiled.model.load_state_dict(plain.model.state_dict())
    seen = []

    def recording(residual, period):
        seen.append((residual.detach().clone(), period))
        return tiled_energy(residual, period)

    monkeypatch.setattr("qdm_med.training.stages.tiled_energy", recording)
    base, _ = plain.loss(plain.model, hr, lr, torch.Generator().manual_seed(0))
    assert not seen  # without the weight the term is not computed
    loss, logs = tiled.loss(tiled.model, hr, lr, torch.Generator().manual_seed(0))
    (residual, period), = seen
    lo, hi = tiled.settings["window"]
    assert period == 8 and residual.shape == hr.shape and logs["tile_hu2"] > 0
    assert logs["tile_hu2"] == pytest.approx(float(tiled_energy(residual, 8)) * ((hi - lo) / 2) ** 2, rel=1e-6)  # in HU^2
    assert float(loss - base) == pytest.approx(0.5 * logs["tile_hu2"], rel=1e-4)
    for i, bad in enumerate([{"tile_weight": -1.0}, {"tile_weight": 1.0, "tile_period": 0}, {"tile_weight": 1.0, "tile_period": 2.5}]):
        with pytest.raises(ConfigError, match="tile_weight"):
            stage_for(f"bad{i}", **bad)
    with pytest.raises(ConfigError, match="must divide data.crop_size 32"):  # the tiny bundle's crops
        stage_for("crop", tile_weight=1.0, tile_period=24)
