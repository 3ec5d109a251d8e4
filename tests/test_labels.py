"""labels.py: merging lung and lesion masks into the label map, and checking maps."""

from __future__ import annotations

import numpy as np
import pytest

from covid_ct_cgan import labels


def test_merge_codes_lesions_inside_and_outside_lung() -> None:
    lung = np.array([[0, 1, 1, 0]])
    lesion = np.array([[1, 0, 2, 3]])  # GGO outside the lung mask, consolidation, effusion
    out = labels.merge_label_map(lung, lesion)
    assert out.tolist() == [[labels.GGO, labels.LUNG, labels.CONSOLIDATION, labels.CONSOLIDATION]]
    assert out.dtype == np.uint8
    kept = labels.merge_label_map(lung, lesion, keep_effusion=True)
    assert kept[0, 3] == labels.EFFUSION


def test_binary_masks_are_infection() -> None:
    lung = np.ones((2, 2))
    assert labels.merge_label_map(lung, np.array([[0, 255], [255, 0]])).tolist() == [[1, 2], [2, 1]]
    assert labels.merge_label_map(lung, np.array([[0, 1], [1, 0]])).tolist() == [[1, 2], [2, 1]]
    assert labels.merge_label_map(lung, np.array([[0, 255], [0, 0]]), binary_lesion_class=labels.CONSOLIDATION)[0, 1] == 3


@pytest.mark.parametrize(
    "lesion, message",
    [(np.array([[0, 7]]), "unknown label values \\[7\\]"), (np.array([[0.5, 1]]), "non-integer"), (np.array([[np.nan, 1]]), "non-finite")],
)
def test_merge_rejects_bad_lesion_values(lesion: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        labels.merge_label_map(np.ones_like(lesion), lesion)


def test_merge_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        labels.merge_label_map(np.ones((2, 2)), np.ones((2, 3)))


def test_check_label_map_and_regions() -> None:
    lab = np.array([[0, 1, 2, 3]])
    labels.check_label_map(lab)
    with pytest.raises(ValueError, match="unknown classes \\[4\\]"):
        labels.check_label_map(np.array([[4]]))
    labels.check_label_map(np.array([[4]]), keep_effusion=True)
    assert labels.lung_region(lab).tolist() == [[False, True, True, True]]
    assert labels.num_classes() == 4 and labels.num_classes(True) == 5
