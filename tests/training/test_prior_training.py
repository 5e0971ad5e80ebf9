"""The prior stage (learned residual CNN) and the QDM stage that starts from it; time budgets."""

from __future__ import annotations

import json

import pytest
import torch
from training_doubles import REPO, tiny_bundle

from qdm_med.bundle import bundle_settings
from qdm_med.errors import ConfigError
from qdm_med.training import train_bundle

PRIOR = {"kind": "cnn", "channels": 8, "blocks": 1, "unshuffle": 4}


def _prior_bundle(tmp_path, extra_train=None, extra_data=None):
    bundle = tiny_bundle(tmp_path, "qdm_ct_x4")
    cfg = json.loads((bundle / "configs" / "train_prior.json").read_text())
    cfg["prior"] = PRIOR
    cfg["data"].update({"crop_size": 32, **(extra_data or {})})
    cfg["train"].update({"lr": 2e-3, "ema_decay": 0.5, "validate_every": 100, **(extra_train or {})})
    (bundle / "configs" / "train_prior.json").write_text(json.dumps(cfg))
    return bundle


def _losses(run):
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.slow
def test_prior_stage_learns_and_exports_the_prior(tmp_path, ct_folder):
    # one clean resampler: the synthetic slices' sharp edges are learnable within a few dozen steps
    bundle = _prior_bundle(tmp_path, {"lr": 3e-3}, {"preset": "bicubic", "val_preset": "bicubic"})
    summary = train_bundle(bundle, data=ct_folder, max_steps=40, output=tmp_path / "prior", quiet=True, device="cpu", config="train_prior")
    assert summary["stage"] == "prior" and len(_losses(tmp_path / "prior")) == 40
    val = summary["validation"][-1]
    assert val["val_psnr"] > val["val_psnr_bicubic"] + 0.2, val
    state = torch.load(tmp_path / "prior" / "models" / "model.pt", weights_only=True)
    assert set(state) == {k for k in state if k.startswith(("body.", "tail."))} and state["tail.weight"].abs().sum() > 0


def test_cpu_time_budget_stops_early_and_saves(tmp_path, ct_folder):
    bundle = _prior_bundle(tmp_path, {"max_cpu_minutes": 1e-6, "checkpoint_every": 1000})
    summary = train_bundle(bundle, data=ct_folder, max_steps=50, output=tmp_path / "run", quiet=True, device="cpu", config="train_prior")
    assert summary["steps"] == 1 and summary["cpu_time_s"] > 0
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and (tmp_path / "run" / "models" / "model.pt").is_file()
    assert summary["validation"]  # the stopping step is validated too
    # the budget is the run's CPU time over all its segments: a resumed run that spent it stops after one step
    again = train_bundle(bundle, data=ct_folder, max_steps=50, output=tmp_path / "run", resume=True, quiet=True, device="cpu",
                         config="train_prior")
    assert again["steps"] == 2 and again["cpu_time_s"] > summary["cpu_time_s"]


def test_qdm_stage_starts_from_the_frozen_prior_and_ships_it(tmp_path, ct_folder, monkeypatch):
    from qdm_med.bundle import load_bundle
    from qdm_med.training.stages import QDMStage

    bundle = _prior_bundle(tmp_path)
    monkeypatch.chdir(tmp_path)
    train_bundle(bundle, data=ct_folder, max_steps=3, quiet=True, device="cpu", config="train_prior")
    prior_weights = tmp_path / "runs" / "qdm_ct_x4-train_prior" / "models" / "model.pt"
    cfg = json.loads((bundle / "configs" / "train.json").read_text())
    cfg["prior"] = {**PRIOR, "weights": "runs/qdm_ct_x4-train_prior/models/model.pt"}
    cfg["diffusion"]["start"] = "prior"
    cfg["train"]["phases"] = []
    (bundle / "configs" / "train.json").write_text(json.dumps(cfg))
    stage = QDMStage(bundle_settings(bundle, "train"))
    trained = torch.load(prior_weights, weights_only=True)
    assert all(torch.equal(v, trained[k]) for k, v in stage.prior.state_dict().items())
    assert not any(p.requires_grad for p in stage.prior.parameters())
    # the training start y is the prior's prediction
    seen = {}
    encode = stage.first_stage.encode

    def spy(x):
        seen.setdefault("first", x)
        return encode(x)

    stage.first_stage.encode = spy
    lr = torch.rand(2, 1, 8, 8) * 2 - 1
    stage.loss(stage.model, torch.rand(2, 1, 32, 32) * 2 - 1, lr, torch.Generator().manual_seed(0))
    assert torch.equal(seen["first"], stage.prior(lr))
    stage.first_stage.encode = encode
    train_bundle(bundle, data=ct_folder, max_steps=2, quiet=True, device="cpu")
    shipped = torch.load(tmp_path / "runs" / "qdm_ct_x4" / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(shipped["prior." + k], v) for k, v in trained.items())
    (bundle / "models").mkdir(exist_ok=True)
    torch.save(shipped, bundle / "models" / "model.pt")
    sr = load_bundle(bundle).pipeline
    assert sr.start == "prior" and torch.equal(sr.prior.tail.weight, trained["tail.weight"])
    # a missing prior file is a one-line config error that names the stage to run
    prior_weights.unlink()
    with pytest.raises(ConfigError, match="train_prior"):
        QDMStage(bundle_settings(bundle, "train"))


def test_prior_stage_config_errors(tmp_path):
    from qdm_med.training.stages import build_stage

    bundle = _prior_bundle(tmp_path)
    settings = bundle_settings(bundle, "train_prior")
    with pytest.raises(ConfigError, match="'prior' section"):
        build_stage({**settings, "prior": None})
    with pytest.raises(ConfigError, match="train.loss"):
        build_stage({**settings, "train": {**settings["train"], "loss": "huber"}})
    with pytest.raises(ConfigError, match="diffusion.start"):
        from qdm_med.bundle import diffusion_start

        diffusion_start({**settings, "diffusion": {"start": "noise"}})


def test_prior_stage_init_from_a_prior_run_or_a_qdm_bundle(tmp_path):
    from qdm_med.training.stages import build_stage

    bundle = _prior_bundle(tmp_path)
    settings = bundle_settings(bundle, "train_prior")
    trained = {k: torch.randn_like(v) for k, v in build_stage(settings).model.state_dict().items()}
    torch.save(trained, tmp_path / "prior.pt")
    torch.save({**{"prior." + k: v for k, v in trained.items()}, "qdm.x": torch.zeros(1)}, tmp_path / "bundle_model.pt")
    for weights in ("prior.pt", "bundle_model.pt"):  # a prior run's weights, or a QDM bundle's SR module
        stage = build_stage({**settings, "train": {**settings["train"], "init_from": str(tmp_path / weights)}})
        assert all(torch.equal(v, trained[k]) for k, v in stage.model.state_dict().items())
    with pytest.raises(ConfigError, match="names no file"):
        build_stage({**settings, "train": {**settings["train"], "init_from": str(tmp_path / "absent.pt")}})
    # a plain prior may start a context prior (its MLP starts at zero); the reverse is refused
    ctx_settings = {**settings, "prior": {**PRIOR, "context": 4}}
    stage = build_stage({**ctx_settings, "train": {**settings["train"], "init_from": str(tmp_path / "prior.pt")}})
    assert torch.equal(stage.model.body[0].weight, trained["body.0.weight"]) and not stage.model.context[-1].weight.any()
    torch.save(stage.model.state_dict(), tmp_path / "ctx.pt")
    with pytest.raises(ConfigError, match="keys context"):
        build_stage({**settings, "train": {**settings["train"], "init_from": str(tmp_path / "ctx.pt")}})
    torch.save({"body.0.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="does not fit this bundle's prior"):
        build_stage({**settings, "train": {**settings["train"], "init_from": str(tmp_path / "other.pt")}})


def test_resume_continues_from_the_checkpoint_even_if_the_start_weights_moved(tmp_path, ct_folder):
    from qdm_med.training.stages import build_stage

    bundle = _prior_bundle(tmp_path, {"checkpoint_every": 2})
    start = tmp_path / "start.pt"
    torch.save(build_stage(bundle_settings(bundle, "train_prior")).model.state_dict(), start)
    run = dict(data=ct_folder, output=tmp_path / "run", quiet=True, device="cpu", config="train_prior", init_from=start)
    train_bundle(bundle, max_steps=2, **run)
    start.unlink()  # e.g. a bundle re-exported since: its weights no longer fit, or are gone
    with pytest.raises(ConfigError, match="names no file"):
        train_bundle(bundle, max_steps=4, **{**run, "output": tmp_path / "fresh"})
    resumed = train_bundle(bundle, max_steps=4, resume=True, **run)
    assert resumed["steps"] == 4 and len(_losses(tmp_path / "run")) == 4


def _recipe_bundle(tmp_path):
    bundle = tiny_bundle(tmp_path, "qdm_ct_x4", recipe=True)
    cfg = json.loads((bundle / "configs" / "train.json").read_text())
    cfg["recipe"] = ["train_prior", "train"]
    cfg["prior"] = {**PRIOR, "weights": "runs/qdm_ct_x4-train_prior/models/model.pt"}
    cfg["diffusion"]["start"] = "prior"
    cfg["train"]["phases"] = []
    (bundle / "configs" / "train.json").write_text(json.dumps(cfg))
    inf = json.loads((bundle / "configs" / "inference.json").read_text())
    inf.pop("model", None)  # the shortened recipe ends on stage `train`, so the bundle ships train.json's network
    (bundle / "configs" / "inference.json").write_text(json.dumps(inf))
    return bundle


def _step(run):
    from qdm_med.training.checkpoint import load_checkpoint

    return load_checkpoint(run / "checkpoint.pt")["step"]


def test_train_without_config_runs_the_whole_recipe_and_resumes(tmp_path, ct_folder, monkeypatch):
    from typer.testing import CliRunner

    from qdm_med.cli import app

    bundle = _recipe_bundle(tmp_path)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    first = runner.invoke(app, ["train", str(bundle), "--data", str(ct_folder), "--max-steps", "2", "-q"])
    assert first.exit_code == 0, first.output
    prior_run, qdm_run = tmp_path / "runs" / "qdm_ct_x4-train_prior", tmp_path / "runs" / "qdm_ct_x4"
    assert _step(prior_run) == 2 and _step(qdm_run) == 2
    prior = torch.load(prior_run / "models" / "model.pt", weights_only=True)
    shipped = torch.load(qdm_run / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(shipped["prior." + k], v) for k, v in prior.items())
    again = runner.invoke(app, ["train", str(bundle), "--data", str(ct_folder), "--max-steps", "2", "-q"])
    assert again.exit_code != 0 and "--resume" in again.output
    resumed = runner.invoke(app, ["train", str(bundle), "--data", str(ct_folder), "--max-steps", "3", "-q", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert _step(prior_run) == 3 and _step(qdm_run) == 3
    # a finished stage is skipped on resume: stage 1's files stay as they are
    before = (prior_run / "checkpoint.pt").stat().st_mtime_ns
    assert runner.invoke(app, ["train", str(bundle), "--data", str(ct_folder), "--max-steps", "3", "-q", "--resume"]).exit_code == 0
    assert (prior_run / "checkpoint.pt").stat().st_mtime_ns == before


def test_recipe_output_folder_holds_the_stages_and_links_them(tmp_path, ct_folder):
    from qdm_med.training.api import recipe_of, train_recipe

    bundle = _recipe_bundle(tmp_path)
    assert recipe_of(bundle) == ["train_prior", "train"]
    result = train_recipe(bundle, data=ct_folder, max_steps=1, output=tmp_path / "out", quiet=True, device="cpu")
    assert set(result["stages"]) == {"train_prior", "train"} and result["output"] == str(tmp_path / "out" / "qdm_ct_x4")
    prior = torch.load(tmp_path / "out" / "qdm_ct_x4-train_prior" / "models" / "model.pt", weights_only=True)
    shipped = torch.load(tmp_path / "out" / "qdm_ct_x4" / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(shipped["prior." + k], v) for k, v in prior.items())
    cfg = json.loads((bundle / "configs" / "train.json").read_text())
    for bad in (["train", "train_prior"], ["train_nope", "train"], ["train_prior"], ["train_prior", "train", "train"]):
        cfg["recipe"] = bad
        (bundle / "configs" / "train.json").write_text(json.dumps(cfg))
        with pytest.raises(ConfigError, match="recipe"):
            recipe_of(bundle)


def test_shipped_recipes_are_valid_and_x8s_runs_stage_by_stage(tmp_path, ct_folder):
    """The shipped recipes as ``qdm-med train BUNDLE`` reads them; x8's twelve stages (prior, its annealed
    continuation, its global-context continuation, window-level base, token-sparse fine-tune, LPIPS detail
    fine-tune, its continuation on the two lung scans and on the context prior's start, the context prior
    refined, the detail QDM continued from its start, trained through the TSS-4 plan, and with jump conditioning)
    on a tiny copy, each stage starting from the one before."""
    from qdm_med.bundle import build_network
    from qdm_med.metrics.lpips_offline import build_lpips
    from qdm_med.training.api import recipe_of, train_recipe

    recipes = {name: recipe_of(REPO / "bundles" / name) for name in ("qdm_ct_x4", "qdm_ct_x8", "qdm_natural_x4", "vae_ct")}
    stages = ["train_prior", "train_prior_anneal", "train_prior_context", "train", "train_detail", "train_detail_lungs",
              "train_detail_context"]
    assert recipes["qdm_ct_x8"] == [*stages[:3], "train_base", *stages[3:], "train_prior_refine", "train_detail_refine",
                                    "train_detail_unrolled", "train_detail_jump"]
    assert recipes["qdm_ct_x4"] == [*stages, "train_prior_refine", "train_prior_floor", "train_detail_refine",
                                    "train_detail_onestep", "train_detail_sparse", "train_detail_unrolled", "train_detail_jump"]
    # x4's last stages run from (and ship) the prior whose context is read over the body; the stages before ran
    # from the refined prior, as they did
    x4 = {n: json.loads((REPO / "bundles" / "qdm_ct_x4" / "configs" / f"{n}.json").read_text())
          for n in ("train", "train_prior_floor", "train_detail_refine", "train_detail_unrolled", "train_detail_jump", "inference")}
    assert x4["train_prior_floor"]["train"]["init_from"] == "runs/qdm_ct_x4-train_prior_refine/models/model.pt"
    assert x4["train_detail_unrolled"]["prior"] == x4["train_detail_jump"]["prior"] == x4["train"]["prior"]
    # the last stage continues the unrolled one and trains the network inference.json ships
    assert x4["train_detail_jump"]["train"]["init_from"] == "runs/qdm_ct_x4-train_detail_unrolled/models/model.pt"
    assert x4["train_detail_jump"]["model"] == x4["inference"]["model"]
    assert x4["train_detail_jump"]["train"]["composite_threshold"] == x4["inference"]["detail"]["threshold"] == 0.3
    assert x4["train"]["prior"]["weights"] == "runs/qdm_ct_x4-train_prior_floor/models/model.pt"
    assert x4["train"]["prior"]["context_floor"] == x4["train_prior_floor"]["prior"]["context_floor"] == -0.9193
    assert "context_floor" not in x4["train_detail_refine"]["prior"]
    assert recipes["qdm_natural_x4"] == ["train_prior", "train"]
    lp = tmp_path / "lpips.pt"
    torch.save(build_lpips().state_dict(), lp)  # random AlexNet weights: the term's plumbing, not its quality
    bundle = tiny_bundle(tmp_path, "qdm_ct_x8", {"train": {"lpips_path": str(lp)}}, recipe=True)
    for name in recipes["qdm_ct_x8"]:  # keep the shipped links between stages (tiny_bundle clears init_from)
        shipped = json.loads((REPO / "bundles" / "qdm_ct_x8" / "configs" / f"{name}.json").read_text())
        cfg = json.loads((bundle / "configs" / f"{name}.json").read_text())
        cfg["train"]["init_from"] = shipped["train"].get("init_from")
        (bundle / "configs" / f"{name}.json").write_text(json.dumps(cfg))
    result = train_recipe(bundle, data=ct_folder, max_steps=1, output=tmp_path / "out", quiet=True, device="cpu")
    assert result["recipe"] == recipes["qdm_ct_x8"] and result["output"] == str(tmp_path / "out" / "qdm_ct_x8-train_detail_jump")
    state = torch.load(tmp_path / "out" / "qdm_ct_x8-train_detail_jump" / "models" / "model.pt", weights_only=True)
    assert any(".up_jump." in k for k in state)  # the last stage adds the jump embedders the bundle's network has
    build_network(bundle).load_state_dict(state, strict=True)  # the last stage's run is the bundle's network
    refined = torch.load(tmp_path / "out" / "qdm_ct_x8-train_prior_refine" / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("context.") for k in refined)
    assert all(torch.equal(state["prior." + k], v) for k, v in refined.items())  # it ships the refined context prior
