"""Writers of small test inputs shared by several test folders (pytest puts ``tests/`` on the path)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


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
