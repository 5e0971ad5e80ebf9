from __future__ import annotations

import numpy as np
import pytest
import torch

from qdm_med.errors import ConfigError
from qdm_med.inference.volume import InfoAggregator, SliceWiseInferencer, resolve_device, upscale_image


def _zoom_reference(array: np.ndarray, affine: np.ndarray, s: int):
    from monai.data import MetaTensor
    from monai.transforms import Zoom

    mt = MetaTensor(torch.from_numpy(array)[None], affine=torch.as_tensor(affine))
    out = Zoom(zoom=(s, s, 1), keep_size=False)(mt)
    return tuple(out.shape[1:]), np.asarray(out.affine, dtype=np.float64)


@pytest.mark.parametrize("s", [4, 8])
def test_output_geometry_matches_monai_zoom(s, fake_pipeline, volume_factory, ct_array):
    vol = volume_factory(ct_array((12, 8, 3)))
    sr_vol, stats = SliceWiseInferencer(fake_pipeline(s), s, progress=False, device="cpu").infer(vol)
    shape, affine = _zoom_reference(vol.array, vol.affine, s)
    assert sr_vol.array.shape == shape == (12 * s, 8 * s, 3)
    assert sr_vol.array.dtype == np.float32
    np.testing.assert_allclose(sr_vol.affine, affine, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sr_vol.spacing), np.asarray(vol.spacing) / [s, s, 1], rtol=1e-6)
    assert sr_vol.meta["super_resolution"]["scale"] == s
    assert sr_vol.meta["path"] == vol.meta["path"]  # meta copied
    assert stats["slices"] == 3


def test_each_axial_slice_is_upscaled_in_plane(fake_pipeline, volume_factory):
    """A bicubic fake on an in-window volume gives exactly bicubic of each axial slice (axes 0, 1)."""
    import torch.nn.functional as F

    arr = np.zeros((16, 12, 2), np.float32)
    arr[3:9, 2:5, 0] = 800.0  # an off-centre block, different per slice
    arr[10:14, 6:11, 1] = -500.0
    sr = SliceWiseInferencer(fake_pipeline(4), 4, progress=False, edge_ramp=0.0).infer(volume_factory(arr))[0]
    for k in range(2):
        lo, hi = -1024.0, 2048.0
        unit = torch.from_numpy((arr[:, :, k] - lo) / (hi - lo) * 2 - 1)[None, None]
        expect = (F.interpolate(unit, scale_factor=4, mode="bicubic").clamp(-1, 1)[0, 0].numpy() + 1) / 2 * (hi - lo) + lo
        expect = np.maximum(expect, arr[:, :, k].min())  # no undershoot below the slice's minimum
        np.testing.assert_allclose(sr.array[:, :, k], expect, atol=0.05)


def test_hu_outside_window_kept_from_bicubic(fake_pipeline, volume_factory):
    arr = np.full((32, 32, 2), 40.0, np.float32)
    arr[4:14, 4:14, :] = 3000.0  # dense metal/bone above the window
    arr[18:28, 18:28, :] = -3000.0  # outside-FOV padding below the window
    offset = 0.01  # the fake shifts in-window values by 0.01 * 1536 HU = 15.36 HU
    sr = SliceWiseInferencer(fake_pipeline(4, offset=offset), 4, progress=False).infer(volume_factory(arr))[0]
    a = sr.array
    np.testing.assert_allclose(a[6 * 4 : 12 * 4, 6 * 4 : 12 * 4, :], 3000.0, atol=1e-3)
    np.testing.assert_allclose(a[20 * 4 : 26 * 4, 20 * 4 : 26 * 4, :], -3000.0, atol=1e-3)
    # in-window tissue far from the blocks is the model's output (bicubic 40 HU + the fake's offset)
    np.testing.assert_allclose(a[0:8, 26 * 4 :, :], 40.0 + offset * 1536.0, atol=0.05)
    # everywhere the bicubic HU is beyond the window, the output is exactly that bicubic HU
    import torch.nn.functional as F

    hu = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 1, 0)))[:, None]
    bic = F.interpolate(hu, scale_factor=4, mode="bicubic", align_corners=False)[:, 0].numpy().transpose(2, 1, 0)
    outside = (bic > 2048.0) | (bic < -1024.0)
    assert outside.sum() > 2 * 2 * 36 * 36
    # ... clamped to the range of the 3x3 LR neighbourhood: bicubic's ringing around the blocks is gone
    up = lambda t: np.repeat(np.repeat(t, 4, axis=0), 4, axis=1)  # noqa: E731
    from scipy.ndimage import maximum_filter, minimum_filter

    hi_nb = up(maximum_filter(arr, size=(3, 3, 1), mode="nearest"))
    lo_nb = up(minimum_filter(arr, size=(3, 3, 1), mode="nearest"))
    np.testing.assert_allclose(a[outside], np.clip(bic, lo_nb, hi_nb)[outside], atol=1e-3)
    assert bic.min() < -3100 and bic.max() > 3100  # plain bicubic rings beyond the data
    assert a.min() >= -3000.0 and a.max() <= 3000.0


def test_batch_size_does_not_change_output(fake_pipeline, volume_factory, ct_array):
    vol = volume_factory(ct_array((20, 16, 5)))
    p1, p3 = fake_pipeline(4), fake_pipeline(4)
    out1, st1 = SliceWiseInferencer(p1, 4, batch_size=1, progress=False).infer(vol)
    out3, st3 = SliceWiseInferencer(p3, 4, batch_size=3, progress=False).infer(vol)
    assert [c[0] for c in p1.calls] == [1] * 5 and [c[0] for c in p3.calls] == [3, 2]
    np.testing.assert_array_equal(out1.array, out3.array)
    # aggregation: MACs add up over calls (100 * pixels), density is the pixel-weighted mean
    assert st1["pipeline"]["macs"] == st3["pipeline"]["macs"] == 100 * 5 * 20 * 16
    assert st1["pipeline"]["mask_density"] == pytest.approx(st3["pipeline"]["mask_density"], abs=1e-7)
    assert st3["pipeline"]["steps"] == 3 and st3["pipeline"]["sampler"] == "fake"
    assert set(st3["timings"]) >= {"window", "forward", "unwindow", "total"}


def test_tiled_volume_equals_untiled(fake_pipeline, volume_factory, ct_array):
    vol = volume_factory(ct_array((40, 36, 2)))
    p_tiled = fake_pipeline(4)
    whole = SliceWiseInferencer(fake_pipeline(4), 4, tile_size=None, progress=False).infer(vol)[0]
    tiled, stats = SliceWiseInferencer(p_tiled, 4, tile_size=20, tile_overlap=8, progress=False).infer(vol)
    assert stats["tiles_per_slice"] == 9 and len(p_tiled.calls) == 9
    np.testing.assert_allclose(tiled.array, whole.array, atol=0.05)  # HU; 1e-5 on the [-1, 1] scale


def test_odd_sizes_are_padded_to_the_model_stride(fake_pipeline, volume_factory, ct_array):
    vol = volume_factory(ct_array((13, 10, 2)))
    pipe = fake_pipeline(4, size_multiple=8)  # asserts its inputs are multiples of 8
    sr = SliceWiseInferencer(pipe, 4, progress=False).infer(vol)[0]
    assert pipe.calls[0][-2:] == (16, 16)
    assert sr.array.shape == (52, 40, 2)


def test_progress_false_prints_nothing(fake_pipeline, volume_factory, ct_array, capsys):
    vol = volume_factory(ct_array((8, 8, 3)))
    SliceWiseInferencer(fake_pipeline(4), 4, progress=False).infer(vol)
    upscale_image(np.random.rand(3, 8, 8).astype(np.float32), fake_pipeline(4, in_channels=3), 4, progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    SliceWiseInferencer(fake_pipeline(4), 4, progress=True).infer(vol)
    captured = capsys.readouterr()
    assert "3/3" in captured.err and captured.out == ""  # the bar goes to stderr


def test_scale_and_channel_mismatch_are_config_errors(fake_pipeline):
    with pytest.raises(ConfigError, match="x8"):
        SliceWiseInferencer(fake_pipeline(8), 4, progress=False)
    with pytest.raises(ConfigError, match="3-channel"):
        SliceWiseInferencer(fake_pipeline(4, in_channels=3), 4, progress=False)


def test_upscale_image_gray_and_rgb(fake_pipeline):
    rng = np.random.RandomState(0)
    rgb = rng.rand(3, 12, 8).astype(np.float32)
    out = upscale_image(rgb, fake_pipeline(4, in_channels=3), 4, progress=False)
    assert out.shape == (3, 48, 32) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    # an RGB image through a 1-channel model = each channel as a gray image
    out1 = upscale_image(rgb, fake_pipeline(4, in_channels=1), 4, progress=False)
    gray0 = upscale_image(rgb[:1], fake_pipeline(4, in_channels=1), 4, progress=False)
    np.testing.assert_allclose(out1[:1], gray0, atol=1e-6)
    np.testing.assert_allclose(out1, out, atol=1e-6)  # the fake is channel-wise
    # gray through an RGB model: replicated and averaged back
    g = upscale_image(rgb[1:2], fake_pipeline(4, in_channels=3), 4, progress=False)
    np.testing.assert_allclose(g, out[1:2], atol=1e-6)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device|unsupported"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:1"):
            with pytest.raises(ConfigError, match="CUDA is not available") as err:
                resolve_device(name)
            assert "\n" not in str(err.value)


def test_info_aggregator_rules():
    agg = InfoAggregator()
    agg.add({"mask_density": 0.5, "macs": 10, "steps": 4, "sampler": "tds"}, weight=1.0)
    agg.add({"mask_density": 0.2, "macs": 5, "steps": 4, "sampler": "tds"}, weight=3.0)
    res = agg.result()
    assert res["macs"] == 15 and res["steps"] == 4 and res["sampler"] == "tds" and res["calls"] == 2
    assert res["mask_density"] == pytest.approx((0.5 + 0.6) / 4)
