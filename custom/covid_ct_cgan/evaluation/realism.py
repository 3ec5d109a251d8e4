"""Realism measures that see structure: KID, a vesselness ratio, a grid peak and a classifier two-sample test.

PSNR and SSIM reward blur and energy measures are fooled by speckle, so the
image-quality evaluation (:mod:`.image_quality`) reports, beside the FID, four
measures that look at structure:

- **KID** (kernel inception distance, Binkowski et al. 2018) on the same
  features as the FID (:mod:`.fid_features`): the unbiased estimate of the
  squared MMD with the polynomial kernel ``k(x, y) = (x.y / d + 1)^3`` (``d``
  features). Unlike the FID it is unbiased, so it is usable with few slices;
  0 = same feature distribution (an estimate can be slightly negative). It is
  averaged over ``subsets`` random subsets (default 100) of ``subset_size``
  slices drawn without replacement from each set (default: 1000, at most half
  the smaller set, at least 2), and reported as mean and standard deviation
  over the subsets. MONAI's ``MMDMetric`` computes the same unbiased estimator
  with the *linear* kernel ``x.y`` only (which compares feature means); the
  cubic kernel also compares second and third moments, and no per-sample
  mapping for ``MMDMetric`` gives it at a usable size (``C(d + 3, 3)``
  features), so the kernel matrices are computed here (the tests check the
  linear case against ``MMDMetric``).
- **Vesselness ratio**: the mean Frangi response (:func:`skimage.filters.frangi`,
  bright tubular structures, ``black_ridges=False``, ``alpha = beta = 0.5``)
  inside the generated region, generated / real on the same slices; 1 =
  as much tube-like structure as the real lung, a flat fill 0. Scales
  ``sigma`` of 0.75, 1.5, 2.25 and 3 mm (vessels of roughly 2-7 mm diameter,
  segmental to sub-segmental), converted to pixels with the slice's pixel size
  (at least 0.5 px). skimage's Hessian is not scale-normalised and its default
  ``gamma`` depends on each image, so each scale runs on its own with a fixed
  ``gamma = 0.1 / sigma^2`` (model scale [-1, 1]): the structure term then
  compares the scale-normalised Hessian norm with 0.1 at every scale and in
  every image (a vessel of contrast 0.5 reaches about 0.17, CT noise about
  0.02), and the response is the maximum over scales. Only the region is
  filtered: outside it the slice is set to the region's own mean (on the
  region's bounding box plus a 4-sigma margin), so the chest wall and the
  mediastinum beside the lung, bright bands that the filter takes for tubes
  at the larger scales, do not leak into the region; a flat fill then scores
  exactly 0.
- **Grid peak**: how strongly a periodic pattern of the generator's up-sampling
  (the checkerboard and the line pattern of stride-2 transposed convolutions,
  Odena et al. 2016) stands out in the generated region. The power spectrum of
  ``GRID_WINDOW``-px windows (Hann-weighted, mean removed, every
  ``GRID_STRIDE`` px, at least ``GRID_COVERAGE`` of the window in the region)
  is averaged over the model's slices; at each frequency of a period-2 or
  period-4 grid (1/2 or 1/4 cycle a pixel, along either axis or both), the
  power is divided by the median power of the frequencies at the same radius
  (a spike above its ring), and the largest of these ratios is the grid peak.
  Scale-free (a ratio within one spectrum); the real slices at the same
  windows give the reference (about 1: CT has no such spike); a grid one can
  see in a sample picture stands tens of times above its ring
  (``bundle/docs/experiments.md``).
- **Classifier two-sample test** (Lopez-Paz and Oquab 2017): crops centred on
  random pixels of the generated region (the same centres in the real and the
  generated slice), a small MONAI ``Classifier`` CNN trained to tell real from
  generated crops, ``folds``-fold cross-validated with every crop of a slice in
  the same fold (contiguous folds of the slices in datalist order, as
  :mod:`.statistics`); the result is the held-out accuracy (0.5 =
  indistinguishable, 1 = always told apart), mean over folds with the 95%
  Student-t interval over folds. The classifier trains for a fixed number of
  iterations per fold (default 300, Adam 3e-3, batch 32), so few slices train
  it as long as many. Seeded (weights, batch order) and run on the CPU, where
  it is bit-reproducible; small enough (10-30 s a model on 2 cores) to run
  for every model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..logs import progress
from .statistics import fold_interval

# --------------------------------------------------------------------------- KID

KID_DEGREE = 3
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor, degree: int = KID_DEGREE) -> torch.Tensor:
    """KID's kernel ``(x.y / d + 1)^degree`` between the rows of ``x (N, d)`` and ``y (M, d)``: ``(N, M)``."""
    return (x @ y.T / x.shape[1] + 1.0) ** degree


def _mmd2_from_kernels(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor) -> float:
    m, n = kxx.shape[0], kyy.shape[0]
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.sum() / (m * n))


def mmd2_unbiased(generated: torch.Tensor, real: torch.Tensor, degree: int = KID_DEGREE) -> float:
    """Unbiased squared MMD between two feature sets with :func:`polynomial_kernel` (float64).

    Args:
        generated: features ``(M, d)``.
        real: features ``(N, d)``.
        degree: kernel degree (3 for KID).

    Returns:
        The estimate; NaN with fewer than 2 rows in either set.

    Raises:
        ValueError: the feature sizes differ.
    """
    x, y = torch.as_tensor(generated).double(), torch.as_tensor(real).double()
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sets must be (N, d) with the same d, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] < 2 or y.shape[0] < 2:
        return math.nan
    return _mmd2_from_kernels(polynomial_kernel(x, x, degree), polynomial_kernel(y, y, degree),
                              polynomial_kernel(x, y, degree))


def kid(
    generated: torch.Tensor,
    real: torch.Tensor,
    subsets: int = KID_SUBSETS,
    subset_size: int | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: :func:`mmd2_unbiased` (cubic kernel) averaged over random subsets, with its spread.

    Args:
        generated: features ``(M, d)`` of the generated slices.
        real: features ``(N, d)`` of the real slices.
        subsets: number of subsets.
        subset_size: slices per subset and set; default ``min(1000, max(2, min(M, N) // 2))``; capped at
            ``min(M, N)``.
        seed: seed of the subset draws.

    Returns:
        ``(mean, sd)`` over the subsets (``sd`` with ``ddof=1``; NaN with one subset); NaN with fewer than 2 rows
        in either set.

    Raises:
        ValueError: feature sizes differ, ``subsets < 1`` or ``subset_size < 2``.
    """
    x, y = torch.as_tensor(generated).double(), torch.as_tensor(real).double()
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sets must be (N, d) with the same d, got {tuple(x.shape)} and {tuple(y.shape)}")
    if subsets < 1:
        raise ValueError(f"subsets must be at least 1, got {subsets}")
    if subset_size is not None and subset_size < 2:
        raise ValueError(f"subset_size must be at least 2, got {subset_size}")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        return math.nan, math.nan
    size = min(KID_SUBSET_SIZE, max(2, min(m, n) // 2)) if subset_size is None else min(int(subset_size), m, n)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(subsets)):
        i = torch.from_numpy(rng.choice(m, size, replace=False))
        j = torch.from_numpy(rng.choice(n, size, replace=False))
        values.append(_mmd2_from_kernels(kxx[i][:, i], kyy[j][:, j], kxy[i][:, j]))
    arr = np.asarray(values)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


# --------------------------------------------------------------------------- vesselness

VESSEL_SIGMAS_MM: tuple[float, ...] = (0.75, 1.5, 2.25, 3.0)
FRANGI_ALPHA = 0.5
FRANGI_BETA = 0.5
FRANGI_GAMMA = 0.1  # of the scale-normalised Hessian norm, model scale [-1, 1]
MIN_SIGMA_PX = 0.5


def vessel_sigmas(pixel_mm: float, sigmas_mm: Sequence[float] = VESSEL_SIGMAS_MM) -> tuple[float, ...]:
    """Frangi scales in pixels for a pixel size in mm (at least :data:`MIN_SIGMA_PX`).

    Raises:
        ValueError: a pixel size or scale that is not positive.
    """
    if not pixel_mm > 0 or not sigmas_mm or min(sigmas_mm) <= 0:
        raise ValueError(f"pixel size and vessel scales must be positive, got {pixel_mm} mm and {tuple(sigmas_mm)} mm")
    return tuple(max(float(s) / float(pixel_mm), MIN_SIGMA_PX) for s in sigmas_mm)


def vesselness_map(
    image: np.ndarray, pixel_mm: float = 1.0, sigmas_mm: Sequence[float] = VESSEL_SIGMAS_MM, gamma: float = FRANGI_GAMMA
) -> np.ndarray:
    """Scale-normalised Frangi vesselness of bright tubes in a 2D slice (model scale [-1, 1]).

    Args:
        image: the slice ``[x, y]``.
        pixel_mm: its pixel size in mm.
        sigmas_mm: vessel scales in mm.
        gamma: structure threshold of the scale-normalised Hessian norm (``gamma / sigma^2`` at each scale).

    Returns:
        float32 ``[x, y]`` in [0, 1]: the maximum over scales.
    """
    from skimage.filters import frangi

    img = np.asarray(image, dtype=np.float32)
    out = np.zeros_like(img)
    for sigma in vessel_sigmas(pixel_mm, sigmas_mm):
        response = frangi(img, sigmas=[sigma], alpha=FRANGI_ALPHA, beta=FRANGI_BETA, gamma=gamma / sigma**2,
                          black_ridges=False, mode="reflect")
        out = np.maximum(out, response.astype(np.float32))
    return out


def mean_vesselness(
    image: np.ndarray,
    region: np.ndarray,
    pixel_mm: float = 1.0,
    sigmas_mm: Sequence[float] = VESSEL_SIGMAS_MM,
    gamma: float = FRANGI_GAMMA,
) -> float:
    """Mean :func:`vesselness_map` over ``region``, with everything outside ``region`` set to the region's mean.

    The map is computed on the region's bounding box plus a 4-sigma margin; pixels outside the region do not
    change the result.

    Args:
        image: the slice ``[x, y]`` (model scale).
        region: boolean mask ``[x, y]`` (the generated region).
        pixel_mm: pixel size in mm.
        sigmas_mm: vessel scales in mm.
        gamma: see :func:`vesselness_map`.

    Returns:
        The mean response; NaN for an empty region.

    Raises:
        ValueError: image and region shapes differ.
    """
    region = np.asarray(region, dtype=bool)
    if region.shape != np.shape(image):
        raise ValueError(f"image {np.shape(image)} and region {region.shape} shapes differ")
    if not region.any():
        return math.nan
    margin = int(math.ceil(4 * max(vessel_sigmas(pixel_mm, sigmas_mm))))
    box = tuple(slice(max(int(idx.min()) - margin, 0), int(idx.max()) + margin + 1) for idx in np.nonzero(region))
    inside = region[box]
    crop = np.asarray(image, dtype=np.float32)[box].copy()
    crop[~inside] = crop[inside].mean(dtype=np.float64)
    response = vesselness_map(crop, pixel_mm, sigmas_mm, gamma)
    return float(response[inside].mean(dtype=np.float64))


def vesselness_ratio(generated: Sequence[float], real: Sequence[float]) -> float:
    """Mean generated / mean real per-slice vesselness over the slices where both are defined; NaN if undefined."""
    gen, ref = np.asarray(generated, dtype=np.float64), np.asarray(real, dtype=np.float64)
    if gen.shape != ref.shape:
        raise ValueError(f"need one generated and one real value per slice, got {gen.shape} and {ref.shape}")
    both = np.isfinite(gen) & np.isfinite(ref)
    if not both.any() or ref[both].mean() <= 0:
        return math.nan
    return float(gen[both].mean() / ref[both].mean())


# --------------------------------------------------------------------------- classifier two-sample test

CROP_SIZE = 32
CROPS_PER_SLICE = 8


@dataclass(frozen=True)
class TwoSampleResult:
    """Held-out accuracy of a real-vs-generated classifier.

    Attributes:
        accuracy: mean held-out accuracy over folds (0.5 = indistinguishable).
        low: lower end of the 95% Student-t interval over folds (NaN with fewer than 2 folds).
        high: upper end.
        folds: number of folds.
        crops: crops per class.
        fold_accuracies: the accuracy of every fold.
    """

    accuracy: float
    low: float
    high: float
    folds: int
    crops: int
    fold_accuracies: tuple[float, ...]


def region_crops(image: np.ndarray, centres: np.ndarray, size: int = CROP_SIZE, fill: float = -1.0) -> np.ndarray:
    """Square crops ``(K, size, size)`` of a slice centred on ``centres (K, 2)``; outside the slice: ``fill``."""
    img = np.asarray(image, dtype=np.float32)
    half = size // 2
    padded = np.pad(img, half, mode="constant", constant_values=fill)
    crops = [padded[x : x + size, y : y + size] for x, y in np.asarray(centres, dtype=np.int64).reshape(-1, 2)]
    return np.stack(crops) if crops else np.zeros((0, size, size), np.float32)


def paired_region_crops(
    real: Sequence[np.ndarray],
    generated: Sequence[np.ndarray],
    regions: Sequence[np.ndarray],
    size: int = CROP_SIZE,
    per_slice: int = CROPS_PER_SLICE,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops of the real and the generated slices at the same random centres in each slice's region.

    Args:
        real: real slices ``[x, y]`` (model scale).
        generated: the generated slices, same order and shapes.
        regions: the generated region of each slice (boolean).
        size: crop side in pixels (at the slice's own resolution).
        per_slice: crops per slice (centres drawn with replacement from the region's pixels).
        seed: seed of the centres.

    Returns:
        ``(real crops, generated crops, slice index of each crop pair)``; slices with an empty region add none.

    Raises:
        ValueError: the lists differ in length or a slice and its region differ in shape.
    """
    if not len(real) == len(generated) == len(regions):
        raise ValueError(f"need as many real, generated and region slices, got {len(real)}, {len(generated)}, {len(regions)}")
    rng = np.random.default_rng(seed)
    out_real, out_gen, groups = [], [], []
    for k, (r, g, reg) in enumerate(zip(real, generated, regions)):
        reg = np.asarray(reg, dtype=bool)
        if not (np.shape(r) == np.shape(g) == reg.shape):
            raise ValueError(f"slice {k}: real {np.shape(r)}, generated {np.shape(g)} and region {reg.shape} differ")
        pixels = np.argwhere(reg)
        if not len(pixels):
            continue
        centres = pixels[rng.integers(0, len(pixels), per_slice)]
        out_real.append(region_crops(r, centres, size))
        out_gen.append(region_crops(g, centres, size))
        groups.append(np.full(per_slice, k))
    if not groups:
        return (np.zeros((0, size, size), np.float32),) * 2 + (np.zeros(0, np.int64),)
    return np.concatenate(out_real), np.concatenate(out_gen), np.concatenate(groups)


def default_two_sample_network(crop_size: int = CROP_SIZE) -> torch.nn.Module:
    """The two-sample classifier: MONAI ``Classifier`` (3 stride-2 conv units 16-32-64, batch norm, one logit)."""
    from monai.networks.nets import Classifier

    return Classifier(in_shape=(1, crop_size, crop_size), classes=1, channels=(16, 32, 64), strides=(2, 2, 2),
                      num_res_units=0, norm="BATCH")


def classifier_two_sample_test(
    real: np.ndarray,
    generated: np.ndarray,
    groups: np.ndarray,
    folds: int = 5,
    iterations: int = 300,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    network_fn: Callable[[int], torch.nn.Module] = default_two_sample_network,
) -> TwoSampleResult:
    """Train a CNN to tell real from generated crops; its cross-validated held-out accuracy.

    Args:
        real: real crops ``(N, S, S)``.
        generated: generated crops ``(N, S, S)`` (paired with ``real``: the same slice and centre).
        groups: ``(N,)`` slice of each crop pair; all crops of a slice fall in one fold (contiguous folds of the
            slices in order).
        folds: number of folds (at most the number of slices).
        iterations: training iterations per fold (at least; whole epochs of the fold's training crops), so that
            few slices still train the classifier as long as many do.
        batch_size: batch size.
        learning_rate: Adam learning rate.
        seed: seed of the weights and the batch order (fold ``f`` uses ``seed + f``).
        network_fn: crop size -> a fresh network with one output logit (real = 1).

    Returns:
        The :class:`TwoSampleResult`; NaN accuracy with fewer than 2 slices.

    Raises:
        ValueError: shapes that do not pair up, ``folds < 2`` or ``iterations < 1``.
    """
    from monai.data import DataLoader
    from monai.engines import SupervisedTrainer
    from torch.utils.data import TensorDataset

    real, generated, groups = np.asarray(real, np.float32), np.asarray(generated, np.float32), np.asarray(groups)
    if real.shape != generated.shape or real.ndim != 3 or groups.shape != real.shape[:1]:
        raise ValueError(f"need paired crops (N, S, S) and N groups, got {real.shape}, {generated.shape}, {groups.shape}")
    if folds < 2 or iterations < 1:
        raise ValueError(f"need folds >= 2 and iterations >= 1, got {folds} and {iterations}")
    slices = list(dict.fromkeys(groups.tolist()))
    if len(slices) < 2:
        return TwoSampleResult(math.nan, math.nan, math.nan, 0, int(real.shape[0]), ())
    fold_of = {s: f for f, members in enumerate(np.array_split(np.arange(len(slices)), min(folds, len(slices)))) for s in
               (slices[i] for i in members)}
    fold_ids = np.array([fold_of[g] for g in groups.tolist()])
    images = torch.from_numpy(np.concatenate([real, generated]))[:, None]
    labels = torch.cat([torch.ones(len(real), 1), torch.zeros(len(generated), 1)])
    pair_fold = np.concatenate([fold_ids, fold_ids])
    accuracies = []
    folds_run = int(fold_ids.max()) + 1
    for fold in progress(range(folds_run), desc="two-sample test", total=folds_run, unit="fold", leave=False):
        held = torch.from_numpy(pair_fold == fold)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + fold)
            network = network_fn(real.shape[-1])
        loader = DataLoader(TensorDataset(images[~held], labels[~held]), batch_size=int(batch_size), shuffle=True,
                            num_workers=0, generator=torch.Generator().manual_seed(seed + fold))
        trainer = SupervisedTrainer(
            device=torch.device("cpu"), max_epochs=max(1, math.ceil(int(iterations) / len(loader))),
            train_data_loader=loader, network=network,
            optimizer=torch.optim.Adam(network.parameters(), lr=float(learning_rate)),
            loss_function=torch.nn.BCEWithLogitsLoss(),
        )
        trainer.logger.disabled = True
        trainer.run()
        network.eval()
        with torch.inference_mode():
            logits = torch.cat([network(x) for x in images[held].split(256)])
        accuracies.append(float(((logits > 0).float() == labels[held]).float().mean()))
    interval = fold_interval(np.asarray(accuracies), k=len(accuracies))
    return TwoSampleResult(interval.mean, interval.low, interval.high, len(accuracies), int(real.shape[0]),
                           tuple(accuracies))


# --------------------------------------------------------------------------- grid peak

GRID_WINDOW = 32
GRID_STRIDE = 8
GRID_COVERAGE = 0.9
# (cycles a pixel along rows, along columns): the periods 2 and 4 of one and two stride-2 up-samplings
GRID_FREQUENCIES: tuple[tuple[float, float], ...] = ((0.5, 0.0), (0.0, 0.5), (0.5, 0.5), (0.25, 0.0), (0.0, 0.25),
                                                     (0.25, 0.25))


def region_power_spectrum(
    images: Sequence[np.ndarray], regions: Sequence[np.ndarray], window: int = GRID_WINDOW, stride: int = GRID_STRIDE,
    coverage: float = GRID_COVERAGE, reference: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Mean power spectrum of the windows that lie in the region (see the module docstring: grid peak).

    Args:
        images: 2D slices.
        regions: boolean masks of the same shapes.
        window: window side in pixels.
        stride: step between windows.
        coverage: the least share of a window inside the region.
        reference: slices of the same shapes (the real ones) whose spectrum is taken at the same windows.

    Returns:
        ``(spectrum, reference spectrum or None, windows)``; spectra of shape ``(window, window)`` (zeros when
        no window fits).
    """
    taper = np.outer(np.hanning(window), np.hanning(window))
    power = np.zeros((window, window))
    power_ref = np.zeros((window, window)) if reference is not None else None
    count = 0
    for index, (image, region) in enumerate(zip(images, regions)):
        image = np.asarray(image, dtype=np.float64)
        inside = np.asarray(region, dtype=bool)
        if image.shape != inside.shape:
            raise ValueError(f"image {image.shape} and region {inside.shape} differ in shape")
        real = None if reference is None else np.asarray(reference[index], dtype=np.float64)
        for top in range(0, image.shape[0] - window + 1, stride):
            for left in range(0, image.shape[1] - window + 1, stride):
                if inside[top:top + window, left:left + window].mean() < coverage:
                    continue
                patch = image[top:top + window, left:left + window]
                power += np.abs(np.fft.fft2((patch - patch.mean()) * taper)) ** 2
                if real is not None and power_ref is not None:
                    patch = real[top:top + window, left:left + window]
                    power_ref += np.abs(np.fft.fft2((patch - patch.mean()) * taper)) ** 2
                count += 1
    if count:
        power /= count
        if power_ref is not None:
            power_ref /= count
    return power, power_ref, count


def grid_peaks(power: np.ndarray) -> dict[tuple[float, float], float]:
    """For each of :data:`GRID_FREQUENCIES`, a spectrum's power there over the median power at the same radius
    (the frequency and its mirror left out); NaN for an empty spectrum (no window in the region)."""
    size = power.shape[0]
    if power.shape != (size, size) or not np.any(power):
        return dict.fromkeys(GRID_FREQUENCIES, math.nan)
    rows, cols = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    radius = np.hypot(rows, cols)
    peaks = {}
    for along_rows, along_cols in GRID_FREQUENCIES:
        i, j = int(round(along_rows * size)) % size, int(round(along_cols * size)) % size
        ring = np.abs(radius - radius[i, j]) < 1.0 / size
        ring[i, j] = False
        ring[-i % size, -j % size] = False  # the mirrored frequency of a real image holds the same power
        median = float(np.median(power[ring]))
        peaks[(along_rows, along_cols)] = float(power[i, j]) / median if median > 0 else math.inf
    return peaks


def grid_peak(power: np.ndarray) -> float:
    """The largest of :func:`grid_peaks`: how far the strongest up-sampling-grid frequency stands above its ring."""
    return max(grid_peaks(power).values())


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class RealismSettings:
    """Settings of the realism measures (``evaluate.yaml``: ``realism``).

    Attributes:
        kid_subsets: KID subsets.
        kid_subset_size: slices per KID subset; None: ``min(1000, max(2, slices // 2))``.
        vessel_sigmas_mm: Frangi scales in mm.
        vessel_gamma: Frangi structure threshold (scale-normalised, model scale).
        picture_pixel_mm: pixel size assumed for 8-bit slices (pictures carry no spacing); CT slices use their own.
        crop_size: two-sample crop side in pixels (at the slice's resolution).
        crops_per_slice: two-sample crops per slice.
        folds: two-sample folds.
        iterations: two-sample classifier training iterations per fold.
        batch_size: two-sample classifier batch size.
        learning_rate: two-sample classifier learning rate.
        two_sample: run the two-sample test (False: its columns are NaN).
    """

    kid_subsets: int = KID_SUBSETS
    kid_subset_size: int | None = None
    vessel_sigmas_mm: tuple[float, ...] = VESSEL_SIGMAS_MM
    vessel_gamma: float = FRANGI_GAMMA
    picture_pixel_mm: float = 0.7
    crop_size: int = CROP_SIZE
    crops_per_slice: int = CROPS_PER_SLICE
    folds: int = 5
    iterations: int = 300
    batch_size: int = 32
    learning_rate: float = 3e-3
    two_sample: bool = True

    @classmethod
    def from_config(cls, config: Any) -> RealismSettings:
        """Settings from a mapping (``evaluate.yaml``'s ``realism``), an instance or None (defaults).

        Raises:
            InputError: an unknown key or a value of the wrong kind.
        """
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise InputError(f"realism: unknown key(s) {unknown}; known: {sorted(known)}")
        values = dict(config)
        if "vessel_sigmas_mm" in values:
            values["vessel_sigmas_mm"] = tuple(float(s) for s in values["vessel_sigmas_mm"])
        try:
            settings = cls(**values)
            vessel_sigmas(settings.picture_pixel_mm, settings.vessel_sigmas_mm)
        except (TypeError, ValueError) as err:
            raise InputError(f"realism: {err}") from None
        if settings.crop_size < 8 or settings.crops_per_slice < 1 or settings.folds < 2 or settings.iterations < 1:
            raise InputError(f"realism: need crop_size >= 8, crops_per_slice >= 1, folds >= 2 and iterations >= 1, "
                             f"got {settings.crop_size}, {settings.crops_per_slice}, {settings.folds}, "
                             f"{settings.iterations}")
        return settings

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (``settings.json``)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
