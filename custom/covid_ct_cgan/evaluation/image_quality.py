"""Image quality of synthesised slices (paper Table II): ``evaluate.yaml`` run id ``run``.

For every model (ours and the baselines, each rebuilt from its training
config, see :mod:`.models`), every ``test_synthesis`` label map is turned into
a slice by :func:`covid_ct_cgan.inference.run_synthesis` (the input's own
map, no augmentation) and composited into the real slice. Beside the models,
the trivial baseline ``mean_lung`` fills the lung with the mean lung
intensity of the real *training* slices. Every result is compared with the
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

Outputs (``<output_dir>/image_quality/``, built under a temporary name and
moved into place; replaced only with ``overwrite``)::

    image_quality.csv     model x region: PSNR, SSIM, RMSE (model scale and HU), FID, provenance
    per_image.csv         every slice, model and region
    synthesis/<model>/    run_synthesis output of each model; mean_lung/images/ for the baseline
    settings.json         data, feature network, mean lung intensity, models and their checkpoints
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
from tqdm import tqdm

from .. import intensity
from ..errors import InputError, exit_on_input_error
from ..fileio import staged_directory, write_json, write_text
from ..inference import ModelGrid, SynthesisInput, load_input, write_like
from ..labels import lung_region
from . import image_metrics
from .fid_features import FeatureExtractor, fid, inception_extractor, mask_outside_lung, train_feature_network
from .models import TrainedModel, synthesise, trained_model
from .provenance import data_description, provenance

logger = logging.getLogger(__name__)

FOLDER = "image_quality"
SUMMARY = "image_quality.csv"
PER_IMAGE = "per_image.csv"
MEAN_LUNG = "mean_lung"
SUMMARY_COLUMNS: tuple[str, ...] = (
    "model", "region", "images", "psnr", "psnr_sd", "ssim", "ssim_sd", "rmse", "rmse_sd", "rmse_hu", "fid",
    "data", "image_size", "epochs", "seed", "commit", "checkpoint", "feature_net",
)
PER_IMAGE_COLUMNS: tuple[str, ...] = (
    "model", "region", "image", "label", "patient", "slice", "z", "generated", "psnr", "ssim", "rmse", "rmse_hu",
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


@dataclass
class _Scores:
    """One model's per-slice metrics and its composites' FID features."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    grids: dict[str, list[torch.Tensor]] = field(default_factory=lambda: {r: [] for r in image_metrics.REGIONS})


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
    """Every lung slice of the datalist items, on the model scale [-1, 1]."""
    out = []
    for it in tqdm(items, desc="reading real slices", unit="item", disable=None, leave=False):
        loaded = load_input(SynthesisInput(Path(it["image"]).name, Path(it["image"]), Path(it["label"]), it.get("scale")))
        for z in loaded.lung_slices():
            out.append(_Slice(
                str(it["image"]), str(it["label"]), str(it.get("patient", "")), str(it.get("slice", z)), z,
                np.asarray(intensity.to_model(loaded.image[:, :, z], loaded.scale, window_level, window_width)),
                loaded.label[:, :, z], loaded.scale,
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


def _score_slice(scores: _Scores, model: str, s: _Slice, generated: np.ndarray, generated_path: str,
                 extractor: FeatureExtractor, window_width: float) -> None:
    lung = lung_region(s.label)
    metrics = image_metrics.slice_metrics(generated, s.real, lung, window_width if s.scale == "hu" else None)
    for region, values in metrics.items():
        scores.rows.append({"model": model, "region": region, "image": s.image, "label": s.label_path,
                            "patient": s.patient, "slice": s.slice, "z": s.z, "generated": generated_path, **values})
    scores.grids["complemented"].append(_grid(generated, s.label, extractor.image_size))
    scores.grids["lung_only"].append(_grid(mask_outside_lung(generated, s.label), s.label, extractor.image_size))


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


def _summary_rows(name: str, scores: _Scores, real_grids: dict[str, list[torch.Tensor]], extractor: FeatureExtractor,
                  prov: dict[str, str], checkpoint: str) -> list[dict[str, Any]]:
    out = []
    for region in image_metrics.REGIONS:
        rows = [r for r in scores.rows if r["region"] == region]
        fid_value = fid(extractor(torch.stack(scores.grids[region])), extractor(torch.stack(real_grids[region])))
        row: dict[str, Any] = {"model": name, "region": region, "images": len(rows), "fid": fid_value}
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
    feature_extractor: FeatureExtractor | None = None,
    fid_network: torch.nn.Module | None = None,
    fid_image_size: int = 128,
    fid_epochs: int = 20,
    fid_batch_size: int = 8,
    fid_learning_rate: float = 1e-3,
    fid_cache_dir: str | Path | None = None,
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
        amp: mixed precision for synthesis.
        mean_lung_baseline: add the trivial mean-lung baseline.
        feature_extractor: FID features to use (e.g. Inception); default: the project's feature network.
        fid_network: the project's feature network before training (default: a small DenseNet).
        fid_image_size: its square input size.
        fid_epochs: its training epochs.
        fid_batch_size: its batch size.
        fid_learning_rate: its learning rate.
        fid_cache_dir: where trained feature networks are cached; default ``<output_dir>/fid_features``.
        device: where networks run.

    Returns:
        The summary rows (``image_quality.csv``).

    Raises:
        InputError: missing data or checkpoints, an existing output without ``overwrite``.
    """
    datalist = Path(datalist)
    output_dir = Path(output_dir)
    target = output_dir / FOLDER
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise InputError("already exists and is not empty; pass overwrite=true to replace it", target)
    names = [m.name for m in models] + ([MEAN_LUNG] if mean_lung_baseline else [])
    if len(set(names)) != len(names):
        raise InputError(f"model names must be unique, got {names}")
    if not models and not mean_lung_baseline:
        raise InputError("no model to evaluate")
    test_items = load_datalist(datalist, test_key)
    train_items = load_datalist(datalist, train_key)
    level, width = (models[0].settings["window_level"], models[0].settings["window_width"]) if models else (-600.0, 1500.0)
    slices = real_slices(test_items, level, width)
    if feature_extractor is None:
        feature_extractor = train_feature_network(
            train_items, fid_cache_dir or output_dir / "fid_features", fid_network, fid_image_size, fid_epochs,
            fid_batch_size, fid_learning_rate, seed, level, width, device,
        )
    real_grids = {
        "complemented": [_grid(s.real, s.label, feature_extractor.image_size) for s in slices],
        "lung_only": [_grid(mask_outside_lung(s.real, s.label), s.label, feature_extractor.image_size) for s in slices],
    }
    data = data_description(datalist.parent, test_key, test_items)
    summary: list[dict[str, Any]] = []
    per_image: list[dict[str, Any]] = []
    settings: dict[str, Any] = {"datalist": str(datalist), "test_key": test_key, "train_key": train_key,
                                "feature_net": feature_extractor.description, "models": {}}
    with staged_directory(target, overwrite=overwrite) as stage:
        for model in models:
            logger.info(f"image quality: model {model.name}")
            folder = stage / "synthesis" / model.name
            rows = synthesise(model, datalist, folder, test_key, 1, seed, batch_size, amp)
            generated = _generated_slices(rows, folder, slices)
            scores = _Scores()
            for s in slices:
                if (s.image, s.z) not in generated:
                    raise InputError(f"synthesis of model {model.name!r} produced no slice for {s.image} (z {s.z})")
                image, rel = generated[(s.image, s.z)]
                gen = np.asarray(intensity.to_model(image, s.scale, level, width))
                _score_slice(scores, model.name, s, gen, str(Path("synthesis") / rel), feature_extractor, width)
            prov = provenance(data, model.settings["image_size"], model.epochs, model.seed)
            summary += _summary_rows(model.name, scores, real_grids, feature_extractor, prov, str(model.checkpoint))
            per_image += scores.rows
            settings["models"][model.name] = {"checkpoint": str(model.checkpoint), "configs": model.configs,
                                              "epochs": model.epochs, **model.settings}
        if mean_lung_baseline:
            fill = mean_lung_intensity(train_items, level, width)
            settings["mean_lung_intensity"] = {"model_scale": fill,
                                               "hu": float(intensity.from_model(np.float32(fill), "hu", level, width))}
            scores = _Scores()
            for it in test_items:
                loaded = load_input(SynthesisInput(Path(it["image"]).name, Path(it["image"]), Path(it["label"]), it.get("scale")))
                composite = loaded.image.copy()
                name = Path(it["image"]).name.split(".")[0]
                rel = Path("synthesis") / MEAN_LUNG / "images" / f"{name}_v0.nii.gz"
                for s in (s for s in slices if s.image == str(it["image"])):
                    gen = np.where(lung_region(s.label), np.float32(fill), s.real).astype(np.float32)
                    composite[:, :, s.z] = intensity.from_model(gen, s.scale, level, width)
                    _score_slice(scores, MEAN_LUNG, s, gen, str(rel), feature_extractor, width)
                write_like(composite, loaded.geometry, stage / rel)
            prov = provenance(data, "slice size", "none (training-set mean)", seed)
            summary += _summary_rows(MEAN_LUNG, scores, real_grids, feature_extractor, prov, "")
            per_image += scores.rows
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
    """``{name: {"configs": [train.yaml, overlay ...], "checkpoint": optional}}`` -> generators to evaluate.

    Raises:
        InputError: an entry without ``configs``, or a config that cannot build its generator.
    """
    out = []
    for name, entry in models.items():
        if not isinstance(entry, Mapping) or not entry.get("configs"):
            raise InputError(f"model {name!r} needs 'configs': the training config files (train.yaml first)")
        out.append(trained_model(name, list(entry["configs"]), training_overrides, entry.get("checkpoint") or None, device))
    return out


@exit_on_input_error
def run_image_quality(
    models: Mapping[str, Mapping[str, Any]],
    datalist: str | Path,
    output_dir: str | Path,
    training_overrides: Mapping[str, Any] | None = None,
    inception_weights: str | Path = "",
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Bundle run id ``run`` of ``evaluate.yaml``: build the models from their training configs and score them.

    Args:
        models: ``{name: {"configs": [...], "checkpoint": ...}}``, see :func:`build_models`.
        datalist: the prepared ``datalist.json``.
        output_dir: the evaluation folder.
        training_overrides: overrides of the training runs (``work_dir``, ``image_size`` ...).
        inception_weights: a local Inception-v3 weights file for the FID; empty: the project's feature network.
        device: where networks run.
        kwargs: the other arguments of :func:`evaluate_image_quality`.

    Returns:
        The summary rows.

    Raises:
        SystemExit: status 2 with one ``ERROR:`` line on bad input.
    """
    built = build_models(models, training_overrides, device)
    extractor = inception_extractor(inception_weights, device) if inception_weights else None
    return evaluate_image_quality(built, datalist, output_dir, feature_extractor=extractor, device=device, **kwargs)
