"""CriticRanking: each discriminator's paired ranking accuracy on a fixed validation batch, every epoch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from covid_ct_cgan.engines.critic_ranking import CriticRanking, ranking_columns
from covid_ct_cgan.networks.discriminator import LocalDiscriminator, MultiResolutionDiscriminator


class BrightIsReal(nn.Module):
    """A critic that scores a patch -1 when its receptive field sees a dark (negative) pixel, else 0."""

    def __init__(self, num_d: int = 2) -> None:
        super().__init__()
        self.inner = MultiResolutionDiscriminator(2, ndf=4, n_layers=2, num_d=num_d, norm="none")

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        dark = self.inner.region_masks((x[:, -1:] < 0).float())
        return [[*feats[:-1], -dark[scale][-1]] for scale, feats in enumerate(self.inner(x))]

    def region_masks(self, mask: torch.Tensor) -> list[list[torch.Tensor]]:
        return self.inner.region_masks(mask)


def _dataset(n: int = 3, size: int = 32) -> list[dict[str, torch.Tensor]]:
    items = []
    for i in range(n):
        region = torch.zeros(1, size, size)
        region[:, 8 + i : 20 + i, 10:22] = 1
        items.append({"condition": torch.cat([1 - region, region]), "image": torch.full((1, size, size), 0.5),
                      "region": region, "label": region.long()})
    return items


def _trainer(generator: nn.Module, discriminator: nn.Module, local: nn.Module | None = None,
             composite: bool = True) -> SimpleNamespace:
    return SimpleNamespace(generator=generator, discriminator=discriminator, local_discriminator=local,
                           local_crop=16, num_map_channels=1, composite_fake=composite,
                           state=SimpleNamespace(device="cpu", epoch=1, metrics={}))


class Dark(nn.Module):
    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return torch.full_like(cond[:, :1], -1.0)


def test_a_critic_that_sees_the_fake_ranks_every_region_patch_right() -> None:
    trainer = _trainer(Dark(), BrightIsReal())
    handler = CriticRanking(_dataset(), num_samples=2)
    handler(trainer)
    assert trainer.state.metrics["d1_ranking"] == 1.0 and trainer.state.metrics["d2_ranking"] == 1.0
    assert "local_d_ranking" not in trainer.state.metrics


def test_a_fake_equal_to_the_real_slice_is_at_chance_and_modes_are_restored() -> None:
    class Copy(nn.Module):
        def forward(self, cond: torch.Tensor) -> torch.Tensor:
            return torch.full_like(cond[:, :1], 0.5)

    generator, critic = Copy(), BrightIsReal()
    local = LocalDiscriminator(2, ndf=4, n_layers=2, norm="none")
    generator.train(), critic.train(), local.eval()
    trainer = _trainer(generator, critic, local)
    CriticRanking(_dataset(), num_samples=3)(trainer)
    metrics = trainer.state.metrics
    assert metrics["d1_ranking"] == 0.5 and metrics["d2_ranking"] == 0.5  # every comparison a tie
    assert metrics["local_d_ranking"] == 0.5
    assert generator.training and critic.training and not local.training


def test_only_the_region_counts_when_the_fake_is_composited() -> None:
    # the generator darkens everything, but the composite keeps the real slice outside the region:
    # patches that never see the region tie and are not counted, so the score stays 1.0
    trainer = _trainer(Dark(), BrightIsReal(num_d=1), composite=True)
    handler = CriticRanking(_dataset(), num_samples=1)
    handler(trainer)
    assert trainer.state.metrics["d1_ranking"] == 1.0
    batch = handler.fixed_batch()
    assert batch is not None and batch["image"].shape == (1, 1, 32, 32)


def test_empty_validation_publishes_nothing_and_columns_follow_the_stage() -> None:
    trainer = _trainer(Dark(), BrightIsReal())
    CriticRanking([], num_samples=4)(trainer)
    assert trainer.state.metrics == {}
    assert list(ranking_columns(2, False)) == ["d1_ranking", "d2_ranking"]
    assert list(ranking_columns(1, True)) == ["d1_ranking", "local_d_ranking"]


@pytest.mark.parametrize("num_samples", [1, 5])
def test_the_batch_is_the_first_validation_slices(num_samples: int) -> None:
    batch = CriticRanking(_dataset(3), num_samples=num_samples).fixed_batch()
    assert batch is not None and batch["condition"].shape[0] == min(num_samples, 3)
