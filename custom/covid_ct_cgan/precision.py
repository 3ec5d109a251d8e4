"""Mixed precision shared by training and inference: whether AMP is on by default, and the autocast context.

Both :mod:`covid_ct_cgan.engines` (the trainer, its sample previews) and
:mod:`covid_ct_cgan.inference` (synthesis, its tuning probes) run the generator under
the same autocast, so a model trained with AMP is synthesised the same way.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["amp_by_default", "autocast_context", "native_bf16_cpu"]


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles), as torch detects it."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_tile"))


def amp_by_default(device: torch.device | str) -> bool:
    """The default of ``amp``: on CUDA, and on CPUs with native bf16; off elsewhere, where bf16 is
    emulated and a convolution is tens of times slower than in fp32 (see ``benchmarks/``).

    Args:
        device: the device the run uses (``"cuda:0"``, ``"cpu"`` or a :class:`torch.device`).

    Returns:
        Whether mixed precision is on unless the config says otherwise.
    """
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and native_bf16_cpu())


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision: bf16 autocast on CPU, fp16 autocast on CUDA; a no-op when disabled.

    Args:
        device: where the forward runs.
        enabled: ``amp`` of the run.

    Returns:
        A context manager to run the forward in.
    """
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast(device.type, dtype=torch.bfloat16)
