"""transforms.py and train.yaml's chain: intensity, condition, region, and consistent augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from covid_ct_cgan.fileio import write_nifti
from covid_ct_cgan.transforms import MakeConditiond, ScaleIntensityToModeld, make_condition, synthesis_region

TRAIN_YAML = Path(__file__).resolve().parents[1] / "bundle" / "configs" / "train.yaml"


def _label() -> torch.Tensor:
    lab = torch.zeros(1, 16, 16, dtype=torch.long)
    lab[:, 2:14, 2:14] = 1
    lab[:, 6:8, 6:8] = 2
    lab[:, 10, 10] = 3
    return lab


def test_scale_intensity_reads_the_items_scale() -> None:
    t = ScaleIntensityToModeld(keys="image")
    hu = t({"image": np.array([-1350.0, 150.0]), "scale": "hu"})["image"]
    eight = t({"image": np.array([0.0, 255.0]), "scale": "8bit"})["image"]
    assert hu.tolist() == [-1.0, 1.0] and eight.tolist() == [-1.0, 1.0]
    assert t({"image": np.array([-600.0])})["image"][0] == pytest.approx(0.0)  # default: HU


def test_condition_map_is_one_hot_and_region_is_the_lung() -> None:
    lab = _label()
    cond, region = make_condition(lab, None, 4, "map")
    assert cond.shape == (4, 16, 16)
    assert torch.equal(cond.argmax(0), lab[0]) and torch.all(cond.sum(0) == 1)
    assert torch.equal(region[0].bool(), lab[0] > 0)


def test_context_blanks_the_region_and_keeps_the_rest() -> None:
    lab = _label()
    image = torch.rand(1, 16, 16) * 2 - 1
    cond, region = make_condition(lab, image, 4, "map+context", "lesion", dilation=1)
    assert cond.shape == (5, 16, 16)
    lesion = lab[0] >= 2
    dilated = synthesis_region(lab, "lesion", 1)[0]
    assert torch.all(dilated[lesion]) and dilated.sum() > lesion.sum()
    assert torch.all(dilated <= (lab[0] > 0))  # never outside the lung
    assert torch.all(cond[4][region[0] > 0] == 0)
    assert torch.equal(cond[4][region[0] == 0], image[0][region[0] == 0])
    with pytest.raises(ValueError, match="needs the real image"):
        make_condition(lab, None, 4, "map+context")


def test_condition_rejects_unknown_classes_and_modes() -> None:
    with pytest.raises(ValueError, match="0..3"):
        make_condition(torch.full((1, 2, 2), 4), None, 4)
    with pytest.raises(ValueError, match="condition"):
        MakeConditiond(condition="text")


def test_train_chain_augments_image_and_label_together(tmp_path: Path) -> None:
    """Every Table I augmentation on: labels stay integer classes and lesions stay on their bright pixels."""
    size = 48
    lab = np.zeros((size, size), np.uint8)
    lab[8:40, 6:42] = 1
    lab[14:24, 10:20] = 2
    lab[28:36, 28:36] = 3
    hu = np.full((size, size), 40, np.int16)
    hu[lab == 1], hu[lab == 2], hu[lab == 3] = -850, -500, 30
    write_nifti(hu, np.diag([-1, -1, 1, 1]), tmp_path / "img.nii.gz")
    write_nifti(lab, np.diag([-1, -1, 1, 1]), tmp_path / "lab.nii.gz")
    parser = ConfigParser()
    parser.read_config(str(TRAIN_YAML))
    parser.update({"image_size": 32, "augment_prob": 1.0, "stage": "local"})
    chain = parser.get_parsed_content("train#preprocessing")
    chain.set_random_state(seed=3)
    for _ in range(3):
        out = chain({"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz"), "scale": "hu"})
        label, image = torch.as_tensor(out["label"])[0], torch.as_tensor(out["image"])[0]
        assert label.shape == (32, 32) and out["condition"].shape == (4, 32, 32)
        assert set(torch.unique(label).tolist()) <= {0, 1, 2, 3}
        lung = image[label == 1].median()
        assert image[label == 2].median() > lung + 0.2  # GGO brighter than aerated lung, same place
        assert image[label == 0].median() > lung + 0.5  # soft tissue outside
