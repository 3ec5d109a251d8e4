"""CT intensity scales and the exact mapping to and from the model's [-1, 1].

The model works on images in [-1, 1]. CT in Hounsfield units (HU) is clipped
to the lung window (level -600, width 1500 by default: [-1350, 150] HU) and
scaled linearly; 8-bit images (already windowed, 0..255) are scaled linearly.
The inverse is exact inside the window; values outside it come back as the
window's edge (the clipping cannot be undone).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

# an intensity scale: one of SCALES (a plain str: it comes from configs and the command line; _range checks it)
Scale = str
SCALES: tuple[str, ...] = ("hu", "8bit")

DEFAULT_WINDOW_LEVEL = -600.0
DEFAULT_WINDOW_WIDTH = 1500.0

ArrayLike = np.ndarray | torch.Tensor
# what the mappings return: the type they were given
Array = TypeVar("Array", np.ndarray, torch.Tensor)


def window_bounds(level: float = DEFAULT_WINDOW_LEVEL, width: float = DEFAULT_WINDOW_WIDTH) -> tuple[float, float]:
    """Return the (low, high) HU bounds of a window.

    Raises:
        ValueError: width is not positive.
    """
    if not width > 0:
        raise ValueError(f"window width must be positive, got {width}")
    return level - width / 2.0, level + width / 2.0


def _range(scale: Scale, level: float, width: float) -> tuple[float, float]:
    if scale == "hu":
        return window_bounds(level, width)
    if scale == "8bit":
        return 0.0, 255.0
    raise ValueError(f"unknown intensity scale {scale!r}; expected one of {SCALES}")


def to_model(x: Array, scale: Scale = "hu", level: float = DEFAULT_WINDOW_LEVEL, width: float = DEFAULT_WINDOW_WIDTH) -> Array:
    """Map HU (clipped to the window) or 8-bit values to [-1, 1] as float32."""
    low, high = _range(scale, level, width)
    if isinstance(x, torch.Tensor):
        x = x.float().clamp(low, high)
    else:
        x = np.clip(np.asarray(x, dtype=np.float32), low, high)
    return (x - low) / (high - low) * 2.0 - 1.0


def from_model(x: Array, scale: Scale = "hu", level: float = DEFAULT_WINDOW_LEVEL, width: float = DEFAULT_WINDOW_WIDTH) -> Array:
    """Exact inverse of :func:`to_model` (float32; clamp of the input to [-1, 1])."""
    low, high = _range(scale, level, width)
    if isinstance(x, torch.Tensor):
        x = x.float().clamp(-1.0, 1.0)
    else:
        x = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
    return (x + 1.0) / 2.0 * (high - low) + low


def to_storage(x: np.ndarray, scale: Scale) -> np.ndarray:
    """Round values of a scale to the dtype they are written as (int16 HU, uint8)."""
    x = np.rint(np.asarray(x, dtype=np.float32))
    if scale == "hu":
        return np.clip(x, -32768, 32767).astype(np.int16)
    return np.clip(x, 0, 255).astype(np.uint8)
