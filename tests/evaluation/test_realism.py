"""Realism measures at tiny scale: KID against numpy and MONAI, the vesselness ratio, the two-sample test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import MMDMetric
from scipy.ndimage import gaussian_filter

from covid_ct_cgan.errors import InputError
from covid_ct_cgan.evaluation.realism import (
    GRID_WINDOW,
    grid_peak,
    grid_peaks,
    region_power_spectrum,
    RealismSettings,
    classifier_two_sample_test,
    kid,
    mean_vesselness,
    mmd2_unbiased,
    paired_region_crops,
    region_crops,
    vessel_sigmas,
    vesselness_ratio,
)

# ---------------------------------------------------------------- KID


def _features(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """Pooled-CNN-like features: non-negative, around 1, 60 of them."""
    g = torch.Generator().manual_seed(seed)
    return torch.relu(1.0 + shift + 0.3 * torch.randn(n, 60, generator=g, dtype=torch.float64))


def _numpy_mmd2(x: np.ndarray, y: np.ndarray, degree: int = 3) -> float:
    """The unbiased polynomial-kernel MMD^2, written out term by term."""
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** degree  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_matches_numpy_and_monai() -> None:
    x, y = _features(12, 0), _features(9, 1, shift=0.2)
    assert mmd2_unbiased(x, y) == pytest.approx(_numpy_mmd2(x.numpy(), y.numpy()), rel=1e-10)
    # degree 1: the constant of the kernel cancels, leaving MONAI's linear-kernel MMD divided by d
    a, b = _features(10, 2), _features(10, 3, shift=0.1)
    assert mmd2_unbiased(a, b, degree=1) == pytest.approx(float(MMDMetric()(b, a)) / 60, rel=1e-10)
    assert math.isnan(mmd2_unbiased(x[:1], y))
    with pytest.raises(ValueError, match="same d"):
        mmd2_unbiased(x, y[:, :10])


def test_kid_is_about_zero_for_the_same_features_and_clearly_positive_when_shifted() -> None:
    real = _features(40, 0)
    same_mean, same_sd = kid(real, real, subsets=50)
    other_mean, other_sd = kid(_features(40, 1), real, subsets=50)  # another sample of the same distribution
    shifted_mean, shifted_sd = kid(_features(40, 1, shift=0.3), real, subsets=50)
    assert shifted_mean > 1.0 and shifted_mean > 10 * shifted_sd
    assert abs(other_mean) < 2 * other_sd and abs(other_mean) < 0.01 * shifted_mean
    # identical sets: the unbiased estimator (which assumes independent samples) sits slightly below 0
    assert -0.03 * shifted_mean < same_mean <= 0.0 and same_sd < 0.01 * shifted_mean


def test_kid_subsets_match_a_direct_numpy_computation() -> None:
    gen, real = _features(11, 4, shift=0.1).numpy(), _features(14, 5).numpy()
    mean, sd = kid(torch.from_numpy(gen), torch.from_numpy(real), subsets=7, subset_size=6, seed=3)
    rng = np.random.default_rng(3)
    values = []
    for _ in range(7):
        i, j = rng.choice(11, 6, replace=False), rng.choice(14, 6, replace=False)
        values.append(_numpy_mmd2(gen[i], real[j]))
    assert mean == pytest.approx(np.mean(values), rel=1e-9) and sd == pytest.approx(np.std(values, ddof=1), rel=1e-9)
    # subsets as large as the sets: every subset is the whole set, so KID is the full-set estimate with sd 0
    full_mean, full_sd = kid(torch.from_numpy(gen[:10]), torch.from_numpy(real[:10]), subsets=3, subset_size=100)
    assert full_mean == pytest.approx(_numpy_mmd2(gen[:10], real[:10]), rel=1e-9) and full_sd == pytest.approx(0.0, abs=1e-12)
    # the default subset size: half the smaller set
    assert kid(torch.from_numpy(gen), torch.from_numpy(real), subsets=2)[1] > 0
    assert all(math.isnan(v) for v in kid(torch.from_numpy(gen[:1]), torch.from_numpy(real)))


# ---------------------------------------------------------------- vesselness

S = 96


def _grid() -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(S, dtype=np.float64), np.arange(S, dtype=np.float64), indexing="ij")


def _tubes(seed: int, noise: float = 0.03) -> np.ndarray:
    """Bright lines (Gaussian profile, sd 1.5 px, contrast 0.8) on a dark lung background, model scale."""
    rng = np.random.default_rng(seed)
    x, y = _grid()
    image = np.full((S, S), -0.3)
    for _ in range(6):
        theta, (cx, cy) = rng.uniform(0, np.pi), rng.uniform(25, 70, 2)
        dist = np.abs((x - cx) * np.sin(theta) - (y - cy) * np.cos(theta))
        image = np.maximum(image, -0.3 + 0.8 * np.exp(-dist**2 / (2 * 1.5**2)))
    return (image + rng.normal(0, noise, image.shape)).astype(np.float32)


def _region() -> np.ndarray:
    x, y = _grid()
    return ((x - 48) / 36) ** 2 + ((y - 48) / 30) ** 2 <= 1.0


def test_vesselness_sees_tubes_not_noise_or_a_flat_fill() -> None:
    region = _region()
    real = [_tubes(k) for k in range(3)]
    real_v = [mean_vesselness(r, region, pixel_mm=0.7) for r in real]
    assert vesselness_ratio(real_v, real_v) == pytest.approx(1.0)
    flat = [np.where(region, -0.3, r).astype(np.float32) for r in real]  # the region filled with one value
    flat_v = [mean_vesselness(f, region, pixel_mm=0.7) for f in flat]
    assert vesselness_ratio(flat_v, real_v) < 0.1
    rng = np.random.default_rng(9)
    noise = [np.where(region, -0.3 + rng.normal(0, 0.15, region.shape), r).astype(np.float32) for r in real]
    noise_v = [mean_vesselness(n, region, pixel_mm=0.7) for n in noise]
    assert vesselness_ratio(noise_v, real_v) < 0.5 < 0.9 < vesselness_ratio(real_v, noise_v)
    # only the region is filtered: a bright band (chest wall, mediastinum) just outside it changes nothing
    outside = np.where(region, real[0], rng.uniform(-1, 1, region.shape)).astype(np.float32)
    assert mean_vesselness(outside, region, pixel_mm=0.7) == pytest.approx(real_v[0], rel=1e-6)
    band = np.where(region, -0.3, 0.8).astype(np.float32)  # a flat region inside a bright ring
    assert mean_vesselness(band, region, pixel_mm=0.7) == 0.0
    assert math.isnan(mean_vesselness(real[0], np.zeros_like(region)))
    assert math.isnan(vesselness_ratio([0.1], [math.nan]))


def test_vessel_scales_follow_the_pixel_size() -> None:
    assert vessel_sigmas(0.75, (0.75, 1.5)) == pytest.approx((1.0, 2.0))
    assert vessel_sigmas(3.0, (0.75, 1.5)) == pytest.approx((0.5, 0.5))  # never below half a pixel
    with pytest.raises(ValueError, match="positive"):
        vessel_sigmas(0.0)


# ---------------------------------------------------------------- two-sample test


def _texture(rng: np.random.Generator, blur: float) -> np.ndarray:
    """Smoothed noise with mean -0.3 and sd 0.15 whatever the blur: only the texture differs between blurs."""
    t = gaussian_filter(rng.normal(0, 1, (48, 48)), blur)
    return (t / t.std() * 0.15 - 0.3).astype(np.float32)


def test_region_crops_share_centres_inside_the_region() -> None:
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    crops = region_crops(image, np.array([[0, 0], [5, 5]]), size=4)
    assert crops.shape == (2, 4, 4)
    assert (crops[0, :2] == -1).all() and crops[0, 2, 2] == 0.0  # padded outside the slice; centre at (2, 2)
    assert crops[1, 2, 2] == 55.0
    region = np.zeros((10, 10), bool)
    region[3, 7] = True
    real, gen, groups = paired_region_crops([image, image], [image + 1, image + 1], [region, np.zeros_like(region)],
                                            size=4, per_slice=3)
    assert real.shape == gen.shape == (3, 4, 4) and (groups == 0).all()  # the empty region adds no crop
    assert (real[:, 2, 2] == 37.0).all() and np.array_equal(gen, real + 1)


@pytest.mark.integration
def test_two_sample_accuracy_is_chance_for_one_distribution_and_one_for_two() -> None:
    rng = np.random.default_rng(0)
    n, region = 32, np.ones((48, 48), bool)
    real = [_texture(rng, 1.0) for _ in range(n)]
    same = [_texture(rng, 1.0) for _ in range(n)]
    smooth = [_texture(rng, 4.0) for _ in range(n)]  # blurred: the mottled-vs-smooth difference a CNN sees at once
    kwargs = dict(folds=4, iterations=100, batch_size=32)
    r, g, groups = paired_region_crops(real, same, [region] * n, size=32, per_slice=4, seed=1)
    null = classifier_two_sample_test(r, g, groups, **kwargs)
    assert null.folds == 4 and null.crops == 128 and len(null.fold_accuracies) == 4
    assert abs(null.accuracy - 0.5) < 0.1 and null.low < 0.5 < null.high
    r, g, groups = paired_region_crops(real, smooth, [region] * n, size=32, per_slice=4, seed=1)
    different = classifier_two_sample_test(r, g, groups, **kwargs)
    assert different.accuracy > 0.95 and different.low > 0.8
    assert classifier_two_sample_test(r, g, groups, **kwargs) == different  # seeded: the same result again
    one_slice = classifier_two_sample_test(r[:4], g[:4], groups[:4], **kwargs)
    assert math.isnan(one_slice.accuracy) and one_slice.folds == 0
    with pytest.raises(ValueError, match="paired"):
        classifier_two_sample_test(r, g[:5], groups, **kwargs)


def test_realism_settings_from_the_config() -> None:
    settings = RealismSettings.from_config({"vessel_sigmas_mm": [1, 2], "folds": 3})
    assert settings.vessel_sigmas_mm == (1.0, 2.0) and settings.folds == 3 and settings.crop_size == 32
    assert settings.as_dict()["vessel_sigmas_mm"] == [1.0, 2.0]
    assert RealismSettings.from_config(None) == RealismSettings()
    with pytest.raises(InputError, match="unknown key"):
        RealismSettings.from_config({"fold": 3})
    with pytest.raises(InputError, match="folds >= 2"):
        RealismSettings.from_config({"folds": 1})
    with pytest.raises(InputError, match="positive"):
        RealismSettings.from_config({"vessel_sigmas_mm": [0.0]})


def test_grid_peak_finds_an_upsampling_grid_and_not_ct_like_texture() -> None:
    rng = np.random.default_rng(0)
    texture = gaussian_filter(rng.normal(size=(160, 160)), 1.5) + 0.2 * rng.normal(size=(160, 160))  # noise + blobs
    rows, cols = np.indices(texture.shape)
    grid = texture + 0.5 * texture.std() * ((-1.0) ** (rows + cols)) + 0.5 * texture.std() * np.cos(np.pi * rows / 2)
    region = np.zeros(texture.shape, bool)
    region[16:144, 32:160] = True
    power, real_power, windows = region_power_spectrum([grid], [region], reference=[texture], coverage=1.0)
    assert power.shape == (GRID_WINDOW, GRID_WINDOW) and real_power is not None
    assert windows == 13 * 13  # windows every 8 px that lie wholly in the 128 x 128 region
    assert grid_peak(power) > 10.0  # a period-2 checkerboard and period-4 lines stand out of their rings
    assert 0.5 < grid_peak(real_power) < 2.0  # texture without a grid: no spike
    peaks = grid_peaks(power)  # the lines from row to row (1/4, 0) and the checkerboard (1/2, 1/2) stand out
    assert max(peaks.values()) == grid_peak(power) and peaks[(0.25, 0.0)] > 10.0 and peaks[(0.5, 0.5)] > 2.0
    assert max(v for f, v in peaks.items() if f not in ((0.25, 0.0), (0.5, 0.5))) < 2.0
    # only windows inside the region count, and a flat fill has no spectrum to judge
    flat = np.full(texture.shape, 0.3)
    flat[region] = texture[region]
    _, _, inside = region_power_spectrum([flat], [region], coverage=1.0)
    assert inside == windows
    edge = np.zeros(texture.shape, bool)
    edge[18:144, 32:160] = True  # the windows at row 16 hold 30 of their 32 rows in it
    assert region_power_spectrum([flat], [edge], coverage=1.0)[2] == 12 * 13
    assert region_power_spectrum([flat], [edge])[2] == 13 * 13  # 90 % (the default) takes them too
    assert math.isnan(grid_peak(region_power_spectrum([np.zeros((64, 64))], [np.ones((64, 64), bool)])[0]))
    assert math.isnan(grid_peak(region_power_spectrum([texture], [np.zeros(texture.shape, bool)])[0]))  # no window
    with pytest.raises(ValueError, match="differ in shape"):
        region_power_spectrum([texture], [region[:10]])
