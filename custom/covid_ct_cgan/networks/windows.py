"""Running a generator trained on crops: windows of its crop size over the whole slice.

Its instance norms standardise each channel over the field they see; on a whole slice that field is larger
and air-heavy, and the drawn region shifts (``benchmarks/probe_generator_norm_on_crops.py``). Training's
validation, sample grids and critics (:mod:`covid_ct_cgan.engines`) and synthesis (:mod:`covid_ct_cgan.inference`)
all run such a generator through this one rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from monai.inferers import SlidingWindowInferer

__all__ = ["generate"]

OVERLAP = 0.5


def generate(predictor: Callable[[torch.Tensor], torch.Tensor], condition: torch.Tensor, window: int = 0,
             batch_size: int = 1) -> torch.Tensor:
    """The generator's output for ``condition``: one call, or, with ``window`` > 0 smaller than the input (a
    generator trained on crops of that size), MONAI's ``SlidingWindowInferer`` with windows of that size,
    overlap 0.5 and Gaussian blending.

    Args:
        predictor: the generator (or a runner of it) mapping ``(B, C, h, w)`` to ``(B, 1, h, w)``.
        condition: ``(B, C, H, W)`` generator input.
        window: the window side; ``0``: the whole input in one call.
        batch_size: windows per predictor call.

    Returns:
        ``(B, 1, H, W)``.
    """
    if 0 < window < max(condition.shape[-2:]):
        inferer = SlidingWindowInferer((window, window), sw_batch_size=batch_size, overlap=OVERLAP, mode="gaussian")
        return cast(torch.Tensor, inferer(condition, predictor))  # a tensor in, a tensor out
    return predictor(condition)
