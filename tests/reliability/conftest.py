"""Fixtures of the reliability tests: tiny datasets in every input format, a tiny generator, clean-failure checks."""

from __future__ import annotations

import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import sample_files

torch.set_num_threads(1)

LPS_AFFINE = np.diag([-0.7, -0.7, 2.5, 1.0])
NET_SETTINGS = dict(ngf=8, n_downsampling=1, n_blocks_global=1, n_blocks_local=1)
IMAGE_SIZE = 32


def to_8bit(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu.astype(np.float32) + 1350.0) / 1500.0 * 255.0, 0, 255).round().astype(np.uint8)


def save_nifti(array: np.ndarray, path: Path, affine: np.ndarray = LPS_AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    img = nib.Nifti1Image(array, affine, dtype=array.dtype)
    nib.save(img, str(path))
    return path


def save_picture(array_xy: np.ndarray, path: Path) -> Path:
    """Save an ``[x, y]`` (or ``[x, y, c]``) array as a picture, rows = y."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array_xy)
    Image.fromarray(np.ascontiguousarray(np.swapaxes(arr, 0, 1))).save(path)
    return path


def write_dicom_series(folder: Path, hu: np.ndarray, spacing: tuple[float, float, float] = (0.7, 0.8, 2.5)) -> Path:
    """A CT series ``[x, y, z]`` (HU) as DICOM files (see :func:`sample_files.write_dicom_series`)."""
    return sample_files.write_dicom_series(folder, hu, spacing, signed=False)


DICOM_MASK_AFFINE = np.array([[-0.7, 0, 0, 100.0], [0, -0.8, 0, 120.0], [0, 0, 2.5, 50.0], [0, 0, 0, 1.0]])


def make_generator(in_channels: int = 4) -> torch.nn.Module:
    from covid_ct_cgan.networks import GlobalLocalGenerator

    torch.manual_seed(0)
    return GlobalLocalGenerator(in_channels, 1, mode="joint", **NET_SETTINGS)


def leftovers(folder: Path, name: str) -> list[str]:
    """Entries of ``folder`` that a failed write of ``name`` may have left: the output itself or hidden temporaries."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name == name or p.name.startswith(f".{name}."))


@pytest.fixture(scope="session")
def generator_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<dir>/joint/checkpoint_epoch=1.pt`` holding ``{"generator": state_dict}`` of a random tiny generator."""
    root = tmp_path_factory.mktemp("ckpt")
    (root / "joint").mkdir()
    torch.save({"generator": make_generator().state_dict()}, root / "joint" / "checkpoint_epoch=1.pt")
    return root / "joint"


@pytest.fixture(scope="session")
def kit() -> types.SimpleNamespace:
    """The writers and checks above, as one namespace (session scope: usable in hypothesis tests)."""
    return types.SimpleNamespace(
        ct_slice=sample_files.chest_slice, ct_volume=sample_files.chest_volume, label_map=sample_files.label_map,
        to_8bit=to_8bit, save_nifti=save_nifti,
        save_picture=save_picture, write_dicom_series=write_dicom_series, DICOM_MASK_AFFINE=DICOM_MASK_AFFINE,
        make_generator=make_generator, leftovers=leftovers, IMAGE_SIZE=IMAGE_SIZE,
    )
