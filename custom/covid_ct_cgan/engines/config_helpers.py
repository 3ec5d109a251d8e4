"""Small named functions that keep the bundle configs' expressions short (``train.yaml``, ``multi_gpu_train.yaml``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

__all__ = ["data_parallel", "without_none"]


def without_none(entries: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a config mapping whose value is not ``None``, in their order.

    ``train.yaml`` lists what a checkpoint may hold in ``save_objects``; an object this run does
    not build (the DFM optimizer outside the joint stage, the local discriminator when it is off)
    is ``None`` there and is left out of ``save_dict``.

    Args:
        entries: names and objects (a resolved config mapping).

    Returns:
        A new dict without the ``None`` entries.

    Raises:
        TypeError: ``entries`` is not a mapping.
    """
    if not isinstance(entries, Mapping):
        raise TypeError(f"expected a mapping of names to objects, got {type(entries).__name__}")
    return {name: value for name, value in entries.items() if value is not None}


def data_parallel(module: torch.nn.Module, device: torch.device | str,
                  find_unused_parameters: bool = False) -> DistributedDataParallel:
    """``module`` moved to ``device`` and wrapped in :class:`DistributedDataParallel`.

    The process group must be initialised (``multi_gpu_train.yaml``'s ``initialize`` does it); DDP's
    constructor is a collective, so every rank builds its wrapped modules in the same order.

    Args:
        module: the network to train on every rank.
        device: this rank's device; on CUDA it is also DDP's only ``device_ids`` entry (CPU: none).
        find_unused_parameters: DDP's flag (the global-local generator leaves some parameters unused per stage).

    Returns:
        The wrapped module.
    """
    device = torch.device(device)
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(module.to(device), device_ids=device_ids,
                                   find_unused_parameters=find_unused_parameters)
