"""The slice axis from the affine and the round trip to axial storage (nibabel orientation tools)."""

from __future__ import annotations

import numpy as np
import pytest
from io_doubles import assert_one_line_naming, oblique_affine

from qdm_med.errors import InputError
from qdm_med.io import Volume
from qdm_med.io.geometry import scaled_affine
from qdm_med.io.orientation import axial_frame


def _perm_affine(perm):
    p = np.zeros((4, 4))
    p[3, 3] = 1
    for a, src in enumerate(perm):
        p[src, a] = 1
    return p


@pytest.mark.parametrize("perm", [(0, 1, 2), (1, 0, 2), (2, 1, 0), (1, 2, 0), (0, 2, 1), (2, 0, 1)])
def test_axial_frame_finds_the_slice_axis_and_round_trips(perm):
    base = oblique_affine(angles=(0.2, -0.15, 0.4))  # a tilted axial scan (about 14 degrees)
    aff = base @ _perm_affine(perm)
    arr = np.random.RandomState(0).rand(*(np.array([7, 5, 3])[list(perm)])).astype(np.float32)
    vol = Volume(arr, aff, {"path": "x.nii.gz"})
    frame = axial_frame(aff, "x.nii.gz")
    assert frame.slice_axis == perm.index(2) and frame.tilt_deg < 20
    axial = frame.to_axial(vol)
    assert axial.array.shape[2] == 3  # the superior-inferior axis is axis 2
    np.testing.assert_allclose(abs(axial.direction[2, 2]), abs(np.cos(np.radians(frame.tilt_deg))), atol=1e-9)
    # world position of every voxel is unchanged
    for idx in [(0, 0, 0), (2, 1, 1), tuple(n - 1 for n in axial.array.shape)]:
        src = [0, 0, 0]
        for a, old in enumerate(frame.perm):
            src[old] = idx[a]
        assert axial.array[idx] == vol.array[tuple(src)]
        np.testing.assert_allclose(axial.affine @ [*idx, 1], aff @ [*src, 1], atol=1e-9)
    # an in-plane upscale comes back in the input's own storage, on the input's field of view
    up = Volume(np.repeat(np.repeat(axial.array, 2, 0), 2, 1), scaled_affine(axial.affine, (2, 2, 1)), axial.meta)
    back = frame.from_axial(up)
    assert back.array.shape == tuple(n * (1 if a == perm.index(2) else 2) for a, n in enumerate(arr.shape))
    np.testing.assert_allclose(back.affine, scaled_affine(aff, [1 if a == perm.index(2) else 2 for a in range(3)]), atol=1e-9)
    assert frame.identity == (perm[2] == 2)


def test_too_oblique_is_one_line_error():
    aff = np.eye(4)
    aff[:3, :3] = np.array([[1, 0, 0], [0, np.cos(0.9), -np.sin(0.9)], [0, np.sin(0.9), np.cos(0.9)]])  # 51.6 and 38.4 degrees
    assert axial_frame(aff).slice_axis == 1
    r3 = np.ones(3) / np.sqrt(3)
    r1 = np.array([1.0, -1.0, 0.0]) / np.sqrt(2)
    aff[:3, :3] = np.stack([r1, np.cross(r3, r1), r3])
    with pytest.raises(InputError) as err:
        axial_frame(aff, "scan.nrrd")
    assert_one_line_naming(err, "scan.nrrd")
