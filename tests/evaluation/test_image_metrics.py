"""PSNR, SSIM and RMSE (whole slice and lung only) against scikit-image and numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from covid_ct_cgan.evaluation import image_metrics as m

PAD = m.SSIM_KERNEL // 2


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 32 x 40 real slice in [-1, 1], a noisy 'generated' one, and an off-centre lung mask."""
    rng = np.random.default_rng(0)
    real = np.clip(rng.normal(0, 0.4, (32, 40)), -1, 1)
    pred = np.clip(real + rng.normal(0, 0.15, real.shape), -1, 1)
    lung = np.zeros(real.shape, dtype=bool)
    lung[6:26, 9:33] = True
    return pred, real, lung


def _skimage_ssim_map(pred: np.ndarray, real: np.ndarray) -> np.ndarray:
    _, full = structural_similarity(real, pred, data_range=2.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, full=True)
    return full


def test_psnr_and_rmse_match_skimage(pair) -> None:
    pred, real, _ = pair
    assert m.psnr(pred, real) == pytest.approx(peak_signal_noise_ratio(real, pred, data_range=2.0), abs=1e-6)
    assert m.rmse(pred, real) == pytest.approx(math.sqrt(mean_squared_error(real, pred)), rel=1e-6)


def test_ssim_matches_skimage_gaussian_ssim(pair) -> None:
    pred, real, _ = pair
    reference = structural_similarity(real, pred, data_range=2.0, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False)
    assert m.ssim(pred, real) == pytest.approx(reference, abs=1e-5)  # float32 convolutions in MONAI


def test_lung_only_mse_psnr_and_rmse_match_numpy(pair) -> None:
    pred, real, lung = pair
    mse = float(((pred - real)[lung] ** 2).mean())
    assert m.masked_mse(pred, real, lung) == pytest.approx(mse, rel=1e-6)
    values = m.slice_metrics(pred, real, lung, window_width=1500.0)["lung_only"]
    assert values["psnr"] == pytest.approx(10 * math.log10(4.0 / mse), abs=1e-5)
    assert values["rmse"] == pytest.approx(math.sqrt(mse), rel=1e-6)
    assert values["rmse_hu"] == pytest.approx(math.sqrt(mse) * 750.0, rel=1e-6)


def test_lung_only_ssim_is_the_skimage_map_averaged_over_lung_centres(pair) -> None:
    pred, real, lung = pair
    full = _skimage_ssim_map(pred, real)[PAD:-PAD, PAD:-PAD]  # valid windows only, as MONAI computes
    reference = full[lung[PAD:-PAD, PAD:-PAD]].mean()
    assert m.masked_ssim(pred, real, lung) == pytest.approx(reference, abs=1e-5)


def test_composite_differing_only_in_the_lung(pair) -> None:
    """A complemented slice equals the real one outside the lung: the lung-only error is the whole error, concentrated."""
    pred, real, lung = pair
    composite = np.where(lung, pred, real)
    values = m.slice_metrics(composite, real, lung)
    whole_mse = float(((composite - real) ** 2).mean())
    assert values["complemented"]["rmse"] == pytest.approx(math.sqrt(whole_mse), rel=1e-6)
    assert values["lung_only"]["rmse"] ** 2 == pytest.approx(whole_mse * lung.size / lung.sum(), rel=1e-6)
    assert values["lung_only"]["psnr"] < values["complemented"]["psnr"]
    assert math.isnan(values["complemented"]["rmse_hu"])  # no window width: an 8-bit slice


def test_identical_slices_and_empty_masks(pair) -> None:
    _, real, lung = pair
    assert m.psnr(real, real) == math.inf
    assert m.ssim(real, real) == pytest.approx(1.0, abs=1e-6)
    assert m.psnr_from_mse(m.masked_mse(real, real, lung)) == math.inf
    empty = np.zeros_like(lung)
    assert math.isnan(m.masked_mse(real, real, empty)) and math.isnan(m.masked_ssim(real, real, empty))


def test_shape_and_size_errors(pair) -> None:
    pred, real, lung = pair
    with pytest.raises(ValueError, match="shapes differ"):
        m.psnr(pred[:-1], real)
    with pytest.raises(ValueError, match="at least 11"):
        m.ssim(pred[:8, :8], real[:8, :8])
