"""Tiny inputs for the network tests: one-hot label maps that differ between samples."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


def make_maps(batch: int = 3, size: int = 32, classes: int = 4, seed: int = 0) -> torch.Tensor:
    """One-hot maps ``(batch, classes, size, size)``: a lung disc with a random number of lesion blobs per sample."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    maps = []
    for i in range(batch):
        label = torch.zeros(size, size, dtype=torch.long)
        label[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2] = 1
        for _ in range(i + 1):
            cy, cx = torch.randint(size // 4, 3 * size // 4, (2,), generator=gen).tolist()
            r = int(torch.randint(2, max(3, size // 6), (1,), generator=gen))
            label[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = int(torch.randint(2, classes, (1,), generator=gen))
        maps.append(torch.nn.functional.one_hot(label, classes).permute(2, 0, 1).float())
    return torch.stack(maps)


@pytest.fixture
def maps() -> Callable[..., torch.Tensor]:
    """Factory for tiny one-hot label maps, see :func:`make_maps`."""
    return make_maps
