"""Discriminators at tiny sizes: feature lists, resolutions, receptive-field masks, the DFM weighting net."""

from __future__ import annotations

import pytest
import torch

from covid_ct_cgan.networks import (
    DfmWeight,
    MultiResolutionDiscriminator,
    NLayerDiscriminator,
    downsample,
    in_channels_for,
)
from covid_ct_cgan.networks.discriminator import feature_channels


def pair(maps, batch: int = 3, size: int = 32) -> torch.Tensor:
    """Map concatenated with an image, as the discriminators see it."""
    torch.manual_seed(1)
    return torch.cat([maps(batch, size), torch.tanh(torch.randn(batch, 1, size, size))], dim=1)


def test_nlayer_features_follow_pix2pixhd(maps):
    torch.manual_seed(0)
    d = NLayerDiscriminator(5, ndf=8, n_layers=3)
    feats = d(pair(maps, 2, 32))
    assert len(feats) == 5
    assert [f.shape[1] for f in feats] == feature_channels(8, 3) == [8, 16, 32, 64, 1]
    # kernel 4, padding 2: stride-2 layers 32 -> 17 -> 9 -> 5, stride-1 layers 5 -> 6 -> 7
    assert [f.shape[-1] for f in feats] == [17, 9, 5, 6, 7]
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.kernel_size == (4, 4) and c.padding == (2, 2) for c in convs)
    assert not isinstance(d.layers[-1][-1], torch.nn.Sigmoid)  # least-squares GAN: raw scores
    assert feature_channels(64, 5)[:6] == [64, 128, 256, 512, 512, 512]


@pytest.mark.parametrize("num_d", [1, 2, 3])
def test_multi_resolution_scales(maps, num_d):
    torch.manual_seed(0)
    d = MultiResolutionDiscriminator(5, ndf=8, n_layers=2, num_d=num_d)
    x = pair(maps, 2, 32)
    out = d(x)
    assert len(out) == num_d
    assert all(len(feats) == 4 for feats in out)
    scaled = x
    for k in range(num_d):  # D_k sees the input average-pooled k times
        expected = d.discriminators[k](scaled)
        for got, want in zip(out[k], expected):
            assert torch.equal(got, want)
        scaled = downsample(scaled)
    sizes = [feats[0].shape[-1] for feats in out]
    assert sizes == sorted(sizes, reverse=True)  # D1 (full resolution) first


def test_multi_resolution_validates_num_d():
    with pytest.raises(ValueError, match="num_d"):
        MultiResolutionDiscriminator(5, num_d=4)


def test_region_masks_follow_the_receptive_field(maps):
    """An output outside the mask must not change when only the region's pixels change (no norm: local)."""
    torch.manual_seed(0)
    d = MultiResolutionDiscriminator(5, ndf=4, n_layers=2, num_d=2, norm="none")
    x = pair(maps, 1, 48)
    region = torch.zeros(1, 1, 48, 48)
    region[..., 30:36, 8:14] = 1
    masks = d.region_masks(region)
    changed = x + 0.5 * torch.randn_like(x) * region
    with torch.no_grad():
        before, after = d(x), d(changed)
    for k in range(2):
        assert [m.shape[-2:] for m in masks[k]] == [f.shape[-2:] for f in before[k]]
        for mask, f0, f1 in zip(masks[k], before[k], after[k]):
            outside = mask.expand_as(f0) == 0
            assert torch.equal(f0[outside], f1[outside])
            assert 0 < mask.mean() < 1  # the region is seen by some outputs, not all
            assert not torch.equal(f0[~outside], f1[~outside])
    full = d.region_masks(torch.ones(1, 1, 48, 48))
    assert all(bool((m == 1).all()) for feats in full for m in feats)


def test_dfm_weight_dynamic_bounds_and_variation(maps):
    torch.manual_seed(0)
    d = MultiResolutionDiscriminator(5, ndf=8, n_layers=3)
    feats = d(pair(maps, 4, 32))
    w = DfmWeight(in_channels_for(8, 3, 1), feature_index=1)
    b = w(feats)
    assert b.shape == (4,)
    assert ((b >= 0.1) & (b <= 0.9)).all()
    assert b.max() - b.min() > 1e-6, b
    extreme = [[f * 1e4 for f in scale] for scale in feats]  # a saturated sigmoid still respects the bounds
    for sign in (1, -1):
        w.fc.bias.data.fill_(sign * 1e3)
        b = w(extreme)
        torch.testing.assert_close(b, torch.full((4,), 0.9 if sign > 0 else 0.1))


def test_dfm_weight_reads_the_configured_scale_and_layer(maps):
    torch.manual_seed(0)
    d = MultiResolutionDiscriminator(5, ndf=8, n_layers=3)
    feats = d(pair(maps, 2, 32))
    half = DfmWeight(in_channels_for(8, 3, 2), mode="dynamic_from_half", feature_index=2)
    b = half(feats)
    poked = [list(scale) for scale in feats]
    poked[0][2] = torch.randn_like(poked[0][2])  # D1 changes: the half-resolution weight does not
    torch.testing.assert_close(half(poked), b, rtol=0, atol=0)
    poked[1][2] = torch.randn_like(poked[1][2])
    assert not torch.equal(half(poked), b)
    full = DfmWeight(in_channels_for(8, 3, 2), mode="dynamic", feature_index=2)
    assert not torch.equal(full(poked), full(feats))


def test_dfm_weight_fixed_equal_and_validation(maps):
    feats = [[torch.zeros(3, 8, 4, 4)], [torch.zeros(3, 8, 2, 2)], [torch.zeros(3, 8, 1, 1)]]
    torch.testing.assert_close(DfmWeight(8, mode="fixed", fixed_weight=0.7)(feats), torch.full((3,), 0.7))
    torch.testing.assert_close(DfmWeight(8, mode="equal")(feats), torch.full((3,), 0.5))
    torch.testing.assert_close(DfmWeight(8, mode="equal", num_d=3)(feats), torch.full((3,), 1 / 3))
    assert DfmWeight(8).learnable and DfmWeight(8, "dynamic_from_half").learnable
    assert not DfmWeight(8, "fixed").learnable and not DfmWeight(8, "equal").learnable
    with pytest.raises(ValueError, match="mode must be one of"):
        DfmWeight(8, mode="average")
    with pytest.raises(ValueError, match="num_d >= 2"):
        DfmWeight(8, mode="dynamic_from_half", num_d=1)
    with pytest.raises(ValueError, match="bounds"):
        DfmWeight(8, bounds=(0.9, 0.1))
    with pytest.raises(ValueError, match="feature_index"):
        in_channels_for(8, 3, 4)
    assert [in_channels_for(64, 3, i) for i in range(4)] == [64, 128, 256, 512]


def test_dfm_weight_passes_no_gradient_to_the_discriminator(maps):
    torch.manual_seed(0)
    d = MultiResolutionDiscriminator(5, ndf=8, n_layers=3)
    w = DfmWeight(in_channels_for(8, 3, 1))
    w(d(pair(maps, 2, 32))).sum().backward()
    assert all(p.grad is None for p in d.parameters())
    assert all(p.grad is not None for p in w.parameters())


def test_discriminator_and_dfm_weight_script(maps):
    torch.manual_seed(0)
    d = MultiResolutionDiscriminator(5, ndf=8, n_layers=2).eval()
    w = DfmWeight(in_channels_for(8, 2, 1)).eval()
    x = pair(maps, 2, 32)
    with torch.no_grad():
        eager, scripted = d(x), torch.jit.script(d)(x)
        for a, b in zip(eager, scripted):
            for fa, fb in zip(a, b):
                torch.testing.assert_close(fa, fb, rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.jit.script(w)(eager), w(eager), rtol=0, atol=1e-6)
