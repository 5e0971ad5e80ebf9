from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qdm_med.inference.tiling import TiledSR, blend_weights, call_padded, tile_starts, tiled_apply


def _nearest(t):
    return F.interpolate(t, scale_factor=4, mode="nearest")


def _bicubic(t):
    return F.interpolate(t, scale_factor=4, mode="bicubic", align_corners=False)


class _ConvSR(torch.nn.Module):
    """A random non-local network (3x3 convs + pixel shuffle): tiles would visibly differ from one call."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(8, 16, 3, padding=1)
        )
        self.shuffle = torch.nn.PixelShuffle(4)

    def forward(self, x):
        return self.shuffle(self.body(x))


def test_tile_starts_cover_with_min_overlap():
    for length, tile, ov in [(100, 32, 8), (33, 32, 8), (64, 32, 8), (200, 50, 10), (10, 32, 8)]:
        starts = tile_starts(length, tile, ov)
        assert starts[0] == 0
        assert min(starts[-1] + tile, length) == length  # the last tile reaches the end
        if length >= tile:
            assert starts[-1] + tile == length  # ... and is full size
        for a, b in zip(starts, starts[1:]):
            assert a < b and a + tile - b >= ov


def test_tile_larger_than_image_equals_single_call_exactly():
    net = _ConvSR().eval()
    x = torch.rand(2, 1, 20, 28) * 2 - 1  # multiples of 4: no padding
    with torch.no_grad():
        ref = net(x)
        out = tiled_apply(net, x, 4, tile_size=64, overlap=16, size_multiple=4)
    assert torch.equal(out, ref)


def test_padding_to_stride_and_crop():
    calls = []

    def fn(t):
        calls.append(tuple(t.shape))
        return _nearest(t)

    x = torch.rand(1, 1, 13, 18)
    out = call_padded(fn, x, 4, multiple=8)
    assert calls == [(1, 1, 16, 24)]
    assert out.shape == (1, 1, 52, 72)
    assert torch.equal(out, _nearest(x))  # replicate padding never reaches the cropped nearest output


@pytest.mark.parametrize("fn,atol", [(_nearest, 1e-6), (_bicubic, 1e-5)])
def test_tiled_equals_untiled_for_local_callables(fn, atol):
    torch.manual_seed(1)
    x = torch.rand(2, 1, 70, 53) * 2 - 1
    n_calls = []

    def counted(t):
        n_calls.append(t.shape)
        return fn(t)

    out = tiled_apply(counted, x, 4, tile_size=24, overlap=8, size_multiple=4)
    assert len(n_calls) > 6  # really tiled, in both directions
    assert out.shape == (2, 1, 280, 212)
    assert (out - fn(x)).abs().max().item() < atol


def test_tiled_net_has_no_seams():
    """A non-local network differs at tile borders, but the blend hides them: the tiled output stays close
    to one call everywhere (margins drop the border pixels, the ramp averages the rest)."""
    net = _ConvSR().eval()
    x = torch.rand(1, 1, 48, 48) * 2 - 1
    with torch.no_grad():
        ref = net(x)
        out = tiled_apply(net, x, 4, tile_size=24, overlap=8, size_multiple=4)
    # the net's receptive field (2 LR px) is within the 2 px margin: identical up to rounding
    assert (out - ref).abs().max().item() < 1e-5


def test_blend_weights_partition_of_unity():
    ov, margin = 8 * 4, 2 * 4
    left = blend_weights((4, 64), (False, False, False, True), ov, margin)[0]
    right = blend_weights((4, 64), (False, False, True, False), ov, margin)[0]
    # tiles overlap by exactly ov SR px: left's last ov pixels coincide with right's first ov pixels
    total = left[-ov:] + right[:ov]
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)
    assert torch.all(left[-margin:] == 0) and torch.all(right[:margin] == 0)
    assert torch.all(left[: 64 - ov] == 1)


def test_bad_callable_output_shape_is_reported():
    with pytest.raises(ValueError, match="expected"):
        call_padded(lambda t: t, torch.zeros(1, 1, 8, 8), 4)


def test_tiler_rejects_bad_geometry():
    with pytest.raises(ValueError):
        TiledSR(4, tile_size=16, overlap=8)
