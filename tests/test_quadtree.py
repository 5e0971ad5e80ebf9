from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import qdm_med
from qdm_med.quadtree import (
    QuadLeaf,
    mask_density,
    qdm_masks,
    quadtree_block,
    quadtree_mask,
    recursive_quadtree,
)


def _rand(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_zero_threshold_is_dense():
    for shape, size in [((2, 3, 16, 16), (8, 8)), ((1, 1, 13, 20), (13, 20)), ((1, 1, 8, 8), (32, 32))]:
        m = quadtree_mask(_rand(shape), 0.0, size)
        assert m.dtype == torch.bool and m.shape == (shape[0], *size) and bool(m.all())
    flat = torch.full((1, 1, 16, 16), 0.4)
    assert bool(quadtree_mask(flat, 0.0, 8).all())


def test_flat_image_is_inactive():
    flat = torch.full((2, 3, 32, 32), -0.2)
    for s in (1e-6, 0.15, 0.9):
        assert not bool(quadtree_mask(flat, s, (16, 16)).any())


def test_single_bright_pixel_activates_exactly_its_block():
    lr = torch.full((1, 1, 16, 16), -1.0)
    lr[0, 0, 5, 9] = 1.0
    expected = torch.zeros(1, 8, 8, dtype=torch.bool)
    expected[0, 2, 4] = True
    assert torch.equal(quadtree_mask(lr, 0.15, (8, 8)), expected)  # token mask, sf = 4
    diff4 = quadtree_mask(lr, 0.15, (16, 16))  # diffusion mask, sf = 4 (latent = LR size)
    ref = torch.zeros(1, 16, 16, dtype=torch.bool)
    ref[0, 4:6, 8:10] = True
    assert torch.equal(diff4, ref)
    diff8 = quadtree_mask(lr, 0.15, (32, 32))  # diffusion mask, sf = 8 (latent = 2 x LR)
    ref = torch.zeros(1, 32, 32, dtype=torch.bool)
    ref[0, 8:12, 16:20] = True
    assert torch.equal(diff8, ref)
    assert not bool(quadtree_mask(lr, 2.5, (8, 8)).any())  # range 2 < s


def test_matches_block_range_definition():
    x = _rand((2, 3, 16, 24), seed=3) * 0.3
    s = 0.2
    m = quadtree_mask(x, s, (8, 12))
    blocks = x.numpy().reshape(2, 3, 8, 2, 12, 2)
    rng = (blocks.max(axis=(3, 5)) - blocks.min(axis=(3, 5))).mean(axis=1)
    assert np.array_equal(m.numpy(), rng >= s)
    assert 0.0 < mask_density(m) < 1.0


def test_threshold_uses_the_channel_average():
    x = torch.zeros(1, 3, 4, 4)
    x[0, 1, 0, 0] = 0.3  # range 0.3 in one channel -> 0.1 on average
    assert bool(quadtree_mask(x, 0.1, 2)[0, 0, 0])
    assert not bool(quadtree_mask(x, 0.1 + 1e-6, 2)[0, 0, 0])


@pytest.mark.parametrize("lr_size", [64, 128])
@pytest.mark.parametrize("sf", [4, 8])
def test_level_and_block_size_for_qdm_masks(lr_size, sf):
    latent = lr_size * sf // 4
    assert quadtree_block((lr_size, lr_size), (latent, latent)) == (1, 2)
    assert quadtree_block((lr_size, lr_size), (latent // 2, latent // 2)) == (1, 2)
    lr = _rand((2, 1, lr_size, lr_size), seed=sf)
    masks = qdm_masks(lr, 0.5, sf)
    assert masks.diffusion.shape == (2, latent, latent) and masks.token.shape == (2, latent // 2, latent // 2)
    # both use 2x2 LR blocks, so the diffusion mask is the token mask upsampled x2
    up = F.interpolate(masks.token[:, None].float(), scale_factor=2, mode="nearest")[:, 0] > 0.5
    assert torch.equal(masks.diffusion, up)
    assert 0.0 < mask_density(masks.token) < 1.0


def test_block_level_formula():
    assert quadtree_block((512, 512), (64, 64)) == (3, 8)
    assert quadtree_block((64, 256), (32, 32)) == (3, 8)  # max over the two axes
    assert quadtree_block((100, 100), (30, 30)) == (1, 2)  # floor(log2(3.33)) = 1
    assert quadtree_block((16, 16), (64, 64)) == (1, 2)  # never below 1
    with pytest.raises(ValueError):
        qdm_masks(torch.zeros(1, 1, 5, 5), 0.1, 2)


def test_input_ranks_and_odd_sizes():
    img = _rand((15, 17), seed=4)
    a = quadtree_mask(img, 0.3, (7, 8))
    b = quadtree_mask(img[None], 0.3, (7, 8))
    c = quadtree_mask(img[None, None].numpy(), 0.3, (7, 8))
    assert a.shape == (1, 7, 8) and torch.equal(a, b) and torch.equal(a, c)
    edge = torch.zeros(1, 1, 15, 17)
    edge[0, 0, 13, 16] = 1.0  # in the last, one-pixel-wide column of blocks
    expected = torch.zeros(1, 8, 9, dtype=torch.bool)
    expected[0, 6, 8] = True
    assert torch.equal(quadtree_mask(edge, 0.5, (8, 9)), expected)


def test_mask_density():
    m = torch.zeros(2, 4, 4, dtype=torch.bool)
    m[0, :2] = True
    assert mask_density(m) == pytest.approx(0.25)
    assert torch.allclose(mask_density(m, per_sample=True), torch.tensor([0.5, 0.0]))


def test_package_level_name():
    assert qdm_med.quadtree_mask is quadtree_mask


def _coverage(leaves, h, w):
    cover = np.zeros((h, w), dtype=int)
    for leaf in leaves:
        cover[leaf.y : leaf.y + leaf.h, leaf.x : leaf.x + leaf.w] += 1
    return cover


@pytest.mark.parametrize("shape", [(32, 32), (3, 20, 28), (1, 1, 17, 9)])
def test_recursive_quadtree_tiles_the_image(shape):
    img = _rand(shape, seed=5)
    leaves = recursive_quadtree(img, 0.5, min_size=2)
    h, w = shape[-2:]
    assert np.array_equal(_coverage(leaves, h, w), np.ones((h, w), dtype=int))
    assert all(isinstance(leaf, QuadLeaf) for leaf in leaves)
    arr = img.reshape(-1, h, w).numpy()
    for leaf in leaves:
        block = arr[:, leaf.y : leaf.y + leaf.h, leaf.x : leaf.x + leaf.w]
        rng = (block.max(axis=(1, 2)) - block.min(axis=(1, 2))).mean()
        assert leaf.active == bool(rng >= 0.5)
        if leaf.active:  # only stops splitting at the size limit
            assert leaf.h < 4 or leaf.w < 4


def test_recursive_quadtree_flat_and_point():
    flat = np.full((64, 48), 0.1, dtype=np.float32)
    assert recursive_quadtree(flat, 0.15) == [QuadLeaf(0, 0, 64, 48, False)]
    img = torch.full((1, 32, 32), -1.0)
    img[0, 21, 6] = 1.0
    leaves = recursive_quadtree(img, 0.15, min_size=2)
    assert len(leaves) == 1 + 3 * 4  # one chain of splits down to 2x2, three siblings per level
    hit = [leaf for leaf in leaves if leaf.y <= 21 < leaf.y + leaf.h and leaf.x <= 6 < leaf.x + leaf.w]
    assert hit == [QuadLeaf(20, 6, 2, 2, True)]
    assert sum(leaf.active for leaf in leaves) == 1
    shallow = recursive_quadtree(img, 0.15, min_size=2, max_depth=2)
    assert len(shallow) == 7 and QuadLeaf(16, 0, 8, 8, True) in shallow
    dense = recursive_quadtree(img, 0.0, min_size=4)
    assert len(dense) == 64 and all(leaf.h == 4 and leaf.w == 4 for leaf in dense)
