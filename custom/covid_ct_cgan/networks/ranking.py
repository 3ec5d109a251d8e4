"""Paired ranking accuracy: how often a discriminator scores the real slice above its fake, patch by patch.

A discriminator's loss reads near "chance" whether it sees the fakes or not (a critic that ranks
nine real patches in ten above their fakes still has a least-squares loss near 0.25), so the
project judges its critics by this instead: for the same label map, the real pair and the fake
pair go through the discriminator, and at every patch position whose receptive field touches
the synthesised region (:meth:`~covid_ct_cgan.networks.discriminator.NLayerDiscriminator.region_masks`)
the real score is compared with the fake score at the same position. 1.0: every such patch is
ranked right; 0.5: the critic cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["RankingCounts", "patch_ranking_counts", "scale_ranking_counts"]


class RankingCounts:
    """Running sums of paired comparisons (wins count 1, ties 0.5) over batches.

    Args:
        wins: comparisons won by the real patch so far (ties added as 0.5).
        total: comparisons so far.
    """

    def __init__(self, wins: float = 0.0, total: float = 0.0) -> None:
        self.wins = float(wins)
        self.total = float(total)

    def add(self, other: RankingCounts) -> RankingCounts:
        """Add another count in place and return ``self``."""
        self.wins += other.wins
        self.total += other.total
        return self

    @property
    def accuracy(self) -> float:
        """Share of comparisons the real patch won; ``nan`` when there was none."""
        return self.wins / self.total if self.total > 0 else float("nan")


def patch_ranking_counts(real_scores: Tensor, fake_scores: Tensor, mask: Tensor | None = None) -> RankingCounts:
    """Compare a discriminator's patch scores of real and fake pairs position by position.

    Args:
        real_scores: ``(B, 1, h, w)`` patch predictions on (map, real image).
        fake_scores: the same on (map, fake image), same label map and shape.
        mask: ``(B, 1, h, w)``; only positions where it is above 0 count (the patches whose receptive
            field touches the synthesised region). ``None``: every position.

    Returns:
        the wins (real above fake; ties 0.5) and the number of compared positions.

    Raises:
        ValueError: the shapes differ.
    """
    if real_scores.shape != fake_scores.shape or (mask is not None and mask.shape != real_scores.shape):
        shapes = [tuple(t.shape) for t in (real_scores, fake_scores, mask) if t is not None]
        raise ValueError(f"real scores, fake scores and mask must have one shape, got {shapes}")
    real, fake = real_scores.detach().float(), fake_scores.detach().float()
    keep = torch.ones_like(real, dtype=torch.bool) if mask is None else mask.detach() > 0
    wins = (real > fake).float() + 0.5 * (real == fake).float()
    return RankingCounts(float(wins[keep].sum()), float(keep.sum()))


def scale_ranking_counts(
    real_features: Sequence[Sequence[Tensor]], fake_features: Sequence[Sequence[Tensor]],
    masks: Sequence[Sequence[Tensor]] | None = None,
) -> list[RankingCounts]:
    """:func:`patch_ranking_counts` for every scale of a (multi-resolution) discriminator's output.

    Args:
        real_features: per scale, the feature list on the real pair (patch prediction last).
        fake_features: the same for the fake pair.
        masks: per scale, the region masks of :meth:`region_masks` (shaped like the features);
            ``None``: every patch counts.

    Returns:
        one count per scale (D1 = full resolution first).
    """
    return [
        patch_ranking_counts(real[-1], fake[-1], None if masks is None else masks[i][-1])
        for i, (real, fake) in enumerate(zip(real_features, fake_features))
    ]

