"""Losses: LSGAN and pix2pix's cross-entropy over scales, feature matching, DFM (pix2pixHD arithmetic),
gradient isolation, L1."""

from __future__ import annotations

import math

import pytest
import torch

from covid_ct_cgan import losses
from covid_ct_cgan.losses import dfm_loss, dfm_weight_objective, feature_matching, gan_loss, l1_loss, lsgan_loss
from covid_ct_cgan.networks import DfmWeight, GlobalLocalGenerator, MultiResolutionDiscriminator, in_channels_for

N_LAYERS = 3


def discriminator(num_d: int = 2) -> MultiResolutionDiscriminator:
    torch.manual_seed(0)
    return MultiResolutionDiscriminator(5, ndf=8, n_layers=N_LAYERS, num_d=num_d)


def real_and_fake(maps, num_d: int = 2, batch: int = 3):
    torch.manual_seed(2)
    label = maps(batch, 32)
    real = torch.tanh(torch.randn(batch, 1, 32, 32))
    fake = torch.tanh(torch.randn(batch, 1, 32, 32))
    d = discriminator(num_d)
    return d(torch.cat([label, real], 1)), d(torch.cat([label, fake], 1))


def test_lsgan_sums_mse_over_scales_like_pix2pixhd(maps):
    real_f, fake_f = real_and_fake(maps)
    mse = torch.nn.MSELoss()
    expected_real = sum(mse(s[-1], torch.ones_like(s[-1])) for s in real_f)  # pix2pixHD GANLoss(use_lsgan=True)
    expected_fake = sum(mse(s[-1], torch.zeros_like(s[-1])) for s in fake_f)
    torch.testing.assert_close(lsgan_loss(real_f, True), expected_real, rtol=0, atol=0)
    torch.testing.assert_close(lsgan_loss(fake_f, False), expected_fake, rtol=0, atol=0)


def test_lsgan_region_weights(maps):
    real_f, _ = real_and_fake(maps)
    ones = [[torch.ones_like(f[:, :1]) for f in scale] for scale in real_f]
    torch.testing.assert_close(lsgan_loss(real_f, True, ones), lsgan_loss(real_f, True))
    region = [[torch.zeros_like(f[:, :1]) for f in scale] for scale in real_f]
    for scale in region:
        scale[-1][0, 0, :2, :3] = 1  # only six patches of sample 0 count
    expected = sum(((s[-1][0, 0, :2, :3] - 1) ** 2).mean() for s in real_f)
    torch.testing.assert_close(lsgan_loss(real_f, True, region), expected)
    nothing = [[torch.zeros_like(f[:, :1]) for f in scale] for scale in real_f]
    assert lsgan_loss(real_f, True, nothing) == 0


def test_gan_loss_lsgan_is_lsgan_loss(maps):
    real_f, fake_f = real_and_fake(maps)
    region = [[torch.zeros_like(f[:, :1]) for f in scale] for scale in real_f]
    for scale in region:
        scale[-1][1, 0, :2, :2] = 1
    for target in (True, False):
        torch.testing.assert_close(gan_loss(real_f, target), lsgan_loss(real_f, target), rtol=0, atol=0)
        torch.testing.assert_close(gan_loss(fake_f, target, region, "lsgan"), lsgan_loss(fake_f, target, region), rtol=0, atol=0)


def test_gan_loss_vanilla_is_pix2pix_bce_with_logits(maps):
    """pix2pix's GANLoss('vanilla'): BCEWithLogitsLoss of the patch logits against 1 / 0, per scale, summed."""
    real_f, fake_f = real_and_fake(maps)
    bce = torch.nn.BCEWithLogitsLoss()
    for feats in (real_f, fake_f):
        for target, value in ((True, 1.0), (False, 0.0)):
            expected = sum(bce(s[-1], torch.full_like(s[-1], value)) for s in feats)
            torch.testing.assert_close(gan_loss(feats, target, mode="vanilla"), expected)
    # hand-checked numbers: logits 0 -> log 2 either way; logit 2 against real -> log(1 + e^-2)
    logits = [[torch.zeros(1, 1, 2, 2)], [torch.full((1, 1, 1, 1), 2.0)]]
    torch.testing.assert_close(gan_loss(logits, True, mode="vanilla"), torch.tensor(math.log(2) + math.log1p(math.exp(-2))))
    torch.testing.assert_close(gan_loss(logits, False, mode="vanilla"), torch.tensor(math.log(2) + math.log1p(math.exp(2))))
    # region weights: only the weighted patches count (here one patch of sample 0 on D1, none on D2)
    region = [[torch.zeros_like(f[:, :1]) for f in scale] for scale in real_f]
    region[0][-1][0, 0, 1, 2] = 1
    logit = real_f[0][-1][0, 0, 1, 2]
    torch.testing.assert_close(gan_loss(real_f, True, region, "vanilla"), torch.nn.functional.softplus(-logit))


def test_gan_loss_refuses_unknown_mode(maps):
    real_f, _ = real_and_fake(maps)
    with pytest.raises(ValueError, match="GAN loss mode must be one of .*'wgan'"):
        gan_loss(real_f, True, mode="wgan")


def test_feature_matching_per_scale_and_sample(maps):
    real_f, fake_f = real_and_fake(maps)
    fm = feature_matching(real_f, fake_f, N_LAYERS)
    assert fm.shape == (2, 3)
    for i in range(2):
        for s in range(3):
            expected = (4 / (N_LAYERS + 1)) * sum(
                (fake_f[i][j][s] - real_f[i][j][s]).abs().mean() for j in range(N_LAYERS + 1)
            )
            torch.testing.assert_close(fm[i, s], expected)
    torch.testing.assert_close(feature_matching(real_f, fake_f), fm)  # n_layers inferred
    ones = [[torch.ones_like(f[:, :1]) for f in scale] for scale in real_f]
    torch.testing.assert_close(feature_matching(real_f, fake_f, N_LAYERS, ones), fm)
    with pytest.raises(ValueError, match="scales"):
        feature_matching(real_f, fake_f[:1])


def test_feature_matching_detaches_the_real_features():
    real = [[torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 1, 3, 3, requires_grad=True)]]
    fake = [[torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 1, 3, 3, requires_grad=True)]]
    feature_matching(real, fake, n_layers=0).sum().backward()
    assert real[0][0].grad is None
    assert fake[0][0].grad is not None
    assert fake[0][1].grad is None  # the patch prediction is not matched


def test_equal_dfm_is_pix2pixhd_feature_loss_exactly(maps):
    """pix2pixHD: loss_G_GAN_Feat / lambda_feat
    = sum_i sum_j (1 / num_D) * (4 / (n_layers + 1)) * L1(fake_ij, real_ij)."""
    real_f, fake_f = real_and_fake(maps, num_d=2)
    num_d, feat_weights = 2, 4.0 / (N_LAYERS + 1)
    l1 = torch.nn.L1Loss()
    reference = 0
    for i in range(num_d):
        for j in range(len(fake_f[i]) - 1):
            reference += (1.0 / num_d) * feat_weights * l1(fake_f[i][j], real_f[i][j].detach())
    b = DfmWeight(16, mode="equal")(real_f)
    got = dfm_loss(feature_matching(real_f, fake_f, N_LAYERS), b)
    torch.testing.assert_close(got, reference, rtol=1e-6, atol=0)  # same terms, summed in another order


def test_equal_dfm_three_scales_is_plain_average(maps):
    real_f, fake_f = real_and_fake(maps, num_d=3)
    fm = feature_matching(real_f, fake_f, N_LAYERS)
    b = DfmWeight(16, mode="equal", num_d=3)(real_f)
    torch.testing.assert_close(dfm_loss(fm, b), fm.mean())


def test_dfm_loss_weighting():
    fm = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    b = torch.tensor([0.1, 0.9])
    expected = ((0.1 * 1 + 0.9 * 3) + (0.9 * 2 + 0.1 * 5)) / 2
    torch.testing.assert_close(dfm_loss(fm, b), torch.tensor(expected))
    three = torch.tensor([[1.0], [2.0], [4.0]])
    torch.testing.assert_close(dfm_loss(three, 0.4), torch.tensor(0.4 * 1 + 0.3 * 2 + 0.3 * 4))  # 1 - b shared
    torch.testing.assert_close(dfm_loss(fm[:1], b), fm[0].mean())  # one scale: FM(D1)
    torch.testing.assert_close(dfm_weight_objective(fm, b), -dfm_loss(fm, b))


def test_pix2pixhd_baseline_generator_loss_exactly(maps):
    """desum='sum' + two scales + DfmWeight('equal') gives pix2pixHD's G loss (GAN + lambda_feat * feature matching)."""
    torch.manual_seed(0)
    g = GlobalLocalGenerator(4, ngf=8, n_downsampling=2, n_blocks_global=1, n_blocks_local=1, desum="sum")
    d = discriminator(2)
    label = maps(2, 32)
    real = torch.tanh(torch.randn(2, 1, 32, 32))
    fake = g(label)
    pred_real, pred_fake = d(torch.cat([label, real], 1)), d(torch.cat([label, fake], 1))
    # pix2pixHD, models/pix2pixHD_model.py (use_lsgan, num_D=2, n_layers_D=3, lambda_feat=10)
    mse, l1 = torch.nn.MSELoss(), torch.nn.L1Loss()
    loss_g_gan = sum(mse(p[-1], torch.ones_like(p[-1])) for p in pred_fake)
    loss_g_feat = 0
    for i in range(2):
        for j in range(len(pred_fake[i]) - 1):
            loss_g_feat += 0.5 * (4.0 / (N_LAYERS + 1)) * l1(pred_fake[i][j], pred_real[i][j].detach()) * 10
    ours = lsgan_loss(pred_fake, True) + 10 * dfm_loss(
        feature_matching(pred_real, pred_fake), DfmWeight(16, mode="equal")(pred_real)
    )
    torch.testing.assert_close(ours, loss_g_gan + loss_g_feat, rtol=1e-6, atol=0)


def test_gradients_reach_dfm_net_only_in_the_discriminator_step(maps):
    torch.manual_seed(0)
    g = GlobalLocalGenerator(4, ngf=8, n_downsampling=2, n_blocks_global=1, n_blocks_local=1)
    d = discriminator(2)
    dfm = DfmWeight(in_channels_for(8, N_LAYERS, 1))
    label = maps(2, 32)
    real = torch.tanh(torch.randn(2, 1, 32, 32))
    fake = g(label)

    def grads(module):
        return [p.grad for p in module.parameters()]

    # generator step: GAN + DFM loss; b must not learn here
    real_f, fake_f = d(torch.cat([label, real], 1)), d(torch.cat([label, fake], 1))
    b = dfm(real_f)
    loss_g = lsgan_loss(fake_f, True) + 10 * dfm_loss(feature_matching(real_f, fake_f), b)
    loss_g.backward()
    assert all(grad is None for grad in grads(dfm))
    assert all(grad is not None for grad in grads(g.desum))  # the DESUM net learns with the generator
    assert all(grad is not None for grad in grads(g.local_net))
    g.zero_grad(set_to_none=True)
    d.zero_grad(set_to_none=True)

    # discriminator step: the DFM objective trains the DFM net and nothing else
    real_f, fake_f = d(torch.cat([label, real], 1)), d(torch.cat([label, fake.detach()], 1))
    b = dfm(real_f)
    dfm_weight_objective(feature_matching(real_f, fake_f), b).backward()
    assert all(grad is not None and grad.abs().sum() > 0 for grad in grads(dfm))
    assert all(grad is None for grad in grads(d))
    assert all(grad is None for grad in grads(g))
    # maximising the DFM loss moves b towards the scale with the larger feature distance
    fm = feature_matching(real_f, fake_f).detach()
    with torch.no_grad():
        before = dfm_loss(fm, dfm(real_f))
        for p in dfm.parameters():
            p -= 1.0 * p.grad
        after = dfm_loss(fm, dfm(real_f))
    assert after > before


def test_l1_loss():
    fake = torch.zeros(2, 1, 4, 4)
    real = torch.ones(2, 1, 4, 4)
    real[1] = 3
    torch.testing.assert_close(l1_loss(fake, real), torch.tensor(2.0))
    weight = torch.zeros(2, 1, 4, 4)
    weight[1, :, :2] = 1
    torch.testing.assert_close(l1_loss(fake, real, weight), torch.tensor(3.0))


def test_texture_loss_asks_for_texture_not_layout() -> None:
    """Gram matrices: zero for the same features and for the same texture moved elsewhere (where feature matching
    is large), large for a smooth fill of a textured region, and zero where a sample has no region."""
    torch.manual_seed(0)
    texture = torch.randn(2, 6, 16, 16)
    real = [[texture, torch.zeros(2, 1, 16, 16)]]
    assert torch.equal(losses.texture_loss(real, real), torch.zeros(1, 2))
    moved = [[torch.roll(texture, (5, 3), dims=(2, 3)), real[0][1]]]
    assert losses.texture_loss(real, moved).max() < 1e-5
    assert losses.feature_matching(real, moved, 0).min() > 1.0
    smooth = [[texture.mean(dim=(2, 3), keepdim=True).expand_as(texture).clone(), real[0][1]]]
    assert losses.texture_loss(real, smooth).min() > 0.5
    no_region = [[torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 16, 16)]]
    assert torch.equal(losses.texture_loss(real, smooth, no_region), torch.zeros(1, 2))
    # only the weighted positions count: texture outside the region changes nothing
    region = torch.zeros(2, 1, 16, 16)
    region[..., :8, :] = 1
    outside = texture.clone()
    outside[..., 8:, :] = 0
    weights = [[region, region]]
    assert losses.texture_loss(real, [[outside, real[0][1]]], weights).max() < 1e-6
    with pytest.raises(ValueError, match="real and fake features have 1 and 2 scales"):
        losses.texture_loss(real, real + real)


# ---- region-aware targets of a composited fake (d_target: region)


def _square_region(batch: int = 2, size: int = 64) -> torch.Tensor:
    region = torch.zeros(batch, 1, size, size)
    region[0, :, 16:48, 16:48] = 1  # sample 1 has no region
    return region


@pytest.mark.parametrize("n_layers", [2, 3])
def test_region_fake_targets_are_fake_on_the_region_and_real_far_from_it(n_layers: int) -> None:
    torch.manual_seed(0)
    d = MultiResolutionDiscriminator(5, ndf=4, n_layers=n_layers, num_d=2)
    region = _square_region()
    preds = d(torch.randn(2, 5, 64, 64))
    targets = losses.region_fake_targets(region, d)
    hard = d.region_masks(region)
    for k, (t, scale) in enumerate(zip(targets, preds)):
        assert t.shape == scale[-1].shape
        assert float(t.min()) >= 0 and float(t.max()) <= 1
        assert float(t[0].min()) < 1e-6  # patches centred on the drawn square: fake
        seen = hard[k][-1][0] > 0
        assert bool((t[0][~seen] > 0.99).all())  # views that never reach it: real
        assert 0.0 < float(t[0][seen].mean()) < 1.0  # soft in between
        assert torch.equal(t[1], torch.ones_like(t[1]))  # nothing drawn: real everywhere


def test_region_fake_targets_equal_the_uniform_target_when_everything_or_nothing_counts() -> None:
    """A region covering the slice (every pixel drawn) is the uniform target 0; a sample without region has no
    region weight, so its loss is the uniform one too (zero)."""
    torch.manual_seed(0)
    d = MultiResolutionDiscriminator(5, ndf=4, n_layers=2, num_d=2)
    preds = d(torch.randn(2, 5, 32, 32))
    everything = losses.region_fake_targets(torch.ones(2, 1, 32, 32), d)
    assert all(torch.equal(t, torch.zeros_like(t)) for t in everything)
    for mode in losses.GAN_MODES:
        torch.testing.assert_close(gan_loss(preds, False, mode=mode, targets=everything), gan_loss(preds, False, mode=mode))
    nothing = torch.zeros(2, 1, 32, 32)
    weights = d.region_masks(nothing)
    for mode in losses.GAN_MODES:
        region_loss = gan_loss(preds, False, weights, mode, targets=losses.region_fake_targets(nothing, d))
        assert region_loss == gan_loss(preds, False, weights, mode) == 0


def test_gan_loss_targets_replace_the_constant_and_are_checked() -> None:
    preds = [[torch.full((1, 1, 2, 2), 0.5)], [torch.full((1, 1, 1, 1), 0.5)]]
    half = [torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 1, 1), 0.5)]
    assert lsgan_loss(preds, False, targets=half) == 0
    torch.testing.assert_close(lsgan_loss(preds, False, targets=[torch.ones(1, 1, 2, 2), torch.ones(1, 1, 1, 1)]),
                               lsgan_loss(preds, True))
    bce = gan_loss(preds, False, mode="vanilla", targets=[torch.ones(1, 1, 2, 2), torch.ones(1, 1, 1, 1)])
    torch.testing.assert_close(bce, gan_loss(preds, True, mode="vanilla"))
    with pytest.raises(ValueError, match=r"targets must hold one map per scale \(2\), got 1"):
        gan_loss(preds, False, targets=half[:1])
