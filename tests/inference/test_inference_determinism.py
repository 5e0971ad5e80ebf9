"""Per-slice random streams: batch size, tiling runs, slice subsets and call order never change a slice."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_doubles import FakeLoadedBundle, GlobalRNGSRPipeline, NoisySRPipeline, make_volume, smooth_ct

from qdm_med.inference.seeding import derived_seed, slice_generator
from qdm_med.inference.volume import SliceWiseInferencer, upscale_image
from qdm_med.jobs.evaluate import evaluate
from qdm_med.jobs.mask import make_mask_picture
from qdm_med.jobs.resolve import default_bundle_dir
from qdm_med.jobs.upscale import upscale

run = SimpleNamespace(upscale=upscale, evaluate=evaluate, make_mask_picture=make_mask_picture, default_bundle_dir=default_bundle_dir)


def _infer(pipe, vol, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("device", "cpu")
    return SliceWiseInferencer(pipe, pipe.scale, **kw).infer(vol)


@pytest.mark.parametrize("pipe_cls", [NoisySRPipeline, GlobalRNGSRPipeline], ids=["generator-arg", "global-rng"])
def test_batch_size_never_changes_a_seeded_output(pipe_cls):
    vol = make_volume(smooth_ct((20, 16, 5)))
    outs = [_infer(pipe_cls(4), vol, batch_size=b, seed=3)[0].array for b in (1, 2, 4, 5)]
    for other in outs[1:]:
        np.testing.assert_array_equal(outs[0], other)
    # the noise is real: another seed changes the output, and two equal slices get different noise
    assert not np.array_equal(outs[0], _infer(pipe_cls(4), vol, batch_size=4, seed=4)[0].array)
    same = make_volume(np.repeat(smooth_ct((20, 16, 1)), 2, axis=2))
    twin = _infer(pipe_cls(4), same, seed=3)[0].array
    assert not np.array_equal(twin[:, :, 0], twin[:, :, 1])


def test_tiled_runs_and_slice_subsets_reproduce_the_full_volume():
    vol = make_volume(smooth_ct((40, 36, 4)))
    full, stats = _infer(NoisySRPipeline(4), vol, batch_size=4, seed=1, tile_size=24, tile_overlap=8)
    assert stats["tiles_per_slice"] == 4 and stats["batch_size"] == 4 and stats["seed"] == 1
    one, _ = _infer(NoisySRPipeline(4), vol, batch_size=1, seed=1, tile_size=24, tile_overlap=8)
    np.testing.assert_array_equal(full.array, one.array)
    import dataclasses

    sub = dataclasses.replace(vol, array=vol.array[:, :, [3, 1]])  # any subset, any order
    part, _ = _infer(NoisySRPipeline(4), sub, batch_size=2, seed=1, tile_size=24, tile_overlap=8, slice_indices=[3, 1])
    np.testing.assert_array_equal(part.array, full.array[:, :, [3, 1]])


def test_derived_seeds_are_distinct_streams():
    seeds = {derived_seed(s, k, t) for s in range(3) for k in range(4) for t in range(3)}
    assert len(seeds) == 36 and all(0 <= x < 2**63 for x in seeds)
    assert derived_seed(0, 1) != derived_seed(1, 0)  # unlike seed + k
    a, b = slice_generator(7, 2), slice_generator(7, 2)
    assert torch.equal(torch.randn(5, generator=a), torch.randn(5, generator=b))


def test_image_seeded_per_channel_image():
    img = np.random.RandomState(0).rand(3, 20, 24).astype(np.float32)
    pipe = NoisySRPipeline(4, in_channels=1)  # an RGB image through a gray model: three seeded calls
    a = upscale_image(img, pipe, 4, progress=False, device="cpu", seed=2)
    b = upscale_image(img, NoisySRPipeline(4, in_channels=1), 4, progress=False, device="cpu", seed=2)
    np.testing.assert_array_equal(a, b)
    assert [c[0] for c in pipe.calls] == [1, 1, 1]


def test_upscale_batch_size_recorded_and_irrelevant(tmp_path):
    nib.save(nib.Nifti1Image(smooth_ct((16, 12, 5)).astype(np.int16), np.diag([0.7, 0.7, 2.5, 1])), str(tmp_path / "ct.nii.gz"))
    outs = []
    for b in (1, 4):
        out = tmp_path / f"b{b}.nii.gz"
        rep = run.upscale(tmp_path / "ct.nii.gz", out, scale=4, bundle=FakeLoadedBundle(NoisySRPipeline(4), 4), device="cpu",
                          quiet=True, batch_size=b, seed=11, report=tmp_path / f"b{b}.json")
        assert json.loads((tmp_path / f"b{b}.json").read_text())["batch_size"] == b == rep["batch_size"]
        outs.append(np.asarray(nib.load(str(out)).dataobj))
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.slow
def test_shipped_x8_bundle_is_batch_size_invariant(tmp_path):
    """The real QDM pipeline (generator argument, sparse windows): batch 1 and batch 3 give the same volume."""
    from qdm_med.bundle import load_bundle

    bundle_dir = Path(run.default_bundle_dir("volume", 8))
    loaded = load_bundle(bundle_dir, "cpu")
    rng = np.random.RandomState(0)
    arr = smooth_ct((24, 20, 3)) + rng.randn(24, 20, 3).astype(np.float32) * 40
    vol = make_volume(arr)
    a, _ = SliceWiseInferencer(loaded.pipeline, 8, window=loaded.window, batch_size=1, progress=False, device="cpu", seed=0).infer(vol)
    b, _ = SliceWiseInferencer(loaded.pipeline, 8, window=loaded.window, batch_size=3, progress=False, device="cpu", seed=0).infer(vol)
    np.testing.assert_array_equal(a.array, b.array)
