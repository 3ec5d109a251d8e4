"""Discriminators at tiny sizes: feature lists, resolutions, receptive-field masks, the DFM weighting net."""

from __future__ import annotations

import pytest
import torch

from covid_ct_cgan.networks import (
    DfmWeight,
    MultiResolutionDiscriminator,
    NLayerDiscriminator,
    count_parameters,
    downsample,
    in_channels_for,
)
from covid_ct_cgan.networks.discriminator import feature_channels, receptive_field


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


@pytest.mark.parametrize("padding", [2, 1])  # pix2pixHD, pix2pix
def test_region_masks_follow_the_receptive_field(maps, padding):
    """An output outside the mask must not change when only the region's pixels change (no norm: local)."""
    torch.manual_seed(0)
    d = MultiResolutionDiscriminator(5, ndf=4, n_layers=2, num_d=2, norm="none", padding=padding)
    x = pair(maps, 1, 64)
    region = torch.zeros(1, 1, 64, 64)
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
    full = d.region_masks(torch.ones(1, 1, 64, 64))
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


def _measured_receptive_field(d: NLayerDiscriminator, size: int) -> tuple[int, int]:
    """Height and width of the input pixels that one central patch score depends on (gradient support)."""
    x = torch.randn(1, 5, size, size, dtype=torch.float64, requires_grad=True)
    score = d(x)[-1]
    h, w = score.shape[-2:]
    score[0, 0, h // 2, w // 2].backward()
    rows = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3))).flatten()
    cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2))).flatten()
    assert 0 < rows[0] and rows[-1] < size - 1 and 0 < cols[0] and cols[-1] < size - 1  # not cut by the border
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


@pytest.mark.parametrize("padding", [2, 1])
@pytest.mark.parametrize("n_layers, expected", [(3, 70), (2, 34)])
def test_receptive_field_is_pix2pix_70_with_three_layers(n_layers, expected, padding):
    """pix2pix's ``basic`` D (n_layers 3) is the 70x70 PatchGAN: formula and measured gradient support agree."""
    torch.manual_seed(0)
    d = NLayerDiscriminator(5, ndf=4, n_layers=n_layers, norm="none", padding=padding).double()
    assert d.receptive_field == receptive_field(d.strides) == expected
    assert _measured_receptive_field(d, 160) == (expected, expected)
    assert receptive_field([2, 2, 2, 1, 1], kernel=4) == 1 + 3 * (1 + 2 + 4 + 8 + 8)


def test_pix2pix_basic_discriminator_options(maps):
    """norm='batch', padding 1, no bias before the norm layers: pix2pix's 30x30 patch map at 256 px."""
    torch.manual_seed(0)
    d = NLayerDiscriminator(5, ndf=4, n_layers=3, norm="batch", padding=1, use_bias=False)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.padding == (1, 1) and c.kernel_size == (4, 4) for c in convs)
    assert [c.bias is not None for c in convs] == [True, False, False, False, True]  # first and last keep theirs
    norms = [m for m in d.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [n.num_features for n in norms] == [8, 16, 32]  # the first layer has no norm
    feats = d(torch.randn(2, 5, 256, 256))
    assert [f.shape[-1] for f in feats] == [128, 64, 32, 31, 30]
    assert feats[-1].shape == (2, 1, 30, 30)
    # the published model (6-channel input: A and B images, ndf 64): "2.769 M" parameters in pix2pix's log
    assert count_parameters(NLayerDiscriminator(6, 64, 3, norm="batch", padding=1, use_bias=False)) == 2_768_705
    multi = MultiResolutionDiscriminator(5, ndf=4, n_layers=3, num_d=1, norm="batch", padding=1, use_bias=False)
    biases = [c.bias is not None for c in multi.modules() if isinstance(c, torch.nn.Conv2d)]
    assert biases == [True, False, False, False, True]
    assert multi.discriminators[0].padding == 1
    with pytest.raises(ValueError, match="padding must be in 0..2"):
        NLayerDiscriminator(5, padding=3)


def test_default_discriminator_state_dict_keys_unchanged():
    """Checkpoints saved before the pix2pix options still load: the default keys are pinned."""
    d = MultiResolutionDiscriminator(5, ndf=4, n_layers=2, num_d=2)
    layer_keys = [f"layers.{i}.0.{p}" for i in range(4) for p in ("weight", "bias")]
    assert list(d.state_dict()) == [f"discriminators.{k}.{key}" for k in range(2) for key in layer_keys]
    assert all(c.padding == (2, 2) for c in d.modules() if isinstance(c, torch.nn.Conv2d))
    batch = MultiResolutionDiscriminator(5, ndf=4, n_layers=2, num_d=1, norm="batch")  # batch norm, biases kept
    assert "discriminators.0.layers.1.0.bias" in batch.state_dict()
    assert "discriminators.0.layers.1.1.running_mean" in batch.state_dict()


@torch.no_grad()
def test_init_gain_draws_pix2pix_weights():
    torch.manual_seed(0)
    d = NLayerDiscriminator(5, ndf=32, n_layers=3, norm="batch", init_gain=0.02)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    weights = torch.cat([c.weight.flatten() for c in convs])
    assert abs(float(weights.mean())) < 1e-3 and abs(float(weights.std()) - 0.02) < 1e-3
    assert all(bool((c.bias == 0).all()) for c in convs if c.bias is not None)
    gammas = torch.cat([m.weight for m in d.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert abs(float(gammas.mean()) - 1) < 5e-3 and 0.01 < float(gammas.std()) < 0.03
    torch.manual_seed(0)
    default = NLayerDiscriminator(5, ndf=32, n_layers=3, norm="batch")
    assert float(default.layers[0][0].weight.detach().std()) > 0.05  # PyTorch's default: 1 / sqrt(3 * 80)
    with pytest.raises(ValueError, match="init gain must be positive"):
        NLayerDiscriminator(5, init_gain=0.0)


# ---- the local discriminator of lesion inpainting and its crops


def _blob_mask(size: int, boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """``(1, 1, size, size)`` mask with filled rectangles ``(top, left, height, width)``."""
    mask = torch.zeros(1, 1, size, size)
    for top, left, height, width in boxes:
        mask[0, 0, top : top + height, left : left + width] = 1.0
    return mask


@pytest.mark.parametrize(
    "blob",
    [(20, 20, 5, 7), (0, 0, 4, 4), (60, 59, 4, 5), (0, 50, 14, 14), (30, 0, 16, 3), (10, 10, 16, 16)],
    ids=["inside", "top-left corner", "bottom-right corner", "top-right edge", "left edge", "exactly the crop"],
)
def test_crop_contains_the_whole_component_also_at_the_borders(blob):
    from covid_ct_cgan.networks.discriminator import region_crop_boxes

    size = 16
    region = _blob_mask(64, [blob])
    boxes, has_region = region_crop_boxes(region, size)
    (top, left), = boxes
    assert has_region.tolist() == [True]
    assert 0 <= top <= 64 - size and 0 <= left <= 64 - size  # inside the image
    t, lft, h, w = blob
    assert top <= t and t + h <= top + size and left <= lft and lft + w <= left + size  # the whole component
    inside = region[0, 0, top : top + size, left : left + size].sum()
    assert inside == region.sum()
    if 0 < t and t + h < 64 and 0 < lft and lft + w < 64 and (h, w) != (size, size):
        # away from the borders the component sits in the middle of the crop (within one pixel)
        assert abs((top + size / 2) - (t + h / 2)) <= 1 and abs((left + size / 2) - (lft + w / 2)) <= 1


def test_crop_of_a_component_larger_than_the_crop_lies_on_it():
    from covid_ct_cgan.networks.discriminator import region_crop_boxes

    size = 8
    region = _blob_mask(48, [(4, 4, 30, 40)])
    gen = torch.Generator().manual_seed(0)
    corners = set()
    for _ in range(20):
        (top, left), = region_crop_boxes(region, size, gen)[0]
        assert 0 <= top <= 48 - size and 0 <= left <= 48 - size
        centre = region[0, 0, top + size // 2, left + size // 2]
        assert centre == 1  # centred on a pixel of the component
        corners.add((top, left))
    assert len(corners) > 5  # a different part of it each time


def test_crop_picks_every_component_at_random_and_skips_samples_without_region():
    from covid_ct_cgan.networks.discriminator import region_crop_boxes

    size = 8
    two = _blob_mask(40, [(2, 2, 4, 4), (30, 30, 5, 5)])
    empty = torch.zeros(1, 1, 40, 40)
    region = torch.cat([two, empty, two])
    gen = torch.Generator().manual_seed(3)
    seen = set()
    for _ in range(30):
        boxes, has_region = region_crop_boxes(region, size, gen)
        assert has_region.tolist() == [True, False, True]
        assert boxes[1] == (16, 16)  # no region: the centred crop (its terms get zero weight)
        for top, left in (boxes[0], boxes[2]):
            covered = region[0, 0, top : top + size, left : left + size].sum().item()
            assert covered in (16.0, 25.0)  # one whole component
            seen.add(covered)
    assert seen == {16.0, 25.0}
    # the same random source gives the same crops
    assert region_crop_boxes(region, size, torch.Generator().manual_seed(5))[0] == \
        region_crop_boxes(region, size, torch.Generator().manual_seed(5))[0]


def test_crop_geometry_is_checked():
    from covid_ct_cgan.networks.discriminator import crop_patches, region_crop_boxes

    with pytest.raises(ValueError, match="crop size must be in 1..32"):
        region_crop_boxes(torch.zeros(2, 1, 32, 40), 33)
    with pytest.raises(ValueError, match=r"region must be \(B, 1, H, W\)"):
        region_crop_boxes(torch.zeros(2, 32, 32), 8)
    with pytest.raises(ValueError, match="2 crop boxes for a batch of 3"):
        crop_patches(torch.zeros(3, 1, 16, 16), [(0, 0), (0, 0)], 4)
    with pytest.raises(ValueError, match="leaves the 16x16 image"):
        crop_patches(torch.zeros(1, 1, 16, 16), [(13, 0)], 4)


def test_real_and_fake_crops_are_aligned_and_carry_the_map(maps):
    from covid_ct_cgan.networks.discriminator import crop_patches, region_crop_boxes

    label = maps(3, 32)
    real, fake = torch.rand(3, 1, 32, 32), torch.rand(3, 1, 32, 32, requires_grad=True)
    region = (label[:, 2:].sum(1, keepdim=True) > 0).float()
    boxes, _ = region_crop_boxes(region, 12)
    real_crop = crop_patches(torch.cat([label, real], 1), boxes, 12)
    fake_crop = crop_patches(torch.cat([label, fake], 1), boxes, 12)
    for i, (top, left) in enumerate(boxes):
        window = (slice(top, top + 12), slice(left, left + 12))
        assert torch.equal(real_crop[i, :4], label[i][(slice(None), *window)])  # the label map, same place
        assert torch.equal(fake_crop[i, :4], real_crop[i, :4])
        assert torch.equal(real_crop[i, 4], real[i, 0][window]) and torch.equal(fake_crop[i, 4], fake[i, 0][window])
    fake_crop[:, 4].sum().backward()  # differentiable: the generator gets gradients through the crop
    expected = torch.zeros_like(fake)
    for i, (top, left) in enumerate(boxes):
        expected[i, 0, top : top + 12, left : left + 12] = 1
    assert torch.equal(fake.grad, expected)


def test_local_discriminator_is_one_instance_norm_patchgan_and_learns(maps):
    from covid_ct_cgan.networks.discriminator import LocalDiscriminator

    torch.manual_seed(0)
    d = LocalDiscriminator(5, ndf=8, n_layers=3)
    assert d.num_d == 1 and len(d.discriminators) == 1
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in d.modules())
    x = pair(maps, 2, 16)
    out = d(x)
    assert len(out) == 1 and len(out[0]) == 5 and out[0][-1].shape[1] == 1
    masks = d.region_masks(torch.ones(2, 1, 16, 16))
    assert [m.shape for m in masks[0]] == [f[:, :1].shape for f in out[0]]
    out[0][-1].mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.parameters())


@pytest.mark.parametrize("cls", ["multi", "local"])
def test_spectral_norm_discriminator(maps, cls):
    """``norm="spectral"``: every convolution spectrally normalised, no norm layer; trains, runs under bf16
    autocast, keeps the region masks and round-trips through its state dict."""
    from torch.nn.utils import parametrize

    from covid_ct_cgan.networks.discriminator import D_NORMS, LocalDiscriminator

    assert "spectral" in D_NORMS
    build = (lambda norm: MultiResolutionDiscriminator(5, ndf=8, n_layers=3, num_d=2, norm=norm)) if cls == "multi" \
        else (lambda norm: LocalDiscriminator(5, ndf=8, n_layers=3, norm=norm))
    torch.manual_seed(0)
    d = build("spectral")
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(parametrize.is_parametrized(c, "weight") for c in convs)
    assert not any(isinstance(m, (torch.nn.InstanceNorm2d, torch.nn.BatchNorm2d)) for m in d.modules())
    x = pair(maps, 2, 32)
    out = d(x)
    reference = build("instance")(x)
    assert [[f.shape for f in s] for s in out] == [[f.shape for f in s] for s in reference]
    region = (x[:, 2:3] > 0).float()
    assert [[m.shape for m in s] for s in d.region_masks(region)] == [[f[:, :1].shape for f in s] for s in out]
    sum(s[-1].mean() for s in out).backward()
    assert all(p.grad is not None for p in d.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = d(x)
    assert all(torch.isfinite(s[-1].float()).all() for s in low)

    d.eval()
    torch.manual_seed(1)
    e = build("spectral").eval()
    e.load_state_dict(d.state_dict())
    with torch.no_grad():
        for a, b in zip(d(x), e(x)):
            torch.testing.assert_close(a[-1], b[-1])
    with pytest.raises(ValueError, match="norm must be one of"):
        build("spectrum")


def test_gaussian_dilation_is_the_gaussian_of_the_distance() -> None:
    from covid_ct_cgan.networks.discriminator import gaussian_dilation

    mask = torch.zeros(1, 1, 21, 21)
    mask[0, 0, 10, 10] = 1
    out = gaussian_dilation(mask, 3.0, 6)
    ys, xs = torch.meshgrid(torch.arange(21.0), torch.arange(21.0), indexing="ij")
    expected = torch.exp(-((ys - 10) ** 2 + (xs - 10) ** 2) / 18)
    within = ((ys - 10).abs() <= 6) & ((xs - 10).abs() <= 6)
    torch.testing.assert_close(out[0, 0][within], expected[within])
    assert bool((out[0, 0][~within] == 0).all())
    with pytest.raises(ValueError, match="sigma must be positive, got 0"):
        gaussian_dilation(mask, 0.0, 3)


@pytest.mark.parametrize("padding", [2, 1])
def test_soft_region_masks_peak_at_the_patch_centred_on_the_region(padding: int) -> None:
    """A one-pixel region: the soft mask is largest at the patch whose view is centred nearest to it, and 0 (up
    to interpolation) for every patch whose view does not reach it."""
    d = MultiResolutionDiscriminator(5, ndf=4, n_layers=2, num_d=1, padding=padding)
    region = torch.zeros(1, 1, 48, 48)
    region[0, 0, 20, 29] = 1
    soft = d.soft_region_masks(region)[0][0, 0]
    hard = d.region_masks(region)[0][-1][0, 0]
    ys, xs = d.discriminators[0].patch_centres(48, 48)
    assert soft.shape == hard.shape == (len(ys), len(xs))
    row, col = divmod(int(soft.argmax()), soft.shape[-1])
    assert int((ys - 20).abs().argmin()) == row and int((xs - 29).abs().argmin()) == col
    assert float(soft[hard == 0].max()) < 0.02
