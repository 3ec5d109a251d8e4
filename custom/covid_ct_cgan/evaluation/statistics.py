"""Uncertainty of a test-set score: the paper's 10 folds and a patient-level bootstrap.

The paper reports "mean +/- 95% confidence interval over 10 folds of the test
set". Here:

- **folds** (:func:`contiguous_folds`): the test slices, in datalist order
  (patient by patient, slice by slice), cut into ``k`` contiguous folds of
  (nearly) equal size (``numpy.array_split``). Contiguous folds keep the slices
  of one patient together as far as possible.
- **fold interval** (:func:`fold_interval`): the score is computed on each fold;
  the reported value is the mean of the fold scores, and the interval is the
  Student-t interval ``mean +/- t(0.975, k - 1) * sd / sqrt(k)`` (``sd`` with
  ``ddof=1``; with 10 folds ``t = 2.262``, the normal ``1.96`` understates the
  width). ``method="normal"`` gives the ``1.96`` version. Folds whose score is
  undefined (no slice with that class) are left out and counted.
- **patient bootstrap** (:func:`patient_bootstrap`): the slices of one patient
  are strongly correlated, so slice folds overstate certainty. Patients are
  drawn with replacement (``n_boot`` draws, default 1000, seeded), the score is
  computed on all slices of the drawn patients, and the interval is the 2.5th
  and 97.5th percentile of the draws (percentile bootstrap). With one patient
  it is undefined (NaN) and the report says so.

- **paired two-level bootstrap** (:func:`paired_bootstrap`): the gain of one training mix over another
  when both were trained with the same seeds and scored on the same test slices. The data is the
  matrix of differences ``D[i, j]`` (slice ``i``, training seed ``j``: the same test slice and the same
  seed in both runs). Every draw resamples, independently and with replacement, the clusters of slices
  (patients; a slice without a patient id is its own cluster) and the seed columns, and takes the mean
  of the drawn cells (undefined cells, slices without the class, left out); the interval is the
  percentile interval of the draws. It so carries both sources of noise: which slices were tested and
  how a training run happened to turn out. With one seed it is the patient bootstrap of the slice
  differences; with one cluster it is undefined (NaN), as above. The draws come from
  ``numpy.random.default_rng(seed)``: the same inputs give the same interval.

A "score" is any function of a set of slices: the mean per-slice Dice
(:func:`mean_score`) or a pooled ratio of confusion counts such as
sensitivity ``sum TP / sum (TP + FN)`` (:func:`pooled_ratio`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as scipy_stats

Score = Callable[[np.ndarray], float]
FOLD_METHODS: tuple[str, ...] = ("t", "normal")


def contiguous_folds(n: int, k: int = 10) -> list[np.ndarray]:
    """Indices ``0..n-1`` cut into ``k`` contiguous folds of nearly equal size.

    Args:
        n: number of items (slices, in datalist order).
        k: number of folds; with fewer than ``k`` items, one item per fold.

    Returns:
        ``min(k, n)`` index arrays; the first ``n % k`` folds hold one item more.

    Raises:
        ValueError: ``n < 1`` or ``k < 1``.
    """
    if n < 1 or k < 1:
        raise ValueError(f"need at least one item and one fold, got n={n}, k={k}")
    return [fold for fold in np.array_split(np.arange(n), min(int(k), int(n)))]


def mean_score(values: np.ndarray) -> float:
    """Mean of per-slice values, undefined (NaN) ones left out; NaN when none is defined."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def pooled_ratio(counts: np.ndarray) -> float:
    """``sum(numerator) / sum(numerator + other)`` of per-slice counts ``(n, 2)``; NaN if the denominator is 0.

    Sensitivity: columns ``(TP, FN)``; specificity: columns ``(TN, FP)``.
    """
    counts = np.asarray(counts, dtype=np.float64).reshape(-1, 2)
    num, den = counts[:, 0].sum(), counts.sum()
    return float(num / den) if den > 0 else math.nan


@dataclass(frozen=True)
class FoldInterval:
    """A score over folds.

    Attributes:
        mean: mean of the defined fold scores.
        low: lower end of the interval.
        high: upper end of the interval.
        half_width: ``(high - low) / 2``.
        folds: number of folds with a defined score.
        fold_scores: the score of every fold (NaN where undefined).
    """

    mean: float
    low: float
    high: float
    half_width: float
    folds: int
    fold_scores: tuple[float, ...]


def fold_interval(
    values: np.ndarray, score: Score = mean_score, k: int = 10, confidence: float = 0.95, method: str = "t"
) -> FoldInterval:
    """The paper's interval: the score on each of ``k`` contiguous folds, mean and confidence interval.

    Args:
        values: per-slice values (``(n,)`` or ``(n, m)``), in datalist order.
        score: maps the rows of one fold to a number.
        k: number of folds.
        confidence: interval coverage.
        method: ``"t"`` (Student t, ``k - 1`` degrees of freedom) or ``"normal"`` (``z``, 1.96 at 95%).

    Returns:
        The :class:`FoldInterval`; low and high are NaN with fewer than two defined folds.

    Raises:
        ValueError: unknown method, confidence outside (0, 1), or no values.
    """
    if method not in FOLD_METHODS:
        raise ValueError(f"method must be one of {FOLD_METHODS}, got {method!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values = np.asarray(values)
    scores = np.array([score(values[idx]) for idx in contiguous_folds(len(values), k)], dtype=np.float64)
    defined = scores[np.isfinite(scores)]
    if defined.size == 0:
        return FoldInterval(math.nan, math.nan, math.nan, math.nan, 0, tuple(scores.tolist()))
    mean = float(defined.mean())
    if defined.size < 2:
        return FoldInterval(mean, math.nan, math.nan, math.nan, 1, tuple(scores.tolist()))
    q = 0.5 + confidence / 2.0
    factor = scipy_stats.t.ppf(q, defined.size - 1) if method == "t" else scipy_stats.norm.ppf(q)
    half = float(factor * defined.std(ddof=1) / math.sqrt(defined.size))
    return FoldInterval(mean, mean - half, mean + half, half, int(defined.size), tuple(scores.tolist()))


@dataclass(frozen=True)
class BootstrapInterval:
    """A score with a patient-level percentile bootstrap interval.

    Attributes:
        estimate: the score on all slices.
        low: lower percentile of the bootstrap scores (NaN with fewer than two patients).
        high: upper percentile.
        patients: number of distinct patients.
        draws: number of bootstrap draws with a defined score.
    """

    estimate: float
    low: float
    high: float
    patients: int
    draws: int


def patient_bootstrap(
    values: np.ndarray,
    patients: Sequence[str],
    score: Score = mean_score,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapInterval:
    """Percentile bootstrap over patients: draw patients with replacement, score all their slices.

    Args:
        values: per-slice values (``(n,)`` or ``(n, m)``).
        patients: the patient of each slice.
        score: maps a set of rows to a number.
        n_boot: number of draws.
        confidence: interval coverage (percentiles ``(1 - c) / 2`` and ``(1 + c) / 2``).
        seed: seed of the draws.

    Returns:
        The :class:`BootstrapInterval`.

    Raises:
        ValueError: lengths differ, no values, ``n_boot < 1`` or confidence outside (0, 1).
    """
    values = np.asarray(values)
    patient_of = np.asarray([str(p) for p in patients])
    if len(values) != len(patient_of) or len(values) == 0:
        raise ValueError(f"need one patient per value, got {len(values)} values and {len(patient_of)} patients")
    if int(n_boot) < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need n_boot >= 1 and confidence in (0, 1), got {n_boot}, {confidence}")
    ids = list(dict.fromkeys(patient_of.tolist()))  # first-seen order: reproducible for a given datalist
    rows = {p: np.flatnonzero(patient_of == p) for p in ids}
    estimate = score(values)
    if len(ids) < 2:
        return BootstrapInterval(estimate, math.nan, math.nan, len(ids), 0)
    rng = np.random.default_rng(seed)
    draws = np.empty(int(n_boot), dtype=np.float64)
    for b in range(int(n_boot)):
        chosen = rng.integers(0, len(ids), size=len(ids))
        draws[b] = score(values[np.concatenate([rows[ids[i]] for i in chosen])])
    defined = draws[np.isfinite(draws)]
    if defined.size == 0:
        return BootstrapInterval(estimate, math.nan, math.nan, len(ids), 0)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(defined, [tail, 100.0 - tail])
    return BootstrapInterval(estimate, float(low), float(high), len(ids), int(defined.size))


def interval_row(fold: FoldInterval, boot: BootstrapInterval) -> dict[str, float | int]:
    """Flat dict of both intervals (the columns of the summary CSVs), fold scores left out."""
    f = {k: v for k, v in asdict(fold).items() if k != "fold_scores"}
    return {
        "mean": f["mean"], "fold_low": f["low"], "fold_high": f["high"], "fold_half_width": f["half_width"],
        "folds": f["folds"], "estimate": boot.estimate, "boot_low": boot.low, "boot_high": boot.high,
        "patients": boot.patients, "boot_draws": boot.draws,
    }


@dataclass(frozen=True)
class PairedInterval:
    """A paired difference over test slices and training seeds with its two-level bootstrap interval.

    Attributes:
        mean: mean of the defined differences (all slices, all seeds).
        low: lower percentile of the bootstrap means (NaN with fewer than two clusters).
        high: upper percentile.
        slices: slices with a defined difference.
        seeds: seeds (columns).
        clusters: distinct clusters (patients) among those slices.
        draws: bootstrap draws with a defined mean.
    """

    mean: float
    low: float
    high: float
    slices: int
    seeds: int
    clusters: int
    draws: int


def paired_bootstrap(
    differences: np.ndarray,
    clusters: Sequence[str] | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedInterval:
    """Two-level percentile bootstrap of a paired difference: clusters of slices and seeds resampled together.

    Args:
        differences: ``(slices, seeds)`` matrix of per-slice, per-seed differences (``(slices,)`` is one
            seed); NaN where undefined (the slice lacks the class). A row that is NaN for every seed is
            left out.
        clusters: the cluster (patient) of each slice; ``None``, or an empty id, makes a slice its own cluster.
        n_boot: number of draws.
        confidence: interval coverage (percentiles ``(1 - c) / 2`` and ``(1 + c) / 2``).
        seed: seed of the draws (``numpy.random.default_rng``).

    Returns:
        The :class:`PairedInterval`.

    Raises:
        ValueError: not a 1D or 2D array, no slices or seeds, clusters of another length, ``n_boot < 1`` or
            confidence outside (0, 1).
    """
    diff = np.asarray(differences, dtype=np.float64)
    if diff.ndim == 1:
        diff = diff[:, None]
    if diff.ndim != 2 or diff.shape[0] == 0 or diff.shape[1] == 0:
        raise ValueError(f"need a (slices, seeds) matrix with at least one of each, got shape {np.shape(differences)}")
    ids = [str(i) for i in range(diff.shape[0])] if clusters is None else [str(c) for c in clusters]
    if len(ids) != diff.shape[0]:
        raise ValueError(f"need one cluster per slice, got {len(ids)} for {diff.shape[0]} slices")
    if int(n_boot) < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need n_boot >= 1 and confidence in (0, 1), got {n_boot}, {confidence}")
    ids = [c if c else f"slice {i}" for i, c in enumerate(ids)]
    keep = np.isfinite(diff).any(axis=1)
    diff, ids = diff[keep], [c for c, k in zip(ids, np.asarray(keep)) if k]
    n_seeds = diff.shape[1]
    if diff.shape[0] == 0:
        return PairedInterval(math.nan, math.nan, math.nan, 0, n_seeds, 0, 0)
    groups = list(dict.fromkeys(ids))  # first-seen order: reproducible for a given datalist
    members = [np.flatnonzero(np.asarray(ids) == g) for g in groups]
    # per cluster and seed: sum and count of the defined cells, so a draw is a weighted mean over cells
    finite = np.isfinite(diff)
    sums = np.stack([np.where(finite[m], diff[m], 0.0).sum(axis=0) for m in members])  # (clusters, seeds)
    counts = np.stack([finite[m].sum(axis=0) for m in members]).astype(np.float64)
    estimate = float(sums.sum() / counts.sum())
    if len(groups) < 2:
        return PairedInterval(estimate, math.nan, math.nan, diff.shape[0], n_seeds, len(groups), 0)
    rng = np.random.default_rng(seed)
    draws = np.empty(int(n_boot), dtype=np.float64)
    for b in range(int(n_boot)):
        rows = np.bincount(rng.integers(0, len(groups), size=len(groups)), minlength=len(groups)).astype(np.float64)
        cols = np.bincount(rng.integers(0, n_seeds, size=n_seeds), minlength=n_seeds).astype(np.float64)
        den = rows @ counts @ cols
        draws[b] = (rows @ sums @ cols) / den if den > 0 else math.nan
    defined = draws[np.isfinite(draws)]
    if defined.size == 0:
        return PairedInterval(estimate, math.nan, math.nan, diff.shape[0], n_seeds, len(groups), 0)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(defined, [tail, 100.0 - tail])
    return PairedInterval(estimate, float(low), float(high), diff.shape[0], n_seeds, len(groups), int(defined.size))
