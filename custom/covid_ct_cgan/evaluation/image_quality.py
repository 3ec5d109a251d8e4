"""Image quality of synthesised slices (paper Table II): ``evaluate.yaml`` run id ``run`` (:class:`ImageQuality`).

For every model (ours and the baselines, each rebuilt from its training
config, see :mod:`.models`), every ``test_synthesis`` label map is turned into
a slice by :func:`covid_ct_cgan.inference.run_synthesis` (the input's own
map, no augmentation) and composited into the real slice. Beside the models,
the trivial baseline ``mean_lung`` fills the lung with the mean lung
intensity of the real *training* slices, and the resolution reference
``resampled_real`` redraws the lung with the real slice itself passed through
the first model's grid and back (area down, bilinear up, as synthesis
resamples): what a perfect generator at that image size would score, so that a
realism figure can be read against what the model's resolution allows. Every result is compared with the
real slice at the slice's own resolution on the model scale [-1, 1]
(:mod:`.image_metrics`):

- ``complemented``: the composited slice;
- ``lung_only``: inside the lung mask (PSNR / RMSE over lung pixels, SSIM map
  averaged over windows centred in the lung; FID on images with everything
  outside the lung set to -1).

FID (:mod:`.fid_features`): MONAI ``FIDMetric`` between the features of all
generated and all real test slices, from the project's feature network (or a
user's Inception-v3). PSNR and SSIM reward blur: a sharp, plausible lung can
score below the mean-lung fill; FID and the segmentation experiments measure
realism and usefulness.

Realism measures that see structure (:mod:`.realism`, settings ``realism``):
KID on the same features as the FID (each region), and, once per model inside
its *generated region* (the lung; for ``map+context`` with ``context_region:
lesion`` the dilated lesions, as :func:`~covid_ct_cgan.inference.run_synthesis`
draws them), the vesselness ratio (mean Frangi response, generated / real on the
same slices) and the classifier two-sample test (held-out accuracy of a CNN
telling real from generated crops of the region; 0.5 = indistinguishable).
The model-level values are repeated on both region rows.

A model entry may carry ``precision: int8``: its generator then runs as the ONNX
Runtime static-int8 copy :func:`~covid_ct_cgan.inference.run_synthesis` makes,
calibrated on the ``train_key`` label maps of the same datalist (never the test
slices), and is scored like any other model. The ``precision`` column says what
each model computed in: ``int8``, ``bf16`` / ``fp16`` (``float`` with ``amp``, CPU /
CUDA) or ``fp32``; empty for the baselines.

Outputs (``<output_dir>/image_quality/``, built under a temporary name and
moved into place; replaced only with ``overwrite``)::

    image_quality.csv     model x region: PSNR, SSIM, RMSE (model scale and HU), FID, KID; vesselness ratio,
                          two-sample accuracy and its interval (per model); provenance; precision
    per_image.csv         every slice, model and region (with the slice's vesselness, generated and real; precision)
    synthesis/<model>/    run_synthesis output of each model; mean_lung/images/, resampled_real/images/ for the baselines
    settings.json         data, feature network, mean lung intensity, resampled_real's grid, models, their checkpoints and precision
                          (int8: the calibration datalist and list)
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import intensity
from ..data.prepare import check_prepared
from ..errors import InputError
from ..fileio import check_writable, staged_directory, write_json, write_text
from ..logs import progress
from ..inference import ModelGrid, SynthesisInput, load_input, write_like
from ..labels import lung_region
from ..transforms import slice_region
from . import image_metrics
from .fid_features import FeatureExtractor, FIDFeatures, fid, mask_outside_lung
from .models import TrainedModel, check_precision, synthesise, trained_model
from .provenance import data_description, provenance
from .realism import (
    RealismSettings,
    classifier_two_sample_test,
    grid_peak,
    kid,
    mean_vesselness,
    paired_region_crops,
    region_power_spectrum,
    vesselness_ratio,
)

logger = logging.getLogger(__name__)

FOLDER = "image_quality"
SUMMARY = "image_quality.csv"
PER_IMAGE = "per_image.csv"
MEAN_LUNG = "mean_lung"
RESAMPLED_REAL = "resampled_real"  # the real slice through the first model's grid: a perfect generator at that size
SUMMARY_COLUMNS: tuple[str, ...] = (
    "model", "region", "images", "psnr", "psnr_sd", "ssim", "ssim_sd", "rmse", "rmse_sd", "rmse_hu", "fid",
    "kid", "kid_sd", "vesselness_ratio", "grid_peak", "grid_peak_real", "two_sample_accuracy", "two_sample_low", "two_sample_high",
    "two_sample_folds", "two_sample_crops", "realism_region", "data", "image_size", "epochs", "seed", "commit", "checkpoint", "feature_net",
    "precision",
)
PER_IMAGE_COLUMNS: tuple[str, ...] = (
    "model", "region", "image", "label", "patient", "slice", "z", "generated", "psnr", "ssim", "rmse", "rmse_hu",
    "vesselness", "vesselness_real", "precision",
)


@dataclass
class _Slice:
    """One real test slice (model scale) and where it came from."""

    image: str
    label_path: str
    patient: str
    slice: str
    z: int
    real: np.ndarray
    label: np.ndarray
    scale: str
    pixel_mm: float = 1.0


@dataclass
class _Scores:
    """One model's per-slice metrics, its composites' FID inputs and what the realism measures need."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    grids: dict[str, list[torch.Tensor]] = field(default_factory=lambda: {r: [] for r in image_metrics.REGIONS})
    generated: list[np.ndarray] = field(default_factory=list)
    regions: list[np.ndarray] = field(default_factory=list)
    vesselness: list[tuple[float, float]] = field(default_factory=list)


def load_datalist(
    datalist: str | Path,
    key: str,
    missing: str = "datalist not found; prepare the data first (train.yaml prepare) or set data_dir",
    allow_empty: bool = False,
) -> list[dict[str, Any]]:
    """Items of one list of a ``datalist.json`` (absolute paths).

    Args:
        datalist: the file.
        key: its list.
        missing: the error when the file does not exist (what it is and how to make it).
        allow_empty: return an empty list instead of refusing it.

    Raises:
        InputError: missing file, missing (or, unless allowed, empty) list.
    """
    from monai.data import load_decathlon_datalist

    datalist = Path(datalist)
    if not datalist.is_file():
        raise InputError(missing, datalist)
    try:
        items = load_decathlon_datalist(str(datalist), True, key)
    except (ValueError, KeyError) as err:
        raise InputError(f"cannot read list {key!r} ({err})", datalist) from None
    if not items and not allow_empty:
        raise InputError(f"list {key!r} is empty", datalist)
    return items


def real_slices(items: Sequence[Mapping[str, Any]], window_level: float, window_width: float) -> list[_Slice]:
    """Every lung slice of the datalist items, on the model scale [-1, 1] (with the in-plane pixel size in mm)."""
    out = []
    for it in progress(items, desc="reading real slices", unit="slice", leave=False):
        loaded = load_input(SynthesisInput(Path(it["image"]).name, Path(it["image"]), Path(it["label"]), it.get("scale")))
        pixel_mm = float(np.sqrt((np.asarray(loaded.geometry.affine)[:3, :2] ** 2).sum(axis=0)).mean())
        for z in loaded.lung_slices():
            out.append(_Slice(
                str(it["image"]), str(it["label"]), str(it.get("patient", "")), str(it.get("slice", z)), z,
                np.asarray(intensity.to_model(loaded.image[:, :, z], loaded.scale, window_level, window_width)),
                loaded.label[:, :, z], loaded.scale, pixel_mm,
            ))
    return out


def mean_lung_intensity(items: Sequence[Mapping[str, Any]], window_level: float, window_width: float) -> float:
    """Mean model-scale intensity of the lung pixels (label > 0) of real slices (the trivial baseline's fill)."""
    total, count = 0.0, 0
    for s in real_slices(items, window_level, window_width):
        lung = lung_region(s.label)
        total += float(s.real[lung].sum(dtype=np.float64))
        count += int(lung.sum())
    if count == 0:
        raise InputError("the training slices hold no lung pixels; cannot compute the mean lung intensity")
    return total / count


def _grid(image: np.ndarray, label: np.ndarray, size: int) -> torch.Tensor:
    return ModelGrid(size).to_grid(image, label)[0]


def generated_region(label: np.ndarray, settings: Mapping[str, Any]) -> np.ndarray:
    """The region a model draws in a label-map slice ``[x, y]``, as :func:`~covid_ct_cgan.inference.run_synthesis` does.

    Args:
        label: the label map (the slice's own resolution).
        settings: the model's ``condition``, ``context_region``, ``context_dilation`` (model pixels) and
            ``image_size``; the mean-lung baseline passes ``{}`` (the lung).

    Returns:
        Boolean mask: the lung, or for ``map+context`` with ``context_region: lesion`` the dilated lesions.
    """
    return slice_region(label, settings.get("condition", "map"), settings.get("context_region", "lung"),
                        int(settings.get("context_dilation", 0)), int(settings.get("image_size", 1)),
                        upscale=not int(settings.get("crop_size", 0)))


def _region_description(settings: Mapping[str, Any]) -> str:
    if settings.get("condition", "map") == "map+context" and settings.get("context_region", "lung") == "lesion":
        return f"lesions dilated {int(settings.get('context_dilation', 0))} px at {settings.get('image_size')} px"
    return "lung"


class _Vesselness:
    """Mean vesselness of generated slices and (cached) of the real ones, inside a region."""

    def __init__(self, settings: RealismSettings) -> None:
        self.settings = settings
        self.cache: dict[tuple[str, int, bytes], float] = {}

    def _mean(self, image: np.ndarray, region: np.ndarray, s: _Slice) -> float:
        pixel_mm = s.pixel_mm if s.scale == "hu" else self.settings.picture_pixel_mm
        return mean_vesselness(image, region, pixel_mm, self.settings.vessel_sigmas_mm, self.settings.vessel_gamma)

    def __call__(self, generated: np.ndarray, region: np.ndarray, s: _Slice) -> tuple[float, float]:
        """``(generated, real)`` mean vesselness of a slice inside ``region``."""
        key = (s.image, s.z, np.packbits(region).tobytes())
        if key not in self.cache:
            self.cache[key] = self._mean(s.real, region, s)
        return self._mean(generated, region, s), self.cache[key]


def _score_slice(scores: _Scores, model: str, s: _Slice, generated: np.ndarray, generated_path: str,
                 extractor: FeatureExtractor, window_width: float, region: np.ndarray, vessel: _Vesselness) -> None:
    lung = lung_region(s.label)
    metrics = image_metrics.slice_metrics(generated, s.real, lung, window_width if s.scale == "hu" else None)
    gen_vessel, real_vessel = vessel(generated, region, s)
    for name, values in metrics.items():
        scores.rows.append({"model": model, "region": name, "image": s.image, "label": s.label_path,
                            "patient": s.patient, "slice": s.slice, "z": s.z, "generated": generated_path, **values,
                            "vesselness": gen_vessel, "vesselness_real": real_vessel})
    scores.grids["complemented"].append(_grid(generated, s.label, extractor.image_size))
    scores.grids["lung_only"].append(_grid(mask_outside_lung(generated, s.label), s.label, extractor.image_size))
    scores.generated.append(generated)
    scores.regions.append(region)
    scores.vesselness.append((gen_vessel, real_vessel))


def _realism(scores: _Scores, slices: Sequence[_Slice], settings: RealismSettings, seed: int,
             description: str) -> dict[str, Any]:
    """The model-level realism values: vesselness ratio, grid peak (and the real slices' at the same windows) and
    the classifier two-sample test."""
    gen_vessel, real_vessel = zip(*scores.vesselness) if scores.vesselness else ((), ())
    generated_power, real_power, _ = region_power_spectrum(scores.generated, scores.regions,
                                                           reference=[s.real for s in slices])
    out: dict[str, Any] = {"vesselness_ratio": vesselness_ratio(gen_vessel, real_vessel), "realism_region": description,
                           "grid_peak": grid_peak(generated_power),
                           "grid_peak_real": grid_peak(real_power) if real_power is not None else math.nan,
                           "two_sample_accuracy": math.nan, "two_sample_low": math.nan, "two_sample_high": math.nan,
                           "two_sample_folds": 0, "two_sample_crops": 0}
    if settings.two_sample:
        real, gen, groups = paired_region_crops([s.real for s in slices], scores.generated, scores.regions,
                                                settings.crop_size, settings.crops_per_slice, seed)
        test = classifier_two_sample_test(real, gen, groups, settings.folds, settings.iterations, settings.batch_size,
                                          settings.learning_rate, seed)
        out.update({"two_sample_accuracy": test.accuracy, "two_sample_low": test.low, "two_sample_high": test.high,
                    "two_sample_folds": test.folds, "two_sample_crops": test.crops})
    return out


def _generated_slices(rows: list[dict[str, Any]], folder: Path, slices: list[_Slice]) -> dict[tuple[str, int], tuple[np.ndarray, str]]:
    """Synthesis manifest rows (variant 0) -> ``{(real image, z): (composited slice in input units, its path)}``."""
    by_image = {str(Path(s.image).resolve()): s for s in slices}
    out: dict[tuple[str, int], tuple[np.ndarray, str]] = {}
    for row in rows:
        real = by_image.get(str(Path(row["input"]).resolve()))
        if real is None or int(row["variant"]) != 0:
            continue
        loaded = load_input(SynthesisInput(Path(row["output"]).name, folder / row["output"], folder / row["label_map"], real.scale))
        for z in loaded.lung_slices():
            out[(real.image, z)] = (loaded.image[:, :, z], str(Path(folder.name) / row["output"]))
    return out


def _summary_rows(name: str, scores: _Scores, real_features: dict[str, torch.Tensor], extractor: FeatureExtractor,
                  prov: dict[str, str], checkpoint: str, realism: dict[str, Any], settings: RealismSettings,
                  seed: int) -> list[dict[str, Any]]:
    out = []
    for region in image_metrics.REGIONS:
        rows = [r for r in scores.rows if r["region"] == region]
        features = extractor(torch.stack(scores.grids[region]))
        kid_mean, kid_sd = kid(features, real_features[region], settings.kid_subsets, settings.kid_subset_size, seed)
        row: dict[str, Any] = {"model": name, "region": region, "images": len(rows),
                               "fid": fid(features, real_features[region]), "kid": kid_mean, "kid_sd": kid_sd, **realism}
        for metric in ("psnr", "ssim", "rmse", "rmse_hu"):
            values = np.array([r[metric] for r in rows], dtype=np.float64)
            values = values[np.isfinite(values)]
            row[metric] = float(values.mean()) if values.size else math.nan
            if metric != "rmse_hu":
                row[f"{metric}_sd"] = float(values.std(ddof=1)) if values.size > 1 else math.nan
        out.append({**row, **prov, "checkpoint": checkpoint, "feature_net": extractor.description})
    return out


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as CSV text (floats with up to 6 significant digits)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def resampled_real(real: np.ndarray, label: np.ndarray, image_size: int, upscale: bool = True) -> np.ndarray:
    """The real slice ``[x, y]`` passed through a model's ``image_size`` grid and back, as synthesis resamples
    (area down, bilinear up): the best a generator at that size can return. Identity when the slice fits the grid
    (with ``upscale=False``, a model trained at the slices' own pixel size: every slice no longer than ``image_size``)."""
    grid = ModelGrid(image_size, upscale)
    return grid.from_grid(grid.to_grid(real, label)[0], real.shape)


def _baseline_scores(name: str, lung_fill: Any, test_items: Sequence[Mapping[str, Any]], slices: Sequence[_Slice],
                     stage: Path, level: float, width: float, extractor: FeatureExtractor,
                     vessel: _Vesselness) -> _Scores:
    """Score a baseline that redraws the lung of every test slice with ``lung_fill(slice)`` (a value or an image);
    its composites are written to ``<stage>/synthesis/<name>/images/`` like a model's."""
    scores = _Scores()
    for it in test_items:
        loaded = load_input(SynthesisInput(Path(it["image"]).name, Path(it["image"]), Path(it["label"]), it.get("scale")))
        composite = loaded.image.copy()
        rel = Path("synthesis") / name / "images" / f"{Path(it['image']).name.split('.')[0]}_v0.nii.gz"
        for s in (s for s in slices if s.image == str(it["image"])):
            lung = lung_region(s.label)
            gen = np.where(lung, lung_fill(s), s.real).astype(np.float32)
            composite[:, :, s.z] = intensity.from_model(gen, s.scale, level, width)
            _score_slice(scores, name, s, gen, str(rel), extractor, width, lung, vessel)
        write_like(composite, loaded.geometry, stage / rel)
    return scores


def evaluate_image_quality(
    models: Sequence[TrainedModel],
    datalist: str | Path,
    output_dir: str | Path,
    test_key: str = "test_synthesis",
    train_key: str = "training",
    overwrite: bool = False,
    seed: int = 0,
    batch_size: int = 8,
    amp: bool = False,
    mean_lung_baseline: bool = True,
    resampled_real_baseline: bool = True,
    features: FIDFeatures | FeatureExtractor | None = None,
    realism: RealismSettings | Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """Score trained models on the test label maps (see the module docstring); the library form of ``run``.

    Args:
        models: the generators to evaluate.
        datalist: the prepared ``datalist.json``.
        output_dir: the evaluation folder; results go to ``<output_dir>/image_quality``.
        test_key: the datalist list of test slices.
        train_key: the datalist list of real training slices (mean lung intensity, FID feature network).
        overwrite: replace an existing ``image_quality`` folder.
        seed: synthesis seed.
        batch_size: synthesis batch size.
        amp: mixed precision for the synthesis of ``float`` models (bf16 autocast on CPU, fp16 on CUDA).
        mean_lung_baseline: add the trivial mean-lung baseline.
        resampled_real_baseline: add the resolution reference ``resampled_real`` (needs a model: its grid).
        features: the FID features: :class:`~.fid_features.FIDFeatures` (trained on the ``train_key`` slices in
            the models' HU window when first used) or a ready extractor; default: the project's feature network
            with its default settings, cached in ``<output_dir>/fid_features``.
        realism: KID, vesselness and two-sample settings (:class:`~.realism.RealismSettings` or its keys).
        device: where networks run (the two-sample classifier always runs on the CPU).

    Returns:
        The summary rows (``image_quality.csv``).

    Raises:
        InputError: missing data or checkpoints, an existing output without ``overwrite``, bad ``realism`` keys.
    """
    datalist = Path(datalist)
    output_dir = Path(output_dir)
    target = output_dir / FOLDER
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise InputError("already exists and is not empty; pass --overwrite True to replace it", target)
    names = ([m.name for m in models] + ([MEAN_LUNG] if mean_lung_baseline else [])
             + ([RESAMPLED_REAL] if resampled_real_baseline and models else []))
    if len(set(names)) != len(names):
        raise InputError(f"model names must be unique, got {names}")
    if not models and not mean_lung_baseline:
        raise InputError("no model to evaluate")
    for model in models:  # before the FID features are trained (minutes)
        model.check_trained()
    check_prepared(datalist)  # the slices every score is computed on: as prepared, before any work
    check_writable(output_dir)  # the FID features are cached there once trained
    realism_settings = RealismSettings.from_config(realism)
    test_items = load_datalist(datalist, test_key)
    train_items = load_datalist(datalist, train_key)
    level, width = (models[0].settings["window_level"], models[0].settings["window_width"]) if models else (-600.0, 1500.0)
    slices = real_slices(test_items, level, width)
    if features is None:
        features = FIDFeatures(output_dir / "fid_features", seed=seed, device=device)
    feature_extractor = features.extractor(train_items, level, width) if isinstance(features, FIDFeatures) else features
    real_features = {
        "complemented": feature_extractor(torch.stack([_grid(s.real, s.label, feature_extractor.image_size)
                                                       for s in slices])),
        "lung_only": feature_extractor(torch.stack([_grid(mask_outside_lung(s.real, s.label), s.label,
                                                          feature_extractor.image_size) for s in slices])),
    }
    vessel = _Vesselness(realism_settings)
    data = data_description(datalist.parent, test_key, test_items)
    summary: list[dict[str, Any]] = []
    per_image: list[dict[str, Any]] = []
    settings: dict[str, Any] = {"datalist": str(datalist), "test_key": test_key, "train_key": train_key,
                                "feature_net": feature_extractor.description, "realism": realism_settings.as_dict(),
                                "models": {}}
    with staged_directory(target, overwrite=overwrite) as stage:
        for model in models:
            logger.info(f"image quality: model {model.name}")
            folder = stage / "synthesis" / model.name
            # an int8 model is calibrated on the training label maps of the same datalist, never the test slices
            rows = synthesise(model, datalist, folder, test_key, 1, seed, batch_size, amp,
                              calibration_input=datalist, calibration_key=train_key)
            precision = model.precision_label(amp)
            generated = _generated_slices(rows, folder, slices)
            scores = _Scores()
            for s in slices:
                if (s.image, s.z) not in generated:
                    raise InputError(f"synthesis of model {model.name!r} produced no slice for {s.image} (z {s.z})")
                image, rel = generated[(s.image, s.z)]
                gen = np.asarray(intensity.to_model(image, s.scale, level, width))
                _score_slice(scores, model.name, s, gen, str(Path("synthesis") / rel), feature_extractor, width,
                             generated_region(s.label, model.settings), vessel)
            prov = provenance(data, model.settings["image_size"], model.epochs, model.seed)
            values = _realism(scores, slices, realism_settings, seed, _region_description(model.settings))
            summary += [{**row, "precision": precision} for row in _summary_rows(
                model.name, scores, real_features, feature_extractor, prov, str(model.checkpoint), values,
                realism_settings, seed)]
            per_image += [{**row, "precision": precision} for row in scores.rows]
            settings["models"][model.name] = {"checkpoint": str(model.checkpoint), "configs": model.configs,
                                              "epochs": model.epochs, "precision": precision, **model.settings}
            if model.precision != "float":
                settings["models"][model.name]["calibration"] = {"datalist": str(datalist), "key": train_key}
        baselines: list[tuple[str, Any, str, str]] = []  # name, its lung fill, image size, "epochs"
        if mean_lung_baseline:
            fill = mean_lung_intensity(train_items, level, width)
            settings["mean_lung_intensity"] = {"model_scale": fill,
                                               "hu": float(intensity.from_model(np.float32(fill), "hu", level, width))}
            baselines.append((MEAN_LUNG, lambda s, fill=np.float32(fill): fill,  # noqa: B008 - binds this value once
                              "slice size", "none (training-set mean)"))
        if resampled_real_baseline and models:
            size = int(models[0].settings["image_size"])
            upscale = not int(models[0].settings.get("crop_size", 0))
            settings["resampled_real"] = {"image_size": size, "upscale": upscale}
            baselines.append((RESAMPLED_REAL, lambda s: resampled_real(s.real, s.label, size, upscale), str(size),
                              "none (the real slice)"))
        # a baseline's slices are scored item by item: pair them with the real slices in that order
        order = [s for it in test_items for s in slices if s.image == str(it["image"])]
        for name, lung_fill, image_size, epochs in baselines:
            scores = _baseline_scores(name, lung_fill, test_items, slices, stage, level, width, feature_extractor,
                                      vessel)
            prov = provenance(data, image_size, epochs, seed)
            values = _realism(scores, order, realism_settings, seed, "lung")
            summary += [{**row, "precision": ""} for row in _summary_rows(
                name, scores, real_features, feature_extractor, prov, "", values, realism_settings, seed)]
            per_image += [{**row, "precision": ""} for row in scores.rows]  # no network
        write_text(csv_text(summary, SUMMARY_COLUMNS), stage / SUMMARY)
        write_text(csv_text(per_image, PER_IMAGE_COLUMNS), stage / PER_IMAGE)
        write_json(settings, stage / "settings.json")
    print(f"image quality: {len(summary)} rows in {target / SUMMARY}", flush=True)
    return summary


def build_models(
    models: Mapping[str, Mapping[str, Any]],
    training_overrides: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> list[TrainedModel]:
    """``{name: {"configs": [...], "checkpoint": optional, "precision": optional}}`` -> generators to evaluate.

    Args:
        models: the entries: the training config files (train.yaml first), the checkpoint (default the
            training run's last stage) and ``precision`` (``float``, the default, or ``int8``).
        training_overrides: overrides of the models' training configs.
        device: where ``float`` generators run (``int8`` ones run on the CPU).

    Returns:
        The :class:`~.models.TrainedModel` of every entry, in order.

    Raises:
        InputError: an entry without ``configs``, a ``precision`` other than ``float`` / ``int8`` (the
            model named), or a config that cannot build its generator.
    """
    out = []
    for name, entry in models.items():
        if not isinstance(entry, Mapping) or not entry.get("configs"):
            raise InputError(f"model {name!r} needs 'configs': the training config files (train.yaml first)")
        precision = check_precision(name, entry.get("precision", "float"))
        out.append(trained_model(name, list(entry["configs"]), training_overrides, entry.get("checkpoint") or None,
                                 device, precision))
    return out


@dataclass
class ImageQuality:
    """Bundle run id ``run`` of ``evaluate.yaml`` (its ``image_quality`` component): ``$@image_quality.run()``.

    Args:
        models: ``{name: {"configs": [train.yaml, overlay ...], "checkpoint": optional, "precision": optional}}``,
            see :func:`build_models`.
        datalist: the prepared ``datalist.json``.
        output_dir: the evaluation folder; results go to ``<output_dir>/image_quality``.
        model_names: the entries of ``models`` to score, in this order; ``None``: all of them.
        features: the FID features (``evaluate.yaml``'s ``fid``); ``None``: the project's defaults.
        realism: KID, vesselness and two-sample settings (:class:`~.realism.RealismSettings` or its keys).
        training_overrides: overrides of the models' training configs (``work_dir``, ``image_size`` ...).
        test_key: the datalist list of test slices.
        train_key: the datalist list of real training slices (mean lung intensity, FID feature network).
        overwrite: replace an existing ``image_quality`` folder.
        seed: synthesis seed.
        batch_size: synthesis batch size.
        amp: mixed precision for the synthesis of ``float`` models.
        mean_lung_baseline: add the trivial mean-lung baseline.
        resampled_real_baseline: add the resolution reference ``resampled_real``.
        device: where networks run (``int8`` models: the CPU).
    """

    models: Mapping[str, Mapping[str, Any]]
    datalist: str | Path
    output_dir: str | Path
    model_names: Sequence[str] | None = None
    features: FIDFeatures | FeatureExtractor | None = None
    realism: RealismSettings | Mapping[str, Any] | None = None
    training_overrides: Mapping[str, Any] | None = None
    test_key: str = "test_synthesis"
    train_key: str = "training"
    overwrite: bool = False
    seed: int = 0
    batch_size: int = 8
    amp: bool = False
    mean_lung_baseline: bool = True
    resampled_real_baseline: bool = True
    device: str | torch.device = "cpu"

    def selected_models(self) -> dict[str, Mapping[str, Any]]:
        """The entries of ``models`` named by ``model_names`` (all of them when it is ``None``).

        Raises:
            InputError: a name that is not an entry of ``models``, or one named twice.
        """
        names = list(self.models) if self.model_names is None else [str(n) for n in self.model_names]
        unknown = [n for n in names if n not in self.models]
        if unknown:
            raise InputError(f"model_names: no entry {unknown} in models (entries: {', '.join(self.models)})")
        if len(set(names)) != len(names):
            raise InputError(f"model_names: a model is named twice in {names}")
        return {name: self.models[name] for name in names}

    def run(self) -> list[dict[str, Any]]:
        """Build the selected models from their training configs and score them (see the module docstring).

        Returns:
            The summary rows (``image_quality.csv``).

        Raises:
            InputError: bad input, naming the file (``evaluate.yaml`` reports it with one ``ERROR:`` line).
        """
        built = build_models(self.selected_models(), self.training_overrides, self.device)
        return evaluate_image_quality(
            built, self.datalist, self.output_dir, test_key=self.test_key, train_key=self.train_key,
            overwrite=self.overwrite, seed=self.seed, batch_size=self.batch_size, amp=self.amp,
            mean_lung_baseline=self.mean_lung_baseline, resampled_real_baseline=self.resampled_real_baseline,
            features=self.features, realism=self.realism, device=self.device,
        )
