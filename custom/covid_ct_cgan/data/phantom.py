"""A procedural chest CT phantom with COVID-19 lesions, written in the Radiopaedia layout.

The phantom is the embedded default data of the demo run and of the test
suite. Each case is a contiguous stack of axial slices through mid-lung:

* body outline with skin, subcutaneous fat and muscle; air outside;
* spine (vertebral bodies and discs, posterior elements, spinal canal,
  paraspinal muscles), ribs and costal cartilages running obliquely around
  the chest wall, sternum, scapulae;
* mediastinum: heart, aorta (ascending, arch, descending), pulmonary trunk
  and arteries, superior vena cava, azygos vein, esophagus, fat; trachea and
  main bronchi;
* two lungs (the right one larger) whose arteries and veins are grown as
  branching trees from the hila to the periphery, thinning as they branch,
  bronchi running beside the arteries, a dependent density gradient and a
  fine texture;
* lesions with COVID-19's peripheral, posterior and lower predominance:
  ground-glass opacities (vessels stay visible through them, some with crazy
  paving), consolidations (some as subpleural bands, some with air
  bronchograms) and, in some patients, a dependent pleural effusion;
* a scanner look: partial-volume blur and correlated noise, rounded to int16.

Geometry follows the project's conventions: arrays are ``[x, y, z]`` (x from
the patient's right to left, y from anterior to posterior, z upwards) and the
affine is ``diag(-sx, -sy, sz)`` plus a plausible origin, so
``image[:, :, k].T`` is a radiological axial view. The anatomy is drawn in
millimetres inside a reconstruction field of view fitted to the patient, as a
technologist sets it, so a 256-pixel case is the same anatomy as a 512-pixel
one with pixels twice as large. Every random choice comes from one
``numpy.random.Generator(seed)``, anatomy first and pixel noise last: the same
seed gives byte-identical arrays.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..errors import InputError
from ..fileio import atomic_path, staged_directory, write_json, write_nifti
from ..logs import progress
from ..labels import SOURCE_CONSOLIDATION, SOURCE_EFFUSION, SOURCE_GGO

__all__ = ["PHANTOM_MARKER", "PhantomCase", "generate_phantom_case", "generate_phantom_dataset", "read_phantom_marker", "save_montage"]

PHANTOM_MARKER = ".phantom.json"  # in a generated dataset folder: the parameters it was generated with

REFERENCE_SIZE = 512  # the matrix size that the random 0.6-0.8 mm pixel spacing refers to
SLICE_THICKNESSES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)  # mm, as scanners reconstruct
LUNG_RIGHT, LUNG_LEFT = 1, 2  # lung mask codes
_FIELD_STD = (151.0 / 315.0) ** 1.5  # std of unit white noise after cubic B-spline interpolation in 3D


@dataclass(frozen=True)
class PhantomCase:
    """One phantom patient.

    Attributes:
        image: CT in Hounsfield units, ``int16``, ``[x, y, z]``.
        lesion: ``uint8`` lesion codes, 0 none, 1 GGO, 2 consolidation,
            3 pleural effusion (the Radiopaedia ``rp_msk`` coding).
        lung: ``uint8`` lung field, 1 right lung, 2 left lung, 0 elsewhere;
            lesions and effusion lie inside it.
        affine: 4x4 voxel-to-world (nibabel RAS) matrix ``diag(-sx, -sy, sz)``
            plus origin.
    """

    image: np.ndarray
    lesion: np.ndarray
    lung: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm (x, y, z)."""
        sx, sy, sz = np.abs(np.diag(self.affine)[:3])
        return float(sx), float(sy), float(sz)


# --------------------------------------------------------------------------- geometry helpers


@dataclass
class _Tubes:
    """Straight 3D segments ``a -> b`` (mm) with an in-plane radius ``r`` and a z half-extent ``rz``."""

    a: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    b: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    r: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rz: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def add(self, a: np.ndarray, b: np.ndarray, r: np.ndarray | float, rz: np.ndarray | float | None = None) -> None:
        a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
        r = np.broadcast_to(np.asarray(r, dtype=float), (len(a),))
        rz = r if rz is None else np.broadcast_to(np.asarray(rz, dtype=float), (len(a),))
        self.a, self.b = np.concatenate([self.a, a]), np.concatenate([self.b, b])
        self.r, self.rz = np.concatenate([self.r, r]), np.concatenate([self.rz, rz])

    def add_polyline(self, points: np.ndarray, r: np.ndarray | float | Sequence[float],
                     rz: np.ndarray | float | None = None) -> None:
        points = np.asarray(points, dtype=float)
        r = np.broadcast_to(np.asarray(r, dtype=float), (len(points),))
        rz_v = r if rz is None else np.broadcast_to(np.asarray(rz, dtype=float), (len(points),))
        self.add(points[:-1], points[1:], 0.5 * (r[:-1] + r[1:]), 0.5 * (rz_v[:-1] + rz_v[1:]))


@dataclass(frozen=True)
class _Grid:
    """Pixel grid of one slice: ``n`` x ``n`` pixels of ``sp`` mm centred on the field of view."""

    n: int
    sp: float

    @property
    def coords(self) -> np.ndarray:
        return ((np.arange(self.n) - (self.n - 1) / 2.0) * self.sp).astype(np.float32)

    def box(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> tuple[slice, slice] | None:
        """Pixel slices covering the mm box ``[lo, hi]``, or None if it misses the grid."""
        c0 = -(self.n - 1) / 2.0 * self.sp
        lo = np.clip(np.floor((np.asarray(lo_mm) - c0) / self.sp).astype(int), 0, self.n)
        hi = np.clip(np.ceil((np.asarray(hi_mm) - c0) / self.sp).astype(int) + 1, 0, self.n)
        if (hi <= lo).any():
            return None
        return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1]))


def _slab_pieces(t: _Tubes, z: float, half: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clip tubes to the slab ``|z' - z| <= half + rz`` and project them onto the slice plane.

    Returns:
        indices of the kept tubes, their 2D start and end points, the sine of
        their angle to the z axis (1 for a tube lying in the slice), and their
        in-plane radius where they cut the slab (smaller for a tube grazing it).
    """
    if len(t.r) == 0:
        return np.zeros(0, int), np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0), np.zeros(0)
    za, zb = t.a[:, 2], t.b[:, 2]
    lo, hi = z - half - t.rz, z + half + t.rz
    near = (np.maximum(za, zb) >= lo) & (np.minimum(za, zb) <= hi)
    idx = np.nonzero(near)[0]
    za, zb, lo, hi = za[idx], zb[idx], lo[idx], hi[idx]
    dz = zb - za
    flat = np.abs(dz) < 1e-9
    safe = np.where(flat, 1.0, dz)
    s_lo, s_hi = (lo - za) / safe, (hi - za) / safe
    s0 = np.where(flat, 0.0, np.clip(np.minimum(s_lo, s_hi), 0, 1))
    s1 = np.where(flat, 1.0, np.clip(np.maximum(s_lo, s_hi), 0, 1))
    keep = s1 > s0
    idx, s0, s1 = idx[keep], s0[keep], s1[keep]
    d = t.b[idx] - t.a[idx]
    p0 = t.a[idx, :2] + s0[:, None] * d[:, :2]
    p1 = t.a[idx, :2] + s1[:, None] * d[:, :2]
    sin = np.hypot(d[:, 0], d[:, 1]) / np.maximum(np.linalg.norm(d, axis=1), 1e-9)
    z0, z1 = t.a[idx, 2] + s0 * d[:, 2], t.a[idx, 2] + s1 * d[:, 2]
    gap = np.maximum(np.maximum(np.minimum(z0, z1) - (z + half), (z - half) - np.maximum(z0, z1)), 0.0)
    r = t.r[idx] * np.sqrt(np.clip(1.0 - (gap / t.rz[idx]) ** 2, 0.0, 1.0))
    return idx, p0, p1, sin, r


def _capsules(p0: np.ndarray, p1: np.ndarray, r: np.ndarray, grid: _Grid, pad: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signed distance (mm) from the pixels near each 2D capsule to its surface.

    Only pixels inside each capsule's bounding box grown by ``pad`` mm are
    visited (ragged but fully vectorised).

    Returns:
        flat pixel index, signed distance (negative inside) and capsule index
        of every visited (pixel, capsule) pair.
    """
    empty = np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
    if len(r) == 0:
        return empty
    c0 = -(grid.n - 1) / 2.0 * grid.sp
    ext = (r + pad)[:, None]
    lo = np.clip(np.floor((np.minimum(p0, p1) - ext - c0) / grid.sp).astype(np.int64), 0, grid.n)
    hi = np.clip(np.ceil((np.maximum(p0, p1) + ext - c0) / grid.sp).astype(np.int64) + 1, 0, grid.n)
    nx, ny = np.maximum(hi[:, 0] - lo[:, 0], 0), np.maximum(hi[:, 1] - lo[:, 1], 0)
    cnt = nx * ny
    total = int(cnt.sum())
    if total == 0:
        return empty
    seg = np.repeat(np.arange(len(r)), cnt)
    local = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    nys = ny[seg]
    ii = lo[seg, 0] + local // nys
    jj = lo[seg, 1] + local % nys
    px = (c0 + ii * grid.sp).astype(np.float32)
    py = (c0 + jj * grid.sp).astype(np.float32)
    ax, ay = p0[seg, 0].astype(np.float32), p0[seg, 1].astype(np.float32)
    dx, dy = (p1[seg, 0] - p0[seg, 0]).astype(np.float32), (p1[seg, 1] - p0[seg, 1]).astype(np.float32)
    s = np.clip(((px - ax) * dx + (py - ay) * dy) / np.maximum(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
    sd = np.hypot(px - ax - s * dx, py - ay - s * dy) - r[seg].astype(np.float32)
    return ii * grid.n + jj, sd, seg


def _reduce(n: int, flat: np.ndarray, values: np.ndarray, how: str) -> np.ndarray:
    """Scatter ``values`` into an ``n`` x ``n`` image, keeping the minimum (``how="min"``) or maximum."""
    if how == "min":
        out = np.full(n * n, np.inf, np.float32)
        np.minimum.at(out, flat, values.astype(np.float32))
    else:
        out = np.zeros(n * n, np.float32)
        np.maximum.at(out, flat, values.astype(np.float32))
    return out.reshape(n, n)


def _tube_sd(t: _Tubes, grid: _Grid, z: float, half: float, pad: float) -> np.ndarray:
    """Signed distance (mm) to the union of the tubes crossing the slab; +inf far from them."""
    _, p0, p1, _, r = _slab_pieces(t, z, half)
    flat, sd, _ = _capsules(p0, p1, r, grid, pad)
    return _reduce(grid.n, flat, sd, "min")


def _tube_cover(t: _Tubes, grid: _Grid, z: float, thickness: float, inset: np.ndarray | None = None) -> np.ndarray:
    """Fraction of each pixel covered by the tubes (each shrunk by its ``inset`` mm), with slice partial volume.

    A tube thinner than the slice and lying in it fills only part of the slice
    depth, so it shows with ``2 r / thickness`` of its contrast (at least 0.3).
    """
    keep, p0, p1, sin, r = _slab_pieces(t, z, thickness / 2.0)
    weight = np.clip(2 * r / (thickness * sin + 1e-6), 0.3, 1.0)
    flat, sd, seg = _capsules(p0, p1, r, grid, pad=grid.sp)
    if inset is not None:
        sd = sd + inset[keep][seg]
    return _reduce(grid.n, flat, weight[seg] * _coverage(sd, grid.sp), "max")


def _coverage(sd: np.ndarray, sp: float) -> np.ndarray:
    """Fraction of a pixel inside a shape, from the signed distance at its centre (anti-aliasing)."""
    return np.clip(0.5 - sd / sp, 0.0, 1.0)


def _ellipse_sd(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
    """First-order signed distance (mm) to a rotated ellipse; exact on its boundary."""
    dx, dy = x - cx, y - cy
    c, s = math.cos(angle), math.sin(angle)
    u, v = dx * c + dy * s, -dx * s + dy * c
    f = (u / rx) ** 2 + (v / ry) ** 2 - 1.0
    return f / np.maximum(2.0 * np.sqrt((u / rx**2) ** 2 + (v / ry**2) ** 2), 1e-6)


def _ellipse_sd_grid(grid: _Grid, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, pad: float = 10.0) -> np.ndarray:
    """:func:`_ellipse_sd` on a slice, evaluated only near the ellipse (+inf elsewhere)."""
    out = np.full((grid.n, grid.n), np.inf, np.float32)
    reach = max(rx, ry) + pad
    box = grid.box(np.array([cx - reach, cy - reach]), np.array([cx + reach, cy + reach]))
    if box is not None:
        c = grid.coords
        out[box] = _ellipse_sd(c[box[0], None], c[None, box[1]], cx, cy, rx, ry, angle)
    return out


def _rho(x: np.ndarray, y: np.ndarray, cy: float, a: float | np.ndarray, b_ant: float | np.ndarray,
         b_post: float | np.ndarray, n_ant: float, n_post: float) -> np.ndarray:
    """Normalised radius of a split super-ellipse (its anterior and posterior halves differ); 1 on its boundary."""
    dy = y - cy
    post = dy > 0
    n = np.where(post, n_post, n_ant)
    return ((np.abs(x) / a) ** n + (np.abs(dy) / np.where(post, b_post, b_ant)) ** n) ** (1.0 / n)


def _rho_grid(grid: _Grid, cy: float, a: float | np.ndarray, b_ant: float | np.ndarray, b_post: float | np.ndarray,
              n_ant: float, n_post: float) -> np.ndarray:
    """:func:`_rho` on a slice (x along axis 0, y along axis 1), computed separably."""
    c = grid.coords
    ax = np.abs(c) / np.float32(a)
    out = np.empty((grid.n, grid.n), np.float32)
    post = c > cy
    for cols, b, e in ((~post, b_ant, n_ant), (post, b_post, n_post)):
        if cols.any():
            e = np.float32(e)
            s = ax[:, None] ** e + (np.abs(c[cols] - np.float32(cy)) / np.float32(b))[None, :] ** e
            out[:, cols] = s ** (np.float32(1.0) / e)
    return out


def _bspline_taps(t: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Cubic B-spline interpolation at positions ``t`` (in node units) on ``m`` nodes.

    Returns:
        the 4 node indices (clipped to the grid) and their weights, each (len(t), 4).
    """
    t = np.asarray(t, dtype=np.float64)
    i0 = np.floor(t).astype(np.int64)
    f = t - i0
    w = np.stack([(1 - f) ** 3 / 6, (3 * f**3 - 6 * f**2 + 4) / 6, (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6, f**3 / 6], axis=1)
    idx = np.clip(i0[:, None] - 1 + np.arange(4), 0, m - 1)
    return idx, w.astype(np.float32)


@dataclass
class _Field:
    """A smooth random field in mm: unit-variance white noise on a coarse grid, cubic B-spline interpolated.

    The interpolation is four gathers per axis (no BLAS, whose threads crawl on
    a busy machine and whose blocking could change the last bits).
    """

    values: np.ndarray  # (gx, gx, gz)
    cell: float
    x0: float
    z0: float

    @classmethod
    def draw(cls, rng: np.random.Generator, fov: float, z_lo: float, z_hi: float, cell: float) -> _Field:
        gx = int(math.ceil((fov + 2 * cell) / cell)) + 4
        gz = int(math.ceil((z_hi - z_lo + 2 * cell) / cell)) + 4
        values = rng.standard_normal((gx, gx, gz)).astype(np.float32) / np.float32(_FIELD_STD)
        return cls(values, cell, -fov / 2 - cell, z_lo - cell)

    def taps(self, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
        return _bspline_taps((grid.coords - self.x0) / self.cell + 1.0, self.values.shape[0])

    def slice(self, taps: tuple[np.ndarray, np.ndarray], z: float) -> np.ndarray:
        iz, wz = _bspline_taps(np.array([(z - self.z0) / self.cell + 1.0]), self.values.shape[2])
        plane = sum(wz[0, k] * self.values[:, :, iz[0, k]] for k in range(4))  # (gx, gx)
        idx, w = taps
        rows = sum(w[:, k, None] * plane[idx[:, k]] for k in range(4))  # (n, gx)
        cols = sum(w[:, k, None] * rows.T[idx[:, k]] for k in range(4))  # (n along y, n along x)
        return np.ascontiguousarray(cols.T)


def _grow_tree(rng: np.random.Generator, root: np.ndarray, targets: np.ndarray, r_leaf: float, r_max: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grow a branching tree from ``root`` that reaches every target, one generation at a time.

    Each branch heads part of the way to the centre of the targets it serves,
    then splits them in two halves along their longest extent; its radius
    follows Murray's law, ``r_leaf * served ** (1 / 3)``.

    Returns:
        segment start and end points ((m, 3) mm) and radii (m,).
    """
    nodes = [np.asarray(root, float)[None]]
    n_nodes = 1
    starts_pts, ends_pts, radii = [], [], []
    order = np.arange(len(targets))  # targets of each group are contiguous in this order
    sizes = np.array([len(targets)])
    parents = np.array([0])
    while len(sizes):
        all_nodes = np.concatenate(nodes)
        offsets = np.cumsum(sizes) - sizes
        leaf = sizes == 1
        if leaf.any():
            starts_pts.append(all_nodes[parents[leaf]])
            ends_pts.append(targets[order[offsets[leaf]]])
            radii.append(np.full(int(leaf.sum()), r_leaf))
        keep = ~leaf
        if not keep.any():
            break
        member = np.repeat(keep, sizes)
        order, sizes, parents = order[member], sizes[keep], parents[keep]
        offsets = np.cumsum(sizes) - sizes
        group = np.repeat(np.arange(len(sizes)), sizes)
        pts = targets[order]
        centre = np.add.reduceat(pts, offsets, axis=0) / sizes[:, None]
        start = all_nodes[parents]
        v = centre - start
        step = start + rng.uniform(0.3, 0.55, (len(sizes), 1)) * v
        step += rng.normal(0.0, 1.0, v.shape) * 0.05 * np.linalg.norm(v, axis=1, keepdims=True)
        starts_pts.append(start)
        ends_pts.append(step)
        radii.append(np.minimum(r_leaf * sizes ** (1 / 3.0), r_max))
        new_ids = n_nodes + np.arange(len(sizes))
        nodes.append(step)
        n_nodes += len(sizes)
        # split across the longest extent, tilted at random so that no plane is free of branches
        extent = np.maximum.reduceat(pts, offsets, axis=0) - np.minimum.reduceat(pts, offsets, axis=0)
        direction = np.eye(3)[np.argmax(extent, axis=1)] + rng.normal(0.0, 0.35, (len(sizes), 3))
        resort = np.lexsort((np.einsum("ij,ij->i", pts, direction[group]), group))
        order = order[resort]
        half = sizes // 2
        # split every group into its lower and upper half (interleaved so groups stay contiguous)
        sizes = np.stack([half, sizes - half], axis=1).ravel()
        parents = np.repeat(new_ids, 2)
    return np.concatenate(starts_pts), np.concatenate(ends_pts), np.concatenate(radii)


# --------------------------------------------------------------------------- the patient


@dataclass
class _Lesion:
    kind: str  # "ggo", "mixed" (GGO around a consolidated core) or "consolidation"
    centers: np.ndarray  # (k, 3) mm: the lumps that make the lesion
    radii: np.ndarray  # (k, 3) mm: along the lump's own in-plane axes, and z
    angles: np.ndarray  # (k,) in-plane rotation
    alpha: float  # GGO opacity: the fraction of the way from lung to the GGO density
    crazy: bool  # crazy paving (septal lines inside the GGO)
    core: float  # consolidated core, as a fraction of the lump size (mixed lesions)
    bronchograms: _Tubes = field(default_factory=_Tubes)


@dataclass
class _Patient:
    """Every random choice of one phantom patient, in mm (independent of the matrix size)."""

    fov: float
    thickness: float
    z: np.ndarray  # slice centres in anatomy coordinates (0 = lung base)
    lung_height: float
    g: float  # anatomy scale relative to a reference adult
    y_c: float  # centre of the thoracic cavity (y)
    body: tuple[float, float, float, float, float]  # a, b_ant, b_post, n_ant, n_post
    harmonics: np.ndarray  # (k, 3): order, amplitude, phase of the body outline
    fat: float
    fat_harmonics: np.ndarray  # (k, 3): how the fat thickness varies around the body
    cavity: tuple[float, float, float, float, float]  # a, b_ant, b_post, n_ant, n_post
    y_vb: float  # centre of the vertebral bodies
    vb: tuple[float, float]  # vertebral body half width and half depth
    vert_period: float
    vert_phase: float
    heart: tuple[float, float, float, float, float, float]  # cx, cy, a, b, angle, u of widest
    band_x: float  # midline of the mediastinum
    u_carina: float
    hu: dict[str, float]
    noise_sd: float
    blur: float  # partial-volume blur, pixels
    origin_shift: tuple[float, float]
    solid: _Tubes = field(default_factory=_Tubes)  # mediastinal vessels and esophagus
    airway_main: _Tubes = field(default_factory=_Tubes)  # trachea and main bronchi
    vessels: _Tubes = field(default_factory=_Tubes)
    bronchi: _Tubes = field(default_factory=_Tubes)
    ribs: _Tubes = field(default_factory=_Tubes)
    cartilage: _Tubes = field(default_factory=_Tubes)
    hila: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    lesions: list[_Lesion] = field(default_factory=list)
    effusion: tuple[float, float] = (0.0, 0.0)  # greatest thickness (mm), right and left
    esophagus_air: bool = False
    fissures: list[tuple[float, float, float, float, float]] = field(default_factory=list)  # side, y0, kz, kx, kc
    fields: dict[str, _Field] = field(default_factory=dict)

    def u(self, z: np.ndarray | float) -> np.ndarray:
        """Height as a fraction of the lung height (0 base, 1 apex)."""
        return np.asarray(z, dtype=float) / self.lung_height

    @staticmethod
    def cavity_scales(u: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Width, anterior and posterior depth factors of the thoracic cavity (narrower towards the apex)."""
        top = np.clip((np.asarray(u) - 0.5) / 0.5, 0.0, 1.0) ** 2
        return 1.0 - 0.35 * top, 1.0 - 0.3 * top, 1.0 - 0.12 * top

    def heart_scale(self, u: np.ndarray | float) -> np.ndarray:
        d = (np.asarray(u) - self.heart[5]) / 0.3
        return np.sqrt(np.clip(1.0 - d**4, 0.0, 1.0))

    def band_halfwidth(self, u: np.ndarray | float) -> np.ndarray:
        """Half width (mm) of the mediastinal band between the lungs (wider above the heart)."""
        return self.g * (9.0 + 13.0 * np.clip((np.asarray(u) - 0.42) / 0.16, 0.0, 1.0))

    def dome_u(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height (as u) of the diaphragm under each point; the right dome is higher."""
        a, g = self.cavity[0], self.g
        r2 = ((y - self.y_c) / (90.0 * g)) ** 2
        right = 0.13 + 0.11 * np.clip(1.0 - ((x + 0.45 * a) / (0.6 * a)) ** 2 - r2, 0, 1)
        left = 0.11 + 0.10 * np.clip(1.0 - ((x - 0.45 * a) / (0.6 * a)) ** 2 - r2, 0, 1)
        return np.maximum(right, left)

    def cavity_rho(self, x: np.ndarray, y: np.ndarray, u: np.ndarray | float) -> np.ndarray:
        sx, sa, sp = self.cavity_scales(u)
        a, ba, bp, na, npost = self.cavity
        return _rho(x, y, self.y_c, a * sx, ba * sa, bp * sp, na, npost)

    def cavity_point(self, theta: np.ndarray, side: float, u: np.ndarray, offset: float | np.ndarray) -> np.ndarray:
        """Points on the cavity wall along rays from its centre (theta 0 posterior, pi anterior), pushed out by ``offset`` mm."""
        dx, dy = side * np.sin(theta), np.cos(theta)
        dist = 1.0 / self.cavity_rho(dx, self.y_c + dy, u) + offset
        return np.stack([dx * dist, self.y_c + dy * dist], axis=-1)

    def spine_block(self, x: np.ndarray, y: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """The vertebral column and the paraspinal tissue behind it (never lung)."""
        vbx, vby = self.vb
        g = self.g
        cy = self.y_vb + vby + 18 * g  # behind the canal: laminae, spinous process, paraspinal muscles
        back = _rho(x, y, cy, vbx + 12 * g + margin, vby + 18 * g + margin, 60 * g, 2.5, 2.5)
        return (_ellipse_sd(x, y, 0.0, self.y_vb, vbx, vby) < 4 * g + margin) | (back < 1.0)

    def approx_in_lung(self, x: np.ndarray, y: np.ndarray, u: np.ndarray, margin: float) -> np.ndarray:
        """Whether points lie inside the lungs (conservatively: ``margin`` mm off the mediastinum)."""
        g = self.g
        ok = (self.cavity_rho(x, y, u) < 1.0 - margin / self.cavity[0]) & (u > self.dome_u(x, y) + 0.02) & (u < 0.97)
        ok &= np.abs(x - self.band_x) > self.band_halfwidth(u) + margin + 14 * g
        ok &= ~self.spine_block(x, y, margin)
        hx, hy, ha, hb, ang, _ = self.heart
        hs = np.maximum(self.heart_scale(u), 1e-3)
        ok &= _ellipse_sd(x, y, hx, hy, ha * hs, hb * hs, ang) > margin + 4 * g
        return ok


def _draw_patient(rng: np.random.Generator, size: int, num_slices: int, pixel_spacing: float | None,
                  slice_thickness: float | None) -> _Patient:
    """Draw every random choice of one patient (the draws never depend on ``size``)."""
    u01 = rng.uniform
    spacing_ref = round(float(u01(0.6, 0.8)), 4)
    thickness = float(SLICE_THICKNESSES[int(rng.integers(len(SLICE_THICKNESSES)))])
    fov = REFERENCE_SIZE * spacing_ref if pixel_spacing is None else size * float(pixel_spacing)
    if slice_thickness is not None:
        thickness = float(slice_thickness)

    a_body = fov / 2.0 * u01(0.85, 0.93)
    g = a_body / 165.0
    fat = u01(4, 18) * g
    a_cav = a_body - fat - u01(10, 14) * g
    b_ca, b_cp = u01(68, 82) * g, u01(94, 108) * g
    b_ba = b_ca + 1.1 * fat + u01(10, 20) * g
    b_bp = b_cp + 0.8 * fat + u01(20, 30) * g
    y_c = (b_ba - b_bp) / 2.0 + u01(-6, 6) * g
    harmonics = np.stack([np.arange(2, 6), u01(-0.012, 0.012, 4), u01(0, 2 * np.pi, 4)], axis=1)
    fat_harmonics = np.stack([np.arange(1, 5), u01(-0.35, 0.35, 4), u01(0, 2 * np.pi, 4)], axis=1)
    vb = (u01(17, 21) * g, u01(13, 16) * g)
    lung_height = u01(210, 250) * g
    extent = (num_slices - 1) * thickness
    z = u01(0.36, 0.58) * lung_height - extent / 2.0 + thickness * np.arange(num_slices)
    heart_size = u01(0.9, 1.1)
    p = _Patient(
        fov=fov, thickness=thickness, z=z, lung_height=lung_height, g=g, y_c=y_c,
        body=(a_body, b_ba, b_bp, u01(2.2, 2.6), u01(2.8, 3.4)), harmonics=harmonics, fat=fat,
        fat_harmonics=fat_harmonics,
        cavity=(a_cav, b_ca, b_cp, u01(2.0, 2.3), u01(2.0, 2.3)),
        y_vb=y_c + b_cp - vb[1] - u01(12, 18) * g, vb=vb, vert_period=u01(25, 29) * g, vert_phase=u01(0, 1),
        heart=(u01(18, 28) * g, y_c + u01(-32, -22) * g, 56 * g * heart_size, 42 * g * heart_size,
               -math.radians(u01(35, 50)), u01(0.22, 0.3)),
        band_x=u01(1, 5) * g, u_carina=u01(0.60, 0.68),
        hu={"fat": u01(-110, -88), "muscle": u01(35, 55), "lung": u01(-880, -845), "blood": u01(35, 48),
            "marrow": u01(250, 360), "cortex": u01(1000, 1400), "cartilage": u01(90, 140), "disc": u01(70, 100),
            "consolidation": u01(5, 40), "effusion": u01(6, 16), "liver": u01(50, 65)},
        noise_sd=u01(10, 17), blur=u01(0.55, 0.9), origin_shift=(u01(-10, 10), -lung_height - u01(40, 120)),
    )
    _draw_mediastinum(rng, p)
    _draw_ribs(rng, p)
    _draw_lung_trees(rng, p)
    _draw_lesions(rng, p)
    z_lo, z_hi = float(z.min()) - thickness, float(z.max()) + thickness
    p.fields = {name: _Field.draw(rng, fov, z_lo, z_hi, cell * g) for name, cell in (("coarse", 7.0), ("mid", 3.5))}
    p.esophagus_air = bool(rng.random() < 0.5)
    p.fissures = [(side, y_c + u01(-5, 15) * g, u01(0.6, 0.9), u01(-0.35, -0.1), u01(-0.3, 0.1)) for side in (-1.0, 1.0)]
    return p


def _draw_mediastinum(rng: np.random.Generator, p: _Patient) -> None:
    """Great vessels, esophagus, trachea and main bronchi, as 3D tubes; the hila the lung trees grow from."""
    g, L, y_c, u01 = p.g, p.lung_height, p.y_c, rng.uniform
    asc = np.array([-12 * g + u01(-3, 3) * g, y_c - 24 * g + u01(-4, 4) * g])
    desc = np.array([26 * g + u01(-2, 2) * g, p.y_vb - p.vb[1] * 0.6 + u01(-3, 1) * g])
    r_ao = u01(12.5, 15.5) * g
    # ascending aorta, arch (from front to back over the left main bronchus), descending aorta
    t = np.linspace(0, np.pi, 9)
    arch_z = (0.76 + u01(-0.03, 0.03)) * L
    arch = np.stack([asc[0] + (desc[0] - asc[0]) * (1 - np.cos(t)) / 2,
                     asc[1] + (desc[1] - asc[1]) * (1 - np.cos(t)) / 2 - 8 * g * np.sin(t),
                     arch_z + 14 * g * np.sin(t)], axis=1)
    aorta = np.concatenate([[[asc[0] + 8 * g, asc[1] + 10 * g, 0.34 * L], [asc[0], asc[1], 0.5 * L]], arch,
                            [[desc[0], desc[1], 0.3 * L], [desc[0] + 2 * g, desc[1] - 4 * g, -0.3 * L]]])
    radii = np.concatenate([[r_ao * 1.1, r_ao], np.full(len(arch), r_ao * 0.9), [r_ao * 0.8, r_ao * 0.75]])
    p.solid.add_polyline(aorta, radii)
    # pulmonary trunk from the right ventricle, then the right and left pulmonary arteries to the hila
    z_pa = (p.u_carina - u01(0.05, 0.09)) * L
    trunk0 = np.array([asc[0] + 26 * g, asc[1] - 12 * g, 0.4 * L])
    trunk1 = np.array([asc[0] + 26 * g, asc[1] - 2 * g, z_pa])
    p.solid.add_polyline(np.stack([trunk0, trunk1]), u01(12, 14) * g)
    hilum_r = np.array([-p.cavity[0] * 0.36, y_c + 2 * g, z_pa - 4 * g])
    hilum_l = np.array([p.cavity[0] * 0.36, y_c + 8 * g, z_pa + 3 * g])
    p.solid.add_polyline(np.stack([trunk1, [asc[0] + 4 * g, asc[1] + 24 * g, z_pa - 2 * g], hilum_r]), [10 * g, 9 * g, 7 * g])
    p.solid.add_polyline(np.stack([trunk1, [trunk1[0] + 12 * g, trunk1[1] + 18 * g, z_pa + 4 * g], hilum_l]), [10 * g, 9 * g, 7 * g])
    # superior vena cava, azygos vein, esophagus
    svc = np.array([asc[0] - 22 * g, asc[1] + 4 * g])
    p.solid.add_polyline(np.array([[svc[0], svc[1], 0.42 * L], [svc[0] - 2 * g, svc[1] - 3 * g, 1.1 * L]]), u01(8, 10) * g)
    azy = np.array([-12 * g, p.y_vb - p.vb[1] + 2 * g])
    p.solid.add_polyline(np.array([[azy[0], azy[1], -0.3 * L], [azy[0], azy[1], 0.7 * L],
                                   [svc[0] + 2 * g, svc[1] + 12 * g, 0.74 * L]]), 3.5 * g)
    eso = np.array([4 * g, p.y_vb - p.vb[1] - 8 * g])
    p.solid.add_polyline(np.array([[eso[0] + 6 * g, eso[1] - 4 * g, -0.3 * L], [eso[0], eso[1], 0.5 * L],
                                   [eso[0] - 3 * g, eso[1], 1.2 * L]]), 7 * g)
    # trachea down to the carina, main bronchi down and out to the hila
    tra = np.array([-1 * g, eso[1] - 19 * g])
    car = np.array([tra[0], tra[1] + 4 * g, p.u_carina * L])
    r_tr = u01(8, 10) * g
    br_r = np.array([car[0] - 26 * g, car[1] + 12 * g, car[2] - 50 * g])
    br_l = np.array([car[0] + 40 * g, car[1] + 12 * g, car[2] - 46 * g])
    p.airway_main.add_polyline(np.array([[tra[0], tra[1] - 6 * g, 1.3 * L], [tra[0], tra[1], car[2] + 0.1 * L], car]), r_tr)
    p.airway_main.add_polyline(np.array([car, [car[0] - 14 * g, car[1] + 6 * g, car[2] - 24 * g], br_r]),
                               [r_tr * 0.8, 6.5 * g, 5 * g])
    p.airway_main.add_polyline(np.array([car, [car[0] + 24 * g, car[1] + 6 * g, car[2] - 22 * g], br_l]),
                               [r_tr * 0.75, 5.5 * g, 4.5 * g])
    p.hila = {"art": (hilum_r - [4 * g, 0, 0], hilum_l + [4 * g, 0, 0]),
              "vein": (np.array([-p.cavity[0] * 0.28, y_c + 16 * g, 0.36 * L]),
                       np.array([p.cavity[0] * 0.34, y_c + 20 * g, 0.38 * L])),
              "bronchus": (br_r, br_l)}


def _draw_ribs(rng: np.random.Generator, p: _Patient) -> None:
    """Twelve pairs of ribs sloping down from the spine, ending in costal cartilages at the sternum."""
    g = p.g
    theta = np.linspace(math.radians(20), math.radians(172), 80)
    z_top = p.lung_height * 1.04 + rng.uniform(-6, 6) * g
    for side in (-1.0, 1.0):
        for i in range(12):
            z_post = z_top - i * p.vert_period * 1.02 + rng.uniform(-2, 2) * g
            drop = rng.uniform(3.0, 3.8) * p.vert_period
            th_end = math.radians(rng.uniform(135, 150))
            s = np.clip((theta - theta[0]) / (th_end - theta[0]), 0, None)
            bone = theta <= th_end
            step = np.clip(s, 0, 1) ** 2 * (3 - 2 * np.clip(s, 0, 1))  # smoothstep: steepest laterally
            z = np.where(bone, z_post - drop * step, z_post - drop + (s - 1) * 8 * g)
            rr = np.where(bone, g * (2.8 + 1.2 * (1 - s)), 3.0 * g)
            xy = p.cavity_point(theta, side, p.u(z), rr + 1.5 * g)
            pts = np.concatenate([xy, z[:, None]], axis=1)
            neck = np.array([[side * (p.vb[0] + 1 * g), p.y_vb + 2 * g, z_post + 4 * g],
                             [side * (p.vb[0] + 14 * g), p.y_vb + p.vb[1] + 4 * g, z_post + 2 * g]])
            n_bone = int(bone.sum())
            p.ribs.add_polyline(np.concatenate([neck, pts[:n_bone]]), np.concatenate([[4.0 * g, 4.5 * g], rr[:n_bone]]), 5.5 * g)
            p.cartilage.add_polyline(pts[n_bone - 1:], rr[n_bone - 1:], 5.0 * g)


def _lung_targets(rng: np.random.Generator, p: _Patient, side: float, n: int) -> np.ndarray:
    """``n`` random points filling one lung (the ends of the vessel tree)."""
    g, L = p.g, p.lung_height
    pts = np.zeros((0, 3))
    while len(pts) < n:
        m = 3 * n
        x = side * rng.uniform(0, p.cavity[0], m)
        y = rng.uniform(p.y_c - p.cavity[1], p.y_c + p.cavity[2], m)
        z = rng.uniform(0.05 * L, 0.96 * L, m)
        ok = p.approx_in_lung(x, y, p.u(z), 6 * g)
        # fewer ends near the pleura: the outer centimetre of lung holds few visible vessels
        ok &= rng.random(m) < np.clip(2.0 * (1.0 - p.cavity_rho(x, y, p.u(z))), 0.25, 1.0)
        pts = np.concatenate([pts, np.stack([x, y, z], axis=1)[ok]])
    return pts[:n]


def _draw_lung_trees(rng: np.random.Generator, p: _Patient) -> None:
    """Pulmonary arteries (with their bronchi) and veins, grown from the hila to points filling each lung."""
    g = p.g
    for kind in ("art", "vein"):
        for s, side in enumerate((-1.0, 1.0)):
            scale = 1.15 if side < 0 else 1.0  # the right lung is the larger one
            targets = _lung_targets(rng, p, side, int(2400 * scale))
            a, b, r = _grow_tree(rng, p.hila[kind][s], targets, 0.45 * g, 5.0 * g)
            # bend every branch a little at its middle
            length = np.linalg.norm(b - a, axis=1, keepdims=True)
            mid = (a + b) / 2 + rng.normal(0, 1, a.shape) * 0.08 * length
            p.vessels.add(np.concatenate([a, mid]), np.concatenate([mid, b]), np.concatenate([r, r]))
            if kind == "art":
                _add_bronchi(p, a, b, r, p.hila["bronchus"][s])


def _add_bronchi(p: _Patient, a: np.ndarray, b: np.ndarray, r: np.ndarray, root: np.ndarray) -> None:
    """Bronchi beside the larger arteries (the bronchovascular bundles), joined to the main bronchus."""
    g = p.g
    big = r >= 2.0 * g
    a, b, r = a[big], b[big], r[big]
    d = b - a
    perp = np.cross(d, [0.0, 0.0, 1.0])
    vertical = np.linalg.norm(perp, axis=1) < 1e-3 * np.maximum(np.linalg.norm(d, axis=1), 1e-9)
    perp[vertical] = np.cross(d[vertical], [1.0, 0.0, 0.0])
    perp /= np.maximum(np.linalg.norm(perp, axis=1, keepdims=True), 1e-9)
    off = perp * (1.75 * r + 0.6 * g)[:, None]
    p.bronchi.add(a + off, b + off, 0.75 * r)
    if len(r):
        first = int(np.argmax(r))
        p.bronchi.add(root, a[first] + off[first], 0.8 * r[first])


def _draw_lesions(rng: np.random.Generator, p: _Patient) -> None:
    """COVID-19 lesions: peripheral, posterior and lower, spread along z so most slices hold some."""
    g, u01 = p.g, rng.uniform
    severity = u01(0.35, 1.0)
    z_lo, z_hi = float(p.z.min()), float(p.z.max())
    n_bins = max(1, int(math.ceil((z_hi - z_lo + p.thickness) / (12.0 * g))))
    n_lesions = n_bins + int(rng.integers(2, 4 + int(6 * severity)))
    n_cand = 96
    for j in range(n_lesions):
        zc = z_lo + (z_hi - z_lo) * (j + u01(0, 1)) / n_bins if j < n_bins else u01(z_lo - 10 * g, z_hi + 10 * g)
        r = rng.random()
        kind = "ggo" if r < 0.55 else ("mixed" if r < 0.8 else "consolidation")
        side = -1.0 if rng.random() < 0.55 else 1.0
        uc = float(p.u(zc))
        # candidate centres; peripheral, posterior and lower ones are likelier (dense ones even more posterior)
        theta = u01(0.25, 2.9, n_cand)
        rho = u01(0.8, 0.92, n_cand) if kind == "consolidation" else u01(0.55, 0.95, n_cand)
        wall = p.cavity_point(theta, side, np.full(n_cand, uc), 0.0)
        pts = np.array([0.0, p.y_c]) + (wall - np.array([0.0, p.y_c])) * rho[:, None]
        ok = p.approx_in_lung(pts[:, 0], pts[:, 1], np.full(n_cand, uc), 3 * g)
        back = np.clip(np.cos(theta), 0, 1) * (2.0 if kind == "consolidation" else 1.0)
        weight = ok * (0.3 + back + 0.4 * np.sin(theta)) * rho**3 * (1.3 - uc)
        if weight.sum() <= 0:
            continue
        pick = int(rng.choice(n_cand, p=weight / weight.sum()))
        centre, th = np.array([pts[pick, 0], pts[pick, 1], zc]), float(theta[pick])
        if kind == "consolidation":  # subpleural band along the wall
            k = int(rng.integers(1, 4))
            tangent = np.array([-side * math.cos(th), math.sin(th)])
            offs = u01(-14, 14, k) * g
            centres = np.stack([centre[0] + offs * tangent[0], centre[1] + offs * tangent[1], centre[2] + u01(-4, 4, k) * g], 1)
            radii = np.stack([u01(12, 24, k) * g, u01(4.5, 9, k) * g, u01(9, 16, k) * g], 1)
            angles = math.atan2(tangent[1], tangent[0]) + u01(-0.25, 0.25, k)
        else:
            k = int(rng.integers(2, 6))
            size = u01(12, 30) * g * (0.7 + 0.6 * severity)
            centres = centre + np.stack([rng.normal(0, 0.45 * size, k), rng.normal(0, 0.45 * size, k),
                                         rng.normal(0, 0.35 * size, k)], 1)
            radii = np.stack([size * u01(0.5, 1.0, k), size * u01(0.45, 0.9, k), np.maximum(size * u01(0.6, 1.0, k), 10 * g)], 1)
            angles = u01(0, np.pi, k)
        lesion = _Lesion(kind=kind, centers=centres, radii=radii, angles=angles, alpha=u01(0.32, 0.6),
                         crazy=bool(kind != "consolidation" and rng.random() < 0.3), core=u01(0.4, 0.6))
        if kind != "ggo" and rng.random() < 0.6:  # air bronchograms: small airways running outwards
            out = np.array([side * math.sin(th), math.cos(th), 0.0])
            length = float(radii[:, 0].max())
            start = centre - out * 0.8 * length + [0.0, 0.0, u01(-3, 3) * g]
            mid = centre + rng.normal(0, 2 * g, 3)
            end = centre + out * 0.9 * length + rng.normal(0, 3 * g, 3)
            lesion.bronchograms.add_polyline(np.stack([start, mid, end]), u01(0.8, 1.3) * g, 1.2 * g)
            lesion.bronchograms.add(mid, mid + (out + rng.normal(0, 0.8, 3)) * 0.6 * length, 0.7 * g, 1.0 * g)
        p.lesions.append(lesion)
    if rng.random() < 0.35:  # a dependent pleural effusion in some patients: right, left or both
        which = int(rng.integers(3))
        t_r, t_l = u01(8, 30) * g, u01(8, 30) * g
        p.effusion = (t_r if which != 1 else 0.0, t_l if which != 0 else 0.0)


# --------------------------------------------------------------------------- rendering


class _Renderer:
    """Draws the slices of one patient on one pixel grid; keeps what all slices share."""

    def __init__(self, p: _Patient, grid: _Grid) -> None:
        self.p, self.grid = p, grid
        g = p.g
        c = grid.coords
        self.X, self.Y = c[:, None], c[None, :]
        self.field_taps = {name: f.taps(grid) for name, f in p.fields.items()}
        # the body does not change over the few centimetres of the stack
        a_b, b_ba, b_bp, n_ba, n_bp = p.body
        angle = np.arctan2(self.Y - p.y_c, self.X)
        wobble = 1.0 + sum(amp * np.cos(order * angle + ph) for order, amp, ph in p.harmonics)
        rho_b = _rho_grid(grid, p.y_c, a_b, b_ba, b_bp, n_ba, n_bp) * wobble
        self.body = rho_b <= 1.0
        fat = 1.0 + sum(amp * np.cos(order * angle + ph) for order, amp, ph in p.fat_harmonics)  # relative thickness
        # the fat layer's inner edge, pulled in by the local fat thickness
        self.inner = rho_b <= 1.0 - p.fat * fat / (0.5 * (a_b + 0.5 * (b_ba + b_bp)))
        self.skin = self.body & (rho_b > 1.0 - 1.8 / (0.5 * (a_b + b_ba)))
        self.spine_block = p.spine_block(self.X, self.Y)
        self.paraspinal = self.spine_block & (self.Y > p.y_vb)
        self.dome = p.dome_u(self.X, self.Y)
        self.depth = np.clip((self.Y - (p.y_c - p.cavity[1])) / (p.cavity[1] + p.cavity[2]), 0, 1) ** 2
        self.posterior = np.clip((self.Y - p.y_c) / np.hypot(self.X, self.Y - p.y_c).clip(1e-3), 0, 1) ** 0.8
        self.right = np.broadcast_to(self.X < p.band_x, (grid.n, grid.n))
        vbx, vby = p.vb
        self.canal_y = p.y_vb + vby + 8 * g
        self.canal = _ellipse_sd_grid(grid, 0.0, self.canal_y, 7.5 * g, 7 * g) < 0
        self.vertebra = {disc: _ellipse_sd_grid(grid, 0.0, p.y_vb, vbx * (1.04 if disc else 1.0), vby * (1.04 if disc else 1.0))
                         for disc in (False, True)}

    def render(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Noise-free HU slice, lesion codes and lung labels of slice ``k``."""
        p, grid = self.p, self.grid
        g, sp, n, hu, X, Y = p.g, grid.sp, grid.n, p.hu, self.X, self.Y
        z = float(p.z[k])
        u = float(p.u(z))
        half = p.thickness / 2.0
        f_coarse, f_mid = (p.fields[name].slice(self.field_taps[name], z) for name in ("coarse", "mid"))

        # thoracic cavity and what is not lung inside it
        sx, sa, spost = p.cavity_scales(u)
        a_c, b_ca, b_cp, n_ca, n_cp = p.cavity
        rho_c = _rho_grid(grid, p.y_c, a_c * sx, b_ca * sa, b_cp * spost, n_ca, n_cp)
        cavity = rho_c <= 1.0
        phase = (z / p.vert_period + p.vert_phase) % 1.0
        disc = bool(phase < 0.2)
        vb_sd = self.vertebra[disc]
        heart_sd = self._heart(u)
        solid_sd = _tube_sd(p.solid, grid, z, half, pad=5 * g)
        aw_sd = _tube_sd(p.airway_main, grid, z, half, pad=4 * g)
        ym = p.y_c + (p.cavity[2] - p.cavity[1]) / 2.0
        hm = (p.cavity[1] + p.cavity[2]) / 2.0
        band = np.abs(X - p.band_x) < np.maximum(p.band_halfwidth(u) * (1 - 0.5 * ((Y - ym) / hm) ** 2), 3.5 * g)
        dome = u < self.dome
        envelope = band | (heart_sd < 4 * g) | (solid_sd < 4 * g) | (aw_sd < 3 * g) | dome
        lung_field = cavity & ~self.spine_block & ~envelope
        lung = np.where(lung_field, np.where(self.right, LUNG_RIGHT, LUNG_LEFT), 0).astype(np.uint8)

        # soft tissues
        img = np.full((n, n), -1000.0, np.float32)
        img = np.where(self.body, hu["fat"] + 8 * f_mid, img)
        muscle = self.inner & ~cavity | self.paraspinal & self.body
        img = np.where(muscle, hu["muscle"] + 6 * f_mid, img)
        img = np.where(self.skin, hu["muscle"] - 15, img)
        img = np.where(cavity & ~muscle, hu["fat"] + 6 + 6 * f_mid, img)
        img = np.where(cavity & dome, hu["liver"] + 5 * f_mid, img)
        img = np.where(heart_sd < 0, hu["blood"] + 4 * f_mid, img)
        img += _coverage(solid_sd, sp) * (hu["blood"] + 3 * f_mid - img)
        if p.esophagus_air:
            eso = (np.abs(X - 4 * g) < 3 * g) & (np.abs(Y - (p.y_vb - p.vb[1] - 8 * g)) < 2 * g)
            img[eso] = -900.0

        # lung parenchyma: dependent density gradient and texture; the major fissures
        img = np.where(lung_field, hu["lung"] + 55 * self.depth + 14 * f_coarse + 9 * f_mid, img)
        img += self._fissures(z) * lung_field * (-250.0 - img)

        # lesions and effusion
        effusion = self._effusion(u, rho_c, lung_field)
        ggo_alpha, cons, crazy, bronchogram = self._lesions(z, f_mid, lung_field & ~effusion)
        lesion = np.zeros((n, n), np.uint8)
        lesion[ggo_alpha > 0] = SOURCE_GGO
        lesion[cons] = SOURCE_CONSOLIDATION
        lesion[effusion] = SOURCE_EFFUSION
        ggo_target = -120 + 60 * f_mid + 40 * f_coarse + np.where(crazy & (np.abs(f_coarse) < 0.12), 250.0, 0.0)
        img += ggo_alpha * (ggo_target - img)

        # vessels, kept out of dense lesions; airways (air bronchograms where they cross consolidation)
        vessel = _tube_cover(p.vessels, grid, z, p.thickness) * (lung_field & ~cons & ~effusion)
        img += vessel * (hu["blood"] + 4 * f_mid - img)
        img = np.where(cons, hu["consolidation"] + 10 * f_mid + 8 * f_coarse, img)
        for tubes, region in ((p.airway_main, cavity), (p.bronchi, cavity & ~(heart_sd < 0))):
            wall = np.maximum(0.13 * tubes.r, 0.45 * g)
            outer = _tube_cover(tubes, grid, z, p.thickness) * region
            lumen = _tube_cover(tubes, grid, z, p.thickness, inset=wall) * region
            img = img * (1 - outer) + (outer - lumen) * hu["muscle"] - 1000.0 * lumen
        img = np.where(bronchogram & cons, -930 + 20 * f_mid, img)
        img = np.where(effusion, hu["effusion"] + 4 * f_mid, img)

        # bones: a cortical shell around trabecular marrow; cartilage; spinal canal
        if disc:
            img = np.where(vb_sd < 0, hu["disc"] + 5 * f_mid, img)
            bone_sd = np.full((n, n), np.inf, np.float32)
        else:
            bone_sd = vb_sd.copy()
        bone_sd = np.minimum(bone_sd, self._posterior_elements(phase))
        bone_sd = np.minimum(bone_sd, _tube_sd(p.ribs, grid, z, half, pad=2 * g))
        bone_sd = np.minimum(bone_sd, self._scapulae(u))
        if 0.12 < u < 1.0:
            st_rx = g * (13 + 10 * float(np.clip((u - 0.78) / 0.12, 0, 1)))
            st_y = p.y_c - b_ca * float(sa) - 7 * g
            bone_sd = np.minimum(bone_sd, _ellipse_sd_grid(grid, 0.0, st_y, st_rx, 6 * g))
        img += _coverage(_tube_sd(p.cartilage, grid, z, half, pad=2 * g), sp) * (hu["cartilage"] + 10 * f_mid - img)
        img = np.where(self.canal, 15 + 4 * f_mid, img)
        outer = _coverage(bone_sd, sp)
        marrow = _coverage(bone_sd + 1.1 * g, sp)
        img = img * (1 - outer) + (outer - marrow) * hu["cortex"] + marrow * (hu["marrow"] + 45 * f_mid)
        img = np.where(self.body, img, -1000.0)
        return img, lesion, lung

    def _fissures(self, z: float) -> np.ndarray:
        """Opacity of the major (oblique) fissures: thin lines, blurred into bands by thick slices."""
        p, g = self.p, self.p.g
        out = np.zeros((self.grid.n, self.grid.n), np.float32)
        ax = np.abs(self.X)
        for side, y0, kz, kx, kc in p.fissures:
            on_side = (self.X * side) > 0
            lat = ax - 0.3 * p.cavity[0]
            y_f = y0 + kz * (z - 0.55 * p.lung_height) + kx * lat + kc * lat**2 / p.cavity[0]
            slope = kx + 2 * kc * lat / p.cavity[0]
            half = 0.3 * g + 0.5 * p.thickness * abs(kz)  # an oblique plane smears over the slice depth
            dist = np.abs(self.Y - y_f) / np.sqrt(1 + slope**2)
            out = np.maximum(out, on_side * _coverage(dist - half, self.grid.sp) * min(1.0, 0.6 * g / (2 * half)) * 0.8)
        return out

    def _heart(self, u: float) -> np.ndarray:
        """Signed distance to the heart: the ventricles, the right atrium on the right, the left atrium behind."""
        p, g = self.p, self.p.g
        hx, hy, ha, hb, hang, _ = p.heart
        out = np.full((self.grid.n, self.grid.n), np.inf, np.float32)
        parts = ((0.0, 0.0, 1.0, 1.0, 0.0), (-0.62 * ha, 0.3 * hb, 0.45, 0.5, 0.05), (-0.2 * ha, 0.85 * hb, 0.42, 0.32, 0.1))
        for dx, dy, fa, fb, du in parts:
            hs = float(p.heart_scale(u - du))
            if hs > 0.05:
                out = np.minimum(out, _ellipse_sd_grid(self.grid, hx + dx * hs, hy + dy * hs, ha * fa * hs, hb * fb * hs, hang, pad=6 * g))
        return out

    def _posterior_elements(self, phase: float) -> np.ndarray:
        """Neural arch, spinous and transverse processes at this height of the vertebra (2D capsules)."""
        p, g, cy = self.p, self.p.g, self.canal_y
        segs = [((s * 9 * g, cy - 3 * g), (s * 3 * g, cy + 10 * g), 2.8 * g) for s in (-1, 1)]  # laminae
        if 0.25 < phase < 0.85:  # pedicles
            segs += [((s * 8 * g, p.y_vb + p.vb[1] * 0.6), (s * 9.5 * g, cy - 2 * g), 3.2 * g) for s in (-1, 1)]
        if phase > 0.45 or phase < 0.1:  # spinous process, sloping down
            segs.append(((0.0, cy + 9 * g), (0.0, cy + 30 * g), 3.2 * g))
        if 0.3 < phase < 0.75:  # transverse processes
            segs += [((s * 9 * g, cy - 2 * g), (s * 24 * g, cy + 2 * g), 3.5 * g) for s in (-1, 1)]
        p0 = np.array([s[0] for s in segs])
        p1 = np.array([s[1] for s in segs])
        flat, sd, _ = _capsules(p0, p1, np.array([s[2] for s in segs]), self.grid, pad=2 * g)
        return _reduce(self.grid.n, flat, sd, "min")

    def _scapulae(self, u: float) -> np.ndarray:
        """Shoulder blades: thin curved plates behind the upper ribs."""
        p, g = self.p, self.p.g
        if u < 0.45:
            return np.full((self.grid.n, self.grid.n), np.inf, np.float32)
        extent = float(np.clip((u - 0.45) / 0.15, 0, 1))
        theta = np.linspace(math.radians(30), math.radians(30 + 48 * extent + 4), 8)
        segs_a, segs_b, radii = [], [], []
        for side in (-1.0, 1.0):
            pts = p.cavity_point(theta, side, np.full(len(theta), u), 13 * g)
            segs_a.append(pts[:-1])
            segs_b.append(pts[1:])
            radii.append(np.linspace(1.6, 3.2, len(theta) - 1) * g)
        flat, sd, _ = _capsules(np.concatenate(segs_a), np.concatenate(segs_b), np.concatenate(radii), self.grid, pad=2 * g)
        return _reduce(self.grid.n, flat, sd, "min")

    def _effusion(self, u: float, rho_c: np.ndarray, lung_field: np.ndarray) -> np.ndarray:
        """Dependent pleural fluid: a posterior crescent along the wall, thicker towards the base."""
        p = self.p
        out = np.zeros(lung_field.shape, bool)
        taper = float(np.clip((0.78 - u) / 0.45, 0, 1)) ** 0.7
        if taper <= 0 or max(p.effusion) <= 0:
            return out
        depth = (1.0 - rho_c) * p.cavity[2]
        for thick, side in zip(p.effusion, (self.right, ~self.right)):
            if thick > 0:
                out |= side & lung_field & (depth < thick * taper * self.posterior)
        return out

    def _lesions(self, z: float, f_mid: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """GGO opacity, consolidation, crazy-paving and air-bronchogram maps of one slice, inside ``allowed``."""
        p, grid = self.p, self.grid
        n, c = grid.n, grid.coords
        alpha = np.zeros((n, n), np.float32)
        cons = np.zeros((n, n), bool)
        crazy = np.zeros((n, n), bool)
        bronch = np.zeros((n, n), bool)
        for les in p.lesions:
            active = np.abs(z - les.centers[:, 2]) < les.radii[:, 2] * 1.2
            if not active.any():
                continue
            cen, rad, ang = les.centers[active], les.radii[active], les.angles[active]
            reach = rad[:, :2].max(axis=1, keepdims=True) * 1.4
            box = grid.box((cen[:, :2] - reach).min(axis=0), (cen[:, :2] + reach).max(axis=0))
            if box is None:
                continue
            xs, ys = c[box[0], None], c[None, box[1]]
            shape = np.full((len(c[box[0]]), len(c[box[1]])), -np.inf, np.float32)
            for (cx, cy, cz), (rx, ry, rz), a in zip(cen, rad, ang):
                dx, dy = xs - cx, ys - cy
                ca, sa = math.cos(a), math.sin(a)
                q = ((dx * ca + dy * sa) / rx) ** 2 + ((-dx * sa + dy * ca) / ry) ** 2 + ((z - cz) / rz) ** 2
                shape = np.maximum(shape, 1.0 - q)
            noise = f_mid[box]
            level = shape + 0.3 * noise
            inside = (level > 0) & allowed[box]
            if les.kind == "consolidation":
                cons[box] |= inside
            else:
                ramp = np.clip(level / 0.3, 0.45, 1.0) * (0.85 + 0.15 * np.clip(noise, -1, 1))
                alpha[box] = np.maximum(alpha[box], np.where(inside, les.alpha * ramp, 0.0))
                if les.crazy:
                    crazy[box] |= inside
                if les.kind == "mixed":
                    cons[box] |= (shape - (1.0 - les.core**2) + 0.15 * noise > 0) & inside
            if len(les.bronchograms.r):
                bronch |= _tube_sd(les.bronchograms, grid, z, p.thickness / 2.0, pad=grid.sp) < 0
        alpha[cons] = 0.0
        return alpha, cons, crazy, bronch


# --------------------------------------------------------------------------- public API


def _check_positive_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def generate_phantom_case(
    size: int = 512,
    num_slices: int = 16,
    seed: int = 0,
    pixel_spacing: float | None = None,
    slice_thickness: float | None = None,
) -> PhantomCase:
    """Generate one phantom chest CT with COVID-19 lesions.

    Args:
        size: matrix size (pixels along x and y).
        num_slices: number of contiguous axial slices through mid-lung.
        seed: seed of the ``numpy.random.Generator``; the same seed gives
            byte-identical arrays, different seeds different patients.
        pixel_spacing: in-plane spacing in mm. Default: the field of view of a
            512-pixel scan with a random 0.6-0.8 mm spacing, so the anatomy
            does not depend on ``size``. The anatomy is always fitted to the
            field of view ``size * pixel_spacing``.
        slice_thickness: slice thickness and spacing in mm (default: random,
            1-5 mm).

    Returns:
        The :class:`PhantomCase` (image in HU, lesion codes, lung labels, affine).

    Raises:
        InputError: a size, count or spacing is not positive.
    """
    size = _check_positive_int("size", size, 16)
    num_slices = _check_positive_int("num_slices", num_slices, 1)
    for name, value in (("pixel_spacing", pixel_spacing), ("slice_thickness", slice_thickness)):
        if value is not None and not (np.isfinite(value) and value > 0):
            raise InputError(f"{name} must be a positive number of mm, got {value!r}")
    rng = np.random.default_rng(seed)
    p = _draw_patient(rng, size, num_slices, pixel_spacing, slice_thickness)
    grid = _Grid(size, p.fov / size)
    renderer = _Renderer(p, grid)
    image = np.empty((size, size, num_slices), np.float32)
    lesion = np.empty((size, size, num_slices), np.uint8)
    lung = np.empty((size, size, num_slices), np.uint8)
    for k in range(num_slices):
        image[:, :, k], lesion[:, :, k], lung[:, :, k] = renderer.render(k)
    # scanner: white noise, then a partial-volume blur that also correlates the noise
    radius = int(4.0 * p.blur + 0.5)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / p.blur) ** 2)
    kernel /= kernel.sum()
    noise_gain = float((kernel**2).sum())  # std of blurred unit white noise (2D)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(p.noise_sd / noise_gain)
    image = ndimage.gaussian_filter(image, (p.blur, p.blur, 0), mode="nearest")
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    sx = grid.sp
    affine = np.diag([-sx, -sx, p.thickness, 1.0])
    # nibabel RAS world of LPS data: x_RAS = -x_LPS; the first voxel sits at the LPS corner (-fov/2, -fov/2)
    affine[:3, 3] = [(size - 1) / 2.0 * sx, (size - 1) / 2.0 * sx + p.origin_shift[0], p.origin_shift[1] + float(p.z[0])]
    return PhantomCase(image=image, lesion=lesion, lung=lung, affine=affine)


def generate_phantom_dataset(
    out_dir: str | Path,
    num_patients: int = 3,
    size: int = 512,
    num_slices: int = 16,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write phantom patients in the Radiopaedia layout.

    ``out_dir/rp_im/N.nii.gz`` (CT, int16 HU), ``rp_msk/N.nii.gz`` (uint8:
    1 GGO, 2 consolidation, 3 effusion) and ``rp_lung_msk/N.nii.gz`` (uint8:
    1 right, 2 left lung), ``N = 1..num_patients``, and the marker
    ``out_dir/.phantom.json`` (:data:`PHANTOM_MARKER`) holding the parameters
    (see :func:`read_phantom_marker`). The folder, marker included, is built
    under a temporary name and moved into place only when complete, so a
    killed run never leaves a phantom without its marker. Patient ``N`` is the
    same whatever ``num_patients`` is.

    Args:
        out_dir: folder to create.
        num_patients: number of patients.
        size: matrix size of every slice.
        num_slices: slices per patient.
        seed: seed of the whole dataset.
        overwrite: replace a non-empty ``out_dir``.

    Returns:
        ``out_dir``.

    Raises:
        InputError: ``out_dir`` is not empty and ``overwrite`` is false, or an
            argument is out of range.
    """
    num_patients = _check_positive_int("num_patients", num_patients, 1)
    seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=num_patients)
    out_dir = Path(out_dir)
    size = _check_positive_int("size", size, 16)
    num_slices = _check_positive_int("num_slices", num_slices, 1)
    params = {"num_patients": num_patients, "size": size, "num_slices": num_slices, "seed": int(seed)}
    with staged_directory(out_dir, overwrite=overwrite) as tmp:
        write_json(params, tmp / PHANTOM_MARKER)
        for i, patient_seed in enumerate(progress(seeds, desc="phantom", unit="patient"), start=1):
            case = generate_phantom_case(size=size, num_slices=num_slices, seed=int(patient_seed))
            write_nifti(case.image, case.affine, tmp / "rp_im" / f"{i}.nii.gz")
            write_nifti(case.lesion, case.affine, tmp / "rp_msk" / f"{i}.nii.gz")
            write_nifti(case.lung, case.affine, tmp / "rp_lung_msk" / f"{i}.nii.gz")
    return out_dir


def read_phantom_marker(folder: str | Path) -> dict[str, int] | None:
    """The parameters a phantom folder was generated with (its :data:`PHANTOM_MARKER`).

    Args:
        folder: a folder written by :func:`generate_phantom_dataset`, or any other folder.

    Returns:
        ``{"num_patients", "size", "num_slices", "seed"}``, or None when the
        folder has no readable marker (not a generated phantom).
    """
    try:
        params = json.loads((Path(folder) / PHANTOM_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return params if isinstance(params, dict) else None


# --------------------------------------------------------------------------- montage

_OUTLINE_COLOURS = {SOURCE_GGO: (255, 220, 0), SOURCE_CONSOLIDATION: (255, 40, 40), SOURCE_EFFUSION: (0, 200, 255)}


def _load_cases(case_or_dir: PhantomCase | Sequence[PhantomCase] | str | Path) -> list[PhantomCase]:
    if isinstance(case_or_dir, PhantomCase):
        return [case_or_dir]
    if isinstance(case_or_dir, (str, Path)):
        root = Path(case_or_dir)
        files = sorted((root / "rp_im").glob("*.nii.gz"), key=lambda f: (len(f.name), f.name))
        if not files:
            raise InputError("holds no rp_im/*.nii.gz (expected the Radiopaedia layout)", root)
        cases = []
        for f in files:
            msk = root / "rp_msk" / f.name
            lung = root / "rp_lung_msk" / f.name
            if not msk.is_file():
                raise InputError("has no matching lesion mask in rp_msk", f)
            img = cast(nib.Nifti1Image, nib.load(str(f)))  # NIfTI-2 images subclass it
            cases.append(PhantomCase(
                image=np.asarray(img.dataobj).astype(np.int16), lesion=np.asarray(cast(nib.Nifti1Image, nib.load(str(msk))).dataobj).astype(np.uint8),
                lung=np.asarray(cast(nib.Nifti1Image, nib.load(str(lung))).dataobj).astype(np.uint8) if lung.is_file() else np.zeros(img.shape, np.uint8),
                affine=img.affine))
        return cases
    return list(case_or_dir)


def _square(arr: np.ndarray, fill: float) -> np.ndarray:
    """Pad a 2D picture to a square, centred."""
    h, w = arr.shape
    m = max(h, w)
    out = np.full((m, m), fill, dtype=arr.dtype)
    out[(m - h) // 2:(m - h) // 2 + h, (m - w) // 2:(m - w) // 2 + w] = arr
    return out


def save_montage(
    case_or_dir: PhantomCase | Sequence[PhantomCase] | str | Path,
    path: str | Path,
    slices_per_case: int | None = None,
    max_tiles: int = 6,
    tile_size: int = 320,
    window: tuple[float, float] = (-600.0, 1500.0),
    overwrite: bool = False,
) -> Path:
    """Save a PNG montage: axial slices in a lung window on top, the same slices with outlines below.

    Outlines: lung field green, GGO yellow, consolidation red, effusion cyan.
    Slices are shown as a radiologist reads them (``array[:, :, k].T``:
    anterior at the top, the patient's right on the left).

    Args:
        case_or_dir: a case, a list of cases, or a folder in the Radiopaedia layout.
        path: the PNG to write (atomically).
        slices_per_case: slices taken from each case, spread along z
            (default: ``max_tiles`` shared among the cases).
        max_tiles: most columns in the montage.
        tile_size: pixels per tile side.
        window: (level, width) in HU.
        overwrite: replace an existing ``path``.

    Returns:
        ``path``.

    Raises:
        InputError: no cases (or a folder without ``rp_im/*.nii.gz``), a
            lesion mask missing, or ``path`` exists without ``overwrite``.
    """
    cases = _load_cases(case_or_dir)
    if not cases:
        raise InputError("no cases to show")
    per = slices_per_case or max(1, max_tiles // len(cases))
    level, width = window
    tiles: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    for i, case in enumerate(cases, start=1):
        nz = case.image.shape[2]
        picks = ((np.arange(per) + 0.5) * nz / per).astype(int) if nz > per else np.arange(nz)  # centres of per equal parts
        for k in picks:
            tiles.append((f"case {i} slice {k}", case.image[:, :, k].T, case.lesion[:, :, k].T, case.lung[:, :, k].T))
    tiles = tiles[:max_tiles]
    canvas = Image.new("RGB", (tile_size * len(tiles), tile_size * 2), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for col, (name, img, les, lung) in enumerate(tiles):
        grey = np.clip((img.astype(np.float32) - (level - width / 2)) / width * 255.0, 0, 255).astype(np.uint8)
        tile = Image.fromarray(_square(grey, 0)).resize((tile_size, tile_size), Image.Resampling.LANCZOS).convert("RGB")
        canvas.paste(tile, (col * tile_size, 0))
        rgb = np.asarray(tile).copy()
        masks = [(lung > 0, (60, 200, 60))] + [(les == code, colour) for code, colour in _OUTLINE_COLOURS.items()]
        for mask, colour in masks:
            small = Image.fromarray(_square(mask.astype(np.uint8) * 255, 0)).resize((tile_size, tile_size), Image.Resampling.NEAREST)
            small_arr = np.asarray(small) > 0
            rgb[small_arr & ~ndimage.binary_erosion(small_arr)] = colour
        canvas.paste(Image.fromarray(rgb), (col * tile_size, tile_size))
        draw.text((col * tile_size + 4, 4), name, fill=(230, 230, 230))
    draw.text((4, tile_size * 2 - 14), "lung green, GGO yellow, consolidation red, effusion cyan", fill=(230, 230, 230))
    with atomic_path(path, overwrite=overwrite) as tmp:
        canvas.save(tmp, format="PNG", optimize=True)
    return Path(path)
