"""Lesion-map augmentation: lesions move only inside the lung, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from covid_ct_cgan.inference.lesion_augment import LesionAugmenter, lesion_pattern, lung_bounding_box
from covid_ct_cgan.labels import CONSOLIDATION, GGO, LUNG


def _lung(label: np.ndarray) -> np.ndarray:
    return label > 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), move=st.booleans())
def test_lesions_stay_inside_the_unchanged_lung(builders, seed: int, move: bool) -> None:
    _, label = builders.tiny_slice(seed=1)
    _, donor_label = builders.tiny_slice(48, 40, seed=2)
    donors = [lesion_pattern(donor_label, "donor:0")]
    out, _ = LesionAugmenter(move_prob=1.0 if move else 0.0)(label, np.random.default_rng(seed), donors)
    assert out.shape == label.shape and out.dtype == label.dtype
    np.testing.assert_array_equal(_lung(out), _lung(label))  # the composite region does not change
    assert set(np.unique(out).tolist()) <= {0, LUNG, GGO, CONSOLIDATION}
    assert np.all(_lung(label)[out >= GGO])  # every lesion pixel is lung


def test_same_seed_same_map_and_seeds_differ(builders) -> None:
    _, label = builders.tiny_slice()
    aug = LesionAugmenter()
    maps = [aug(label, np.random.default_rng(s))[0] for s in range(6)]
    again = aug(label, np.random.default_rng(3))
    np.testing.assert_array_equal(maps[3], again[0])
    assert len({m.tobytes() for m in maps}) == 6
    assert all(np.count_nonzero(m >= GGO) > 0 for m in maps)


def test_flip_moves_lesions_to_the_other_lung(builders) -> None:
    _, label = builders.tiny_slice(lesions=False)
    xs = np.flatnonzero(label.any(axis=1))
    left = label.copy()
    left[(np.arange(label.shape[0])[:, None] < label.shape[0] // 2) & (label > 0) & (np.arange(label.shape[1])[None] > 18)] = GGO
    aug = LesionAugmenter(rotate_range=0, scale_range=(1, 1), flip_prob=1.0, elastic_prob=0.0, move_prob=0.0)
    out, text = aug(left, np.random.default_rng(0))
    assert "flip" in text
    centre = (xs[0] + xs[-1]) / 2.0
    before = np.flatnonzero((left >= GGO).any(axis=1)).mean()
    after = np.flatnonzero((out >= GGO).any(axis=1)).mean()
    assert before < centre < after
    assert abs((before - centre) + (after - centre)) <= 1.0  # mirrored about the lung's centre


def test_slice_without_lesions_takes_a_donor_pattern(builders) -> None:
    _, healthy = builders.tiny_slice(lesions=False)
    _, donor_label = builders.tiny_slice(60, 50, seed=4)
    donor = lesion_pattern(donor_label, "p7:12")
    out, text = LesionAugmenter(move_prob=0.0)(healthy, np.random.default_rng(0), [donor])
    assert "p7:12" in text
    assert np.count_nonzero(out >= GGO) > 0
    np.testing.assert_array_equal(_lung(out), _lung(healthy))


def test_nothing_to_move_leaves_the_map_unchanged(builders) -> None:
    _, healthy = builders.tiny_slice(lesions=False)
    out, text = LesionAugmenter()(healthy, np.random.default_rng(0))
    np.testing.assert_array_equal(out, healthy)
    assert "unchanged" in text
    empty = np.zeros((8, 8), np.uint8)
    np.testing.assert_array_equal(LesionAugmenter()(empty, np.random.default_rng(0))[0], empty)


def test_lesion_pattern_is_the_lung_box_crop(builders) -> None:
    _, label = builders.tiny_slice()
    box = lung_bounding_box(label > 0)
    pattern = lesion_pattern(label, "x:0")
    assert pattern.lesions.shape == label[box].shape
    assert np.count_nonzero(pattern.lesions) == np.count_nonzero(label >= GGO)
    assert lesion_pattern(builders.tiny_slice(lesions=False)[1], "y:0") is None


@pytest.mark.parametrize("kwargs", [{"scale_range": (1.2, 0.9)}, {"flip_prob": 1.5}, {"elastic_grid": 1}, {"max_tries": 0}])
def test_bad_parameters_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        LesionAugmenter(**kwargs)
