"""Folds, fold confidence intervals and the patient bootstrap against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covid_ct_cgan.evaluation.statistics import (
    contiguous_folds,
    fold_interval,
    interval_row,
    mean_score,
    paired_bootstrap,
    patient_bootstrap,
    pooled_ratio,
)


def test_contiguous_folds_cover_every_item_once_in_order() -> None:
    folds = contiguous_folds(23, 10)
    assert [len(f) for f in folds] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert np.array_equal(np.concatenate(folds), np.arange(23))
    assert all(np.array_equal(f, np.arange(f[0], f[-1] + 1)) for f in folds)  # contiguous


def test_fewer_items_than_folds_gives_one_item_per_fold() -> None:
    assert [f.tolist() for f in contiguous_folds(3, 10)] == [[0], [1], [2]]
    with pytest.raises(ValueError):
        contiguous_folds(0, 10)


def test_fold_interval_is_the_student_t_interval_of_the_fold_means() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(0.8, 0.1, 40)
    result = fold_interval(values, k=10)
    fold_means = values.reshape(10, 4).mean(axis=1)  # 40 items: 10 contiguous folds of 4
    half = 2.2621571627409915 * fold_means.std(ddof=1) / math.sqrt(10)  # t(0.975, 9)
    assert result.mean == pytest.approx(fold_means.mean(), abs=1e-12)
    assert result.half_width == pytest.approx(half, rel=1e-9)
    assert (result.low, result.high) == pytest.approx((fold_means.mean() - half, fold_means.mean() + half), rel=1e-9)
    assert result.folds == 10
    normal = fold_interval(values, k=10, method="normal")
    assert normal.half_width == pytest.approx(1.959963984540054 * fold_means.std(ddof=1) / math.sqrt(10), rel=1e-9)


def test_undefined_folds_are_left_out_and_counted() -> None:
    values = np.array([0.5, 0.7, np.nan, np.nan, 0.9, 0.8])  # fold 2 has no defined value
    result = fold_interval(values, k=3)
    assert result.folds == 2
    assert math.isnan(result.fold_scores[1])
    assert result.mean == pytest.approx((0.6 + 0.85) / 2)
    single = fold_interval(np.array([0.5, np.nan]), k=2)
    assert single.folds == 1 and single.mean == 0.5 and math.isnan(single.low)


def test_pooled_ratio_sums_counts_before_dividing() -> None:
    counts = np.array([[9, 1], [0, 10]])  # sensitivity: (TP, FN) per slice
    assert pooled_ratio(counts) == pytest.approx(9 / 20)
    assert math.isnan(pooled_ratio(np.zeros((2, 2))))
    assert mean_score(np.array([np.nan, 1.0, 0.0])) == 0.5


def test_patient_bootstrap_matches_a_reference_resampling() -> None:
    values = np.array([0.9, 0.8, 0.85, 0.3, 0.4, 0.6, 0.65])
    patients = ["a", "a", "a", "b", "b", "c", "c"]
    result = patient_bootstrap(values, patients, n_boot=500, seed=3)
    # reference: the same draws written out directly
    rng = np.random.default_rng(3)
    groups = [values[:3], values[3:5], values[5:]]
    draws = [np.concatenate([groups[i] for i in rng.integers(0, 3, size=3)]).mean() for _ in range(500)]
    low, high = np.percentile(draws, [2.5, 97.5])
    assert result.estimate == pytest.approx(values.mean())
    assert (result.low, result.high) == pytest.approx((low, high), rel=1e-12)
    assert result.patients == 3 and result.draws == 500
    assert result.low <= result.estimate <= result.high


def test_patient_bootstrap_with_one_patient_has_no_interval() -> None:
    result = patient_bootstrap(np.array([0.5, 0.6]), ["a", "a"])
    assert result.estimate == pytest.approx(0.55)
    assert math.isnan(result.low) and math.isnan(result.high) and result.patients == 1


def test_bootstrap_is_wider_than_slice_folds_when_patients_differ() -> None:
    """Slices of a patient are correlated: the fold interval understates the between-patient spread."""
    rng = np.random.default_rng(1)
    levels = rng.normal(0.7, 0.15, 6)
    values = np.concatenate([lvl + rng.normal(0, 0.01, 20) for lvl in levels])
    patients = [str(i) for i in range(6) for _ in range(20)]
    fold = fold_interval(values, k=10)
    boot = patient_bootstrap(values, patients, n_boot=1000, seed=0)
    assert (boot.high - boot.low) > (fold.high - fold.low)
    row = interval_row(fold, boot)
    assert set(row) >= {"mean", "fold_low", "fold_high", "boot_low", "boot_high", "patients"}


def test_paired_bootstrap_of_a_known_positive_shift_lies_above_zero() -> None:
    rng = np.random.default_rng(1)
    diff = 0.05 + rng.normal(0.0, 0.02, (30, 3))  # 30 slices x 3 seeds, every one a gain of about 5 points
    result = paired_bootstrap(diff, [f"p{i // 3}" for i in range(30)], n_boot=500, seed=0)
    assert result.mean == pytest.approx(diff.mean())
    assert 0.0 < result.low < result.mean < result.high
    assert (result.slices, result.seeds, result.clusters, result.draws) == (30, 3, 10, 500)


def test_paired_bootstrap_of_pure_noise_covers_zero() -> None:
    rng = np.random.default_rng(2)
    diff = rng.normal(0.0, 0.1, (40, 3))
    result = paired_bootstrap(diff, None, n_boot=500, seed=0)
    assert result.low < 0.0 < result.high
    assert result.clusters == 40  # no patient ids: every slice its own cluster


def test_paired_bootstrap_resamples_seeds_too() -> None:
    # every slice agrees within a seed, the seeds disagree: slices alone would give a zero-width interval
    diff = np.tile(np.array([-0.2, 0.0, 0.3]), (20, 1))
    result = paired_bootstrap(diff, None, n_boot=500, seed=0)
    assert result.mean == pytest.approx(np.mean([-0.2, 0.0, 0.3]))
    assert result.low < 0.0 < result.high
    one_seed = paired_bootstrap(diff[:, 2], None, n_boot=500, seed=0)  # one seed: slices only
    assert one_seed.seeds == 1 and one_seed.low == pytest.approx(0.3) and one_seed.high == pytest.approx(0.3)


def test_paired_bootstrap_is_deterministic_and_leaves_out_undefined_slices() -> None:
    rng = np.random.default_rng(3)
    diff = rng.normal(0.01, 0.05, (12, 3))
    diff[4] = np.nan  # a slice without the class in either run
    diff[7, 1] = np.nan
    clusters = [f"p{i // 2}" for i in range(12)]
    first = paired_bootstrap(diff, clusters, n_boot=300, seed=7)
    assert first == paired_bootstrap(diff, clusters, n_boot=300, seed=7)
    assert first != paired_bootstrap(diff, clusters, n_boot=300, seed=8)
    assert first.slices == 11 and first.clusters == 6
    assert first.mean == pytest.approx(np.nanmean(diff))
    alone = paired_bootstrap(diff, ["p"] * 12, n_boot=300)
    assert math.isnan(alone.low) and math.isnan(alone.high) and alone.clusters == 1  # one patient: no interval
    with pytest.raises(ValueError):
        paired_bootstrap(diff, clusters[:5])
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros((0, 3)))
