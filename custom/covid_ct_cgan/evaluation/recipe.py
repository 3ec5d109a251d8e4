"""The real-data recipe (``medseg.yaml``, run id ``recipe``): one command from raw slices to one report.

Runs, each as its own bundle run with the recipe's settings (and skipped when its results exist, so a
stopped recipe continues where it stopped):

1. the map-only generator (``train.yaml`` + the recipe overlay, run id ``training``);
2. the lesion-inpainting generator (the same + ``lesion_inpainting.yaml``);
3. image quality and realism of both on the test slices (``evaluate.yaml``, run id ``run``);
4. segmentation: real slices only, experiment A (``ratio`` replaced) and B (``ratio`` added) with the
   map-only generator (``segmentation.yaml``), each trained once per seed of the segmentation's ``seeds``;
   with ``b_choices`` (e.g. ``[1.0, 2.0]``), B's ratio is first chosen among ``ratio`` and those on the
   *validation* slices (:func:`choose_b_ratio`; step ``segmentation_b_choice``, never the test slices), with
   ``synthetic_variants`` raised to the largest ratio (several augmented maps per slice);
5. segmentation: experiment B with the lesion-inpainting generator (the same seeds);
6. ``evaluate.yaml``'s report (Tables II-IV);
7. the recipe's report (``<work_dir>/report``): the segmentation table, every seed's scores, the paired
   differences against the real-only UNet of the same seed on the same test slice (infection, GGO,
   consolidation; two-level bootstrap over patients and seeds), the published results on the same test slices, the realism table, the
   discriminator signal of lesion inpainting, the targets and the time of every step.

Every step's time is kept in ``<work_dir>/recipe_timings.json`` as it finishes. A segmentation step whose
results hold fewer seeds than asked for runs again and trains only the missing seeds
(:func:`.segmentation.run_experiments`); its time is added to the recorded one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import InputError
from ..fileio import staged_directory, write_json, write_text
from ..figures import pyplot, write_figure
from ..settings import BundleCommand, check_overrides, run_bundle
from .provenance import code_version
from .image_quality import RESAMPLED_REAL, csv_text
from .report import as_number, format_number, markdown_table
from .segmentation import read_csv, seed_list, seed_scores
from .statistics import paired_bootstrap

logger = logging.getLogger(__name__)

__all__ = ["PUBLISHED_INFECTION", "PUBLISHED_CLASSES", "run_recipe", "paired_difference", "choose_b_ratio",
           "write_recipe_report"]

# Mean Dice on the 48 COVID-SemiSeg test slices, Inf-Net repository (EvaluateResults/), binary infection
PUBLISHED_INFECTION: tuple[tuple[str, float], ...] = (
    ("U-Net", 43.9), ("U-Net++", 58.1), ("Inf-Net", 68.2), ("Semi-Inf-Net", 73.9),
)
# per class, Semi-Inf-Net + multi-class U-Net (the same repository)
PUBLISHED_CLASSES: dict[str, float] = {"ggo": 62.4, "consolidation": 36.2}
# realism targets inside each model's region: (model, label, vesselness ratio range, most two-sample accuracy)
REALISM_TARGETS = (
    ("lesion_inpainting", "lesion inpainting", (0.85, 1.15), 0.62),
    ("ours", "map-only", (0.8, math.inf), 0.70),
)
GRID_TARGETS = {"lesion_inpainting": 2.0}  # model -> the largest grid peak that counts as no visible grid
# (real CT slices score about 1; a grid one sees in the model grid scores tens: bundle/docs/experiments.md)
CHANCE_D_LOSS = 0.25  # least-squares D loss of a discriminator that outputs 0.5 for everything (per scale)
TIME_BUDGET_S = 2 * 3600.0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    """CPU model, cores, torch threads, native bf16 and the GPU (if any) of this run."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    kind = "AMX + AVX512-BF16" if "amx_bf16" in flags else ("AVX512" if "avx512f" in flags else "AVX2")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{_cpu_name()} ({kind}), {os.cpu_count()} logical CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, {gpu}"


# --------------------------------------------------------------------------- the runner


def _timings_path(work_dir: Path) -> Path:
    return work_dir / "recipe_timings.json"


def _read_timings(work_dir: Path) -> dict[str, float]:
    path = _timings_path(work_dir)
    return json.loads(path.read_text()) if path.is_file() else {}


def _check_step_overrides(
    steps: Mapping[str, tuple[Sequence[str], Mapping[str, Any]]], models: Sequence[str], evaluate_yaml: str
) -> None:
    """Check before the first step what the later steps hand their configs (each step checks them again).

    Args:
        steps: recipe key -> (the config files of the step it feeds, the overrides it gives them).
        models: the evaluation's ``model_names``: entries of ``evaluate.yaml``'s ``models``.
        evaluate_yaml: the evaluation config.

    Raises:
        InputError: naming the recipe key: an override that is not a key of its step's config, or a model
            that ``evaluate.yaml`` does not define.
    """
    from monai.bundle import ConfigParser

    for key, (files, overrides) in steps.items():
        config = ConfigParser.load_config_files(list(files))
        try:
            check_overrides(config, overrides)
        except InputError as err:
            raise InputError(f"{err} (a key of {Path(files[-1]).name})", key) from None
    defined = ConfigParser.load_config_files(evaluate_yaml).get("models", {})
    unknown = [m for m in models if m not in defined]
    if unknown:
        raise InputError(f"no entry {unknown} in evaluate.yaml's models (entries: {', '.join(defined)})", "recipe_models")


_Step = tuple[str, str, Callable[[], bool], Callable[[], None]]  # (timings key, description, done before?, run)


class _Recipe:
    """The recipe's settings, read from its bundle command and ``recipe_args``, and its steps (see run_recipe).

    Reading them checks, before the first step, the keys the later steps hand their configs.
    """

    def __init__(self, command: BundleCommand, args: Mapping[str, Any]) -> None:
        self.args = args
        self.files = files = [str(f) for f in command.config_files]
        self.configs_dir = configs_dir = Path(files[0]).parent
        self.overrides = {k: v for k, v in command.overrides.items()}
        self.work_dir, self.data_dir = work_dir, data_dir = Path(args["work_dir"]), Path(args["data_dir"])
        self.output_dir = Path(args["output_dir"])
        self.seed, self.overwrite = seed, overwrite = int(args.get("seed", 0)), bool(args.get("overwrite", False))
        self.ratio = float(args["ratio"])
        self.segmentation = dict(args.get("segmentation") or {})
        self.evaluation = dict(args.get("evaluation") or {})
        self.inpainting_dir = work_dir / "output_lesion_inpainting"
        self.evaluation_dir = work_dir / "evaluation"
        self.common = {"work_dir": str(work_dir), "data_dir": str(data_dir), "seed": seed, "overwrite": overwrite}
        self.evaluate_yaml, self.segmentation_yaml = str(configs_dir / "evaluate.yaml"), str(configs_dir / "segmentation.yaml")
        self.inpainting_files = [*files, str(configs_dir / "lesion_inpainting.yaml")]
        self.inpainting_overrides = {k: v for k, v in self.overrides.items() if k not in ("output_dir", "experiment_name")}
        self.inpainting_overrides.update(dict(args.get("lesion_inpainting") or {}))
        _check_step_overrides({  # a later step's bad key would stop the recipe hours in, after the generators trained
            "recipe_evaluation": ([self.evaluate_yaml], self.evaluation),
            "recipe_segmentation": ([self.segmentation_yaml], self.segmentation),
            "recipe_lesion_inpainting": (self.inpainting_files, dict(args.get("lesion_inpainting") or {})),
        }, list(args["models"]), self.evaluate_yaml)
        self.wanted_seeds = seed_list(self.segmentation.get("seeds"), seed)
        self.choices = [float(r) for r in args.get("b_choices") or []]
        self.tried = list(dict.fromkeys([self.ratio, *self.choices]))
        self.choice_dir = work_dir / CHOICE_FOLDER

    # ---- when a step counts as done before

    def done(self, path: Path) -> Callable[[], bool]:
        return lambda: path.is_file() and not self.overwrite

    def seeds_done(self, results: Path, run: Callable[[], str]) -> Callable[[], bool]:  # every seed asked for, B's run there
        def finished() -> bool:
            try:
                settings = json.loads((results / "settings.json").read_text())
            except (OSError, ValueError):
                return False
            present = {int(s) for s in settings.get("seeds", [])}
            return (self.done(results / "summary.csv")() and set(self.wanted_seeds) <= present
                    and run() in settings.get("runs", {}))
        return finished

    def newer(self, path: Path, source: Path) -> Callable[[], bool]:  # done, and made after its input (seeds added since)
        return lambda: self.done(path)() and (not source.is_file() or path.stat().st_mtime_ns >= source.stat().st_mtime_ns)

    # ---- experiment B's ratio

    def b_ratio(self) -> float:  # B's ratio in steps 4-5: read when they start, after the choice step
        return choose_b_ratio(self.choice_dir / "results", self.seed)[0] if self.choices else self.ratio

    def b_run(self) -> str:
        return f"B_{int(round(self.b_ratio() * 100)):02d}"

    def for_b(self, b: float, **extra: Any) -> dict[str, Any]:  # segmentation overrides with enough augmented maps for B
        variants = max(int(self.segmentation.get("synthetic_variants", 1)), math.ceil(b))
        return {**self.segmentation, "synthetic_variants": variants, **extra}

    # ---- the steps

    def steps(self) -> list[_Step]:
        """The steps in order; the B-ratio choice only with ``b_choices``."""
        tried, work_dir = self.tried, self.work_dir
        choice: list[_Step] = [(
            "segmentation_b_choice", f"segmentation on the validation slices: B at {', '.join(f'{r:g}' for r in tried)} "
            "(map-only generator), to choose B's ratio",
            self.seeds_done(self.choice_dir / "results", lambda: f"B_{int(round(max(tried) * 100)):02d}"),
            self.segment_b_choice)] if self.choices else []
        return [
            ("generator_map", "the map-only generator (three stages)", lambda: False, self.train_map_generator),
            ("generator_lesion_inpainting", "the lesion-inpainting generator (three stages)", lambda: False,
             self.train_inpainting_generator),
            ("image_quality", "image quality and realism on the test slices",
             self.done(self.evaluation_dir / "image_quality" / "image_quality.csv"), self.score_images),
            *choice,
            ("segmentation_map", f"segmentation: real only, A at {self.ratio:g} and B (map-only generator)",
             self.seeds_done(work_dir / "segmentation" / "results", self.b_run), self.segment_map),
            ("segmentation_lesion_inpainting", "segmentation: B (lesion-inpainting generator)",
             self.seeds_done(work_dir / "segmentation_lesion_inpainting" / "results", self.b_run),
             self.segment_inpainting),
            ("evaluation_report", "evaluate.yaml's report (Tables II-IV)",
             self.newer(self.evaluation_dir / "report" / "report.md", work_dir / "segmentation" / "results" / "summary.csv"),
             self.report_evaluation),
        ]

    def train_map_generator(self) -> None:
        run_bundle("training", config_file=self.files, **self.overrides)

    def train_inpainting_generator(self) -> None:
        run_bundle("training", config_file=self.inpainting_files, **self.inpainting_overrides)

    def score_images(self) -> None:
        run_bundle("run", config_file=self.evaluate_yaml, checkpoint_dir=str(self.output_dir),
                   model_names=list(self.args["models"]), **self.evaluation, **self.common)

    def segment_b_choice(self) -> None:
        run_bundle("run", config_file=self.segmentation_yaml, checkpoint_dir=str(self.output_dir),
                   output_dir=str(self.choice_dir), experiments=["B"], ratios=[0.0, *self.tried],
                   **self.for_b(max(self.tried), test_key="validation"), **self.common)

    def segment_map(self) -> None:
        b = self.b_ratio()
        extra = {"b_ratios": [0.0, b]} if self.choices else {}
        run_bundle("run", config_file=self.segmentation_yaml, checkpoint_dir=str(self.output_dir),
                   output_dir=str(self.work_dir / "segmentation"), experiments=["A", "B"], ratios=[0.0, self.ratio],
                   **self.for_b(b, **extra), **self.common)

    def segment_inpainting(self) -> None:
        run_bundle("run", config_file=self.segmentation_yaml, checkpoint_dir=str(self.inpainting_dir),
                   generator_configs=[self.files[0], str(self.configs_dir / "lesion_inpainting.yaml")],
                   output_dir=str(self.work_dir / "segmentation_lesion_inpainting"), experiments=["B"],
                   ratios=[self.b_ratio()], **self.for_b(self.b_ratio()), **self.common)

    def report_evaluation(self) -> None:
        run_bundle("report", config_file=self.evaluate_yaml,
                   segmentation_output_dir=str(self.work_dir / "segmentation"), **self.common)


def _run_steps(steps: Sequence[_Step], work_dir: Path, overwrite: bool) -> None:
    """Run each step not done before, in order; its time goes to ``recipe_timings.json`` as it finishes."""
    timings = _read_timings(work_dir)
    for number, (name, description, finished, run) in enumerate(steps, 1):
        if finished():
            logger.info(f"==== recipe step {number}/{len(steps) + 1}: {description}: done before, kept ====")
            continue
        logger.info(f"==== recipe step {number}/{len(steps) + 1}: {description} ====")
        start = time.perf_counter()
        run()
        if name.startswith(("generator", "segmentation")) and name in timings and overwrite is False:
            # a resumed (or already finished) generator, or a segmentation given more seeds, adds its new time
            timings[name] = timings[name] + (time.perf_counter() - start)
        else:
            timings[name] = time.perf_counter() - start
        write_json(timings, _timings_path(work_dir), overwrite=True)


def run_recipe(command: BundleCommand | None, args: Mapping[str, Any]) -> Path:
    """Run the recipe's steps (see the module docstring) and write its report.

    Args:
        command: the recipe's own bundle command (``covid_ct_cgan.settings.current_command()``): its
            config files (``train.yaml`` first, then ``medseg.yaml``) and overrides are those of both
            generators' training.
        args: ``work_dir``, ``data_dir``, ``output_dir`` (the map-only generator's), ``models``
            (``evaluate.yaml`` entries to score), ``segmentation`` (overrides of ``segmentation.yaml``),
            ``evaluation`` (other overrides of ``evaluate.yaml``), ``lesion_inpainting`` (overrides of the
            lesion-inpainting generator's training only), ``ratio``, ``b_choices`` (further B ratios to
            choose from on the validation slices; empty: B at ``ratio``), ``seed``, ``overwrite``.

    Returns:
        The report folder.

    Raises:
        InputError: bad input (``medseg.yaml`` reports it with one ``ERROR:`` line, exit status 2).
        SystemExit: a step's bundle run ended with its own ``ERROR:`` line and status.
    """
    if command is None or not command.config_files:
        raise InputError("the recipe runs as a bundle command: python -m monai.bundle run recipe --config_file "
                         "\"['bundle/configs/train.yaml','bundle/configs/medseg.yaml']\" ...")
    recipe = _Recipe(command, args)
    steps = recipe.steps()
    _run_steps(steps, recipe.work_dir, recipe.overwrite)
    logger.info(f"==== recipe step {len(steps) + 1}/{len(steps) + 1}: the report ====")
    report_dir = write_recipe_report(recipe.work_dir, recipe.inpainting_dir, recipe.ratio, recipe.seed, overwrite=True,
                                     configs=recipe.files, overrides=recipe.overrides, b_ratio=recipe.b_ratio())
    print(f"recipe: report in {report_dir / 'report.md'}", flush=True)
    return report_dir


# --------------------------------------------------------------------------- statistics


def paired_difference(base: Sequence[Mapping[str, str]], other: Sequence[Mapping[str, str]], column: str,
                      n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Paired difference ``other - base`` of one column (percent) per test slice and training seed, with its interval.

    A cell of the difference is the same test slice (``name``) scored by the two runs' UNets of the same
    training seed (``seed``; rows without it are one seed). Only seeds present in both runs are paired. A
    slice with no value in either run (an absent class) is left out. The interval is
    :func:`.statistics.paired_bootstrap`'s: patients (the ``patient`` column; a slice without one is its
    own) and seeds resampled together, so it holds both test-slice and run-to-run noise.

    Args:
        base: ``slices.csv`` rows of the reference run (real slices only).
        other: ``slices.csv`` rows of the compared run, on the same test slices.
        column: e.g. ``"dice_infection"``.
        n_boot: bootstrap draws.
        confidence: interval coverage.
        seed: bootstrap seed.

    Returns:
        ``{"mean", "low", "high"}`` in percent points, ``"slices"`` and ``"clusters"`` counted, ``"seeds"``
        (the paired seeds, space-separated).

    Raises:
        InputError: the runs share no training seed, or a seed of the two was scored on different test slices.
    """
    def by_seed(rows: Sequence[Mapping[str, str]]) -> dict[str, dict[str, Mapping[str, str]]]:
        out: dict[str, dict[str, Mapping[str, str]]] = {}
        for r in rows:
            out.setdefault(str(r.get("seed", "")), {})[r["name"]] = r
        return out

    a, b = by_seed(base), by_seed(other)
    seeds = [s for s in a if s in b]
    if not seeds:
        raise InputError(f"the runs compared share no training seed ({' '.join(a)} vs {' '.join(b)})")
    names = list(a[seeds[0]])
    for s in seeds:
        if set(a[s]) != set(names) or set(b[s]) != set(names):
            raise InputError(f"the runs compared were scored on different test slices ({len(a[s])} vs {len(b[s])})")

    def value(row: Mapping[str, str]) -> float:
        text = row.get(column) or "nan"
        return float(text)

    diff = np.array([[value(b[s][n]) - value(a[s][n]) for s in seeds] for n in names], dtype=np.float64) * 100.0
    result = paired_bootstrap(diff, [a[seeds[0]][n].get("patient", "") for n in names], n_boot, confidence, seed)
    return {"mean": result.mean, "low": result.low, "high": result.high, "slices": result.slices,
            "clusters": result.clusters, "seeds": " ".join(seeds)}


CHOICE_FOLDER = "segmentation_b_choice"  # <work_dir>/... : B's ratios scored on the validation slices


def choose_b_ratio(results: str | Path, seed: int = 0) -> tuple[float, list[dict[str, Any]]]:
    """B's ratio chosen on the validation slices: the largest paired infection-Dice gain over real only.

    Reads a ``segmentation.yaml`` results folder of experiment B at several ratios scored on the
    validation slices (the recipe's step ``segmentation_b_choice``); the gain is
    :func:`paired_difference`'s mean (slices x seeds). A tie goes to the smaller ratio (fewer synthetic slices).

    Args:
        results: the results folder (``slices.csv``).
        seed: bootstrap seed of the intervals reported beside the choice.

    Returns:
        The chosen ratio, and one row per ratio: ``ratio``, ``run``, ``infection_diff`` (with ``_low`` and
        ``_high``), ``seeds``, ``slices``, ``chosen``.

    Raises:
        InputError: no results, or no real-only or B run in them.
    """
    path = Path(results) / "slices.csv"
    if not path.is_file():
        raise InputError("no results of the B-ratio choice on the validation slices; run the recipe's "
                         "segmentation_b_choice step", path)
    rows = read_csv(path)
    base = [r for r in rows if r["run"] == "real_only"]
    runs = list(dict.fromkeys(r["run"] for r in rows if r["experiment"] == "B" and r["run"] != "real_only"))
    if not base or not runs:
        raise InputError("the B-ratio choice needs a real-only run and at least one B run", path)
    out = []
    for run in runs:
        these = [r for r in rows if r["run"] == run]
        diff = paired_difference(base, these, "dice_infection", seed=seed)
        out.append({"ratio": float(these[0]["ratio"]), "run": run, "infection_diff": diff["mean"],
                    "infection_diff_low": diff["low"], "infection_diff_high": diff["high"], "seeds": diff["seeds"],
                    "slices": diff["slices"]})
    finite = [r for r in out if math.isfinite(r["infection_diff"])]
    if not finite:
        raise InputError("no validation slice with infection: the B-ratio choice has nothing to go by", path)
    best = max(finite, key=lambda r: (r["infection_diff"], -r["ratio"]))
    for r in out:
        r["chosen"] = "yes" if r is best else ""
    return best["ratio"], out


# --------------------------------------------------------------------------- the report

# the report's fixed prose, one constant per paragraph (DISCRIMINATOR_TEXT a template: the stages' folder, chance loss)
SEGMENTATION_TEXT = (
    "Every row is trained once per seed (column `seeds`); a slice's Dice is the mean of its seeds' UNets. "
    "Slice mean with its 95% bootstrap interval over test slices (patients); for infection also the fold "
    "mean ± the 95% t half-width over 10 folds of the test set. Last column: the paired difference from "
    "the real-only UNet (below).")
SEEDS_TEXT = "Mean Dice % over the test slices of each seed's UNet."
PAIRED_TEXT = (
    "For every test slice and training seed: the run's Dice minus the real-only UNet's of the same seed on "
    "the same slice (slices without the class left out); mean over slices and seeds, with the 95% "
    "percentile interval of a two-level bootstrap that redraws patients (a slice without a patient id is "
    "its own) and seeds together (1000 draws), so it holds both test-slice and run-to-run noise. With one "
    "seed it is over slices only.")
B_CHOICE_TEXT = (
    "B (map-only generator) at each ratio tried, scored on the validation slices only (never a test "
    "slice): the paired infection-Dice gain over real only (slices x seeds). The largest gain is B's "
    "ratio above.")
PUBLISHED_TEXT = (
    "Mean Dice % on the 48 COVID-SemiSeg test slices from the Inf-Net repository (`EvaluateResults/`); "
    "binary infection, and per class for Semi-Inf-Net + multi-class U-Net. Those networks trained at "
    "352 px, on GPUs, Semi-Inf-Net with 1,600 pseudo-labelled slices more.")
REALISM_TEXT = (
    "Each model redraws its region of the real test slice from the slice's own label map (map-only: the "
    "lung; lesion inpainting: the dilated lesions); the rest is the real slice. FID and KID on the "
    "project's feature network (whole slice); vesselness ratio: mean Frangi response inside the "
    "redrawn region, generated / real (1 = real); grid peak (runs from 0.14 on): the largest spike of the "
    "redrawn region's power spectrum at the frequencies of a stride-2 up-sampling grid, over the power at the "
    "same radius (real CT about 1, in brackets its real slices; a visible grid scores tens); "
    "two-sample accuracy: a small CNN telling generated "
    "from real crops of that region, cross-validated (0.5 = indistinguishable). Two baselines redraw the "
    "lung: `mean_lung` with the training slices' mean lung intensity, and `resampled_real` with the real "
    "slice itself passed through the models' grid and back (area down, bilinear up): every measure compares "
    "with the real slice at its own resolution, so `resampled_real` is what a perfect generator at that "
    "image size would score, the ceiling that resolution alone sets.")
DISCRIMINATOR_TEXT = (
    "The last epoch of each stage ({inpainting_dir}/<stage>/training.csv). Ranking: each critic's paired "
    "ranking accuracy on a fixed validation batch, the share of region patches it scores higher on the real "
    "slice than on the generator's (0.5: it cannot tell them apart; 1: it always can). The losses beside it "
    "do not say this: a least-squares critic's loss stays near {chance:.2f} per scale (0.50 for the "
    "global D's 2 scales) whether or not it can tell.")
INPAINTING_STAGES = ("global", "local", "joint")  # the lesion-inpainting generator's stage folders
REPORT_CLASSES = ("infection", "ggo", "consolidation")  # the segmentation classes, in the report's column order


@dataclass
class ReportSection:
    """One section of the recipe report: its Markdown lines and the CSV files it adds (name -> rows)."""

    lines: list[str]
    csv: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class _SegmentationRun(NamedTuple):
    label: str  # the report's row label, e.g. "B: 50 % added"
    generator: str
    run: str  # the run in the step's results, e.g. "B_50"
    summary: list[dict[str, str]]  # the step's summary.csv rows (every run)
    slices: list[dict[str, str]]  # the step's slices.csv rows of this run



def _rows(path: Path) -> list[dict[str, str]]:
    return read_csv(path) if path.is_file() else []


def _signed(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:+.1f}"


def _summary(rows: Sequence[Mapping[str, str]], run: str, cls: str) -> Mapping[str, str]:
    for r in rows:
        if r["run"] == run and r["class"] == cls and r["metric"] == "dice":
            return r
    return {}


def _discriminator_rows(stage_dirs: Mapping[str, Path]) -> list[dict[str, Any]]:
    out = []
    for stage, folder in stage_dirs.items():
        rows = _rows(folder / "training.csv")
        if not rows:
            continue
        last = rows[-1]
        out.append({"stage": stage, "epochs": len(rows), **{k: as_number(last.get(k)) for k in
                    ("d1_ranking", "d2_ranking", "local_d_ranking", "d_loss", "g_gan", "g_fm", "d_local", "g_local",
                     "g_local_fm")}})
    return out


def _discriminator_figure(stage_dirs: Mapping[str, Path], path: Path) -> Path | None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    drawn = False
    for stage, folder in stage_dirs.items():
        rows = _rows(folder / "training.csv")
        if not rows:
            continue
        epochs = [int(r["epoch"]) for r in rows]
        axes[0].plot(epochs, [as_number(r["d_loss"]) for r in rows], marker=".", label=stage)
        axes[1].plot(epochs, [as_number(r.get("d_local")) for r in rows], marker=".", label=stage)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for ax, title in zip(axes, ("global D loss (2 scales; chance 0.50)", "local D loss (chance 0.25)")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return write_figure(fig, path, overwrite=True)


def realism_table(realism: Sequence[Mapping[str, Any]]) -> str:
    """The report's image-quality table; with a grid-peak column when the run measured it (0.14 on)."""
    grid = any(r.get("grid_peak") not in (None, "") for r in realism)
    header = ["model", "region", "PSNR (dB)", "SSIM", "FID", "KID", "vesselness ratio",
              *(["grid peak (real)"] if grid else []), "two-sample acc."]
    rows = []
    for r in realism:
        peak = ([f"{format_number(r.get('grid_peak'), 1)} ({format_number(r.get('grid_peak_real'), 1)})"]
                if grid else [])
        rows.append([r["model"], r["realism_region"], format_number(r["psnr"], 2), format_number(r["ssim"], 3),
                     format_number(r["fid"], 3), format_number(r["kid"], 4),
                     format_number(r["vesselness_ratio"], 2), *peak,
                     f"{format_number(r['two_sample_accuracy'], 2)} [{format_number(r['two_sample_low'], 2)}, "
                     f"{format_number(r['two_sample_high'], 2)}]"])
    return markdown_table(header, rows)


def _header_section(seed: int, configs: Sequence[str], overrides: Mapping[str, Any] | None) -> ReportSection:
    """The title, this machine, the commit and the command line."""
    command = ("python -m monai.bundle run recipe --config_file \"" + str(list(configs)) + "\" "
               + " ".join(f"--{k} {v}" for k, v in (overrides or {}).items()))
    return ReportSection(["# Real-data recipe report", "",
                          f"Machine: {machine_description()}. Commit {code_version()}. Seed {seed}.", "",
                          f"Command: `{command}`", ""])


def _report_b_ratio(work_dir: Path, ratio: float, b_ratio: float | None, seed: int) -> tuple[float, list[dict[str, Any]]]:
    """B's ratio (``b_ratio``, else the one chosen on the validation slices, else ``ratio``) and the choice's rows."""
    results = work_dir / CHOICE_FOLDER / "results"
    if not (results / "slices.csv").is_file():
        return (ratio if b_ratio is None else b_ratio), []
    chosen, rows = choose_b_ratio(results, seed)
    return (chosen if b_ratio is None else b_ratio), rows


def _segmentation_runs(work_dir: Path, ratio: float, b_ratio: float
                       ) -> tuple[list[dict[str, str]], list[_SegmentationRun]]:
    """The real-only slice rows (the paired differences' base) and the report's runs that have results."""
    pct, b_pct = int(round(ratio * 100)), int(round(b_ratio * 100))
    # (summary rows, slice rows) of each segmentation step, read once
    seg_map, seg_inp = ((_rows(folder / "summary.csv"), _rows(folder / "slices.csv"))
                        for folder in (work_dir / "segmentation" / "results",
                                       work_dir / "segmentation_lesion_inpainting" / "results"))
    runs = [  # (label, generator, run name, that step's results)
        ("real slices only", "-", "real_only", seg_map),
        (f"A: {pct} % replaced", "map-only", f"A_{pct:02d}", seg_map),
        (f"B: {b_pct} % added", "map-only", f"B_{b_pct:02d}", seg_map),
        (f"B: {b_pct} % added", "lesion inpainting", f"B_{b_pct:02d}", seg_inp),
    ]
    found = [_SegmentationRun(label, generator, run, rows, [r for r in slices if r["run"] == run])
             for label, generator, run, (rows, slices) in runs]
    return [r for r in seg_map[1] if r["run"] == "real_only"], [r for r in found if r.slices]


def _seeds(run: _SegmentationRun) -> list[str]:
    return list(dict.fromkeys(str(r.get("seed", "")) for r in run.slices))


def _run_entry(run: _SegmentationRun) -> tuple[dict[str, Any], list[Any]]:
    """The run's row of ``segmentation.csv`` and its cells of the report's table, the paired difference not yet."""
    entry: dict[str, Any] = {"run": run.label, "generator": run.generator}
    cells: list[Any] = [run.label, run.generator]
    info = _summary(run.summary, run.run, "infection")
    entry.update(train_real=info.get("train_real", ""), train_synthetic=info.get("train_synthetic", ""))
    seeds = _seeds(run)
    entry["seeds"] = " ".join(seeds)
    cells += [entry["train_real"], entry["train_synthetic"], len(seeds)]
    for cls in REPORT_CLASSES:
        r = _summary(run.summary, run.run, cls)
        est, lo, hi = as_number(r.get("estimate")), as_number(r.get("boot_low")), as_number(r.get("boot_high"))
        mean, half = as_number(r.get("mean")), as_number(r.get("fold_half_width"))
        entry.update({f"{cls}_dice": est, f"{cls}_boot_low": lo, f"{cls}_boot_high": hi,
                      f"{cls}_fold_mean": mean, f"{cls}_fold_half_width": half})
        cells.append(f"{format_number(est, 1)} [{format_number(lo, 1)}, {format_number(hi, 1)}]" + (f"<br>{format_number(mean, 1)} ± {format_number(half, 1)}" if cls == "infection" else ""))
    return entry, cells


def _seed_rows(run: _SegmentationRun) -> list[dict[str, Any]]:
    """The run's rows of ``segmentation_seeds.csv``: each seed's mean Dice per class."""
    scores = {(r["seed"], r["class"]): r["value"] for r in seed_scores(run.slices) if r["metric"] == "dice"}
    return [{"run": run.label, "generator": run.generator, "seed": s,
             **{f"{cls}_dice": scores[(s, cls)] for cls in REPORT_CLASSES}} for s in _seeds(run)]


def _paired_cells(base: Sequence[Mapping[str, str]], run: _SegmentationRun, seed: int, entry: dict[str, Any]) -> list[str]:
    """The run's paired difference from real only per class: added to ``entry``, returned as table cells."""
    paired = []
    for cls in REPORT_CLASSES:
        diff = paired_difference(base, run.slices, f"dice_{cls}", seed=seed)
        entry.update({f"{cls}_diff": diff["mean"], f"{cls}_diff_low": diff["low"], f"{cls}_diff_high": diff["high"]})
        if cls == "infection":
            entry.update(paired_seeds=diff["seeds"], paired_slices=diff["slices"])
        paired.append(f"{_signed(diff['mean'])} [{_signed(diff['low'])}, {_signed(diff['high'])}]")
    return paired


def _segmentation_section(work_dir: Path, ratio: float, b_ratio: float, seed: int) -> ReportSection:
    """The segmentation table, every seed's scores and the paired differences; ``segmentation(_seeds).csv``."""
    base, runs = _segmentation_runs(work_dir, ratio, b_ratio)
    seg_rows, table, seed_rows, paired_table = [], [], [], []
    for run in runs:
        entry, cells = _run_entry(run)
        seed_rows += _seed_rows(run)
        if run.run != "real_only" and base:
            paired = _paired_cells(base, run, seed, entry)
            cells.append(paired[0])
            paired_table.append([run.label, run.generator, entry["paired_seeds"] or "-", entry["paired_slices"], *paired])
        else:
            cells.append("-")
        seg_rows.append(entry)
        table.append(cells)
    seed_table = [[r["run"], r["generator"], r["seed"] or "-", *(format_number(r[f"{cls}_dice"], 1) for cls in REPORT_CLASSES)]
                  for r in seed_rows]
    return ReportSection([
        f"## Segmentation on the {len({r['name'] for r in base})} test slices (Dice %)", "", SEGMENTATION_TEXT, "",
        markdown_table(["run", "generator", "real", "synthetic", "seeds", "infection", "GGO", "consolidation",
                        "infection vs real only"], table), "",
        "### Every seed", "", SEEDS_TEXT, "",
        markdown_table(["run", "generator", "seed", "infection", "GGO", "consolidation"], seed_table), "",
        "### Paired difference from real only (Dice points)", "", PAIRED_TEXT, "",
        markdown_table(["run", "generator", "seeds", "slices with infection", "infection", "GGO", "consolidation"],
                       paired_table), "",
    ], {"segmentation": seg_rows, "segmentation_seeds": seed_rows})


def _b_choice_section(choice_rows: list[dict[str, Any]]) -> ReportSection:
    """B's ratios tried on the validation slices and the one chosen; ``b_ratio_choice.csv``. Empty without a choice."""
    if not choice_rows:
        return ReportSection([])
    table = [[f"{r['ratio']:g}", r["seeds"], r["slices"],
              f"{_signed(r['infection_diff'])} [{_signed(r['infection_diff_low'])}, {_signed(r['infection_diff_high'])}]",
              r["chosen"]] for r in choice_rows]
    return ReportSection([
        "### B's ratio, chosen on the validation slices", "", B_CHOICE_TEXT, "",
        markdown_table(["ratio", "seeds", "slices with infection", "infection vs real only", "chosen"], table), "",
    ], {"b_ratio_choice": choice_rows})


def _published_section(seg_rows: Sequence[Mapping[str, Any]]) -> ReportSection:
    """The published Dice on the same test slices, beside ours."""
    table = ([[m, format_number(v, 1), "", ""] for m, v in PUBLISHED_INFECTION]
             + [["Semi-Inf-Net + multi-class U-Net", "", format_number(PUBLISHED_CLASSES["ggo"], 1),
                 format_number(PUBLISHED_CLASSES["consolidation"], 1)]]
             + [[f"ours: {e['run']} ({e['generator']})", format_number(e["infection_dice"], 1), format_number(e["ggo_dice"], 1),
                 format_number(e["consolidation_dice"], 1)] for e in seg_rows])
    return ReportSection(["## Published results on the same test slices", "", PUBLISHED_TEXT, "",
                          markdown_table(["method", "infection", "GGO", "consolidation"], table), ""])


def _realism_section(realism: Sequence[Mapping[str, Any]]) -> ReportSection:
    """Image quality and realism (:func:`realism_table`) and the model grid."""
    return ReportSection(["## Realism on the test slices", "", REALISM_TEXT, "", realism_table(realism), "",
                          "![real | models on the same label maps](model_grid.png)", ""])


def _discriminator_section(inpainting_dir: Path, stage_dirs: Mapping[str, Path]) -> ReportSection:
    """Lesion inpainting's critics at the last epoch of each stage: their rankings and losses."""
    table = [[d["stage"], d["epochs"], *(format_number(d[k], 2) for k in ("d1_ranking", "d2_ranking", "local_d_ranking")),
              *(format_number(d[k], 3) for k in ("d_loss", "g_gan", "g_fm", "d_local", "g_local", "g_local_fm"))]
             for d in _discriminator_rows(stage_dirs)]
    return ReportSection([
        "## Lesion inpainting: the discriminators' signal", "",
        DISCRIMINATOR_TEXT.format(inpainting_dir=inpainting_dir, chance=CHANCE_D_LOSS), "",
        markdown_table(["stage", "epochs", "D1 ranking", "D2 ranking", "local D ranking", "D loss", "G GAN",
                        "G FM", "local D loss", "local G GAN", "local G FM"], table), "",
        "![discriminator losses of lesion inpainting](discriminator_losses.png)", "",
    ])


def _target(name: str, measured: str, met: bool | None) -> dict[str, Any]:
    return {"target": name, "measured": measured, "met": "n/a" if met is None else ("yes" if met else "no")}


def _b_target(e: Mapping[str, Any]) -> dict[str, Any]:
    """A B row's target: its paired infection-Dice gain's interval above zero (GGO and consolidation beside)."""
    d, low = e.get("infection_diff", math.nan), e.get("infection_diff_low", math.nan)
    n_seeds = len(e.get("paired_seeds", "").split()) or 1
    return _target(f"B ({e['generator']}): paired infection-Dice gain over real only, its 95% interval "
                   "(slices x seeds) above zero",
                   f"{_signed(d)} points [{_signed(low)}, {_signed(e.get('infection_diff_high', math.nan))}] over "
                   f"{e.get('paired_slices', 0)} slices x {n_seeds} seed{'s' if n_seeds > 1 else ''}; GGO "
                   f"{_signed(e.get('ggo_diff', math.nan))} [{_signed(e.get('ggo_diff_low', math.nan))}, "
                   f"{_signed(e.get('ggo_diff_high', math.nan))}], consolidation "
                   f"{_signed(e.get('consolidation_diff', math.nan))} "
                   f"[{_signed(e.get('consolidation_diff_low', math.nan))}, "
                   f"{_signed(e.get('consolidation_diff_high', math.nan))}]",
                   bool(low > 0) if math.isfinite(low) else None)


def _segmentation_targets(seg_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each B row's paired gain, and the best infection Dice against Inf-Net's."""
    targets = [_b_target(e) for e in seg_rows if e["run"].startswith("B")]
    best = max((e["infection_dice"] for e in seg_rows if math.isfinite(e.get("infection_dice", math.nan))), default=math.nan)
    targets.append(_target("infection Dice >= Inf-Net's 68.2 (plain MONAI UNet)", f"best {format_number(best, 1)}",
                           bool(best >= 68.2) if math.isfinite(best) else None))
    return targets


def _beside_ceiling(ceiling: Mapping[str, Any] | None, key: str) -> str:
    """What a perfect generator at the models' image size scores (``resampled_real``), in brackets."""
    if ceiling is None:
        return ""
    return f" (the real slice at the {ceiling['image_size']}-px grid: {format_number(ceiling[key], 2)})"


def _realism_targets(realism: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """:data:`REALISM_TARGETS` and :data:`GRID_TARGETS` of the models the run scored."""
    ceiling = next((r for r in realism if r["model"] == RESAMPLED_REAL), None)
    targets = []
    for model, label, (v_low, v_high), acc_max in REALISM_TARGETS:
        row = next((r for r in realism if r["model"] == model), None)
        if row is None:
            continue
        v, acc = as_number(row["vesselness_ratio"]), as_number(row["two_sample_accuracy"])
        wanted = f"within {v_low}-{v_high}" if math.isfinite(v_high) else f"at least {v_low}"
        targets.append(_target(f"{label}: vesselness ratio {wanted}", format_number(v, 2) + _beside_ceiling(ceiling, "vesselness_ratio"),
                               bool(v_low <= v <= v_high) if math.isfinite(v) else None))
        targets.append(_target(f"{label}: two-sample accuracy at most {acc_max}",
                               format_number(acc, 2) + _beside_ceiling(ceiling, "two_sample_accuracy"),
                               bool(acc <= acc_max) if math.isfinite(acc) else None))
        if model in GRID_TARGETS and row.get("grid_peak") not in (None, ""):  # runs before 0.14 did not measure it
            peak, most = as_number(row["grid_peak"]), GRID_TARGETS[model]
            targets.append(_target(f"{label}: no up-sampling grid, grid peak at most {most:g}",
                                   f"{format_number(peak, 1)} (its real slices: {format_number(row.get('grid_peak_real'), 1)})",
                                   bool(peak <= most) if math.isfinite(peak) else None))
    return targets


def _targets_section(seg_rows: Sequence[Mapping[str, Any]], realism: Sequence[Mapping[str, Any]],
                     timings: Mapping[str, float]) -> ReportSection:
    """Every target: segmentation, realism and (with timings) the time budget; ``targets.csv``."""
    targets = [*_segmentation_targets(seg_rows), *_realism_targets(realism)]
    if timings:
        total = sum(timings.values())
        targets.append(_target("whole recipe within 2 h on this machine", f"{total / 60:.0f} min",
                               bool(total <= TIME_BUDGET_S)))
    return ReportSection(["## Targets", "", markdown_table(["target", "measured", "met"],
                                                           [[t["target"], t["measured"], t["met"]] for t in targets]), ""],
                         {"targets": targets})


def _time_section(timings: Mapping[str, float]) -> ReportSection:
    """Every step's minutes and their sum; ``timings.csv`` (seconds)."""
    total = sum(timings.values())
    table = [[k, f"{v / 60:.1f}"] for k, v in timings.items()] + [["all", f"{total / 60:.1f}"]]
    return ReportSection(["## Time", "", markdown_table(["step", "minutes"], table), ""],
                         {"timings": [{"step": k, "seconds": round(v, 1)} for k, v in timings.items()]})


def _copy_figures(work_dir: Path, stage_dirs: Mapping[str, Path], stage: Path) -> None:
    """The model grid (evaluate.yaml's report) and the lesion-inpainting critics' losses, into ``stage``."""
    grid = work_dir / "evaluation" / "report" / "model_grid.png"
    if grid.is_file():
        shutil.copyfile(grid, stage / "model_grid.png")
    _discriminator_figure(stage_dirs, stage / "discriminator_losses.png")


def write_recipe_report(work_dir: str | Path, inpainting_dir: str | Path, ratio: float,
                        seed: int = 0, overwrite: bool = False, configs: Sequence[str] = (),
                        overrides: Mapping[str, Any] | None = None, b_ratio: float | None = None) -> Path:
    """``<work_dir>/report``: ``report.md``, ``segmentation.csv``, ``segmentation_seeds.csv``, ``targets.csv``,
    ``timings.csv`` and figures.

    Each section comes from its own writer (``_header_section`` ... ``_time_section``): a :class:`ReportSection`
    of its Markdown lines and CSV rows. The folder is written whole or not at all (``staged_directory``).

    Args:
        work_dir: the recipe's work folder (steps' results inside).
        inpainting_dir: the lesion-inpainting generator's training output.
        ratio: the synthetic fraction of experiment A (and of B unless chosen otherwise).
        seed: bootstrap seed (of the intervals read from the steps and of the paired differences).
        overwrite: replace an existing report.
        configs: the recipe's config files (for the command line in the report).
        overrides: the recipe's overrides (idem).
        b_ratio: experiment B's fraction; ``None``: the one chosen on the validation slices when
            ``<work_dir>/segmentation_b_choice`` holds results, else ``ratio``.

    Returns:
        The report folder.
    """
    work_dir, inpainting_dir = Path(work_dir), Path(inpainting_dir)
    b_ratio, choice_rows = _report_b_ratio(work_dir, ratio, b_ratio, seed)
    segmentation = _segmentation_section(work_dir, ratio, b_ratio, seed)
    seg_rows = segmentation.csv["segmentation"]
    quality = _rows(work_dir / "evaluation" / "image_quality" / "image_quality.csv")
    realism = [r for r in quality if r["region"] == "complemented"]
    stage_dirs = {s: inpainting_dir / s for s in INPAINTING_STAGES}
    timings = _read_timings(work_dir)
    sections = [_header_section(seed, configs, overrides), segmentation, _b_choice_section(choice_rows),
                _published_section(seg_rows), _realism_section(realism), _discriminator_section(inpainting_dir, stage_dirs),
                _targets_section(seg_rows, realism, timings), _time_section(timings)]
    with staged_directory(work_dir / "report", overwrite=overwrite) as stage:
        write_text("\n".join(line for s in sections for line in s.lines), stage / "report.md")
        for name, rows in (item for s in sections for item in s.csv.items()):
            write_text(csv_text(rows, list(dict.fromkeys(k for r in rows for k in r))), stage / f"{name}.csv")
        _copy_figures(work_dir, stage_dirs, stage)
    return work_dir / "report"
