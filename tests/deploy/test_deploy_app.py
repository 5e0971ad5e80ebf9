"""The MONAI Deploy application end to end on small pydicom-written CT series.

``python -m qdm_med.deploy -i IN -o OUT -m bundles/qdm_ct_x4`` runs as a subprocess (as a pipeline runs it);
selection and error cases run ``main()`` in-process (a Holoscan graph per call, well under a second).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from deploy_doubles import write_axial_ct

from qdm_med.bundle.paths import find_bundle

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::DeprecationWarning")

SCALE = 4


@pytest.fixture(scope="module")
def bundle() -> Path:
    path = find_bundle(f"qdm_ct_x{SCALE}")
    assert path is not None and (path / "models" / "model.pt").is_file(), "shipped qdm_ct_x4 bundle not found"
    return path


@pytest.fixture(scope="module")
def deployed(deploy_sdk, bundle, tmp_path_factory):
    """A 4-slice 32x32 CT series, the application's output folder and its stdout."""
    root = tmp_path_factory.mktemp("deploy")
    files, _ = write_axial_ct(root / "in", size=32, n_slices=4)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run([sys.executable, "-m", "qdm_med.deploy", "-i", str(root / "in"), "-o", str(root / "out"), "-m", str(bundle)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, files, proc


def _hu(ds) -> np.ndarray:
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _read(folder: Path) -> list:
    return sorted((pydicom.dcmread(f) for f in folder.glob("*.dcm")), key=lambda d: float(d.ImagePositionPatient[2]))


def test_derived_series_equals_qdm_med_upscale(deployed, bundle):
    """One file per slice, x4 rows/columns, DERIVED with source references, voxels = qdm-med upscale --format dicom."""
    from qdm_med.jobs.upscale import upscale

    root, files, proc = deployed
    series_dirs = list((root / "out").iterdir())
    assert len(series_dirs) == 1 and proc.stdout.strip().endswith(series_dirs[0].name)
    out = _read(series_dirs[0])
    sources = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    assert len(out) == len(files) == 4
    upscale(root / "in", root / "ref", scale=SCALE, bundle=str(bundle), fmt="dicom", quiet=True)  # seed 0, as the app
    ref = _read(root / "ref")
    for o, r, s in zip(out, ref, sources):
        assert (o.Rows, o.Columns) == (s.Rows * SCALE, s.Columns * SCALE)
        assert list(o.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert o.SourceImageSequence[0].ReferencedSOPInstanceUID == s.SOPInstanceUID
        assert o.SeriesInstanceUID != s.SeriesInstanceUID and o.StudyInstanceUID == s.StudyInstanceUID
        assert o.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        np.testing.assert_allclose([float(v) for v in o.PixelSpacing], [float(v) / SCALE for v in s.PixelSpacing], rtol=1e-6)
        assert [float(v) for v in o.ImagePositionPatient] == [float(v) for v in r.ImagePositionPatient]
        diff = np.abs(_hu(o) - _hu(r))
        assert diff.max() <= 1.0, f"slice {o.InstanceNumber}: {diff.max()} HU from qdm-med upscale"
    assert len({o.SeriesInstanceUID for o in out}) == 1 and len({o.SOPInstanceUID for o in out}) == 4
    # the model changed the image: not a copy of bicubic-free nearest upsampling of the source
    nearest = np.kron(_hu(sources[0]), np.ones((SCALE, SCALE)))
    assert np.abs(_hu(out[0]) - nearest).mean() > 1.0


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_reports_no_errors(deployed):
    root, _, _ = deployed
    files = sorted((root / "out").glob("*/*.dcm"))
    assert len(files) == 4
    for f in files:
        report = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=60)
        text = report.stdout + report.stderr
        errors = [line for line in text.splitlines() if line.startswith("Error")]
        assert not errors, f"{f.name}: {errors}"
        assert "CT Image" in text or "CTImage" in text  # dciodvfy recognised the IOD it checked


def test_environment_variables_and_existing_output(deployed, bundle, monkeypatch, capsys):
    """HOLOSCAN_INPUT_PATH / OUTPUT / MODEL stand for -i/-o/-m; a second run refuses the existing series folder."""
    from qdm_med.deploy.app import main

    root, _, _ = deployed
    before = {p: p.stat().st_mtime_ns for p in (root / "out").glob("*/*.dcm")}
    monkeypatch.setenv("HOLOSCAN_INPUT_PATH", str(root / "in"))
    monkeypatch.setenv("HOLOSCAN_OUTPUT_PATH", str(root / "out"))
    monkeypatch.setenv("HOLOSCAN_MODEL_PATH", str(bundle))
    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "output exists; pass --overwrite" in err
    assert before == {p: p.stat().st_mtime_ns for p in (root / "out").glob("*/*.dcm")}


def test_largest_ct_series_by_default_and_user_rules(deploy_sdk, bundle, tmp_path, capsys):
    """Default: the axial CT series with most slices; --rules picks another; an MR series is not selected."""
    from qdm_med.deploy.app import main

    study = pydicom.uid.generate_uid()
    big, _ = write_axial_ct(tmp_path / "in" / "a", size=16, n_slices=3, series_number=2, description="Large", study_uid=study)
    small, _ = write_axial_ct(tmp_path / "in" / "b", size=16, n_slices=2, series_number=5, description="Small", study_uid=study)
    write_axial_ct(tmp_path / "in" / "c", size=16, n_slices=5, series_number=7, description="MR", modality="MR", study_uid=study)
    args = ["-i", str(tmp_path / "in"), "-m", str(bundle)]
    assert main(args + ["-o", str(tmp_path / "o1")]) == 0
    (series_dir,) = (tmp_path / "o1").iterdir()
    refs = {d.SourceImageSequence[0].ReferencedSOPInstanceUID for d in _read(series_dir)}
    assert refs == {pydicom.dcmread(f).SOPInstanceUID for f in big}
    rules = '{"selections": [{"name": "small", "conditions": {"Modality": "CT", "SeriesDescription": "^Small$"}}]}'
    assert main(args + ["-o", str(tmp_path / "o2"), "--rules", rules]) == 0
    (series_dir,) = (tmp_path / "o2").iterdir()
    sources = {pydicom.dcmread(f).SOPInstanceUID for f in small}
    assert {d.SourceImageSequence[0].ReferencedSOPInstanceUID for d in _read(series_dir)} == sources
    capsys.readouterr()


def test_bad_input_gives_one_line_errors(deploy_sdk, bundle, tmp_path, capsys):
    from qdm_med.deploy.app import main

    write_axial_ct(tmp_path / "mr", size=16, n_slices=2, modality="MR")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not DICOM")
    cases = [
        (["-i", str(tmp_path / "missing"), "-m", str(bundle)], "no such input folder"),
        (["-i", str(tmp_path / "mr"), "-m", str(tmp_path / "nobundle")], "no such bundle folder"),
        (["-i", str(tmp_path / "mr"), "-m", str(bundle), "--rules", "{oops"], "--rules: not JSON"),
        (["-i", str(tmp_path / "mr"), "-m", str(bundle)], "no DICOM series matches the selection rules"),
        (["-i", str(tmp_path / "empty"), "-m", str(bundle)], "no DICOM study"),
        (["-i", str(tmp_path / "mr"), "-m", str(bundle.parent / "vae_ct")], "not a super-resolution model"),
    ]
    for args, message in cases:
        assert main(args + ["-o", str(tmp_path / "out")]) == 2, message
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last, last
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_model_path_may_hold_one_bundle_as_in_a_map(deploy_sdk, bundle, tmp_path):
    """A MAP sets HOLOSCAN_MODEL_PATH=/opt/holoscan/models with the bundle as its one subfolder."""
    from qdm_med.deploy.app import parse_options
    from qdm_med.errors import ConfigError

    (tmp_path / "in").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / bundle.name).symlink_to(bundle, target_is_directory=True)
    assert parse_options(["-i", str(tmp_path / "in"), "-m", str(tmp_path / "models")]).model == tmp_path / "models" / bundle.name
    (tmp_path / "models" / "other").symlink_to(bundle, target_is_directory=True)
    with pytest.raises(ConfigError, match="holds 2 bundles"):
        parse_options(["-i", str(tmp_path / "in"), "-m", str(tmp_path / "models")])
    with pytest.raises(ConfigError, match="not a qdm-med bundle folder"):
        parse_options(["-i", str(tmp_path / "in"), "-m", str(tmp_path / "in")])
