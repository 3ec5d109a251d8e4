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
    patients = np.asarray([str(p) for p in patients])
    if len(values) != len(patients) or len(values) == 0:
        raise ValueError(f"need one patient per value, got {len(values)} values and {len(patients)} patients")
    if int(n_boot) < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need n_boot >= 1 and confidence in (0, 1), got {n_boot}, {confidence}")
    ids = list(dict.fromkeys(patients.tolist()))  # first-seen order: reproducible for a given datalist
    rows = {p: np.flatnonzero(patients == p) for p in ids}
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
