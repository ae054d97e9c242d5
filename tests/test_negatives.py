"""Negative data: hybrid images and shuffled features."""

import pytest
import torch

from localearn.errors import ShapeError, UnknownNameError
from localearn.negatives import derangement, hybrid_mask, make_negatives


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n", [2, 3, 5, 64])
def test_derangement_has_no_fixed_point(n):
    for seed in range(20):
        perm = derangement(n, _gen(seed))
        assert sorted(perm.tolist()) == list(range(n))
        assert (perm != torch.arange(n)).all()


def test_derangement_of_one_sample_is_refused():
    with pytest.raises(ShapeError, match="needs at least 2 elements, got 1"):
        derangement(1, _gen())
    with pytest.raises(ShapeError, match="batch needs at least 2 samples"):
        make_negatives(torch.rand(1, 1, 4, 4), _gen(), "hybrid")


@pytest.mark.parametrize("shape", [(3, 28, 28), (3, 40), (2, 8, 5)])
def test_hybrid_mask_is_binary_with_both_values(shape):
    mask = hybrid_mask(shape, _gen())
    assert mask.shape == shape
    assert set(mask.unique().tolist()) == {0.0, 1.0}


def test_hybrid_mask_is_made_of_large_regions():
    # blurring makes neighbouring pixels agree far more often than chance
    mask = hybrid_mask((8, 28, 28), _gen())
    agree = (mask[:, :, 1:] == mask[:, :, :-1]).float().mean()
    assert agree > 0.8


@pytest.mark.parametrize(
    "shape", [(5, 1, 28, 28), (5, 3, 8, 8), (5, 1, 40), (5, 2, 40), (5, 40)]
)
def test_every_hybrid_pixel_comes_from_one_of_two_images(shape):
    x = torch.rand(shape, generator=_gen(1))
    neg = make_negatives(x, _gen(2), "hybrid")
    assert neg.shape == x.shape and neg.dtype == x.dtype
    # replay the generator to recover the partner image of every sample
    g = _gen(2)
    perm = derangement(len(x), g)
    partner = x[perm]
    from_self = neg == x
    from_partner = neg == partner
    assert (from_self | from_partner).all()
    # a pixel takes all its channels from the same image
    if x.dim() > 2:
        assert (from_self.all(1) | from_partner.all(1)).all()
    # and each negative really mixes the two images
    flat = from_self.reshape(len(x), -1)
    assert (flat.any(1) & (~flat).any(1)).all()


def test_negatives_are_deterministic_under_a_seeded_generator():
    x = torch.rand(6, 1, 10, 10)
    for kind in ("hybrid", "shuffle"):
        a = make_negatives(x, _gen(3), kind)
        b = make_negatives(x, _gen(3), kind)
        c = make_negatives(x, _gen(4), kind)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


@pytest.mark.parametrize("shape", [(4, 1, 6, 6), (4, 2, 12), (4, 12)])
def test_shuffle_permutes_features_the_same_way_for_every_sample(shape):
    x = torch.randn(shape)
    neg = make_negatives(x, _gen(), "shuffle")
    assert neg.shape == x.shape
    flat_x, flat_neg = x.reshape(4, -1), neg.reshape(4, -1)
    order = [flat_x[0].tolist().index(v) for v in flat_neg[0].tolist()]
    assert torch.equal(flat_neg, flat_x[:, order])
    assert order != sorted(order)


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid kinds: hybrid, shuffle"):
        make_negatives(torch.rand(2, 3), _gen(), "noise")


def test_hybrid_refuses_inputs_without_spatial_axes():
    with pytest.raises(ShapeError, match=r"got \(2, 1, 2, 3, 4\)"):
        make_negatives(torch.rand(2, 1, 2, 3, 4), _gen(), "hybrid")
