"""Geometry: scaled affines equal MONAI Zoom's, LPS/RAS and ITK/DICOM conversions are exact inverses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from io_doubles import oblique_affine, rotation

from qdm_med.io.geometry import (
    affine_from_itk,
    affine_spacing,
    dicom_affine,
    dicom_derived_position,
    dicom_slice_geometry,
    flip_lps_ras,
    itk_from_affine,
    scaled_affine,
)


@pytest.mark.parametrize("s", [2, 4, 8])
def test_scaled_affine_equals_monai_zoom(s):
    from monai.data import MetaTensor
    from monai.transforms import Zoom

    affine = oblique_affine()
    img = MetaTensor(torch.zeros(1, 6, 5, 3), affine=torch.as_tensor(affine))
    zoomed = Zoom(zoom=(s, s, 1), keep_size=False)(img)
    assert tuple(zoomed.shape[1:]) == (6 * s, 5 * s, 3)
    expected = zoomed.affine.numpy()
    np.testing.assert_allclose(scaled_affine(affine, s), expected, atol=1e-9)
    np.testing.assert_allclose(scaled_affine(affine, (s, s, 1)), expected, atol=1e-9)
    # spacing / s in-plane, slice axis untouched
    np.testing.assert_allclose(affine_spacing(expected), affine_spacing(affine) / [s, s, 1])


def test_scaled_affine_keeps_field_of_view_and_inverts():
    affine = oblique_affine()
    up = scaled_affine(affine, 4)
    # the outer corner of voxel (-0.5, -0.5) is the same world point before and after
    corner = np.array([-0.5, -0.5, 0.0, 1.0])
    np.testing.assert_allclose(up @ corner, affine @ corner, atol=1e-9)
    far = np.array([9.5, 7.5, 2.0, 1.0])  # far corner of a 10 x 8 image == (40 x 32) corner after x4
    np.testing.assert_allclose(up @ np.array([39.5, 31.5, 2.0, 1.0]), affine @ far, atol=1e-9)
    np.testing.assert_allclose(scaled_affine(up, 0.25), affine, atol=1e-9)
    np.testing.assert_allclose(scaled_affine(torch.as_tensor(affine), 2), scaled_affine(affine, 2))
    with pytest.raises(ValueError):
        scaled_affine(affine, 0)
    with pytest.raises(ValueError):
        scaled_affine(affine, (2, 2))


def test_lps_ras_flip_is_an_involution():
    a = oblique_affine()
    lps = flip_lps_ras(a)
    np.testing.assert_allclose(lps[:2], -a[:2])
    np.testing.assert_allclose(lps[2:], a[2:])
    np.testing.assert_allclose(flip_lps_ras(lps), a)


def test_itk_geometry_round_trip_and_simpleitk_physical_points():
    import SimpleITK as sitk

    affine = oblique_affine()
    origin, spacing, direction = itk_from_affine(affine)
    np.testing.assert_allclose(affine_from_itk(origin, spacing, direction), affine, atol=1e-12)
    img = sitk.Image(4, 3, 2, sitk.sitkInt16)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    for idx in [(0, 0, 0), (3, 1, 1), (2, 2, 0)]:
        lps_point = np.array(img.TransformIndexToPhysicalPoint(idx))
        ras_point = (affine @ np.array([*idx, 1.0]))[:3]
        np.testing.assert_allclose(lps_point * [-1, -1, 1], ras_point, atol=1e-9)


def test_dicom_affine_and_slice_geometry_are_inverse():
    rot = rotation(0.3, 0.1, -0.5)
    iop = np.concatenate([rot[:, 0], rot[:, 1]])
    step = rot[:, 2] * 3.0
    affine = dicom_affine(iop, [10.0, -20.0, 5.0], (0.6, 0.9), step)
    # column index i moves along the row direction by the column spacing (0.9), in LPS
    lps = flip_lps_ras(affine)
    np.testing.assert_allclose(lps[:3, 0], rot[:, 0] * 0.9)
    np.testing.assert_allclose(lps[:3, 1], rot[:, 1] * 0.6)
    orientation, pixel_spacing, position = dicom_slice_geometry(affine)
    np.testing.assert_allclose(orientation, iop, atol=1e-12)
    np.testing.assert_allclose(pixel_spacing, [0.6, 0.9])
    np.testing.assert_allclose(position(2), np.array([10.0, -20.0, 5.0]) + 2 * step)
    sheared = affine.copy()
    sheared[:3, 1] += sheared[:3, 0]
    with pytest.raises(ValueError):
        dicom_slice_geometry(sheared)


@pytest.mark.parametrize("s", [2, 4, 8])
def test_dicom_derived_position_matches_scaled_affine(s):
    rot = rotation(0.3, 0.1, -0.5)
    iop = np.concatenate([rot[:, 0], rot[:, 1]])
    ipp, ps = np.array([10.0, -20.0, 5.0]), np.array([0.6, 0.9])
    affine = dicom_affine(iop, ipp, ps, rot[:, 2] * 3.0)
    new_ipp = dicom_derived_position(ipp, iop, ps, s)
    np.testing.assert_allclose(flip_lps_ras(scaled_affine(affine, s))[:3, 3], new_ipp, atol=1e-12)
