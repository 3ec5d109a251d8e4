"""Derive a lung mask from one axial CT slice when the dataset has none.

Classic threshold pipeline, no learned model, written for what scanners and
slice datasets really contain (padding outside a circular field of view, the
table, air around the patient, tight crops, one lung not aerated):

1. air = pixels darker than a threshold: ``-400 HU`` for CT in Hounsfield
   units; for 8-bit (already windowed) slices, Otsu's threshold between the
   dark (air, lung) and bright (tissue) pixels.
2. air around the patient = air components that hold padding (below
   ``-1500 HU``, e.g. ``-2048`` or ``-3024``, or ``0`` in 8-bit images, cut
   off by the field of view, see :func:`padding_mask`), and an air component
   covering more than half of the image border (padding of ``-1024`` is air).
3. body = the convex hull of the tissue (see :func:`body_region`): every
   large component and every piece cut by the image border (a tight crop
   cuts the chest wall), without the table (a thin component lying wholly
   beyond the largest one, with air between).
4. lung candidates = the other air components lying mostly (>= half) inside
   the body: air around the patient, under the table and in the corners of a
   crop is outside it; a lung opened to the border by a crop is inside.
5. airways: a candidate inside the middle 30 % of the body's width (along
   the left-right axis, the axis that separates the two largest candidates)
   and smaller than a third of the largest is the trachea or a main bronchus
   and is dropped; bronchi that join a lung at the hilum stay part of it.
6. the two largest remaining candidates are the lungs (smaller ones, below
   ``min_fraction`` of the largest, are bowel gas or noise); candidates that
   touch a lesion are kept too. A small closing and hole filling put vessels
   back, and the lesion mask is added (lesions are lung by definition).

:func:`lung_mask_problems` checks the result (lung fraction of the body, one
lung on each side of the body's midline, inside the body); with ``source``
given, :func:`derive_lung_mask` logs one warning naming the file when the
check fails, pointing to the option of supplying lung masks.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import convex_hull_image, disk

from ..intensity import Scale

logger = logging.getLogger(__name__)

AIR_THRESHOLD_HU = -400.0
PADDING_BELOW_HU = -1500.0
"""HU values below this are scanner padding (air is about -1000, clipped at -1024 by most scanners)."""
PLAUSIBLE_BODY_FRACTION = (0.03, 0.8)
"""Range of the lung area as a fraction of the body region (its convex hull)."""
MAX_OUTSIDE_FRACTION = 0.02
"""Largest fraction of the lung mask allowed outside the body region."""
ONE_SIDE_FRACTION = 0.85
"""A single lung component with this much of its area on one side of the body's centre is one lung."""
LUNG_MASK_HINT = (
    "supply lung masks instead: lungs/<stem>.png (or lung_masks/) beside images/ for slice folders, "
    "rp_lung_msk/N.nii.gz, tr_lungmasks_updated.nii.gz, or <series>_lung.nii.gz next to a DICOM series "
    "(bundle/docs/README.md, Data)"
)


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


def _radius(shape: tuple[int, ...], divisor: int) -> int:
    return max(1, min(shape) // divisor)


def _border_band(shape: tuple[int, int]) -> np.ndarray:
    band = np.zeros(shape, bool)
    width = max(2, min(shape) // 50)
    band[:width, :] = band[-width:, :] = band[:, :width] = band[:, -width:] = True
    return band


def _border_components(labels: np.ndarray) -> np.ndarray:
    edge = np.concatenate([labels[0, :], labels[-1, :], labels[:, 0], labels[:, -1]])
    return np.unique(edge[edge > 0])


def padding_mask(image2d: np.ndarray, scale: Scale) -> np.ndarray:
    """Padding outside the scanner's field of view.

    Padding is what scanners write where nothing was reconstructed: below
    :data:`PADDING_BELOW_HU` in HU (``-2048``, ``-3024``), ``0`` in 8-bit
    images windowed for the lung (where air is brighter). Only regions that
    touch the image border and cover at least 0.5 % of it count. Padding of
    ``-1024`` HU is air and is found as such (the air around the patient).

    Args:
        image2d: slice ``[x, y]`` in HU or 8-bit values.
        scale: ``"hu"`` or ``"8bit"``.

    Returns:
        boolean mask of the padding.

    Raises:
        ValueError: unknown scale.
    """
    image = np.asarray(image2d, dtype=np.float32)
    if scale not in ("hu", "8bit"):
        raise ValueError(f"unknown intensity scale {scale!r}; expected 'hu' or '8bit'")
    low = image < PADDING_BELOW_HU if scale == "hu" else image <= 0
    labels, count = ndimage.label(low)
    if count == 0:
        return low
    sizes = ndimage.sum_labels(low, labels, index=np.arange(1, count + 1))
    border = [k for k in _border_components(labels) if sizes[k - 1] >= 0.005 * image.size]
    return np.isin(labels, border)


def _outside_air(air_labels: np.ndarray, count: int, padding: np.ndarray) -> np.ndarray:
    """The air around the patient: air components holding padding, and one covering half the border band."""
    if count == 0:
        return np.zeros(air_labels.shape, bool)
    index = np.arange(1, count + 1)
    band = _border_band(air_labels.shape)
    in_band = ndimage.sum_labels(band, air_labels, index=index)
    in_padding = ndimage.sum_labels(padding, air_labels, index=index)
    outside = index[in_padding >= 0.0025 * air_labels.size]
    if in_band.max() > 0.5 * np.count_nonzero(band):
        outside = np.append(outside, 1 + int(np.argmax(in_band)))
    return np.isin(air_labels, outside)


def _table_like(component: np.ndarray, core: np.ndarray) -> bool:
    """Thin (thickness below a third of its length) and wholly beyond the body core along its thin axis."""
    coords = np.nonzero(component)
    core_coords = np.nonzero(core)
    extent = [int(np.ptp(c)) + 1 for c in coords]
    thin = int(np.argmin(extent))
    if extent[thin] > extent[1 - thin] / 3:
        return False
    low, high = coords[thin].min(), coords[thin].max()
    return bool(high < core_coords[thin].min() or low > core_coords[thin].max())


def _body(image: np.ndarray, scale: Scale) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Air components, the air outside the patient, and the body region (see :func:`body_region`)."""
    air = image < air_threshold(image, scale)
    air = ndimage.binary_opening(air, structure=disk(1))  # break one-pixel bridges, drop speckle
    labels, count = ndimage.label(air)
    outside = _outside_air(labels, count, padding_mask(image, scale))
    tissue = ndimage.binary_opening(~air, structure=disk(_radius(image.shape, 100)))
    tissue_labels, n_tissue = ndimage.label(tissue)
    if n_tissue == 0:
        return labels, count, outside, np.zeros(image.shape, bool)
    sizes = ndimage.sum_labels(tissue, tissue_labels, index=np.arange(1, n_tissue + 1))
    core = tissue_labels == 1 + int(np.argmax(sizes))
    parts = [tissue_labels == k for k in 1 + np.nonzero(sizes >= 0.01 * sizes.max())[0]]
    cut_labels, _ = ndimage.label(~air)  # tissue cut by the image border: chest wall cut by a crop, arms
    parts += [cut_labels == k for k in _border_components(cut_labels) if np.count_nonzero(cut_labels == k) >= 3]
    body = np.zeros(image.shape, bool)
    for part in parts:
        if not _table_like(part, core):
            body |= part
    return labels, count, outside, convex_hull_image(body)


def body_region(image2d: np.ndarray, scale: Scale) -> np.ndarray:
    """Region of the slice that lungs may occupy: the convex hull of the body.

    Tissue is the non-air after an opening of radius ``min(shape) // 100``.
    The body is every tissue component of at least 1 % of the largest, and
    every piece of tissue cut by the image border (a slice cropped tightly
    to the body has lungs that cut the chest wall into pieces), except the
    table: a thin component (thickness below a third of its length) that
    lies wholly beyond the largest component, with air between, as do
    blankets and sheets.

    Args:
        image2d: slice ``[x, y]`` in HU or 8-bit values.
        scale: ``"hu"`` or ``"8bit"``.

    Returns:
        boolean mask, all False when the slice has no tissue.

    Raises:
        ValueError: the slice is not 2D, or the scale is unknown.
    """
    image = np.asarray(image2d, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D slice, got shape {image.shape}")
    return _body(image, scale)[3]


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.array(ndimage.center_of_mass(mask), dtype=np.float64)


def lung_mask_problems(lung: np.ndarray, body: np.ndarray) -> list[str]:
    """Reasons why a lung mask does not look like the lungs of an axial chest slice.

    Checks that the lung covers a plausible fraction of the body region
    (:data:`PLAUSIBLE_BODY_FRACTION`), lies inside it (at most
    :data:`MAX_OUTSIDE_FRACTION` outside), and forms two components on
    either side of the body's centre. The left-right axis is the one that
    separates the two largest components; a single component with
    :data:`ONE_SIDE_FRACTION` of its area on one side of the centre along an
    axis is reported as one lung only (a lung collapsed or consolidated, or
    a slice through one apex or base), while one that straddles the centre
    along both axes counts as two lungs joined in front of the heart.

    Args:
        lung: lung mask, non-zero is lung.
        body: body region of the same shape (see :func:`body_region`).

    Returns:
        short descriptions of the problems found; empty when plausible.

    Raises:
        ValueError: the two masks differ in shape.
    """
    lung = np.asarray(lung) != 0
    body = np.asarray(body) != 0
    if lung.shape != body.shape:
        raise ValueError(f"lung mask shape {lung.shape} differs from body mask shape {body.shape}")
    if not body.any():
        return ["no body found (the slice has no tissue brighter than the air threshold)"]
    area = np.count_nonzero(lung)
    if area == 0:
        return ["no lung found"]
    problems: list[str] = []
    fraction = area / np.count_nonzero(body)
    low, high = PLAUSIBLE_BODY_FRACTION
    if not low <= fraction <= high:
        problems.append(f"lung covers {fraction:.1%} of the body, expected {low:.0%}-{high:.0%}")
    outside = np.count_nonzero(lung & ~body) / area
    if outside > MAX_OUTSIDE_FRACTION:
        problems.append(f"{outside:.1%} of the lung lies outside the body")

    labels, count = ndimage.label(lung)
    sizes = ndimage.sum_labels(lung, labels, index=np.arange(1, count + 1))
    order = np.argsort(sizes)[::-1]
    major = [int(k) + 1 for k in order if sizes[k] >= 0.1 * sizes[order[0]]]
    centre = _centroid(body)
    if len(major) >= 2:
        first, second = _centroid(labels == major[0]), _centroid(labels == major[1])
        axis = int(np.argmax(np.abs(first - second)))
        if (first[axis] - centre[axis]) * (second[axis] - centre[axis]) > 0:
            problems.append("the two largest lung components lie on the same side of the body's midline")
    else:
        component = labels == major[0]
        coords = np.nonzero(component)
        for axis in range(2):
            below = np.count_nonzero(coords[axis] < centre[axis]) / coords[axis].size
            if max(below, 1.0 - below) >= ONE_SIDE_FRACTION:
                problems.append("only one lung found (a lung collapsed or consolidated, or the derivation failed)")
                break
    return problems


def _lr_axis(labels: np.ndarray, ranked: list[tuple[float, int]], body: np.ndarray) -> int:
    """Left-right axis: the one separating the two largest candidates, else the body's longer extent."""
    if len(ranked) >= 2 and ranked[1][0] >= ranked[0][0] / 3:
        first, second = _centroid(labels == ranked[0][1]), _centroid(labels == ranked[1][1])
        return int(np.argmax(np.abs(first - second)))
    extent = [np.ptp(np.nonzero(body)[axis]) for axis in range(2)]
    return int(np.argmax(extent))


def _is_airway(component: np.ndarray, body: np.ndarray, axis: int) -> bool:
    """The component lies within the middle 30 % of the body's extent along the left-right axis."""
    body_index = np.nonzero(np.any(body, axis=1 - axis))[0]
    index = np.nonzero(np.any(component, axis=1 - axis))[0]
    low, high = body_index[0], body_index[-1]
    centre, half = (low + high) / 2.0, 0.15 * (high - low)
    return bool(index[0] >= centre - half and index[-1] <= centre + half)


def derive_lung_mask(
    image2d: np.ndarray,
    scale: Scale,
    lesion: np.ndarray | None = None,
    max_components: int = 2,
    min_fraction: float = 0.08,
    source: str | None = None,
) -> np.ndarray:
    """Lung mask of one axial slice: air inside the body, largest components.

    See the module docstring for the steps. Works on full scans (circular
    field of view with padding, table, air around the patient) and on slices
    cropped tightly to the body, in HU or 8-bit.

    Args:
        image2d: slice ``[x, y]`` in HU or 8-bit values.
        scale: ``"hu"`` or ``"8bit"``.
        lesion: optional lesion mask (non-zero = lesion) of the same shape;
            lesions are added to the lung, and components touching them kept.
        max_components: number of largest air components kept (two lungs).
        min_fraction: components smaller than this fraction of the largest
            kept component are dropped (airways, bowel gas).
        source: name of the slice (file, and slice number of a volume); when
            given, the result is checked with :func:`lung_mask_problems` and
            a failed check logs one warning naming it.

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

    labels, count, outside, body = _body(image, scale)
    air = labels > 0
    keep: set[int] = set()
    if count and body.any():
        index = np.arange(1, count + 1)
        sizes = ndimage.sum_labels(air, labels, index=index)
        inside = ndimage.sum_labels(air & body & ~outside, labels, index=index)
        ranked = sorted(((float(s), int(k)) for k, s, i in zip(index, sizes, inside) if i >= 0.5 * s), reverse=True)
        if ranked:
            axis = _lr_axis(labels, ranked, body)
            largest = ranked[0][0]
            ranked = [
                (size, k) for size, k in ranked
                if not (size < largest / 3 and _is_airway(labels == k, body, axis))
            ]
            keep = {k for size, k in ranked[:max_components] if size >= min_fraction * largest}
            candidates = {k for _, k in ranked}
            keep |= set(np.unique(labels[lesion_mask]).tolist()) & candidates

    lung = np.isin(labels, sorted(keep))
    radius = _radius(image.shape, 100)
    padded = np.pad(lung, radius, mode="edge")  # a lung cut by the crop stays open at the border
    lung = ndimage.binary_closing(padded, structure=disk(radius))[radius:-radius, radius:-radius]
    lung = ndimage.binary_fill_holes(lung | lesion_mask)
    if source is not None:
        problems = lung_mask_problems(lung, body)
        if problems:
            logger.warning(f"{source}: derived lung mask is implausible: {'; '.join(problems)}; {LUNG_MASK_HINT}")
    return lung.astype(np.uint8)
