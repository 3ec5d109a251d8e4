"""Writing synthesis results exactly like their inputs, plus the preview picture.

- NIfTI input: the result has the input's header (affine, qform/sform codes,
  spacing, units), its array order and shape, and its stored dtype (int16 HU
  stays int16; a scaled NIfTI is written as float32).
- Picture input (PNG/JPEG/TIFF): an 8-bit greyscale PNG of the same size
  (JPEG is lossy, so results are PNG).
- DICOM series: a NIfTI volume with the series' geometry (LPS array order,
  the affine ITK reads from the series), int16 HU.

Label maps are written the same way with dtype uint8 (class codes).
Every file is written atomically (:func:`covid_ct_cgan.fileio.atomic_path`).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from .. import intensity
from ..fileio import atomic_path
from ..figures import LABEL_COLOURS, to_uint8_picture
from .inputs import Geometry


def output_suffix(geometry: Geometry) -> str:
    """File suffix of the results of an input: ``.png`` for pictures, else ``.nii.gz``."""
    return ".png" if geometry.kind == "picture" else ".nii.gz"


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Values in the input's units as ``dtype``: rounded and clipped for integer types."""
    dtype = np.dtype(dtype)
    values = np.asarray(values)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def write_like(
    array: np.ndarray, geometry: Geometry, path: str | Path, is_label: bool = False, overwrite: bool = False
) -> Path:
    """Write an LPS ``[x, y, z]`` array with the geometry and format of its input.

    Args:
        array: result in the input's units (or a label map), LPS ``[x, y, z]``.
        geometry: the input's :class:`~covid_ct_cgan.inference.inputs.Geometry`.
        path: output file (suffix from :func:`output_suffix`).
        is_label: write uint8 class codes instead of the input's dtype.
        overwrite: replace an existing file.

    Returns:
        ``path``.
    """
    dtype = np.dtype(np.uint8) if is_label else geometry.dtype
    data = cast_like(geometry.to_file_order(np.asarray(array)), dtype)
    with atomic_path(path, overwrite) as tmp:
        if geometry.kind == "picture":
            Image.fromarray(np.ascontiguousarray(data.T)).save(tmp, format="PNG")
        elif geometry.kind == "nifti":
            assert geometry.header is not None, "a NIfTI geometry keeps its header"
            header = geometry.header.copy()
            header.set_data_dtype(dtype)
            header.set_slope_inter(1.0, 0.0)
            img = nib.Nifti1Image(data, None, header=header)  # affine from the copied header: exactly the input's
            nib.save(img, str(tmp))
        else:
            img = nib.Nifti1Image(data, geometry.affine)
            img.header.set_data_dtype(dtype)
            nib.save(img, str(tmp))
    return Path(path)


def _grey(values: np.ndarray, scale: str, level: float, width: float) -> np.ndarray:
    return to_uint8_picture(intensity.to_model(values, scale, level, width))


def preview_picture(
    real: np.ndarray,
    label: np.ndarray,
    synthetic: np.ndarray,
    scale: str,
    window_level: float = intensity.DEFAULT_WINDOW_LEVEL,
    window_width: float = intensity.DEFAULT_WINDOW_WIDTH,
    min_size: int = 192,
) -> np.ndarray:
    """``real | label map over the real slice | synthetic`` as one RGB picture.

    Args:
        real: ``[x, y]`` real slice in its units (HU or 0..255).
        label: ``[x, y]`` label map used for the synthesis.
        synthetic: ``[x, y]`` composited result in the same units.
        scale: ``"hu"`` (shown in the lung window) or ``"8bit"``.
        window_level: display window level (HU).
        window_width: display window width (HU).
        min_size: small slices are enlarged (nearest neighbour) to at least this many pixels.

    Returns:
        ``(rows, columns, 3)`` uint8 picture, rows = y (radiological view of LPS slices).
    """
    grey_real = _grey(real, scale, window_level, window_width)
    grey_synth = _grey(synthetic, scale, window_level, window_width)
    lab = np.clip(np.asarray(label).astype(np.int64).T, 0, len(LABEL_COLOURS) - 1)
    alpha = np.where(lab >= 2, 0.6, np.where(lab == 1, 0.25, 0.0))[..., None]
    overlay = (1.0 - alpha) * grey_real[..., None] + alpha * LABEL_COLOURS[lab]
    tiles = [np.repeat(grey_real[..., None], 3, -1), overlay.astype(np.uint8), np.repeat(grey_synth[..., None], 3, -1)]
    zoom = max(1, -(-min_size // max(grey_real.shape)))
    if zoom > 1:
        tiles = [np.repeat(np.repeat(t, zoom, 0), zoom, 1) for t in tiles]
    sep = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
    return np.concatenate([tiles[0], sep, tiles[1], sep, tiles[2]], axis=1)


def write_png(picture: np.ndarray, path: str | Path, overwrite: bool = False) -> Path:
    """Write an RGB or grey uint8 picture as PNG, atomically."""
    with atomic_path(path, overwrite) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
    return Path(path)
