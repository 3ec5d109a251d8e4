"""Derive a lung mask from one axial CT slice when the dataset has none.

Classic threshold pipeline, no learned model:

1. air = pixels darker than a threshold: ``-400 HU`` for CT in Hounsfield
   units; for 8-bit (already windowed) slices, Otsu's threshold between the
   dark (air, lung) and bright (tissue) pixels.
2. Air connected to the image border is outside the body and is dropped,
   unless the component is large enough to be lung cut by a tight crop
   (see :func:`derive_lung_mask`).
3. The two largest remaining components are the lungs; small ones (airways,
   bowel gas, noise) are dropped; components that touch a lesion are kept.
4. Vessels and lesions inside the lungs are holes: a small closing and hole
   filling put them back, and the lesion mask itself is added (lesions are
   lung by definition).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import disk

from ..intensity import Scale

AIR_THRESHOLD_HU = -400.0


def air_threshold(image2d: np.ndarray, scale: Scale) -> float:
    """Intensity below which a pixel counts as air or aerated lung.

    Args:
        image2d: one slice, HU or 8-bit values.
        scale: ``"hu"`` or ``"8bit"``.

    Returns:
        ``-400`` for HU; Otsu's threshold of the slice for 8-bit images.

    Raises:
        ValueError: unknown scale.
    """
    if scale == "hu":
        return AIR_THRESHOLD_HU
    if scale != "8bit":
        raise ValueError(f"unknown intensity scale {scale!r}; expected 'hu' or '8bit'")
    values = np.asarray(image2d, dtype=np.float32)
    if values.max() <= values.min():
        return float(values.min())
    return float(threshold_otsu(values))


def _border_components(labels: np.ndarray) -> set[int]:
    edge = np.concatenate([labels[0, :], labels[-1, :], labels[:, 0], labels[:, -1]])
    return set(np.unique(edge[edge > 0]).tolist())


def derive_lung_mask(
    image2d: np.ndarray,
    scale: Scale,
    lesion: np.ndarray | None = None,
    max_components: int = 2,
    min_fraction: float = 0.08,
) -> np.ndarray:
    """Lung mask of one axial slice by threshold and largest components.

    An air component that touches the image border is the air around the
    patient and is dropped, except when it fills less than half of the pixels
    next to the border: a slice cropped tightly to the body (common for
    8-bit slice datasets) cuts the lung at the crop, and that lung must stay.

    Args:
        image2d: slice ``[x, y]`` in HU or 8-bit values.
        scale: ``"hu"`` or ``"8bit"``.
        lesion: optional lesion mask (non-zero = lesion) of the same shape;
            lesions are added to the lung, and components touching them kept.
        max_components: number of largest air components kept (two lungs).
        min_fraction: components smaller than this fraction of the largest
            kept component are dropped (airways, bowel gas).

    Returns:
        ``uint8`` mask, 1 = lung (lesions included), same shape as the slice.

    Raises:
        ValueError: the slice is not 2D, or the lesion mask has another shape.
    """
    image = np.asarray(image2d, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D slice, got shape {image.shape}")
    lesion_mask = np.zeros(image.shape, bool) if lesion is None else np.asarray(lesion) != 0
    if lesion_mask.shape != image.shape:
        raise ValueError(f"lesion mask shape {lesion_mask.shape} differs from slice shape {image.shape}")

    air = image < air_threshold(image, scale)
    air = ndimage.binary_opening(air, structure=disk(1))  # break one-pixel bridges, drop speckle
    labels, count = ndimage.label(air)
    if count == 0:
        return lesion_mask.astype(np.uint8)
    sizes = ndimage.sum_labels(air, labels, index=np.arange(1, count + 1))

    band = np.zeros(image.shape, bool)
    width = max(2, min(image.shape) // 50)
    band[:width, :] = band[-width:, :] = band[:, :width] = band[:, -width:] = True
    outside = set()
    for lab in _border_components(labels):
        in_band = np.count_nonzero(band & (labels == lab))
        if in_band > 0.5 * np.count_nonzero(band):
            outside.add(lab)

    candidates = [(size, lab) for lab, size in zip(range(1, count + 1), sizes) if lab not in outside]
    candidates.sort(reverse=True)
    touching = set(np.unique(labels[lesion_mask]).tolist()) - {0} - outside
    keep: set[int] = set()
    if candidates:
        largest = candidates[0][0]
        keep = {lab for size, lab in candidates[:max_components] if size >= min_fraction * largest}
    keep |= touching

    lung = np.isin(labels, sorted(keep))
    radius = max(1, min(image.shape) // 100)
    padded = np.pad(lung, radius, mode="edge")  # a lung cut by the crop stays open at the border
    lung = ndimage.binary_closing(padded, structure=disk(radius))[radius:-radius, radius:-radius]
    lung = ndimage.binary_fill_holes(lung | lesion_mask)
    return lung.astype(np.uint8)
