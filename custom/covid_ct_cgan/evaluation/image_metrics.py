"""Image-quality metrics of one generated slice against the real one, on the whole slice or inside the lung.

All on the model's scale [-1, 1] (``data_range`` 2) with MONAI's metrics:

- **complemented** (the composited slice): ``PSNRMetric(max_val=2)``,
  ``SSIMMetric(spatial_dims=2, data_range=2)`` (Gaussian window 11, sigma 1.5,
  k1 0.01, k2 0.03: the SSIM of Wang et al. and of scikit-image with
  ``gaussian_weights=True, use_sample_covariance=False``) and ``RMSEMetric``.
- **lung only**: the same quantities restricted to the lung mask (label > 0).
  MSE over lung pixels = MONAI's ``MSEMetric`` on the pair with every pixel
  outside the lung set equal (so it adds nothing) times ``pixels / lung
  pixels``; PSNR ``= 10 log10(2^2 / MSE)`` and RMSE ``= sqrt(MSE)`` from it.
  SSIM: MONAI's SSIM map (:func:`monai.metrics.regression.compute_ssim_and_cs`,
  valid windows only) averaged over the windows centred on a lung pixel.
- RMSE is also given in HU: ``RMSE * window_width / 2`` (within the lung
  window; values outside it were clipped on the way in).

The tests check every function against scikit-image and numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import MSEMetric, PSNRMetric, RMSEMetric, SSIMMetric
from monai.metrics.regression import KernelType, compute_ssim_and_cs

DATA_RANGE = 2.0  # the model's [-1, 1]
SSIM_KERNEL = 11
SSIM_SIGMA = 1.5
REGIONS: tuple[str, ...] = ("complemented", "lung_only")
METRICS: tuple[str, ...] = ("psnr", "ssim", "rmse")


def _batch(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``[x, y]`` array -> ``(1, 1, x, y)`` float64 tensor."""
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)[None, None]


def _value(result: torch.Tensor | Sequence[Any]) -> float:
    """The one number a MONAI metric returns for a batch of one (its ``__call__`` is typed for lists too)."""
    assert isinstance(result, torch.Tensor), f"expected a tensor from the metric, got {type(result).__name__}"
    return float(result.item())


def _check(pred: np.ndarray, real: np.ndarray, mask: np.ndarray | None = None) -> None:
    if np.shape(pred) != np.shape(real) or (mask is not None and np.shape(mask) != np.shape(real)):
        raise ValueError(f"shapes differ: generated {np.shape(pred)}, real {np.shape(real)}"
                         + (f", mask {np.shape(mask)}" if mask is not None else ""))
    if min(np.shape(real)) < SSIM_KERNEL:
        raise ValueError(f"slices must be at least {SSIM_KERNEL} pixels a side for SSIM, got {np.shape(real)}")


def psnr(pred: np.ndarray, real: np.ndarray) -> float:
    """PSNR (dB) of a slice pair in [-1, 1], MONAI ``PSNRMetric(max_val=2)``; ``inf`` when identical."""
    _check(pred, real)
    return _value(PSNRMetric(max_val=DATA_RANGE)(_batch(pred), _batch(real)))


def ssim(pred: np.ndarray, real: np.ndarray) -> float:
    """SSIM of a slice pair in [-1, 1], MONAI ``SSIMMetric(spatial_dims=2, data_range=2)``."""
    _check(pred, real)
    metric = SSIMMetric(spatial_dims=2, data_range=DATA_RANGE, win_size=SSIM_KERNEL, kernel_sigma=SSIM_SIGMA)
    return _value(metric(_batch(pred), _batch(real)))


def rmse(pred: np.ndarray, real: np.ndarray) -> float:
    """RMSE of a slice pair (in the model's units), MONAI ``RMSEMetric``."""
    _check(pred, real)
    return _value(RMSEMetric()(_batch(pred), _batch(real)))


def masked_mse(pred: np.ndarray, real: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared error over the pixels of ``mask`` (MONAI ``MSEMetric`` on the masked pair); NaN if empty."""
    _check(pred, real, mask)
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return math.nan
    inside = np.where(mask, pred, real)  # outside the mask both are equal and add 0 to the sum
    full = _value(MSEMetric()(_batch(inside), _batch(real)))
    return full * mask.size / float(mask.sum())


def masked_ssim(pred: np.ndarray, real: np.ndarray, mask: np.ndarray) -> float:
    """MONAI's SSIM map averaged over the windows whose centre lies in ``mask``; NaN if none does."""
    _check(pred, real, mask)
    ssim_map, _ = compute_ssim_and_cs(
        _batch(pred), _batch(real), spatial_dims=2, kernel_size=[SSIM_KERNEL] * 2, kernel_sigma=[SSIM_SIGMA] * 2,
        data_range=DATA_RANGE, kernel_type=KernelType.GAUSSIAN,
    )
    pad = SSIM_KERNEL // 2
    centres = np.asarray(mask, dtype=bool)[pad:-pad, pad:-pad]
    if not centres.any():
        return math.nan
    return float(ssim_map[0, 0].numpy()[centres].mean())


def psnr_from_mse(mse: float) -> float:
    """PSNR (dB) for data range 2; ``inf`` for 0, NaN for NaN."""
    if math.isnan(mse):
        return math.nan
    return math.inf if mse == 0 else 10.0 * math.log10(DATA_RANGE**2 / mse)


def slice_metrics(pred: np.ndarray, real: np.ndarray, lung: np.ndarray, window_width: float | None = None) -> dict[str, dict[str, float]]:
    """Every metric of one slice pair for both regions.

    Args:
        pred: generated (composited) slice ``[x, y]`` in [-1, 1].
        real: real slice ``[x, y]`` in [-1, 1].
        lung: boolean lung mask ``[x, y]``.
        window_width: HU window width of a CT slice (adds ``rmse_hu``); None for 8-bit slices.

    Returns:
        ``{"complemented": {...}, "lung_only": {...}}`` with ``psnr``, ``ssim``, ``rmse`` and ``rmse_hu``.
    """
    lung_mse = masked_mse(pred, real, lung)
    out = {
        "complemented": {"psnr": psnr(pred, real), "ssim": ssim(pred, real), "rmse": rmse(pred, real)},
        "lung_only": {"psnr": psnr_from_mse(lung_mse), "ssim": masked_ssim(pred, real, lung), "rmse": math.sqrt(lung_mse)},
    }
    for values in out.values():
        values["rmse_hu"] = values["rmse"] * window_width / 2.0 if window_width else math.nan
    return out
