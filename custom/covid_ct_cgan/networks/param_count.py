"""Parameter counts of the networks (for the bundle docs and the paper comparison)."""

from __future__ import annotations

from torch import nn


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of a module.

    Args:
        module: any module.
        trainable_only: count only parameters with ``requires_grad``.

    Returns:
        the number of scalar parameters.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
