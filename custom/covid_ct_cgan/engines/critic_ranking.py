"""Each epoch, what the discriminators can tell: paired ranking accuracy on a fixed validation batch.

The GAN losses of a stage read near "chance" whether the critics see the generator's fakes or not,
so :class:`CriticRanking` measures the critics directly: the first ``num_samples`` validation slices
(the same every epoch) go through the current generator (composited into the real slice where
training composites), then the real and the fake pair through each discriminator, and each scale's
share of region-touching patches scored higher on the real pair is published as
``engine.state.metrics['d1_ranking']`` (full resolution), ``'d2_ranking'`` (half), ``'d3_ranking'``
and ``'local_d_ranking'`` (the local discriminator's crops). ``EpochMeans`` writes them into the
stage's ``training.csv``; ``StatsHandler``, TensorBoard and MLflow log them with the other epoch
metrics. 0.5 means the critic cannot tell the generator's output from real slices at all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Engine, Events

from ..networks.discriminator import crop_patches, region_crop_boxes
from ..networks.ranking import RankingCounts, scale_ranking_counts
from ..networks.windows import generate
from ..networks.wrapping import unwrap
from ..precision import autocast_context

if TYPE_CHECKING:
    from .trainer import ConditionalGanTrainer

logger = logging.getLogger(__name__)

__all__ = ["CriticRanking", "ranking_columns"]

CROP_SEED = 0  # the local discriminator's crops of the fixed batch: the same boxes every epoch


class CriticRanking:
    """Publish each discriminator's paired ranking accuracy (real vs the current generator) every epoch.

    Attach it to a :class:`~covid_ct_cgan.engines.ConditionalGanTrainer` before ``EpochMeans``
    (handlers attach in list order, so its metrics are in the epoch's CSV row). The networks are
    put in eval mode for the measurement (spectral norm then does not advance its power
    iteration) and back afterwards; no gradient, no optimizer state and no random stream of
    training is touched.

    Args:
        dataset: validation dataset (items with ``condition``, ``image``, ``region``, ``label``), already
            at the stage's resolution.
        num_samples: the first this many slices form the fixed batch.
        amp: run the networks with mixed precision, as training does.
        interval: epochs between measurements.
        window: generate through windows of this size (a generator trained on crops), see
            :func:`~covid_ct_cgan.networks.windows.generate`; ``0``: the whole slice.
    """

    def __init__(self, dataset: Any, num_samples: int = 8, amp: bool = False, interval: int = 1,
                 window: int = 0) -> None:
        self.window = int(window)
        self.dataset = dataset
        self.num_samples = int(num_samples)
        self.amp = bool(amp)
        self.interval = max(int(interval), 1)
        self._batch: dict[str, torch.Tensor] | None = None

    def attach(self, engine: Engine) -> None:
        """Attach to a trainer at epoch completion."""
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def fixed_batch(self) -> dict[str, torch.Tensor] | None:
        """The validation slices the critics are scored on (read once), or ``None`` without validation data."""
        if self._batch is None and len(self.dataset) > 0:
            items = [self.dataset[i] for i in range(min(self.num_samples, len(self.dataset)))]
            self._batch = {k: torch.stack([torch.as_tensor(it[k]).float() for it in items])
                           for k in ("condition", "image", "region")}
        return self._batch

    @torch.no_grad()
    def measure(self, engine: ConditionalGanTrainer) -> dict[str, float]:
        """The ranking accuracy of every discriminator of ``engine`` on the fixed batch, by metric name."""
        batch = self.fixed_batch()
        if batch is None:
            return {}
        device = torch.device(engine.state.device)
        cond, real, region = (batch[k].to(device) for k in ("condition", "image", "region"))
        label_map = cond[:, : engine.num_map_channels]
        networks = [unwrap(n) for n in (engine.generator, engine.discriminator, engine.local_discriminator)
                    if n is not None]
        modes = [n.training for n in networks]
        for n in networks:
            n.eval()
        try:
            with autocast_context(device, self.amp):
                fake = generate(unwrap(engine.generator), cond, self.window).float()
                if engine.composite_fake:
                    fake = region * fake + (1.0 - region) * real
                real_pair, fake_pair = torch.cat([label_map, real], 1), torch.cat([label_map, fake], 1)
                disc = unwrap(engine.discriminator)
                counts = scale_ranking_counts(disc(real_pair), disc(fake_pair), disc.region_masks(region))
                local = _local_counts(engine, real_pair, fake_pair, region)
        finally:
            for n, mode in zip(networks, modes):
                n.train(mode)
        metrics = {f"d{i + 1}_ranking": c.accuracy for i, c in enumerate(counts)}
        if local is not None:
            metrics["local_d_ranking"] = local.accuracy
        return metrics

    def __call__(self, engine: ConditionalGanTrainer) -> None:
        metrics = self.measure(engine)
        engine.state.metrics.update(metrics)
        if metrics:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            logger.info(f"epoch {engine.state.epoch}: critics rank real above fake on {shown} of the region's patches")


def _local_counts(engine: Any, real_pair: torch.Tensor, fake_pair: torch.Tensor,
                  region: torch.Tensor) -> RankingCounts | None:
    """The local discriminator's counts on fixed crops around the region, or ``None`` without one."""
    if engine.local_discriminator is None:
        return None
    local = unwrap(engine.local_discriminator)
    size = min(engine.local_crop, int(region.shape[-2]), int(region.shape[-1]))
    boxes, has_region = region_crop_boxes(region.cpu(), size, torch.Generator().manual_seed(CROP_SEED))
    keep = has_region.to(region.device, region.dtype)[:, None, None, None]
    masks = [[m * keep for m in scale] for scale in local.region_masks(crop_patches(region, boxes, size))]
    real_crops, fake_crops = crop_patches(real_pair, boxes, size), crop_patches(fake_pair, boxes, size)
    return scale_ranking_counts(local(real_crops), local(fake_crops), masks)[0]


def ranking_columns(num_d: int, local_d: bool) -> Sequence[str]:
    """The ranking metrics a stage with ``num_d`` scales (and a local discriminator) publishes."""
    return [f"d{i + 1}_ranking" for i in range(num_d)] + (["local_d_ranking"] if local_d else [])
