"""DiffAugment for the discriminators: one transform per sample for its real and fake pair, differentiable,
translation moves the content (and the region), cutout zeroes a square (and the region there), off is the identity."""

from __future__ import annotations

import pytest
import torch

from covid_ct_cgan.networks.diffaugment import AugmentDraw, DiffAugment, parse_policy


def test_policy_names_are_parsed_and_checked() -> None:
    assert parse_policy("") == parse_policy(None) == parse_policy([]) == ()
    assert parse_policy("cutout, translation") == parse_policy(["translation", "cutout"]) == ("translation", "cutout")
    with pytest.raises(ValueError, match=r"d_augment: unknown augmentation 'color'; expected names from"):
        parse_policy("translation,color")
    with pytest.raises(TypeError, match="d_augment: must be a string or a list of strings, got 3"):
        parse_policy(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"cutout_ratio must be in \(0, 1\], got 0"):
        DiffAugment("cutout", cutout_ratio=0)


def test_off_is_the_identity() -> None:
    augment = DiffAugment("")
    assert not augment.enabled
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(augment.draw(2, 8, 8)(x), x)


def test_translation_moves_the_content_with_the_border_repeated() -> None:
    x = torch.zeros(2, 1, 8, 8)
    x[:, 0, 3, 4] = 1
    x[:, 0, :, 0] = -1  # a left border column
    out = AugmentDraw(2, 8, 8, shifts=[(1, 2), (-2, -1)])(x)
    assert out[0, 0, 4, 6] == 1 and out[1, 0, 1, 3] == 1 and out.eq(1).sum() == 2
    assert bool((out[0, 0, :, :3] == -1).all())  # shifted right by 2: the border column repeats into the gap
    augment = DiffAugment("translation", seed=0)
    for _ in range(20):  # at most 1/8 of the side (DiffAugment's ratio)
        draw = augment.draw(3, 32, 16)
        assert all(abs(dy) <= 4 and abs(dx) <= 2 for dy, dx in draw.shifts)


def test_cutout_zeroes_a_square_of_half_the_side_and_the_region_there() -> None:
    augment = DiffAugment("cutout", seed=1)
    inside = 0
    for _ in range(30):
        draw = augment.draw(2, 16, 16)
        out = draw(torch.ones(2, 3, 16, 16))
        keep = draw.keep()
        for i, (top, bottom, left, right) in enumerate(draw.cuts):
            zero = out[i] == 0
            assert bool(zero.all(dim=0).eq(keep[i, 0] == 0).all()) and bool((zero.any(dim=0) == zero.all(dim=0)).all())
            assert bool(zero[:, top:bottom, left:right].all()) and int(zero[0].sum()) == (bottom - top) * (right - left)
            assert bottom - top <= 8 and right - left <= 8
            inside += (bottom - top, right - left) == (8, 8)
        assert torch.equal(draw.mask(torch.ones(2, 1, 16, 16)), keep)
    assert inside > 0  # a whole square when its centre is away from the border


def test_real_and_fake_pairs_of_a_sample_get_the_same_transform() -> None:
    torch.manual_seed(0)
    real, fake = torch.randn(3, 2, 16, 16), torch.randn(3, 2, 16, 16)
    draw = DiffAugment("translation,cutout", seed=3).draw(3, 16, 16)
    both = draw(torch.cat([real, fake]))
    assert torch.equal(both[:3], draw(real)) and torch.equal(both[3:], draw(fake))
    assert torch.equal(draw(torch.cat([real, real]))[3:], both[:3])
    with pytest.raises(ValueError, match=r"expected \(k \* 3, C, 16, 16\) for a draw of 3 samples, got \(4, 2, 16, 16\)"):
        draw(torch.randn(4, 2, 16, 16))


def test_augmentation_is_differentiable() -> None:
    x = torch.randn(2, 2, 16, 16, requires_grad=True)
    draw = AugmentDraw(2, 16, 16, shifts=[(0, 0), (2, -3)], cuts=[(0, 8, 0, 8), (4, 12, 4, 12)])
    (draw(x) * 2).sum().backward()
    assert x.grad is not None
    assert x.grad[0, :, 8:, 8:].eq(2).all()  # untouched by the cut: the gradient passes
    assert x.grad[0, :, :8, :8].eq(0).all()  # cut: no gradient
    assert x.grad[1].abs().sum() > 0


def test_draws_come_from_their_own_seeded_stream() -> None:
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a, b = DiffAugment("translation,cutout", seed=7), DiffAugment("translation,cutout", seed=7)
    for _ in range(3):
        da, db = a.draw(2, 32, 32), b.draw(2, 32, 32)
        assert da.shifts == db.shifts and da.cuts == db.cuts
    assert torch.equal(torch.get_rng_state(), state)  # torch's global stream is not touched
    assert DiffAugment("translation").generator.initial_seed() == torch.initial_seed()
