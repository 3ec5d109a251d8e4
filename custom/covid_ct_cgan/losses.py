"""Losses: GAN loss over all scales (least squares or pix2pix's cross-entropy), feature matching per scale,
the DFM loss, pix2pix's L1.

Discriminator outputs are nested lists, per scale (D1 = full resolution
first) of per-layer features, the patch prediction last (see
:class:`~covid_ct_cgan.networks.MultiResolutionDiscriminator`). The optional
``weights`` of the ``map+context`` mode are shaped the same way (from
:meth:`~covid_ct_cgan.networks.MultiResolutionDiscriminator.region_masks`):
each term becomes a weighted mean over the outputs whose receptive field
touches the region to synthesise.

How the paper's objective is put together by the trainer
(:class:`~covid_ct_cgan.engines.ConditionalGanTrainer`; ``gan_loss`` is
``lsgan_loss`` unless ``gan_mode="vanilla"``)::

    # discriminator step (real_f = d(map, real), fake_f = d(map, fake.detach()), one forward)
    loss_d = 0.5 * (gan_loss(real_f, True) + gan_loss(fake_f, False))  # d_target "region": targets=region_fake_targets(...)
    b = dfm_net(fake_f)                                      # (B,), looks at D1's features of the fake pair
    loss_dfm_net = dfm_weight_objective(feature_matching(real_f, fake_f), b)   # only the DFM net learns
    # d's optimizer steps; generator step with the updated d, both pairs through the same state:
    fake_g = d(map, fake)                                    # gradients reach the generator
    real_g = d(map, real)                                    # without gradients
    fm = feature_matching(real_g, fake_g)                    # (num_scales, B)
    loss_g = gan_loss(fake_g, True) + lambda_fm * dfm_loss(fm, b)              # b detached inside
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .networks.discriminator import MultiResolutionDiscriminator

Features = Sequence[Sequence[Tensor]]
EPS = 1e-8
GAN_MODES = ("lsgan", "vanilla")
# the discriminator's target for the fake pair: 0 everywhere, or 0 only where pixels were synthesised
# (:func:`region_fake_targets`, for composites)
D_TARGETS = ("uniform", "region")


def _weighted_mean(values: Tensor, weight: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Mean of ``values`` (B, C, h, w) over ``dims`` with a (B, 1, h, w) weight broadcast over channels."""
    weight = weight.to(values.dtype)
    total = (values * weight).sum(dim=dims)
    count = (weight.expand_as(values)).sum(dim=dims)
    return total / count.clamp_min(EPS)


def _scale_target(target_is_real: bool, targets: Sequence[Tensor] | None, i: int) -> Tensor | float:
    """Scale ``i``'s target: its map from ``targets`` if given, else 1 (real) or 0 (fake)."""
    if targets is None:
        return 1.0 if target_is_real else 0.0
    return targets[i]


def region_fake_targets(region: Tensor, discriminator: MultiResolutionDiscriminator) -> list[Tensor]:
    """Per-patch targets of a composited fake: 0 where the patch's view is centred on synthesised pixels, 1 where
    it sees only untouched real ones (AOT-GAN's soft-mask PatchGAN, SM-PatchGAN, Zeng et al. 2022).

    A composite (``map+context`` conditioning) is real outside the region the generator filled; with the
    uniform fake target 0 the discriminator is asked to call patches fake that are pixel for pixel the real
    slice, and it settles between the two targets. Here each scale's target is ``1 - soft mask``, the soft
    mask from the discriminator's own geometry
    (:meth:`~covid_ct_cgan.networks.MultiResolutionDiscriminator.soft_region_masks`). The real pair's target
    stays 1 and the generator's too.

    Args:
        region: ``(B, 1, H, W)`` the pixels that were synthesised (values in ``[0, 1]``), at the
            discriminator's input size; no gradient flows through it.
        discriminator: a discriminator with ``soft_region_masks`` (the multi-resolution or the local one).

    Returns:
        one ``(B, 1, h, w)`` target map per scale, shaped like that scale's patch prediction; pass it as
        ``targets`` to :func:`gan_loss`. A region covering the whole image gives 0 everywhere (the uniform target).
    """
    return [1.0 - m for m in discriminator.soft_region_masks(region)]


def lsgan_loss(
    predictions: Features, target_is_real: bool, weights: Features | None = None, targets: Sequence[Tensor] | None = None
) -> Tensor:
    """Least-squares GAN loss, summed over the scales (pix2pixHD's ``GANLoss`` with ``use_lsgan``).

    For each scale the mean squared error of the patch prediction (last
    feature) against 1 (real) or 0 (fake); the scales are summed, not averaged,
    exactly as pix2pixHD does. pix2pixHD halves the discriminator's real + fake
    sum; that is up to the caller.

    Args:
        predictions: per scale, the discriminator's feature list.
        target_is_real: target 1 if true, else 0.
        weights: optional region weights shaped like ``predictions``; each
            scale's error is then averaged over the weighted patches only (a
            scale whose weights are all zero contributes 0).
        targets: optional per-scale target maps shaped like the patch predictions (from
            :func:`region_fake_targets`), used instead of ``target_is_real``'s constant.

    Returns:
        scalar loss.
    """
    loss = predictions[0][-1].new_zeros(())
    for i, scale in enumerate(predictions):
        err = (scale[-1] - _scale_target(target_is_real, targets, i)) ** 2
        loss = loss + (err.mean() if weights is None else _weighted_mean(err, weights[i][-1], (0, 1, 2, 3)))
    return loss


def gan_loss(
    predictions: Features,
    target_is_real: bool,
    weights: Features | None = None,
    mode: str = "lsgan",
    targets: Sequence[Tensor] | None = None,
) -> Tensor:
    """GAN loss summed over the scales: least squares (``"lsgan"``) or cross-entropy on logits (``"vanilla"``).

    ``"lsgan"`` is :func:`lsgan_loss` (pix2pixHD, the paper). ``"vanilla"`` is
    pix2pix's ``GANLoss("vanilla")``: ``BCEWithLogitsLoss`` of each scale's
    patch logits against 1 (real) or 0 (fake), averaged over the patches; the
    scales are summed as in :func:`lsgan_loss` (pix2pix has one).

    Args:
        predictions: per scale, the discriminator's feature list (patch logits last).
        target_is_real: target 1 if true, else 0.
        weights: optional region weights shaped like ``predictions``: each scale's
            loss is then averaged over the weighted patches only.
        mode: ``"lsgan"`` or ``"vanilla"``.
        targets: optional per-scale target maps in ``[0, 1]`` (from :func:`region_fake_targets`) instead of
            ``target_is_real``'s constant; soft targets are valid for the cross-entropy too.

    Returns:
        scalar loss.

    Raises:
        ValueError: unknown ``mode``, or ``targets`` with another number of scales than ``predictions``.
    """
    if targets is not None and len(targets) != len(predictions):
        raise ValueError(f"targets must hold one map per scale ({len(predictions)}), got {len(targets)}")
    if mode == "lsgan":
        return lsgan_loss(predictions, target_is_real, weights, targets)
    if mode != "vanilla":
        raise ValueError(f"GAN loss mode must be one of {GAN_MODES}, got {mode!r}")
    loss = predictions[0][-1].new_zeros((), dtype=torch.float32)
    for i, scale in enumerate(predictions):
        logits = scale[-1].float()
        target = torch.broadcast_to(torch.as_tensor(_scale_target(target_is_real, targets, i), dtype=logits.dtype,
                                                    device=logits.device), logits.shape)
        err = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = loss + (err.mean() if weights is None else _weighted_mean(err, weights[i][-1], (0, 1, 2, 3)))
    return loss


def _paired_scales(
    real_features: Features, fake_features: Features
) -> Iterator[tuple[int, Sequence[Tensor], Sequence[Tensor]]]:
    """``(scale index, real features, fake features)`` per scale, after checking that the two lists pair up."""
    if len(real_features) != len(fake_features):
        raise ValueError(f"real and fake features have {len(real_features)} and {len(fake_features)} scales")
    for i, (real, fake) in enumerate(zip(real_features, fake_features)):
        if len(real) != len(fake):
            raise ValueError(f"scale {i}: real and fake have {len(real)} and {len(fake)} features")
        yield i, real, fake


def texture_loss(real_features: Features, fake_features: Features, weights: Features | None = None) -> Tensor:
    """Texture (style) loss: distance of the Gram matrices of discriminator features, per scale and sample.

    Feature matching compares features position by position, so where the
    position of a structure cannot be known (the vessels of a lesion drawn into a
    blanked region) it is minimised by their average: a smooth fill. Gram matrices
    (Gatys et al. 2015) keep which features occur together and drop where, so they
    ask for the texture of the real region without asking for its exact layout;
    the features of a barely trained network carry texture too (Ustyuzhaninov et
    al. 2017). For every intermediate layer (all but the patch prediction): the
    ``C x C`` Gram matrix over the (weighted) positions, its mean absolute
    difference from the real one relative to the real one's mean magnitude
    (scale-free across layers), averaged over the layers.

    Args:
        real_features: per scale, the discriminator's features on (map, real); detached here.
        fake_features: the same on (map, fake).
        weights: optional region weights shaped like the features: only weighted
            positions count (a sample without region gets 0).

    Returns:
        ``(num_scales, B)`` tensor.

    Raises:
        ValueError: the real and fake feature lists differ in length.
    """
    per_scale = []
    for i, real, fake in _paired_scales(real_features, fake_features):
        layers = len(fake) - 1
        total = fake[0].new_zeros((fake[0].shape[0],), dtype=torch.float32)
        for j in range(layers):
            f_real, f_fake = real[j].detach().float(), fake[j].float()
            if weights is None:
                w = f_fake.new_ones((f_fake.shape[0], 1, *f_fake.shape[2:]))
            else:
                w = weights[i][j].float()
            count = w.sum(dim=(1, 2, 3)).clamp_min(EPS)[:, None, None]

            def gram(f: Tensor) -> Tensor:  # called in this iteration only: `w` and `count` are this layer's
                fw = (f * w).flatten(2)  # noqa: B023
                return torch.bmm(fw, f.flatten(2).transpose(1, 2)) / count  # noqa: B023

            g_real, g_fake = gram(f_real), gram(f_fake)
            scale = g_real.abs().mean(dim=(1, 2)).clamp_min(EPS)
            total = total + (g_fake - g_real).abs().mean(dim=(1, 2)) / scale
        per_scale.append(total / layers)
    return torch.stack(per_scale)


def feature_matching(
    real_features: Features, fake_features: Features, n_layers: int | None = None, weights: Features | None = None
) -> Tensor:
    """Feature-matching loss per scale and sample: ``FM(D_k)`` of the paper.

    ``FM = 4 / (n_layers + 1) * sum over the intermediate layers (all but the
    patch prediction) of mean |fake - real|``, the real features detached, as
    pix2pixHD (before its ``1 / num_D`` and ``lambda_feat``).

    Args:
        real_features: per scale, the discriminator's features on (map, real).
        fake_features: the same on (map, fake).
        n_layers: the discriminator's stride-2 layers; inferred from the
            feature lists (``len - 2``) if not given.
        weights: optional region weights shaped like the features: weighted
            mean over each sample's region instead of the plain mean.

    Returns:
        ``(num_scales, B)`` tensor.

    Raises:
        ValueError: the real and fake feature lists differ in length.
    """
    per_scale = []
    for i, real, fake in _paired_scales(real_features, fake_features):
        layers = len(real) - 2 if n_layers is None else n_layers
        feat_weight = 4.0 / (layers + 1)
        total = fake[0].new_zeros((fake[0].shape[0],))
        for j in range(len(fake) - 1):
            diff = (fake[j] - real[j].detach()).abs()
            if weights is None:
                total = total + diff.mean(dim=(1, 2, 3))
            else:
                total = total + _weighted_mean(diff, weights[i][j], (1, 2, 3))
        per_scale.append(feat_weight * total)
    return torch.stack(per_scale)


def _weighted_scales(fm_per_scale: Tensor, b: Tensor | float) -> Tensor:
    if fm_per_scale.shape[0] == 1:
        return fm_per_scale[0].mean()
    rest = fm_per_scale[1:].mean(dim=0)
    return (b * fm_per_scale[0] + (1.0 - b) * rest).mean()


def dfm_loss(fm_per_scale: Tensor, b: Tensor | float) -> Tensor:
    """Dynamic feature-matching loss for the generator step: ``b * FM(D1) + (1 - b) * FM(D2)``.

    With three scales ``1 - b`` is shared equally by D2 and D3; with one scale
    it is ``FM(D1)``. Per-sample weights are applied per sample, then averaged
    over the batch. ``b`` is detached: this loss trains the generator only.
    With ``b = 1 / num_scales`` (``DfmWeight`` mode ``"equal"``) it is
    pix2pixHD's ``loss_G_GAN_Feat / lambda_feat``.

    Args:
        fm_per_scale: ``(num_scales, B)`` from :func:`feature_matching`.
        b: ``(B,)`` weights or one number.

    Returns:
        scalar loss.
    """
    if isinstance(b, Tensor):
        b = b.detach()
    return _weighted_scales(fm_per_scale, b)


def dfm_weight_objective(fm_per_scale: Tensor, b: Tensor) -> Tensor:
    """Loss that trains the DFM weighting net (discriminator step): minus the DFM loss on detached FM values.

    Minimising it maximises the DFM loss with respect to ``b`` only, so the
    net learns to put the weight on the scale where the generator is furthest
    from real; no gradient reaches the generator or the discriminators.

    Args:
        fm_per_scale: ``(num_scales, B)`` feature-matching values.
        b: ``(B,)`` weights from :class:`~covid_ct_cgan.networks.DfmWeight`, not detached.

    Returns:
        scalar to minimise.
    """
    return -_weighted_scales(fm_per_scale.detach(), b)


def l1_loss(fake: Tensor, real: Tensor, weight: Tensor | None = None) -> Tensor:
    """pix2pix's L1 term (the trainer multiplies it by ``lambda_l1``, 100 in pix2pix).

    Args:
        fake: generated images ``(B, C, H, W)``.
        real: real images, same shape.
        weight: optional ``(B, 1, H, W)`` region weight: mean over the region only.

    Returns:
        scalar loss.
    """
    diff = (fake - real).abs()
    return diff.mean() if weight is None else _weighted_mean(diff, weight, (0, 1, 2, 3))
