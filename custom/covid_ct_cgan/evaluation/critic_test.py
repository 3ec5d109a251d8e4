"""Critic test: can a discriminator, trained alone, tell real slices from degraded ones on slices it never saw?

The discriminator loss does not say whether a critic sees texture: a least-squares D that
outputs 0.5 everywhere reads 0.25, and so does one that ranks every real patch above its
degraded twin but is not yet calibrated. This module measures what matters to the
generator: a FRESH discriminator is trained alone, with the trainer's region-weighted
least-squares loss (:func:`covid_ct_cgan.losses.gan_loss` weighted by the D's own
``region_masks``, as step 2 of :class:`~covid_ct_cgan.engines.trainer.ConditionalGanTrainer`),
on pairs (one-hot label map + real image) vs (the same map + a degraded image), and every
few steps its **paired ranking accuracy** is measured on held-out pairs: over the patch
predictions whose receptive field touches the region, the share where ``D(real) > D(fake)``.

Degradations (:func:`degrade`): ``"mean_fill"`` (the region filled with its mean, what a
generator that drew no texture would give) and ``"blur"`` (Gaussian ``sigma`` 2 inside the
region: texture energy gone, shapes kept). :func:`generator_fakes` gives a third kind: the
composited output of a trained generator.

An instance-norm PatchGAN standardises each channel per image and so discards the texture
energy that tells these apart; ``benchmarks/critic_test.py`` runs the test on the
MedSeg slices for every normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import losses
from ..networks.discriminator import MultiResolutionDiscriminator, crop_patches, region_crop_boxes
from ..networks.ranking import RankingCounts, scale_ranking_counts

__all__ = [
    "BLUR_SIGMA",
    "DEGRADATIONS",
    "CriticPairs",
    "CriticResult",
    "PairedAccuracy",
    "critic_pairs",
    "degrade",
    "fixed_crops",
    "generator_fakes",
    "paired_ranking_accuracy",
    "train_critic",
]

DEGRADATIONS: tuple[str, ...] = ("mean_fill", "blur")
BLUR_SIGMA = 2.0


def _gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` (kernel radius ``ceil(3 sigma)``, reflect padding)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = image.shape[1]
    out = F.pad(image, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def degrade(image: Tensor, region: Tensor, kind: str, sigma: float = BLUR_SIGMA) -> Tensor:
    """The image with its region degraded; outside the region it is unchanged.

    Args:
        image: ``(B, C, H, W)`` or ``(C, H, W)`` float image.
        region: mask of the same shape with one channel (bool or values in ``[0, 1]``; ``> 0.5`` is the region).
        kind: ``"mean_fill"``: every region pixel set to the mean of the region's pixels of that image
            (channel); ``"blur"``: the whole image blurred with a Gaussian of ``sigma`` pixels and
            composited inside the region only.
        sigma: the blur's standard deviation in pixels.

    Returns:
        the degraded image, shaped and typed like ``image`` (a sample without region is returned unchanged).

    Raises:
        ValueError: unknown ``kind``, or ``region`` not shaped like ``image`` with one channel.
    """
    if kind not in DEGRADATIONS:
        raise ValueError(f"kind must be one of {DEGRADATIONS}, got {kind!r}")
    squeeze = image.ndim == 3
    x = image.unsqueeze(0) if squeeze else image
    m = region.unsqueeze(0) if region.ndim == 3 else region
    if x.ndim != 4 or m.ndim != 4 or m.shape[1] != 1 or m.shape[0] != x.shape[0] or m.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"region {tuple(region.shape)} must be shaped like image {tuple(image.shape)} with one channel")
    m = (m.float() > 0.5).to(x.dtype)
    if kind == "mean_fill":
        mean = (x * m).sum(dim=(2, 3), keepdim=True) / m.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
        filled = mean.expand_as(x)
    else:
        filled = _gaussian_blur(x, sigma)
    out = m * filled + (1.0 - m) * x
    return out.squeeze(0) if squeeze else out


@dataclass
class PairedAccuracy:
    """Paired ranking accuracy of a discriminator: the share of region patches where ``D(real) > D(fake)``.

    Attributes:
        overall: over the patches of every scale together (NaN when no patch touches a region).
        per_scale: one value per scale (D1 = full resolution first; NaN for a scale without region patches).
        patches: the number of patch pairs compared, per scale.
    """

    overall: float
    per_scale: list[float]
    patches: list[int]


def paired_ranking_accuracy(
    real_feats: Sequence[Sequence[Tensor]], fake_feats: Sequence[Sequence[Tensor]], masks: Sequence[Sequence[Tensor]]
) -> PairedAccuracy:
    """How often the discriminator scores the real patch above the same patch of the degraded (fake) image.

    Only the patch predictions (last feature of every scale) whose receptive field touches the
    region count: ``masks[scale][-1] > 0``, from the discriminator's own ``region_masks(region)``.
    Ties count one half.

    Args:
        real_feats: per scale, the feature list of ``D(map, real)`` (patch predictions last).
        fake_feats: the same for ``D(map, fake)``, same pairs in the same order.
        masks: ``D.region_masks(region)``, nested like the features.

    Returns:
        per scale and overall accuracy, with the number of patch pairs.

    Raises:
        ValueError: the three lists do not pair up.
    """
    if not len(real_feats) == len(fake_feats) == len(masks):
        raise ValueError(f"{len(real_feats)} real, {len(fake_feats)} fake and {len(masks)} mask scales")
    counts = scale_ranking_counts(real_feats, fake_feats, masks)
    total = RankingCounts()
    for count in counts:
        total.add(count)
    return PairedAccuracy(total.accuracy, [c.accuracy for c in counts], [int(c.total) for c in counts])


@dataclass
class CriticPairs:
    """Real and fake pairs for the critic test, all ``(N, *, H, W)`` float tensors on one device.

    Attributes:
        maps: one-hot label maps ``(N, num_classes, H, W)`` (the discriminator's condition).
        real: real images ``(N, 1, H, W)``.
        fake: degraded (or generated) images ``(N, 1, H, W)``, equal to ``real`` outside ``region``.
        region: the degraded region ``(N, 1, H, W)`` in ``{0, 1}``.
    """

    maps: Tensor
    real: Tensor
    fake: Tensor
    region: Tensor

    def __len__(self) -> int:
        return int(self.real.shape[0])

    def select(self, index: Tensor | Sequence[int]) -> CriticPairs:
        """The pairs at ``index``."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.real.device)
        return CriticPairs(self.maps[index], self.real[index], self.fake[index], self.region[index])

    def crop(self, boxes: Sequence[tuple[int, int]], size: int) -> CriticPairs:
        """The same ``size`` x ``size`` crop of every tensor of a pair (:func:`crop_patches`)."""
        return CriticPairs(*(crop_patches(t, boxes, size) for t in (self.maps, self.real, self.fake, self.region)))


def critic_pairs(maps: Tensor, images: Tensor, regions: Tensor, kind: str, sigma: float = BLUR_SIGMA) -> CriticPairs:
    """Real vs degraded pairs: the images and the same images with their region degraded by :func:`degrade`.

    Args:
        maps: one-hot label maps ``(N, num_classes, H, W)``.
        images: ``(N, 1, H, W)``.
        regions: ``(N, 1, H, W)`` masks.
        kind: one of :data:`DEGRADATIONS`.
        sigma: the blur's standard deviation in pixels.

    Returns:
        the pairs.
    """
    region = (regions.float() > 0.5).float()
    real = images.float()
    return CriticPairs(maps.float(), real, degrade(real, region, kind, sigma), region)


def fixed_crops(pairs: CriticPairs, size: int, per_image: int = 1, seed: int = 0) -> CriticPairs:
    """Held-out crops for a local discriminator: ``per_image`` crops per pair, drawn once with a fixed generator.

    Crops are centred on random region components as the trainer draws them
    (:func:`~covid_ct_cgan.networks.discriminator.region_crop_boxes`); pairs without region are left out.

    Args:
        pairs: whole-slice pairs.
        size: crop side in pixels.
        per_image: crops drawn per pair.
        seed: seed of the ``torch.Generator`` that draws them.

    Returns:
        ``per_image`` x (pairs with region) cropped pairs.
    """
    keep = pairs.region.flatten(1).amax(1) > 0.5
    pairs = pairs.select(torch.nonzero(keep).flatten())
    if len(pairs) == 0:
        raise ValueError("no held-out pair has a region to crop")
    rng = torch.Generator().manual_seed(seed)
    crops = []
    for _ in range(per_image):
        boxes, _ = region_crop_boxes(pairs.region, size, rng)
        crops.append(pairs.crop(boxes, size))
    return CriticPairs(*(torch.cat([getattr(c, k) for c in crops]) for k in ("maps", "real", "fake", "region")))


@dataclass
class CriticResult:
    """What :func:`train_critic` measured.

    Attributes:
        trace: ``(step, held-out paired accuracy)`` after every evaluation (step 0 = untrained).
        first_step: the first evaluated step with held-out accuracy >= the target, ``None`` if never.
        final_accuracy: held-out accuracy after the last step.
        final_per_scale: its value per scale.
        final_loss: the mean discriminator loss (``0.5 * (real + fake)`` as the trainer) over the last
            ``loss_window`` steps.
        losses: the loss of every step.
    """

    trace: list[tuple[int, float]]
    first_step: int | None
    final_accuracy: float
    final_per_scale: list[float]
    final_loss: float
    losses: list[float] = field(default_factory=list)


def _d_input(maps: Tensor, image: Tensor) -> Tensor:
    return torch.cat([maps, image], 1)


@torch.no_grad()
def _evaluate(discriminator: MultiResolutionDiscriminator, pairs: CriticPairs, chunk: int = 16) -> PairedAccuracy:
    """Held-out paired accuracy, the real and the fake pair of a chunk in one forward (as the trainer)."""
    was_training = discriminator.training
    discriminator.eval()
    real_all: list[list[list[Tensor]]] = []
    fake_all: list[list[list[Tensor]]] = []
    mask_all: list[list[list[Tensor]]] = []
    try:
        for start in range(0, len(pairs), chunk):
            part = pairs.select(range(start, min(start + chunk, len(pairs))))
            n = len(part)
            feats = discriminator(torch.cat([_d_input(part.maps, part.real), _d_input(part.maps, part.fake)], 0))
            real_all.append([[scale[-1][:n]] for scale in feats])
            fake_all.append([[scale[-1][n:]] for scale in feats])
            mask_all.append([[m[-1]] for m in discriminator.region_masks(part.region)])
    finally:
        discriminator.train(was_training)

    def joined(parts: list[list[list[Tensor]]]) -> list[list[Tensor]]:
        return [[torch.cat([p[s][0] for p in parts])] for s in range(len(parts[0]))]

    return paired_ranking_accuracy(joined(real_all), joined(fake_all), joined(mask_all))


def train_critic(
    discriminator: MultiResolutionDiscriminator,
    train: CriticPairs,
    heldout: CriticPairs,
    steps: int,
    eval_every: int = 5,
    local_crop: int | None = None,
    learning_rate: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    batch_size: int = 2,
    seed: int = 0,
    target: float = 0.9,
    gan_mode: str = "lsgan",
    loss_window: int = 10,
    progress: Callable[[int, float], Any] | None = None,
) -> CriticResult:
    """Train a fresh discriminator alone on real vs fake pairs and follow its held-out paired accuracy.

    Every step draws ``batch_size`` training pairs (with a region; a seeded generator), puts the real
    and the fake pair through the discriminator in one batch and takes an Adam step on the trainer's
    discriminator loss ``0.5 * (gan_loss(real, True, w) + gan_loss(fake, False, w))`` with
    ``w = discriminator.region_masks(region)``. With ``local_crop`` the pairs are first cropped
    around a random region component (:func:`~covid_ct_cgan.networks.discriminator.region_crop_boxes`),
    as the trainer feeds its local discriminator; ``heldout`` must then already be crops
    (:func:`fixed_crops`). Held-out accuracy (:func:`paired_ranking_accuracy`) is measured before the
    first step and every ``eval_every`` steps, and after the last.

    Args:
        discriminator: a fresh :class:`~covid_ct_cgan.networks.MultiResolutionDiscriminator` or
            :class:`~covid_ct_cgan.networks.discriminator.LocalDiscriminator` (trained in place).
        train: training pairs (whole slices).
        heldout: held-out pairs, at the discriminator's input size.
        steps: Adam steps.
        eval_every: steps between held-out evaluations.
        local_crop: crop side for a local discriminator; ``None`` feeds whole slices.
        learning_rate: Adam's learning rate (the trainer's 2e-4).
        betas: Adam's betas (the trainer's ``(0.5, 0.999)``).
        batch_size: pairs per step.
        seed: seeds the pair draws, the crops and (via ``torch.manual_seed``) nothing else: build the
            discriminator under your own seed.
        target: the accuracy whose first step is reported.
        gan_mode: the GAN loss, ``"lsgan"`` (the paper) or ``"vanilla"``.
        loss_window: the final loss is the mean over these last steps.
        progress: called as ``progress(step, accuracy)`` after each evaluation.

    Returns:
        the accuracy trace, the first step at ``target``, the final accuracy and loss.

    Raises:
        ValueError: no training pair has a region, or ``steps`` < 1.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    keep = train.region.flatten(1).amax(1) > 0.5
    train = train.select(torch.nonzero(keep).flatten())
    if len(train) == 0:
        raise ValueError("no training pair has a region")
    draw = torch.Generator().manual_seed(seed)
    crop_rng = torch.Generator().manual_seed(seed + 1)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=learning_rate, betas=betas)
    discriminator.train()
    trace: list[tuple[int, float]] = []
    step_losses: list[float] = []
    first: int | None = None
    acc = _evaluate(discriminator, heldout)

    def record(step: int, accuracy: PairedAccuracy) -> None:
        nonlocal first
        trace.append((step, accuracy.overall))
        if first is None and accuracy.overall >= target:
            first = step
        if progress is not None:
            progress(step, accuracy.overall)

    record(0, acc)
    for step in range(1, steps + 1):
        batch = train.select(torch.randint(len(train), (batch_size,), generator=draw))
        if local_crop is not None:
            size = min(local_crop, int(batch.region.shape[-2]), int(batch.region.shape[-1]))
            boxes, has_region = region_crop_boxes(batch.region, size, crop_rng)
            batch = batch.crop(boxes, size)
            keep_w = has_region.to(batch.region.dtype)[:, None, None, None]
            weights = [[m * keep_w for m in scale] for scale in discriminator.region_masks(batch.region)]
        else:
            weights = discriminator.region_masks(batch.region)
        n = len(batch)
        feats = discriminator(torch.cat([_d_input(batch.maps, batch.real), _d_input(batch.maps, batch.fake)], 0))
        real_feats = [[f[:n] for f in scale] for scale in feats]
        fake_feats = [[f[n:] for f in scale] for scale in feats]
        loss = 0.5 * (
            losses.gan_loss(real_feats, True, weights, gan_mode) + losses.gan_loss(fake_feats, False, weights, gan_mode)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step_losses.append(float(loss.detach()))
        if step % eval_every == 0 or step == steps:
            acc = _evaluate(discriminator, heldout)
            record(step, acc)
    window = step_losses[-loss_window:]
    return CriticResult(trace, first, acc.overall, acc.per_scale, sum(window) / len(window), step_losses)


@torch.no_grad()
def generator_fakes(
    generator: nn.Module,
    labels: Tensor,
    images: Tensor,
    num_classes: int,
    condition: str,
    context_region: str = "lung",
    dilation: int = 3,
    composite: bool = True,
    chunk: int = 4,
    window: int = 0,
) -> CriticPairs:
    """Real vs generated pairs: the third degradation, a trained generator's output.

    The generator input is built as training builds it (:func:`covid_ct_cgan.transforms.make_condition`);
    the fake is the generator's output composited into the real slice inside its synthesis region
    (``composite``; what the lesion-inpainting trainer shows its critics), else the whole output.

    Args:
        generator: a trained generator in eval mode (e.g. ``trained_model(...).network``).
        labels: integer label maps ``(N, 1, H, W)`` at the generator's image size.
        images: real images ``(N, 1, H, W)`` on the model scale.
        num_classes: one-hot channels.
        condition: the generator's ``condition``.
        context_region: its ``context_region``.
        dilation: its ``context_dilation``.
        composite: paste the output into the real slice inside the region.
        chunk: slices per generator call.
        window: the generator's ``crop_size`` when it was trained on crops: it then runs in windows of that size
            (:func:`covid_ct_cgan.networks.windows.generate`, as synthesis runs it); ``0``: the whole slice.

    Returns:
        the pairs (region: the generator's synthesis region).
    """
    from ..networks.windows import generate
    from ..transforms import make_condition

    param = next(generator.parameters())
    maps, fakes, regions = [], [], []
    for start in range(0, labels.shape[0], chunk):
        lab, img = labels[start : start + chunk], images[start : start + chunk].float()
        cond, region = make_condition(lab, img, num_classes, condition, context_region, dilation)
        out = generate(generator, cond.to(param.device, param.dtype), window).float().cpu()
        fakes.append(region * out + (1.0 - region) * img if composite else out)
        maps.append(cond[:, :num_classes])
        regions.append(region)
    return CriticPairs(torch.cat(maps), images.float(), torch.cat(fakes), torch.cat(regions))
