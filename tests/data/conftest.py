"""Tiny raw datasets in every layout of bundle/docs/data.md ("Sources read by prepare"), written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import sample_files

PHANTOM_AFFINE = np.diag([-0.7, -0.7, 2.5, 1.0])


def synthetic_volume(nz: int = 3, size: int = 40, seed: int = 0) -> sample_files.ChestSlice:
    """``[x, y, z]`` HU, lung, lesion volumes (:func:`sample_files.chest_volume`); slice 0 has no lesion."""
    return sample_files.chest_volume(nz, size, seed=seed, lesion_free=(0,))


def to_8bit(hu: np.ndarray) -> np.ndarray:
    """Lung window (level -600, width 1500) to 0..255."""
    return np.rint((np.clip(hu, -1350, 150) + 1350) / 1500 * 255).astype(np.uint8)


def save_nifti(array: np.ndarray, path: Path, affine: np.ndarray = PHANTOM_AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def save_picture(array_xy: np.ndarray, path: Path) -> Path:
    """Save an ``[x, y]`` array as a picture (rows = y)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(np.asarray(array_xy).T)).save(path)
    return path


def write_radiopaedia(root: Path, n_patients: int = 3, nz: int = 3, size: int = 40, lungs: bool = True,
                      affine: np.ndarray = PHANTOM_AFFINE) -> Path:
    for p in range(1, n_patients + 1):
        hu, lung, codes = synthetic_volume(nz, size, seed=10 * p)
        save_nifti(hu, root / "rp_im" / f"{p}.nii.gz", affine)
        save_nifti(codes, root / "rp_msk" / f"{p}.nii.gz", affine)
        if lungs:
            save_nifti(lung * 2, root / "rp_lung_msk" / f"{p}.nii.gz", affine)  # any non-zero is lung
    return root


def write_medseg(root: Path, nz: int = 4, size: int = 40) -> Path:
    hu, lung, codes = synthetic_volume(nz, size, seed=3)
    save_nifti(hu.astype(np.float32), root / "tr_im.nii.gz")
    save_nifti(codes.astype(np.float32), root / "tr_mask.nii.gz")
    save_nifti(lung, root / "tr_lungmasks_updated.nii.gz")
    return root


def write_slices(root: Path, stems: list[str], ext: str = ".png", lungs: bool = False, binary255: bool = False,
                 label_folder: str = "labels", size: int = 40) -> Path:
    for k, stem in enumerate(stems):
        hu, lung, codes = sample_files.chest_slice(size, seed=k)
        if ext in (".nii", ".nii.gz"):
            save_nifti(hu, root / "images" / f"{stem}{ext}")
        else:
            save_picture(to_8bit(hu), root / "images" / f"{stem}{ext}")
        mask = np.where(codes > 0, 255, 0).astype(np.uint8) if binary255 else codes
        save_picture(mask, root / label_folder / f"{stem}.png")
        if lungs:
            save_picture(lung * 255, root / "lungs" / f"{stem}.png")
    return root


def write_dicom_series(folder: Path, hu: np.ndarray, spacing: tuple[float, float, float] = (0.7, 0.8, 2.5)) -> Path:
    """A CT series ``[x, y, z]`` (HU) as DICOM files (see :func:`sample_files.write_dicom_series`)."""
    return sample_files.write_dicom_series(folder, hu, spacing, signed=False)

def write_dicom_dataset(root: Path, names: tuple[str, ...] = ("s1", "s2", "s3"), nz: int = 3, size: int = 32) -> Path:
    """Series folders plus ``<series>_lesion.nii.gz`` on the series' (LPS) voxel grid."""
    for i, name in enumerate(names):
        hu, _, codes = synthetic_volume(nz, size, seed=100 + i)
        write_dicom_series(root / name, hu)
        affine = np.diag([-0.7, -0.8, 2.5, 1.0])
        affine[:3, 3] = [100.0, 120.0, 50.0]
        save_nifti(codes, root / f"{name}_lesion.nii.gz", affine)
    return root


@pytest.fixture
def builders():
    """The dataset writers above, as one namespace."""
    import types

    return types.SimpleNamespace(
        synthetic_slice=sample_files.chest_slice, synthetic_volume=synthetic_volume, to_8bit=to_8bit,
        save_nifti=save_nifti, save_picture=save_picture, write_radiopaedia=write_radiopaedia,
        write_medseg=write_medseg, write_slices=write_slices, write_dicom_series=write_dicom_series,
        write_dicom_dataset=write_dicom_dataset,
    )
