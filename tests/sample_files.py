"""Writers of small test inputs shared by several test folders (pytest puts ``tests/`` on the path)."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import NamedTuple

import numpy as np


class ChestSlice(NamedTuple):
    """A synthetic chest CT slice (or stack of slices) ``[x, y(, z)]``; unpacks as ``hu, lung, codes``."""

    hu: np.ndarray  # int16 Hounsfield units
    lung: np.ndarray  # uint8 lung mask (0/1)
    codes: np.ndarray  # uint8 source lesion codes: 0 none, 1 GGO (left lung), 2 consolidation (right lung)

    @property
    def label(self) -> np.ndarray:
        """The uint8 label map of the bundle (see :func:`label_map`)."""
        return label_map(self.lung, self.codes)


def label_map(lung: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Label-map classes (0 outside, 1 lung, 2 GGO, 3 consolidation) from a lung mask and source lesion codes.

    Args:
        lung: lung mask (non-zero: lung).
        codes: source lesion codes (1 GGO, 2 or more consolidation).

    Returns:
        The uint8 label map, shaped like ``lung``.
    """
    out = np.where(lung > 0, 1, 0).astype(np.uint8)
    out[codes == 1] = 2
    out[codes >= 2] = 3
    return out


def chest_slice(nx: int = 40, ny: int | None = None, seed: int = 0, lesions: bool = True, noise: float = 15.0,
                jitter: float = 0.0) -> ChestSlice:
    """The one "tiny chest slice" of the tests: body, two lungs, GGO in the left lung, consolidation in the right.

    The shapes are ellipses in coordinates relative to the grid, so every size shows the same anatomy.

    Args:
        nx: number of voxels along x (the first axis).
        ny: number of voxels along y; ``None`` for a square slice.
        seed: seed of the noise and of the lesion jitter.
        lesions: draw the two lesions; ``False`` gives an infection-free slice.
        noise: standard deviation (HU) of the Gaussian noise added to the image.
        jitter: largest shift of the lesions' centres along y (a fraction of the grid), drawn from ``seed``,
            so that slices of different seeds have different label maps.

    Returns:
        The slice: int16 HU clipped to [-1024, 3071], uint8 lung mask, uint8 lesion codes (``.label``: label map).
    """
    ny = nx if ny is None else ny
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(nx) / nx, np.arange(ny) / ny, indexing="ij")

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0

    body = ellipse(0.5, 0.5, 0.47, 0.42)
    lung = ellipse(0.3, 0.5, 0.14, 0.3) | ellipse(0.7, 0.5, 0.14, 0.3)
    shift = jitter * (2.0 * rng.random(2) - 1.0)
    codes = np.zeros((nx, ny), np.uint8)
    if lesions:
        codes[ellipse(0.29, 0.58 + shift[0], 0.08, 0.1) & lung] = 1
        codes[ellipse(0.71, 0.6 + shift[1], 0.07, 0.08) & lung] = 2
    hu = np.select([codes == 1, codes == 2, lung, body], [-500.0, 20.0, -850.0, 40.0], -1000.0)
    hu = hu + rng.normal(0.0, noise, hu.shape)
    return ChestSlice(np.rint(np.clip(hu, -1024, 3071)).astype(np.int16), lung.astype(np.uint8), codes)


def chest_volume(nz: int = 3, nx: int = 40, ny: int | None = None, seed: int = 0, lesion_free: Collection[int] = (),
                 **slice_args) -> ChestSlice:
    """``nz`` slices of :func:`chest_slice` stacked along z; slice ``k`` has seed ``seed + k``.

    Args:
        nz: number of slices.
        nx: voxels along x.
        ny: voxels along y (``None``: ``nx``).
        seed: seed of the first slice.
        lesion_free: indices of the slices drawn without lesions.
        slice_args: further arguments of :func:`chest_slice` (``noise``, ``jitter``).

    Returns:
        The volume ``[x, y, z]`` as a :class:`ChestSlice`.
    """
    parts = [chest_slice(nx, ny, seed=seed + k, lesions=k not in lesion_free, **slice_args) for k in range(nz)]
    return ChestSlice(*(np.stack([p[i] for p in parts], axis=-1) for i in range(3)))


def write_dicom_series(folder: Path, hu: np.ndarray, spacing: tuple[float, float, float] = (0.7, 0.8, 2.5),
                       origin: tuple[float, float, float] = (-100.0, -120.0, 50.0), signed: bool = False) -> Path:
    """A CT series ``[x, y, z]`` (HU) as one DICOM file a slice, axial, stored value = HU + 1024 (int16 or uint16)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    nx, ny, nz = hu.shape
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = series, study, frame
        ds.Modality, ds.PatientID, ds.PatientName, ds.InstanceNumber = "CT", folder.name, "Test^Phantom", k + 1
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * spacing[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (y), column spacing (x)
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = ny, nx, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.ascontiguousarray((hu[:, :, k].T.astype(np.int32) + 1024).astype(np.int16 if signed else np.uint16)).tobytes()
        ds.save_as(os.path.join(folder, f"{k:03d}.dcm"), enforce_file_format=True)
    return folder
