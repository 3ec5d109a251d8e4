"""Tiny synthesis inputs in every format and a random generator saved like a training checkpoint."""

from __future__ import annotations

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


def tiny_slice(nx: int = 40, ny: int = 36, seed: int = 0, lesions: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One axial slice ``[x, y]``: int16 HU image and uint8 label map (two lungs, GGO left, consolidation right)."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(nx) / nx, np.arange(ny) / ny, indexing="ij")

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0

    body = ellipse(0.5, 0.5, 0.47, 0.42)
    lung = ellipse(0.3, 0.5, 0.14, 0.3) | ellipse(0.7, 0.5, 0.14, 0.3)
    label = np.where(lung, 1, 0).astype(np.uint8)
    if lesions:
        label[ellipse(0.28, 0.6 + 0.05 * rng.random(), 0.07, 0.08) & lung] = 2
        label[ellipse(0.72, 0.62, 0.05, 0.06) & lung] = 3
    hu = np.where(body, 40.0, -1000.0)
    hu = np.where(lung, -850.0, hu)
    hu = np.where(label == 2, -500.0, hu)
    hu = np.where(label == 3, 0.0, hu)
    hu = hu + rng.normal(0, 20, hu.shape)
    return np.round(hu).astype(np.int16), label


def tiny_volume(nz: int = 3, nx: int = 40, ny: int = 36) -> tuple[np.ndarray, np.ndarray]:
    """``[x, y, z]`` int16 HU volume and label map; the last slice has no lung."""
    pairs = [tiny_slice(nx, ny, seed=k, lesions=k != 1) for k in range(nz)]
    hu = np.stack([p[0] for p in pairs], axis=-1)
    label = np.stack([p[1] for p in pairs], axis=-1)
    label[:, :, -1] = 0
    return hu, label


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
