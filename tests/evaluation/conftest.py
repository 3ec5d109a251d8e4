"""A tiny prepared dataset (32 px slices, four patients) and a random generator checkpoint for the evaluation tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import sample_files

from covid_ct_cgan.networks import GlobalLocalGenerator

torch.set_num_threads(1)

SIZE = 32
AFFINE = np.diag([-0.7, -0.7, 2.5, 1.0])
NET_SETTINGS = dict(ngf=8, n_downsampling=1, n_blocks_global=1, n_blocks_local=1)  # image_size a multiple of 4
# patient -> split; test_segmentation has two patients so the patient bootstrap is defined
SPLITS = {"p0": "training", "p1": "test_synthesis", "p2": "test_segmentation", "p3": "test_segmentation"}
SLICES = 3


def _save(array: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, AFFINE)
    img.header.set_data_dtype(array.dtype)
    nib.save(img, str(path))


def make_dataset(root: Path, infection_free: bool = False) -> Path:
    """``root/datalist.json`` with the four lists; with ``infection_free`` the last test slice has no lesion."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    lists: dict[str, list] = {"training": [], "validation": [], "test_synthesis": [], "test_segmentation": []}
    for p, (patient, split) in enumerate(SPLITS.items()):
        for k in range(SLICES):
            free = infection_free and patient == "p3" and k == SLICES - 1
            chest = sample_files.chest_slice(SIZE, seed=10 * p + k, lesions=not free, noise=30.0, jitter=0.05)
            hu, label = chest.hu, chest.label
            name = f"{patient}_{k:04d}.nii.gz"
            _save(hu, root / "images" / name)
            _save(label, root / "labels" / name)
            lists[split].append({"image": f"images/{name}", "label": f"labels/{name}", "patient": patient,
                                 "slice": k, "scale": "hu"})
    lists["validation"] = lists["training"][:1]
    (root / "datalist.json").write_text(json.dumps(lists, indent=1))
    return root / "datalist.json"


@pytest.fixture
def dataset_factory() -> Callable[..., Path]:
    """:func:`make_dataset`, for tests that need a variant of the tiny dataset."""
    return make_dataset


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """The prepared ``datalist.json`` of a tiny dataset (12 slices, 4 patients)."""
    return make_dataset(tmp_path / "data")


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> dict:
    """train.yaml overrides that build the tiny generator of :func:`generator_checkpoint` at 32 px."""
    return {"work_dir": str(tmp_path), "image_size": SIZE, **NET_SETTINGS}


@pytest.fixture
def generator_checkpoint(tmp_path: Path) -> Path:
    """``<dir>/joint/checkpoint_epoch=1.pt`` of a random tiny generator (train.yaml keys with NET_SETTINGS)."""
    torch.manual_seed(0)
    net = GlobalLocalGenerator(4, 1, mode="joint", **NET_SETTINGS)
    folder = tmp_path / "gan_output" / "joint"
    folder.mkdir(parents=True)
    torch.save({"generator": net.state_dict(), "trainer": {"epoch_length": 3, "iteration": 6, "max_epochs": 2}},
               folder / "checkpoint_epoch=2.pt")
    return folder
