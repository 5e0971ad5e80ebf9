"""MONAI bundles: metadata validates offline, ``monai.bundle run`` infers and trains, Deploy ids exist."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata
from training_doubles import REPO, synthetic_ct, tiny_bundle

from qdm_med.bundle import build_network

BUNDLES = ["vae_ct", "qdm_ct_x4", "qdm_ct_x8", "qdm_natural_x4"]
SCHEMA = REPO / "bundles" / "schema" / "meta_schema.json"
DEPLOY_IDS = ("device", "network_def", "preprocessing", "postprocessing", "inferer")


def _bundle_run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.filterwarnings("ignore:No hash value")  # the schema is our own file, not a download
@pytest.mark.parametrize("name", BUNDLES)
def test_metadata_verifies_offline_against_shipped_schema(name):
    verify_metadata(meta_file=str(REPO / "bundles" / name / "configs" / "metadata.json"), filepath=str(SCHEMA))


@pytest.mark.filterwarnings("ignore:No hash value")
def test_metadata_missing_required_field_fails(tmp_path):
    meta = json.loads((REPO / "bundles" / "qdm_ct_x8" / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(Exception, match="network_data_format"):
        verify_metadata(meta_file=str(bad), filepath=str(SCHEMA))


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_layout_and_deploy_ids(name):
    root = REPO / "bundles" / name
    for part in (
        "configs/metadata.json",
        "configs/train.json",
        "configs/inference.json",
        "configs/logging.conf",
        "docs/README.md",
        "LICENSE",
    ):
        assert (root / part).is_file(), part
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    for key in DEPLOY_IDS:
        assert key in parser, key
    text = (root / "configs" / "train.json").read_text() + (root / "configs" / "inference.json").read_text()
    assert "scripts" not in text  # configs import the installed package only
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == fmt["outputs"]["pred"]["num_channels"]


@pytest.mark.parametrize("name", ["qdm_ct_x8", "qdm_natural_x4"])
def test_network_def_is_one_lr_to_sr_module(tmp_path, name):
    bundle = tiny_bundle(tmp_path, name)
    net = build_network(bundle).eval()
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    c = meta["network_data_format"]["inputs"]["image"]["num_channels"]
    scale = json.loads((bundle / "configs" / "train.json").read_text())["scale"]
    with torch.no_grad():
        out = net(torch.zeros(1, c, 16, 16))
    assert out.shape == (1, c, 16 * scale, 16 * scale)
    assert set(net.state_dict()) == {k for k in net.state_dict() if k.startswith(("first_stage.", "qdm.", "diffusion."))}


@pytest.mark.slow
def test_monai_bundle_run_inference_upscales_a_volume(tmp_path):
    bundle = tiny_bundle(tmp_path, "qdm_ct_x8")
    (bundle / "models").mkdir(exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_network(bundle).state_dict(), bundle / "models" / "model.pt")
    ct = synthetic_ct(tmp_path / "ct", n=1, shape=(16, 16, 3))
    lr, sr = ct / "pt0.nii.gz", tmp_path / "sr.nii.gz"
    res = _bundle_run(
        "--config_file",
        str(bundle / "configs" / "inference.json"),
        "--bundle_root",
        str(bundle),
        "--input",
        str(lr),
        "--output",
        str(sr),
        "--device",
        "$torch.device('cpu')",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    img, ref = nib.load(str(sr)), nib.load(str(lr))
    assert img.shape == (128, 128, 3)
    np.testing.assert_allclose(img.header.get_zooms()[:2], np.array(ref.header.get_zooms()[:2]) / 8, rtol=1e-5)
    # an existing output is never overwritten by a second run
    again = _bundle_run(
        "--config_file",
        str(bundle / "configs" / "inference.json"),
        "--bundle_root",
        str(bundle),
        "--input",
        str(lr),
        "--output",
        str(sr),
        cwd=tmp_path,
    )
    assert again.returncode != 0 and "exists" in (again.stderr + again.stdout)


@pytest.mark.slow
def test_monai_bundle_run_train_writes_loadable_weights(tmp_path):
    bundle = tiny_bundle(tmp_path, "qdm_ct_x8")
    ct = synthetic_ct(tmp_path / "ct")
    out = tmp_path / "run"
    res = _bundle_run(
        "--config_file",
        str(bundle / "configs" / "train.json"),
        "--bundle_root",
        str(bundle),
        "--data_dir",
        str(ct),
        "--use_corpus",
        "False",
        "--max_steps",
        "2",
        "--device_name",
        "cpu",
        "--output_dir",
        str(out),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    state = torch.load(out / "models" / "model.pt", weights_only=True)
    build_network(bundle).load_state_dict(state, strict=True)
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_monai_bundle_run_staged_x8_recipe(tmp_path):
    """qdm_ct_x8 trains in two stages: train_base.json (window-level) through MONAI's runner writes
    runs/qdm_ct_x8-train_base, which train.json's token-sparse fine-tune starts from."""
    bundle = tiny_bundle(tmp_path, "qdm_ct_x8")
    base_cfg = json.loads((bundle / "configs" / "train_base.json").read_text())
    cfg = json.loads((REPO / "bundles" / "qdm_ct_x8" / "configs" / "train.json").read_text())
    assert not base_cfg["model"].get("token_sparse") and cfg["model"]["token_sparse"]
    assert cfg["train"]["init_from"] == "runs/qdm_ct_x8-train_base/models/model.pt"
    ct = synthetic_ct(tmp_path / "ct")
    res = _bundle_run(
        "--config_file",
        str(bundle / "configs" / "train_base.json"),
        "--bundle_root",
        str(bundle),
        "--data_dir",
        str(ct),
        "--use_corpus",
        "False",
        "--max_steps",
        "2",
        "--device_name",
        "cpu",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    base = tmp_path / "runs" / "qdm_ct_x8-train_base" / "models" / "model.pt"
    state = torch.load(base, weights_only=True)
    build_network(bundle).load_state_dict(state, strict=True)  # the token-sparse network takes stage 1's weights


@pytest.mark.parametrize("name", ["vae_ct", "qdm_ct_x4", "qdm_ct_x8"])
def test_every_ct_training_config_names_its_corpus_patients(name):
    """A shipped recipe trains on the scans it names (``data.patients``), so a corpus that grows does not change
    what its stages train on; every name is a corpus source and the held-out patients are among them."""
    from qdm_med.data.corpus import SOURCES

    known = {s.patient for s in SOURCES}
    for path in sorted((REPO / "bundles" / name / "configs").glob("train*.json")):
        data = json.loads(path.read_text())["data"]
        patients = data.get("patients")
        assert patients and set(patients) <= known, (path.name, patients)
        assert set(data.get("holdout") or []) <= set(patients), path.name


def test_select_patients_keeps_the_named_ones_and_explains_missing_ones(caplog):
    from qdm_med.data import VolumeRecord
    from qdm_med.errors import ConfigError
    from qdm_med.training.data import select_patients

    records = [VolumeRecord(p, Path(f"{p}.nii.gz"), "corpus") for p in ("a", "b", "c")]
    assert select_patients(records, None) == records
    assert [r.patient_id for r in select_patients(records, ["c", "a"])] == ["a", "c"]
    with caplog.at_level("WARNING", logger="qdm_med.training"):
        assert select_patients(records, ["x", "y"]) == records  # other data (--data): the names do not apply
    assert "not in the data" in caplog.text
    with pytest.raises(ConfigError, match=r"\['d'\] are not in the data .*qdm-med data fetch"):
        select_patients(records, ["a", "d"])
