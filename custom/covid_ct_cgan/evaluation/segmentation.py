"""Segmentation experiments (paper Tables III and IV): ``segmentation.yaml`` run id ``run``.

Does synthetic data help a lesion segmenter? A 2D MONAI ``UNet`` (DiceCE
loss) learns background / GGO / consolidation; it is trained from scratch for
every training mix and scored on the real ``test_segmentation`` slices.

Training mixes (the paper's: the segmentation training set is the real
``test_synthesis`` slices, N of them, plus synthetic slices generated from
*their* label maps; the paper's test set is a separate real set):

- **experiment A** (replace, total fixed at N): a fraction ``r`` of the real
  slices (``round(r * N)``, chosen by one seeded permutation, so a larger
  ratio replaces a superset) is replaced by the synthetic version of *the
  same slice* (variant 0: generated from that slice's own label map and
  composited into it). Same labels, same anatomy outside the lung: only the
  lung's appearance changes, which isolates how real the synthetic lung is.
- **experiment B** (add): all N real slices plus ``round(r * N)`` synthetic
  slices generated from *augmented* label maps (variants 1.., lesions moved,
  rotated and deformed inside the lung, see
  :class:`~covid_ct_cgan.inference.LesionAugmenter`), chosen by a seeded
  permutation. ``r`` up to ``synthetic_variants`` (``b_ratios``: B's own ratios, e.g. 1.0 and 2.0 with two
  augmented maps per slice; A cannot replace more than N).
- ``r = 0`` is the same run in both (real slices only); it is trained once.

Training seeds (``seeds``, default ``[seed]``): every run is trained once per seed, each a UNet of its
own (``set_determinism(seed)``: initial weights, batch order, augmentation). The choice of slices above,
the synthesis and the bootstrap stay seeded by ``seed``, so the runs of one seed differ from those of
another only by the training's randomness, and run X and ``real_only`` of the same seed form a pair
(:func:`covid_ct_cgan.evaluation.recipe.paired_difference`, :func:`.statistics.paired_bootstrap`).

Synthetic slices come from :func:`covid_ct_cgan.inference.run_synthesis` with
the generator of a training run (or from a given synthesis ``datalist.json``).

Scores (``SupervisedEvaluator`` on the test set at the end of training, via
``ValidationHandler``): the arg-max prediction and the label are turned into
three binary channels, GGO, consolidation and infection (their union, from the
same arg-max map), scored per slice with ``DiceMetric`` (slices without the
class are left out of its Dice) and ``ConfusionMatrixMetric`` (TP, FP, TN, FN
per slice; sensitivity and specificity pooled over the slices of a fold).
Intervals (:mod:`.statistics`): mean and 95% Student-t interval over 10
contiguous folds of the test set (datalist order: patient by patient), and a
patient-level bootstrap interval. With several seeds, ``summary.csv`` scores the
seeds' mean per slice (Dice averaged over the seeds, confusion counts summed), so
its intervals are over test slices; ``seeds.csv`` has each seed's own scores. With ``include_infection_free`` the test set
keeps slices without infection (if the data has any), so false positives are
measured (specificity, and the share of infection-free slices with any
predicted infection).

Outputs (``<output_dir>/results/``, built under a temporary name, replaced
only with ``overwrite``)::

    summary.csv        experiment x ratio x class x metric: fold mean and interval, bootstrap interval, provenance
    seeds.csv          run x seed x class x metric: the score of each seed's UNet on all test slices
    slices.csv         every test slice of every run and seed: Dice and TP/FP/TN/FN per class
    runs/<A_10>/seed_<s>/  one training run: unet.pt, MetricsSaver reports, slices.csv, training.json
    synthetic/         run_synthesis output used (when synthesised here)
    settings.json      the settings, the seeds done, and what a resumed run must match

Resume: the results are published after every seed. A later call with the same settings
(``settings.json``'s ``resume``: data, lists, experiments, ratios, synthetic source, ``seed`` and the
digest of the run config) and further seeds trains only the seeds not yet there; the earlier seeds'
folders are kept as they are (hard-linked into the new build, which then replaces the folder). Other
settings are refused unless ``overwrite`` (which starts again from nothing).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import os
import shutil
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ..data.prepare import check_prepared
from ..errors import InputError
from ..fileio import staged_directory, write_json, write_text
from ..labels import CONSOLIDATION, GGO
from ..settings import BundleCommand, load_config, using_command
from .image_quality import csv_text, load_datalist
from .provenance import data_description, provenance
from .statistics import fold_interval, interval_row, mean_score, patient_bootstrap, pooled_ratio

logger = logging.getLogger(__name__)

EXPERIMENTS: tuple[str, ...] = ("A", "B")
CLASSES: tuple[str, ...] = ("ggo", "consolidation", "infection")  # output channels of LesionChannelsd
COUNTS: tuple[str, ...] = ("tp", "fp", "tn", "fn")  # MONAI's confusion-matrix order
RESULTS = "results"
SLICE_COLUMNS: tuple[str, ...] = (
    "run", "experiment", "ratio", "seed", "name", "patient", "slice",
    *[f"{m}_{c}" for c in CLASSES for m in ("dice", *COUNTS)],
)
SUMMARY_COLUMNS: tuple[str, ...] = (
    "experiment", "ratio", "run", "class", "metric", "mean", "fold_low", "fold_high", "fold_half_width", "folds",
    "estimate", "boot_low", "boot_high", "patients", "boot_draws", "train_real", "train_synthetic", "test_slices",
    "seeds", "data", "image_size", "epochs", "seed", "commit", "generator",
)
SEED_COLUMNS: tuple[str, ...] = ("experiment", "ratio", "run", "seed", "class", "metric", "value", "test_slices")
# settings that only the summary uses (recomputed from every seed's slices on a resume) or that the
# runner sets per run: not part of what a resumed run must match
_RESUME_FREE_KEYS = frozenset({"seeds", "overwrite", "num_folds", "fold_method", "bootstrap_samples", "confidence",
                               "experiment", "ratio", "run_name", "run_dir", "train_seed"})


# --------------------------------------------------------------------------- transforms


def lesion_target(label: torch.Tensor) -> torch.Tensor:
    """Label map (0 outside lung, 1 lung, 2 GGO, 3 consolidation, 4 effusion) -> 0 background, 1 GGO, 2 consolidation.

    Effusion (4, with ``keep_effusion``) counts as consolidation, as in the default label maps.
    """
    lab = torch.as_tensor(label)
    out = torch.zeros_like(lab)
    out[lab == GGO] = 1
    out[lab >= CONSOLIDATION] = 2
    return out


def lesion_channels(classes: torch.Tensor) -> torch.Tensor:
    """Class map ``(1, H, W)`` (0 background, 1 GGO, 2 consolidation) -> binary ``(3, H, W)``: GGO, consolidation, infection."""
    c = torch.as_tensor(classes)[0]
    return torch.stack([c == 1, c == 2, c >= 1]).float()


class LesionTargetd(MapTransform):
    """Dictionary form of :func:`lesion_target` (the UNet's training target)."""

    def __init__(self, keys: KeysCollection = "label", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = lesion_target(d[key])
        return d


class LesionChannelsd(MapTransform):
    """Dictionary form of :func:`lesion_channels` (post-processing of arg-max predictions and labels)."""

    def __init__(self, keys: KeysCollection = ("pred", "label"), allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = lesion_channels(d[key])
        return d


# --------------------------------------------------------------------------- datalists


def _count(ratio: float, n: int) -> int:
    """``round(ratio * n)``, halves rounded up (0.5 -> 1), never banker's rounding."""
    return int(math.floor(float(ratio) * n + 0.5 + 1e-9))


def _key(path: Any) -> str:
    return str(Path(str(path)).expanduser().resolve())


def _item(it: Mapping[str, Any], source: Any, patient: Any, origin: str) -> dict[str, Any]:
    return {"image": it["image"], "label": it["label"], "scale": it.get("scale", "hu"), "patient": str(patient),
            "source": str(source), "origin": origin}


def experiment_datalist(
    real: Sequence[Mapping[str, Any]],
    synthetic: Sequence[Mapping[str, Any]],
    experiment: str,
    ratio: float,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The training items of one run.

    Args:
        real: the real training slices (``image``, ``label``, ``patient`` ...; absolute paths).
        synthetic: synthesis items (``image``, ``label``, ``source`` = the real image it came from,
            ``variant``: 0 for the slice's own label map, >= 1 augmented).
        experiment: ``"A"`` (replace a fraction of the real slices by their synthetic version) or
            ``"B"`` (add synthetic slices from augmented maps).
        ratio: the fraction, of the number of real slices.
        seed: seed of the choice.

    Returns:
        Items ``{image, label, scale, patient, source, origin}`` (the same keys for all, so they collate);
        ``origin`` is ``"real"`` or ``"synthetic"``, a synthetic slice carries its source's ``patient``.

    Raises:
        InputError: unknown experiment, negative ratio, or too few synthetic slices for it.
    """
    if experiment not in EXPERIMENTS:
        raise InputError(f"experiment must be one of {EXPERIMENTS}, got {experiment!r}")
    if not 0.0 <= float(ratio):
        raise InputError(f"ratio must be >= 0, got {ratio}")
    n = len(real)
    k = _count(ratio, n)
    out = [_item(it, it["image"], it.get("patient", ""), "real") for it in real]
    if k == 0:
        return out
    patient = {_key(it["image"]): it.get("patient", "") for it in real}
    rng = np.random.default_rng([int(seed), EXPERIMENTS.index(experiment)])
    if experiment == "A":
        if k > n:
            raise InputError(f"experiment A replaces at most all {n} real slices; ratio {ratio} asks for {k}")
        own = {_key(s["source"]): s for s in synthetic if int(s.get("variant", 0)) == 0}
        missing = [it["image"] for it in real if _key(it["image"]) not in own]
        if missing:
            raise InputError(f"experiment A needs the synthetic version (variant 0) of every real training slice; "
                             f"{len(missing)} have none, e.g. {missing[0]}")
        for i in rng.permutation(n)[:k]:
            src = _key(real[i]["image"])
            out[i] = _item(own[src], src, patient[src], "synthetic")
        return out
    pool = [s for s in synthetic if int(s.get("variant", 0)) >= 1 and _key(s["source"]) in patient]
    if k > len(pool):
        raise InputError(f"experiment B at ratio {ratio} adds {k} synthetic slices but only {len(pool)} augmented ones "
                         f"exist; raise synthetic_variants to at least {math.ceil(float(ratio))}")
    pool = sorted(pool, key=lambda s: (_key(s["source"]), int(s["variant"])))
    chosen = [pool[i] for i in rng.permutation(len(pool))[:k]]
    return out + [_item(s, _key(s["source"]), patient[_key(s["source"])], "synthetic") for s in chosen]


def load_synthetic(datalist: str | Path, key: str = "synthetic") -> list[dict[str, Any]]:
    """Items of a :func:`~covid_ct_cgan.inference.run_synthesis` ``datalist.json``, with absolute paths.

    Raises:
        InputError: missing file or list, or items without ``source``.
    """
    path = Path(datalist)
    items = load_datalist(path, key, "synthetic datalist not found (a run_synthesis output's datalist.json)",
                          allow_empty=True)
    for i, it in enumerate(items):
        if "source" not in it:
            raise InputError(f"item {i} has no 'source' (the real image it was generated from)", path)
    return items


def check_disjoint(datalist: str | Path, train_key: str, test_key: str) -> None:
    """Refuse a segmentation run whose training list shares a slice with its test list.

    ``split: predefined`` puts a dataset's own ``test/`` folder into both test lists, so
    ``train_key: test_synthesis`` would train the segmenter on the slices it is scored on.

    Raises:
        InputError: naming the keys, the number of shared slices and the first of them.
    """
    path = Path(datalist)

    def images(key: str) -> set[Path]:
        return {Path(it["image"]).resolve() for it in load_datalist(path, key, "datalist not found", allow_empty=True)}

    shared = sorted(images(train_key) & images(test_key))
    if shared:
        raise InputError(
            f"train_key '{train_key}' and test_key '{test_key}' share {len(shared)} slice(s) (first: {shared[0]}); "
            "the segmenter must not train on its test slices: with split: predefined use --train_key training",
            path,
        )


def test_datalist(datalist: str | Path, key: str = "test_segmentation", include_infection_free: bool = False) -> list[dict]:
    """The real test slices, in datalist order, each with ``name`` (its image path) for the reports.

    Args:
        datalist: the prepared ``datalist.json``.
        key: its list of test slices.
        include_infection_free: keep slices without infection (they measure false positives).

    Raises:
        InputError: missing datalist or list (or a list that cannot be read), or no slice left.
    """
    from monai.transforms import LoadImage

    path = Path(datalist)
    items = load_datalist(path, key, "datalist not found; prepare the data first or set data_dir", allow_empty=True)
    root = path.parent.resolve()
    out = []
    for it in items:
        if not include_infection_free:
            label = np.asarray(LoadImage(image_only=True)(it["label"]))
            if not (label >= GGO).any():
                continue
        name = Path(it["image"]).resolve()
        out.append(dict(it, name=str(name.relative_to(root)) if root in name.parents else str(name)))
    if not out:
        raise InputError(f"no test slices in list {key!r}", path)
    return out


# --------------------------------------------------------------------------- per-slice records


class SliceMetricsWriter:
    """After the test evaluation, write ``slices.csv``: per slice, Dice and TP/FP/TN/FN for each class.

    Reads the per-slice details that MONAI's metric handlers keep
    (``engine.state.metric_details``, ``save_details=True``) and the ``name``,
    ``patient`` and ``slice`` of each test item, in evaluation order.

    Args:
        output_dir: folder of ``slices.csv``.
        dice_metric: name of the Dice metric handler.
        confusion_metric: name of a confusion-matrix metric handler.
    """

    def __init__(self, output_dir: str | Path, dice_metric: str = "test_dice", confusion_metric: str = "test_sensitivity") -> None:
        self.output_dir = Path(output_dir)
        self.dice_metric, self.confusion_metric = dice_metric, confusion_metric
        self._items: list[dict[str, str]] = []

    def attach(self, engine: Engine) -> None:
        """Attach to an evaluator."""
        engine.add_event_handler(Events.STARTED, lambda _: self._items.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self)

    def _collect(self, engine: Engine) -> None:
        batch: Any = engine.state.batch  # the evaluator's batch: a list of items, or one
        items = batch if isinstance(batch, list) else [batch]
        for it in items:
            self._items.append({k: str(it.get(k, "")) for k in ("name", "patient", "slice")})

    def __call__(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", {})
        dice = np.asarray(torch.as_tensor(details[self.dice_metric]).cpu(), dtype=np.float64)
        counts = np.asarray(torch.as_tensor(details[self.confusion_metric]).cpu(), dtype=np.float64)
        if len(dice) != len(self._items) or len(counts) != len(self._items):
            raise RuntimeError(f"{len(self._items)} test items but {len(dice)} Dice and {len(counts)} confusion records")
        rows = []
        for i, item in enumerate(self._items):
            row: dict[str, Any] = dict(item)
            for c, name in enumerate(CLASSES):
                row[f"dice_{name}"] = float(dice[i, c])
                for j, count in enumerate(COUNTS):
                    row[f"{count}_{name}"] = int(counts[i, c, j])
            rows.append(row)
        write_text(csv_text(rows, [c for c in SLICE_COLUMNS if c not in ("run", "experiment", "ratio", "seed")]),
                   self.output_dir / "slices.csv", overwrite=True)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- statistics


def _column_values(rows: Sequence[Mapping[str, Any]], column: str) -> np.ndarray:
    """One CSV column of ``rows`` as floats (``nan`` for an empty or ``nan`` cell)."""
    return np.array([float(r[column]) if r[column] not in ("", "nan") else math.nan for r in rows], dtype=np.float64)


def _by_seed(run: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The rows of one run grouped by training seed (rows without a ``seed`` are one group), in first-seen order.

    Raises:
        InputError: the seeds were scored on different test slices (by ``name``, in order).
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r.get("seed", "")), []).append(r)
    order = [[str(r.get("name", i)) for i, r in enumerate(rs)] for rs in groups.values()]
    if any(o != order[0] for o in order):
        raise InputError(f"the seeds of run {run} were scored on different test slices")
    return groups


def _seed_mean(values: np.ndarray) -> np.ndarray:
    """Row means of a ``(slices, seeds)`` matrix, NaN cells left out; NaN where a row has none."""
    finite = np.isfinite(values)
    count = finite.sum(axis=1)
    total = np.where(finite, values, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), math.nan)


def summarise(
    rows: Sequence[Mapping[str, Any]],
    num_folds: int = 10,
    n_boot: int = 1000,
    confidence: float = 0.95,
    method: str = "t",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Fold and bootstrap intervals of Dice, sensitivity and specificity for every run and class.

    A run trained with several seeds is scored on its seeds' mean per slice: the slice's Dice averaged
    over the seeds, its confusion counts summed (so sensitivity and specificity pool the seeds' pixels),
    its false-positive flag averaged. With one seed this is that seed's scores.

    Args:
        rows: per-slice records (``slices.csv`` columns) of one or more runs and seeds, each run's seed in
            test-set order.
        num_folds: folds of the test set.
        n_boot: bootstrap draws.
        confidence: interval coverage.
        method: fold interval, ``"t"`` or ``"normal"``.
        seed: bootstrap seed.

    Returns:
        One row per run, class and metric (``dice``, ``sensitivity``, ``specificity``; with
        infection-free slices also ``fp_slice_rate`` for infection), values in percent; ``seeds``
        lists the training seeds (space-separated).

    Raises:
        InputError: the seeds of a run were scored on different test slices.
    """
    runs: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        runs.setdefault(str(r["run"]), []).append(r)
    out = []
    for run, rs in runs.items():
        groups = _by_seed(run, rs)
        first = next(iter(groups.values()))
        patients = [str(r["patient"]) for r in first]

        def matrix(column: str) -> np.ndarray:
            # called only inside this iteration of `run`, so the late-bound `groups` is this run's
            return np.stack([_column_values(g, column) for g in groups.values()], axis=1)  # noqa: B023 - (slices, seeds)

        for name in CLASSES:
            tp, fp, tn, fn = (matrix(f"{c}_{name}") for c in COUNTS)
            measures: list[tuple[str, np.ndarray, Any]] = [
                ("dice", _seed_mean(matrix(f"dice_{name}")), mean_score),
                ("sensitivity", np.stack([tp.sum(1), fn.sum(1)], 1), pooled_ratio),
                ("specificity", np.stack([tn.sum(1), fp.sum(1)], 1), pooled_ratio),
            ]
            free = (tp + fn).sum(1) == 0
            if name == "infection" and free.any():
                measures.append(("fp_slice_rate", np.where(free, (fp > 0).mean(1), math.nan), mean_score))
            for metric, values, score in measures:
                fold = fold_interval(values, score, num_folds, confidence, method)
                boot = patient_bootstrap(values, patients, score, n_boot, confidence, seed)
                scaled = {k: (v * 100.0 if k in ("mean", "fold_low", "fold_high", "fold_half_width", "estimate",
                                                    "boot_low", "boot_high") else v)
                          for k, v in interval_row(fold, boot).items()}
                out.append({"experiment": first[0]["experiment"], "ratio": first[0]["ratio"], "run": run, "class": name,
                            "metric": metric, **scaled, "test_slices": len(first), "seeds": " ".join(groups)})
    return out


def seed_scores(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each seed's own scores (``seeds.csv``): mean Dice, pooled sensitivity and specificity on all test slices.

    Args:
        rows: per-slice records (``slices.csv`` columns).

    Returns:
        One row per run, seed, class and metric (:data:`SEED_COLUMNS`), ``value`` in percent.
    """
    runs: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        runs.setdefault(str(r["run"]), []).append(r)
    out = []
    for run, rs in runs.items():
        for s, group in _by_seed(run, rs).items():
            for name in CLASSES:
                tp, fp, tn, fn = (_column_values(group, f"{c}_{name}") for c in COUNTS)
                for metric, value in (("dice", mean_score(_column_values(group, f"dice_{name}"))),
                                      ("sensitivity", pooled_ratio(np.stack([tp, fn], 1))),
                                      ("specificity", pooled_ratio(np.stack([tn, fp], 1)))):
                    out.append({"experiment": group[0]["experiment"], "ratio": group[0]["ratio"], "run": run, "seed": s,
                                "class": name, "metric": metric, "value": value * 100.0, "test_slices": len(group)})
    return out


# --------------------------------------------------------------------------- the runner


def run_names(
    experiments: Sequence[str], ratios: Sequence[float], b_ratios: Sequence[float] | None = None,
) -> list[tuple[str, str, float]]:
    """``(run name, experiment, ratio)`` of every run; ratio 0 is one shared run, ``real_only``.

    Args:
        experiments: any of ``"A"``, ``"B"``.
        ratios: the ratios of every experiment.
        b_ratios: experiment B's own ratios (B can add more than N slices, A cannot replace more); ``None``: ``ratios``.

    Raises:
        InputError: an unknown experiment or a negative ratio.
    """
    out: list[tuple[str, str, float]] = []
    for experiment in experiments:
        if experiment not in EXPERIMENTS:
            raise InputError(f"experiments must be among {EXPERIMENTS}, got {experiment!r}")
        for ratio in (b_ratios if experiment == "B" and b_ratios is not None else ratios):
            if float(ratio) < 0:
                raise InputError(f"ratios must be >= 0, got {ratio}")
            if float(ratio) == 0.0:
                if not any(name == "real_only" for name, _, _ in out):
                    out.append(("real_only", experiment, 0.0))
                continue
            out.append((f"{experiment}_{int(round(float(ratio) * 100)):02d}", experiment, float(ratio)))
    return out


def _synthesise_for_experiments(
    generator: Mapping[str, Any], datalist: Path, key: str, folder: Path, variants: int, seed: int, batch_size: int,
    device: str | torch.device,
) -> tuple[Path, str]:
    from .models import synthesise, trained_model

    model = trained_model("generator", generator["configs"], generator.get("overrides"), generator.get("checkpoint") or None,
                          device)
    synthesise(model, datalist, folder, key, 1 + int(variants), seed, batch_size)
    return folder / "datalist.json", f"{model.checkpoint} (epochs {model.epochs})"


def seed_list(seeds: Sequence[int] | int | None, seed: int = 0) -> list[int]:
    """The training seeds of every run: ``seeds``, or ``[seed]`` when it is empty or ``None``.

    Raises:
        InputError: a seed that is not a whole number >= 0, or one given twice.
    """
    if seeds is None or (isinstance(seeds, (list, tuple)) and not seeds):
        seeds = [seed]
    values = [seeds] if isinstance(seeds, (int, str)) else list(seeds)
    out = []
    for value in values:
        if isinstance(value, bool) or not str(value).strip().lstrip("+").isdigit():
            raise InputError(f"seeds must be whole numbers >= 0, got {value!r}")
        out.append(int(value))
    if len(set(out)) != len(out):
        raise InputError(f"seeds must differ from each other, got {out}")
    return out


def _config_digest(raw: Mapping[str, Any]) -> str:
    """Digest of the run config, the keys in ``_RESUME_FREE_KEYS`` left out."""
    kept = {k: v for k, v in raw.items() if k not in _RESUME_FREE_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _seeds_done(target: Path, resume: Mapping[str, Any]) -> list[int]:
    """The seeds already in ``target``, whose ``settings.json`` must hold the same ``resume`` settings.

    Raises:
        InputError: no such settings (results of an older version) or other settings, naming them.
    """
    try:
        settings = json.loads((target / "settings.json").read_text())
    except (OSError, ValueError):
        settings = {}
    stored = settings.get("resume") if isinstance(settings, dict) else None
    if not isinstance(stored, dict):
        raise InputError("already exists and is not empty (and holds no seeds to resume); "
                         "pass --overwrite True to replace it", target)
    differ = sorted(k for k in set(stored) | set(resume) if stored.get(k) != resume.get(k))
    if differ:
        raise InputError(f"already holds results made with other settings ({', '.join(differ)}); "
                         "pass --overwrite True to replace them", target)
    return [int(s) for s in settings.get("seeds", [])]


_REBUILT = ("summary.csv", "seeds.csv", "slices.csv", "settings.json")  # written anew from every seed's runs


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _keep_earlier_seeds(target: Path, stage: Path) -> None:
    """Hard-link (else copy) the published results into the new build; the top-level tables are rebuilt."""
    shutil.copytree(target, stage, dirs_exist_ok=True, copy_function=_link_or_copy,
                    ignore=lambda folder, names: [n for n in names if Path(folder) == target and n in _REBUILT])


def run_experiments(
    output_dir: str | Path,
    datalist: str | Path,
    experiments: Sequence[str] = EXPERIMENTS,
    ratios: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
    synthetic_datalist: str | Path = "",
    generator: Mapping[str, Any] | None = None,
    synthetic_variants: int = 1,
    train_key: str = "test_synthesis",
    test_key: str = "test_segmentation",
    include_infection_free: bool = False,
    num_folds: int = 10,
    n_boot: int = 1000,
    confidence: float = 0.95,
    fold_method: str = "t",
    seed: int = 0,
    overwrite: bool = False,
    synthesis_batch_size: int = 8,
    device: str | torch.device = "cpu",
    config: BundleCommand | Mapping[str, Any] | None = None,
    seeds: Sequence[int] | None = None,
    b_ratios: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """Run experiments A and B (see the module docstring). Bundle run id ``run`` of ``segmentation.yaml``.

    Every run re-reads the same config (``config``: the run's command, its files, overrides and
    ``--tracking``, or a raw config) with ``experiment``, ``ratio``, ``run_name``, ``run_dir``,
    ``train_seed`` and ``synthetic_datalist`` set, and executes its ``initialize`` and ``train_one`` ids
    (a ``SupervisedTrainer`` whose ``ValidationHandler`` scores the test set at the last epoch).
    Seeds are run one after the other, every run of a seed, and the results are published after each
    seed; seeds already in the results (same settings) are skipped (see the module docstring: Resume).

    Args:
        output_dir: results go to ``<output_dir>/results``.
        datalist: the prepared ``datalist.json``.
        experiments: any of ``"A"``, ``"B"``.
        ratios: fractions of the real training slices.
        synthetic_datalist: a synthesis ``datalist.json`` to use; empty: synthesise with ``generator``.
        generator: ``{"configs": [...], "overrides": {...}, "checkpoint": ...}`` of the trained generator.
        synthetic_variants: augmented variants per label map to synthesise (B needs ``max(ratios)``).
        train_key: datalist list of the real training slices.
        test_key: datalist list of the test slices.
        include_infection_free: keep test slices without infection (the config's test datalist must agree).
        num_folds: folds of the test set.
        n_boot: patient bootstrap draws.
        confidence: interval coverage.
        fold_method: ``"t"`` or ``"normal"``.
        seed: seed of the choices, the synthesis and the bootstrap.
        overwrite: replace existing results (every seed is trained again).
        synthesis_batch_size: generator batch size.
        device: where the generator runs.
        config: the run's command (``covid_ct_cgan.settings.current_command()`` in
            ``segmentation.yaml``) or a raw config (tests, the ablation runner).
        seeds: training seeds; every run is trained once per seed (``set_determinism``). ``None`` or
            empty: ``[seed]``.
        b_ratios: experiment B's ratios when they differ from A's (e.g. B at 1.0 and 2.0, with
            ``synthetic_variants`` 2); ``None``: ``ratios``.

    Returns:
        The summary rows (``summary.csv``; when every seed was there already, as read from it).

    Raises:
        InputError: bad input, naming the file (``segmentation.yaml`` reports it with one ``ERROR:`` line).
    """
    from monai.bundle import ConfigParser

    from ..engines.stages import run_ids  # the same run of ids as the training stages

    wanted = seed_list(seeds, seed)
    raw = load_config(config)  # read (and --tracking patched) once; each run works on a copy
    datalist, target = Path(datalist), Path(output_dir) / RESULTS
    plan = run_names(experiments, ratios, b_ratios)
    b_max = max((ratio for _, exp, ratio in plan if exp == "B"), default=0.0)
    if b_max > int(synthetic_variants) and not synthetic_datalist:
        raise InputError(f"experiment B up to ratio {b_max:g} needs synthetic_variants >= {math.ceil(b_max)}")
    resume = json.loads(json.dumps({
        "datalist": str(datalist.resolve()), "train_key": train_key, "test_key": test_key,
        "experiments": list(experiments), "ratios": [float(r) for r in ratios],
        "b_ratios": None if b_ratios is None else [float(r) for r in b_ratios],
        "include_infection_free": bool(include_infection_free), "synthetic_datalist": str(synthetic_datalist),
        "generator": dict(generator or {}), "synthetic_variants": int(synthetic_variants), "seed": int(seed),
        "config": _config_digest(raw),
    }, default=str))
    done: list[int] = []
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        done = _seeds_done(target, resume)
    todo = [s for s in wanted if s not in done]
    if not todo:
        print(f"segmentation: seeds {wanted} already in {target}, kept (--overwrite True trains them again)", flush=True)
        return read_csv(target / "summary.csv")
    check_prepared(datalist)  # before synthesis and the UNets: the slices they train and test on are as prepared
    test = test_datalist(datalist, test_key, include_infection_free)  # refuses a missing datalist
    check_disjoint(datalist, train_key, test_key)
    source = json.loads((target / "settings.json").read_text()).get("synthetic", "") if done else ""
    for train_seed in todo:
        with staged_directory(target, overwrite=overwrite or bool(done)) as stage:
            if done:
                _keep_earlier_seeds(target, stage)
            if synthetic_datalist:
                synthetic_path, source = Path(synthetic_datalist), f"given: {synthetic_datalist}"
                load_synthetic(synthetic_path)
            elif not any(ratio > 0 for _, _, ratio in plan):
                synthetic_path, source = Path(""), "none (real slices only)"
            elif (stage / "synthetic" / "datalist.json").is_file():  # synthesised for an earlier seed
                synthetic_path = stage / "synthetic" / "datalist.json"
            else:
                if not generator or not generator.get("configs"):
                    raise InputError("set synthetic_datalist or generator (the training configs of the GAN)")
                synthetic_path, source = _synthesise_for_experiments(
                    generator, datalist, train_key, stage / "synthetic", synthetic_variants, seed, synthesis_batch_size,
                    device,
                )
            for name, experiment, ratio in plan:
                logger.info(f"==== segmentation run {name}, seed {train_seed}: experiment {experiment}, "
                            f"ratio {ratio} ====")
                run_dir = stage / "runs" / name / f"seed_{train_seed}"
                parser = ConfigParser(copy.deepcopy(raw))
                parser["experiment"], parser["ratio"], parser["run_name"] = experiment, float(ratio), name
                parser["run_dir"], parser["train_seed"] = str(run_dir), int(train_seed)
                parser["synthetic_datalist"] = str(synthetic_path) if str(synthetic_path) not in ("", ".") else ""
                parser.parse(reset=True)
                train_items = parser.get_parsed_content("train#datalist")
                n_syn = sum(it.get("origin") == "synthetic" for it in train_items)
                with using_command(BundleCommand(base=raw)):  # the run's `initialize` checks this config
                    run_ids(parser, ("initialize", "train_one"))
                write_json({"experiment": experiment, "ratio": ratio, "seed": train_seed,
                            "train_real": len(train_items) - n_syn, "train_synthetic": n_syn,
                            "train_items": [{k: str(v).replace(str(stage), str(target)) for k, v in it.items()}
                                            for it in train_items]},
                           run_dir / "training.json", overwrite=True)
            done.append(train_seed)
            rows_out, _, sizes = _tables(stage, plan, experiments, done, datalist, f"{train_key} -> {test_key}", test,
                                         raw, seed, source, (num_folds, n_boot, confidence, fold_method))
            write_json({"datalist": str(datalist), "train_key": train_key, "test_key": test_key,
                        "experiments": list(experiments), "ratios": [float(r) for r in ratios],
                        "b_ratios": None if b_ratios is None else [float(r) for r in b_ratios], "synthetic": source,
                        "num_folds": num_folds, "n_boot": n_boot, "confidence": confidence, "fold_method": fold_method,
                        "seed": seed, "seeds": done, "resume": resume,
                        "runs": {n: {"train_real": a, "train_synthetic": b} for n, (a, b) in sizes.items()}},
                       stage / "settings.json")
    print(f"segmentation: {len(plan)} runs x seeds {done}, summary in {target / 'summary.csv'}", flush=True)
    return rows_out


def _tables(
    stage: Path, plan: Sequence[tuple[str, str, float]], experiments: Sequence[str], seeds: Sequence[int],
    datalist: Path, split: str, test: Sequence[Mapping[str, Any]], raw: Mapping[str, Any], seed: int, source: str,
    statistics: tuple[int, int, float, str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, tuple[int, int]]]:
    """Write ``summary.csv``, ``seeds.csv`` and ``slices.csv`` of every run and seed in ``stage``.

    Returns:
        The summary rows, the slice rows and each run's ``(real, synthetic)`` training slices.
    """
    from monai.bundle import ConfigParser

    num_folds, n_boot, confidence, fold_method = statistics
    all_rows: list[dict[str, Any]] = []
    sizes: dict[str, tuple[int, int]] = {}
    for name, experiment, ratio in plan:
        label = "+".join(experiments) if name == "real_only" else experiment
        for train_seed in seeds:
            run_dir = stage / "runs" / name / f"seed_{train_seed}"
            info = json.loads((run_dir / "training.json").read_text())
            sizes[name] = (int(info["train_real"]), int(info["train_synthetic"]))  # the same for every seed
            for slice_row in read_csv(run_dir / "slices.csv"):
                all_rows.append({"run": name, "experiment": label, "ratio": ratio, **slice_row, "seed": train_seed})
    prov_parser = ConfigParser(copy.deepcopy(dict(raw)))
    prov_parser.parse(reset=True)
    prov = provenance(data_description(datalist.parent, split, test), prov_parser.get_parsed_content("image_size"),
                      prov_parser.get_parsed_content("epochs"), seed)
    rows_out = []
    row: dict[str, Any]
    for row in summarise(all_rows, num_folds, n_boot, confidence, fold_method, seed):
        real_n, syn_n = sizes[row["run"]]
        row = {**row, "train_real": real_n, "train_synthetic": syn_n, **prov, "generator": source}
        # ratio 0 (real slices only) is one run shared by the experiments: list it under each
        shared = row["run"] == "real_only"
        rows_out += [dict(row, experiment=e) for e in experiments] if shared else [row]
    write_text(csv_text(rows_out, SUMMARY_COLUMNS), stage / "summary.csv")
    write_text(csv_text(seed_scores(all_rows), SEED_COLUMNS), stage / "seeds.csv")
    write_text(csv_text(all_rows, SLICE_COLUMNS), stage / "slices.csv")
    return rows_out, all_rows, sizes
