"""Lesion-map augmentation for synthesis: new lesion layouts inside the same lung.

The paper's test process feeds the generator label maps "augmented from a
real one": the lesions are deformed, rotated, scaled, flipped or moved from
another slice, while the lung stays where it is. :class:`LesionAugmenter`
does that on one 2D label map ``[x, y]``:

1. take the slice's own lesions, or (with ``move_prob``, and always when the
   slice has none) the lesion pattern of a donor slice
   (:func:`lesion_pattern`), resized with nearest neighbour onto the target
   lung's bounding box;
2. move them with one random geometric map (nearest neighbour, so classes
   stay classes): a left-right flip about the lung's centre (lesions change
   lung), rotation and scaling about the lesions' centroid, and a smooth
   elastic displacement;
3. keep what falls inside the lung and paint it onto the healthy lung.

The lung region of the result equals the input's exactly, so the composited
output keeps the real slice outside the same lung, and every lesion pixel of
the result is lung. Randomness comes only from the ``numpy`` generator
passed in: the same seed gives the same map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..labels import GGO, LUNG, OUTSIDE_LUNG


@dataclass(frozen=True)
class LesionPattern:
    """The lesions of one slice, cropped to its lung's bounding box.

    Attributes:
        source: where it came from (``"<input name>:<slice>"``), for the manifest.
        lesions: ``[x, y]`` uint8 crop: lesion classes inside the lung, 0 elsewhere.
    """

    source: str
    lesions: np.ndarray


def lung_bounding_box(lung: np.ndarray) -> tuple[slice, slice] | None:
    """Bounding box of a boolean ``[x, y]`` mask as two slices, or None when it is empty."""
    xs = np.flatnonzero(lung.any(axis=1))
    ys = np.flatnonzero(lung.any(axis=0))
    if xs.size == 0:
        return None
    return slice(int(xs[0]), int(xs[-1]) + 1), slice(int(ys[0]), int(ys[-1]) + 1)


def lesion_pattern(label: np.ndarray, source: str) -> LesionPattern | None:
    """The donor pattern of a label map: its lesions within its lung's bounding box.

    Args:
        label: ``[x, y]`` label map.
        source: name recorded with the pattern.

    Returns:
        The pattern, or None when the slice has no lesion.
    """
    label = np.asarray(label)
    box = lung_bounding_box(label > OUTSIDE_LUNG)
    if box is None or not np.any(label >= GGO):
        return None
    crop = label[box]
    return LesionPattern(source, np.where(crop >= GGO, crop, 0).astype(np.uint8))


def _resize_nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2D class array (pixel centres mapped onto pixel centres)."""
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * array.shape[0] / shape[0]).astype(np.int64), array.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * array.shape[1] / shape[1]).astype(np.int64), array.shape[1] - 1)
    return array[np.ix_(rows, cols)]


class LesionAugmenter:
    """Random new lesion layouts inside the lung of a label map (see the module docstring).

    Args:
        rotate_range: largest rotation of the lesions, in degrees (uniform in +-).
        scale_range: (low, high) isotropic scale of the lesions about their centroid.
        flip_prob: probability of a left-right mirror about the lung's centre.
        elastic_prob: probability of an elastic deformation.
        elastic_magnitude: largest elastic displacement, as a fraction of the lung's box.
        elastic_grid: control points per side of the smooth displacement field.
        move_prob: probability of taking the lesions of a donor slice instead of the slice's own.
        min_kept_fraction: a draw that keeps less than this fraction of the lesion area inside
            the lung is redrawn.
        max_tries: draws before falling back to the untransformed lesions.

    Raises:
        ValueError: a parameter outside its range.
    """

    def __init__(
        self,
        rotate_range: float = 30.0,
        scale_range: Sequence[float] = (0.8, 1.25),
        flip_prob: float = 0.5,
        elastic_prob: float = 0.8,
        elastic_magnitude: float = 0.06,
        elastic_grid: int = 5,
        move_prob: float = 0.3,
        min_kept_fraction: float = 0.3,
        max_tries: int = 10,
    ) -> None:
        low, high = (float(v) for v in scale_range)
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {tuple(scale_range)}")
        for name, p in (("flip_prob", flip_prob), ("elastic_prob", elastic_prob), ("move_prob", move_prob),
                        ("min_kept_fraction", min_kept_fraction)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if elastic_grid < 2 or max_tries < 1 or rotate_range < 0 or elastic_magnitude < 0:
            raise ValueError("elastic_grid must be >= 2, max_tries >= 1, rotate_range and elastic_magnitude >= 0")
        self.rotate_range = float(rotate_range)
        self.scale_range = (low, high)
        self.flip_prob = float(flip_prob)
        self.elastic_prob = float(elastic_prob)
        self.elastic_magnitude = float(elastic_magnitude)
        self.elastic_grid = int(elastic_grid)
        self.move_prob = float(move_prob)
        self.min_kept_fraction = float(min_kept_fraction)
        self.max_tries = int(max_tries)

    def __call__(
        self, label: np.ndarray, rng: np.random.Generator, donors: Sequence[LesionPattern] = ()
    ) -> tuple[np.ndarray, str]:
        """Augment the lesions of one label map.

        Args:
            label: ``[x, y]`` integer label map (0 outside lung, 1 lung, >= 2 lesions).
            rng: the only source of randomness.
            donors: lesion patterns of other slices (for moving lesions between slices).

        Returns:
            ``(new label map of the same shape and dtype, description of what was done)``.
            A map without lung is returned unchanged.
        """
        label = np.asarray(label)
        lung = label > OUTSIDE_LUNG
        box = lung_bounding_box(lung)
        if box is None:
            return label.copy(), "unchanged (no lung)"
        own = np.where(label >= GGO, label, 0).astype(np.uint8)
        source, what = own, "own lesions"
        if donors and (not own.any() or rng.random() < self.move_prob):
            donor = donors[int(rng.integers(len(donors)))]
            source = np.zeros_like(own)
            source[box] = _resize_nearest(donor.lesions, (box[0].stop - box[0].start, box[1].stop - box[1].start))
            what = f"lesions of {donor.source}"
        if not source.any():
            return label.copy(), "unchanged (no lesion to move)"
        area = int(np.count_nonzero((source > 0) & lung))  # what the untransformed lesions would keep
        best: np.ndarray | None = None
        best_kept, best_desc = -1, ""
        for _ in range(self.max_tries):
            moved, desc = self._transform(source, box, rng)
            moved[~lung] = 0
            kept = int(np.count_nonzero(moved))
            if kept > best_kept:
                best, best_kept, best_desc = moved, kept, desc
            if kept > 0 and kept >= self.min_kept_fraction * max(area, 1):
                break
        else:
            if best_kept < self.min_kept_fraction * max(area, 1):
                best = np.where(lung, source, 0).astype(np.uint8)
                best_desc = "untransformed"
        assert best is not None, "the first try, or the untransformed lesions, set it"
        out = np.where(lung, LUNG, OUTSIDE_LUNG).astype(label.dtype)
        out[best > 0] = best[best > 0]
        return out, f"{what}, {best_desc}"

    def _transform(
        self, source: np.ndarray, box: tuple[slice, slice], rng: np.random.Generator
    ) -> tuple[np.ndarray, str]:
        """One random flip / rotation / scale / elastic map of ``source`` (nearest neighbour).

        Forward: mirror x about the lung's centre (optional), then rotate and scale
        about the (mirrored) lesion centroid, then displace elastically. Sampled
        backwards: each output pixel looks up its source pixel.
        """
        size = np.array([box[0].stop - box[0].start, box[1].stop - box[1].start], dtype=np.float64)
        lung_cx = (box[0].start + box[0].stop - 1) / 2.0
        flip = rng.random() < self.flip_prob
        angle = math.radians(rng.uniform(-self.rotate_range, self.rotate_range))
        scale = rng.uniform(*self.scale_range)
        elastic = self.elastic_magnitude > 0 and rng.random() < self.elastic_prob
        px, py = np.indices(source.shape, dtype=np.float64)
        if elastic:
            coarse = rng.uniform(-1.0, 1.0, size=(2, self.elastic_grid, self.elastic_grid))
            zoom = (source.shape[0] / self.elastic_grid, source.shape[1] / self.elastic_grid)
            field = [
                ndimage.zoom(c, zoom, order=3, mode="nearest", grid_mode=True)[: source.shape[0], : source.shape[1]]
                for c in coarse
            ]
            px = px + field[0] * self.elastic_magnitude * size[0]
            py = py + field[1] * self.elastic_magnitude * size[1]
        cx, cy = ndimage.center_of_mass(source > 0)
        if flip:
            cx = 2.0 * lung_cx - cx
        cos, sin = math.cos(angle), math.sin(angle)
        dx, dy = px - cx, py - cy
        sx = cx + (cos * dx + sin * dy) / scale  # inverse rotation and scaling
        sy = cy + (-sin * dx + cos * dy) / scale
        if flip:
            sx = 2.0 * lung_cx - sx
        moved = ndimage.map_coordinates(source, np.stack([sx, sy]), order=0, mode="constant", cval=0)
        desc = f"{'flip, ' if flip else ''}rotate {math.degrees(angle):+.0f} deg, scale {scale:.2f}"
        return moved.astype(np.uint8), desc + (", elastic" if elastic else "")
