"""Looking through the wrappers training puts around a network (``DistributedDataParallel``)."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

__all__ = ["unwrap"]


def unwrap(module: torch.nn.Module) -> Any:
    """The module inside a ``DistributedDataParallel`` (or the module itself).

    Args:
        module: a network, wrapped or not.

    Returns:
        The network whose ``state_dict`` keys have no ``module.`` prefix (typed ``Any``: its own class, with
        methods such as ``region_masks``, is what the wrapper hides).
    """
    return module.module if isinstance(module, DistributedDataParallel) else module
