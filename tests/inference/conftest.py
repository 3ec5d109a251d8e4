"""Tiny synthesis inputs in every format and a random generator saved like a training checkpoint."""

from __future__ import annotations

import json
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import sample_files

from covid_ct_cgan.networks import GlobalLocalGenerator

torch.set_num_threads(1)

LPS_AFFINE = np.diag([-0.7, -0.7, 2.5, 1.0])
NET_SETTINGS = dict(ngf=8, n_downsampling=1, n_blocks_global=1, n_blocks_local=1)  # image_size multiple of 4
IMAGE_SIZE = 32
INT8_PSNR_DB = 35.0  # int8 against fp32 over [-1, 1]: an RMS error of at most 0.036 (test_export.py, test_int8.py)


def tiny_slice(nx: int = 40, ny: int = 36, seed: int = 0, lesions: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sample_files.chest_slice` as synthesis reads it: int16 HU image and uint8 label map ``[x, y]``."""
    chest = sample_files.chest_slice(nx, ny, seed=seed, lesions=lesions, noise=20.0, jitter=0.025)
    return chest.hu, chest.label


def tiny_volume(nz: int = 3, nx: int = 40, ny: int = 36) -> tuple[np.ndarray, np.ndarray]:
    """``[x, y, z]`` int16 HU volume and label map; slice 1 has no lesion, the last slice no lung."""
    chest = sample_files.chest_volume(nz, nx, ny, lesion_free=(1,), noise=20.0, jitter=0.025)
    label = chest.label
    label[:, :, -1] = 0
    return chest.hu, label


def save_nifti(array: np.ndarray, path: Path, affine: np.ndarray = LPS_AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(array), affine)
    img.header.set_data_dtype(np.asarray(array).dtype)
    nib.save(img, str(path))
    return path


def save_picture(array_xy: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(np.asarray(array_xy, dtype=np.uint8).T)).save(path)
    return path


def to_8bit(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu.astype(np.float32) + 1350.0) / 1500.0 * 255.0, 0, 255).round().astype(np.uint8)


def write_dicom_series(folder: Path, hu: np.ndarray, spacing: tuple[float, float, float] = (0.7, 0.8, 2.5)) -> Path:
    """A CT series ``[x, y, z]`` (HU) as DICOM files (see :func:`sample_files.write_dicom_series`)."""
    return sample_files.write_dicom_series(folder, hu, spacing, signed=True)

def make_generator(in_channels: int = 4) -> GlobalLocalGenerator:
    torch.manual_seed(0)
    return GlobalLocalGenerator(in_channels, 1, mode="joint", **NET_SETTINGS)


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<dir>/joint/checkpoint_epoch=1.pt`` holding ``{"generator": state_dict}`` of a random generator."""
    root = tmp_path_factory.mktemp("ckpt")
    (root / "joint").mkdir()
    torch.save({"generator": make_generator().state_dict()}, root / "joint" / "checkpoint_epoch=1.pt")
    return root


@pytest.fixture
def builders() -> types.SimpleNamespace:
    """The writers above, as one namespace."""
    return types.SimpleNamespace(
        tiny_slice=tiny_slice, tiny_volume=tiny_volume, save_nifti=save_nifti, save_picture=save_picture,
        to_8bit=to_8bit, write_dicom_series=write_dicom_series, make_generator=make_generator,
    )


def random_conditions(batch: int, seed: int = 0, size: int = IMAGE_SIZE) -> torch.Tensor:
    """``(batch, 4, size, size)`` one-hot maps of random labels."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (batch, size, size), generator=gen)
    return torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float()


def eager(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``network`` in eval and inference mode on ``x``."""
    with torch.inference_mode():
        return network.eval()(x)


def tiny_datalist(tmp_path: Path, builders: types.SimpleNamespace) -> Path:
    """``<tmp_path>/data/datalist.json``: three training slices (int8 calibration) and one test slice ``t``."""
    entries = []
    for k in range(3):
        hu, label = builders.tiny_slice(seed=k)
        image = builders.save_nifti(hu, tmp_path / "data" / f"s{k}.nii.gz")
        lab = builders.save_nifti(label, tmp_path / "data" / f"s{k}_label.nii.gz")
        entries.append({"image": str(image), "label": str(lab)})
    hu, label = builders.tiny_slice(seed=5)
    test = {"image": str(builders.save_nifti(hu, tmp_path / "data" / "t.nii.gz")),
            "label": str(builders.save_nifti(label, tmp_path / "data" / "t_label.nii.gz"))}
    path = tmp_path / "data" / "datalist.json"
    path.write_text(json.dumps({"training": entries, "test_synthesis": [test]}))
    return path
