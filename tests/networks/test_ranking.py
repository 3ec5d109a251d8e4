"""Paired ranking accuracy of patch scores (covid_ct_cgan.networks.ranking)."""

from __future__ import annotations

import math

import pytest
import torch

from covid_ct_cgan.networks.ranking import RankingCounts, patch_ranking_counts, scale_ranking_counts


def test_counts_wins_ties_and_only_masked_positions() -> None:
    real = torch.tensor([[[[2.0, 1.0], [0.0, 5.0]]]])
    fake = torch.tensor([[[[1.0, 1.0], [3.0, -9.0]]]])
    everywhere = patch_ranking_counts(real, fake)
    assert (everywhere.wins, everywhere.total) == (2.5, 4.0)  # two wins, one tie, one loss
    masked = patch_ranking_counts(real, fake, torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]]))
    assert (masked.wins, masked.total) == (1.0, 2.0)
    assert masked.accuracy == 0.5


def test_no_compared_position_is_nan_and_counts_add_up() -> None:
    none = patch_ranking_counts(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert none.total == 0 and math.isnan(none.accuracy)
    assert RankingCounts(1, 2).add(RankingCounts(3, 4)).accuracy == pytest.approx(4 / 6)


def test_every_scale_uses_its_patch_prediction_and_its_mask() -> None:
    ones, zeros = torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    real = [[zeros, ones], [zeros, zeros[..., :2, :2]]]  # per scale: an intermediate feature, the prediction last
    fake = [[ones, zeros], [ones, ones[..., :2, :2]]]
    counts = scale_ranking_counts(real, fake, [[ones, ones], [ones, ones[..., :2, :2]]])
    assert [c.accuracy for c in counts] == [1.0, 0.0]
    assert [c.total for c in counts] == [16, 4]


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="one shape"):
        patch_ranking_counts(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 3, 3))
