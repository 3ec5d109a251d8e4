"""The docs cannot drift: links resolve, quoted numbers equal the result files, versions agree.

Pages: the top-level ``README.md`` and ``bundle/docs/*.md`` (the guide ``README.md`` and its pages).

Numbers, three mechanisms, all declared below:

* ``TABLES``: a results table in a page is *generated* from the result files. The line
  ``<!-- numbers: <id> -->`` above the table names its spec; the test rebuilds the table and compares it line
  by line. After a new run (new CSVs), rewrite every generated table with ``python tests/test_docs.py --write``.
* ``FACTS``: a number quoted in prose is a fragment with ``{expression:format}`` placeholders computed from the
  result files; the formatted fragment must appear in its page, white space aside (so a changed CSV or an
  edited sentence fails, naming the page and the expected text). Result files are CSVs and Markdown reports under
  ``bundle/docs/results/`` and ``benchmarks/results/``; defaults and test sizes come from the configs and tests.
* ``QUOTES``: a number a page repeats from another text (``benchmarks/README.md``, another page) must be in both.

Every other Markdown table with decimal numbers in a page must say where its numbers come from with a line
``<!-- numbers: source: ... -->`` above it (code, tests, a run whose files were not kept), so an unchecked
table is a visible, deliberate exception. Negative numbers are written with the minus sign U+2212.
"""

from __future__ import annotations

import configparser
import csv
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "bundle" / "docs"
RESULTS = DOCS / "results"
BENCH = REPO / "benchmarks" / "results"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
MINUS = "\u2212"
MARKER = re.compile(r"^<!-- numbers: (.+?) -->$")


# ---- reading the result files -----------------------------------------------------------------------------


def _value(text: str) -> Any:
    """A CSV cell as a float where it is one (``nan`` included), else the text."""
    try:
        return float(text)
    except ValueError:
        return text


class Row(SimpleNamespace):
    """One result row; columns are attributes (``row.infection_dice``), numbers as floats."""


@cache
def csv_rows(path: str) -> tuple[Row, ...]:
    """Rows of a CSV under ``bundle/docs/results`` (or a path from the repository root)."""
    file = RESULTS / path if (RESULTS / path).is_file() else REPO / path
    with file.open(newline="", encoding="utf-8") as f:
        return tuple(Row(**{k: _value(v) for k, v in r.items()}) for r in csv.DictReader(f))


def one(rows: tuple[Row, ...], **where: Any) -> Row:
    """The one row whose columns equal ``where``."""
    found = [r for r in rows if all(getattr(r, k) == v for k, v in where.items())]
    assert len(found) == 1, f"{len(found)} rows match {where}"
    return found[0]


def by(rows: tuple[Row, ...], column: str) -> dict[Any, Row]:
    """Rows keyed by one column."""
    return {getattr(r, column): r for r in rows}


def key_values(path: str) -> Row:
    """A two-column CSV (name, value) as one row: ``key_values('medseg_recipe/timings.csv').image_quality``."""
    file = RESULTS / path
    with file.open(newline="", encoding="utf-8") as f:
        return Row(**{name: _value(value) for name, value in list(csv.reader(f))[1:]})


def _key(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


@cache
def md_tables(path: str, heading: str) -> tuple[tuple[Row, ...], ...]:
    """The Markdown tables between the heading line that starts with ``heading`` and the next heading of its level.

    Columns are the header cells as identifiers (``Infection Dice, patient bootstrap`` ->
    ``infection_dice_patient_bootstrap``); cells are kept as text (use ``num``).
    """
    file = RESULTS / path if (RESULTS / path).is_file() else REPO / path
    lines = file.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    level = len(heading) - len(heading.lstrip("#"))
    tables: list[tuple[Row, ...]] = []
    i = start + 1
    while i < len(lines) and not (lines[i].startswith("#" * level + " ") and level):
        if lines[i].startswith("|") and i + 1 < len(lines) and set(lines[i + 1].replace("|", "").strip()) <= set("-: "):
            header = [_key(c) for c in _cells(lines[i])]
            body = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                body.append(Row(**dict(zip(header, _cells(lines[i])))))
                i += 1
            tables.append(tuple(body))
        i += 1
    return tuple(tables)


def md_row(path: str, heading: str, index: int = 0, **where: str) -> Row:
    """One row of the ``index``-th table under ``heading`` whose cells start with the given texts."""
    found = [r for r in md_tables(path, heading)[index] if all(getattr(r, k).startswith(v) for k, v in where.items())]
    assert len(found) == 1, f"{path}, {heading}: {len(found)} rows match {where}"
    return found[0]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def num(text: str, index: int = 0) -> float:
    """The ``index``-th unsigned number in a text cell (``"6.65x (5.46-8.26)"`` -> 6.65, 5.46, 8.26)."""
    return float(re.findall(r"\d+(?:\.\d+)?", text)[index])


def search(pattern: str, text: str) -> re.Match[str]:
    """``re.search`` that fails the test, naming the pattern, when the text does not have it."""
    match = re.search(pattern, text)
    assert match, f"no {pattern!r} in the file"
    return match


def last(path: str) -> Row:
    """The last row of a CSV (the last epoch of a ``training.csv``)."""
    return csv_rows(path)[-1]


# ---- formatting -------------------------------------------------------------------------------------------

_FIELD = re.compile(r"\{([^{}]+?)(?::([^{}:]*))?\}")


def signed(value: float, decimals: int = 1) -> str:
    """``+0.9`` / ``−0.8``: a difference with its sign."""
    return format(value, f"+.{decimals}f").replace("-", MINUS)


def paired(row: Row, measure: str) -> str:
    """A segmentation row's paired difference from real only, ``+0.9 [−0.9, +2.6]``; ``–`` where it has none."""
    diff = getattr(row, f"{measure}_diff")
    if diff == "":
        return "–"
    return f"{signed(diff)} [{signed(getattr(row, f'{measure}_diff_low'))}, {signed(getattr(row, f'{measure}_diff_high'))}]"


def na(value: float, spec: str) -> str:
    """``value`` formatted, or ``n/a`` where it is nan (a measure that does not exist for the row)."""
    return "n/a" if math.isnan(value) else format(value, spec).replace("-", MINUS)


_BUILTINS = {
    "min": min,
    "max": max,
    "abs": abs,
    "sum": sum,
    "len": len,
    "round": round,
    "num": num,
    "signed": signed,
    "paired": paired,
    "na": na,
    "format": format,
}


def fill(template: str, names: dict[str, Any]) -> str:
    """``template`` with each ``{expression:format}`` replaced; negative numbers get the minus sign U+2212."""

    def one_field(match: re.Match[str]) -> str:
        value = eval(match.group(1), {"__builtins__": _BUILTINS}, names)
        text = format(value, match.group(2) or "")
        if isinstance(value, (int, float)):
            assert not (isinstance(value, float) and math.isnan(value)), f"{match.group(1)} is nan"
            text = text.replace("-", MINUS)
        return text

    return _FIELD.sub(one_field, template)


# ---- the generated tables ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """A table generated from result files: header lines, the row template(s), the rows' names, literal rows.

    ``row`` is one template filled once for each names dict ``rows`` returns, or, for a table whose rows differ
    (a summary), a tuple of templates, one a row, all filled with the one names dict ``rows`` returns.
    """

    pages: tuple[str, ...]
    header: str
    row: str | tuple[str, ...]
    rows: Callable[[], list[dict[str, Any]]]
    extra: tuple[str, ...] = ()

    def text(self) -> list[str]:
        names = self.rows()
        if isinstance(self.row, str):
            body = [fill(self.row, n) for n in names]
        else:
            (shared,) = names
            body = [fill(template, shared) for template in self.row]
        return [*self.header.splitlines(), *body, *self.extra]


def _recipe_segmentation(run: str = "medseg_recipe") -> list[dict[str, Any]]:
    """The rows of a recipe run's ``segmentation.csv`` (``run``: its folder under ``bundle/docs/results``)."""
    return [{"r": r} for r in csv_rows(f"{run}/segmentation.csv")]


UPSAMPLING_GRID_RUNS = {  # result file under results/upsampling_grid/ -> row label
    "transposed": "lesion inpainting, `transposed` (0.12 recipe run)",
    "resize": "lesion inpainting, `resize` (probe, recipe settings otherwise)",
}


def _upsampling_grid() -> list[dict[str, Any]]:
    """The lesion-inpainting generators scored on the validation slices (``upsampling_grid/*_image_quality.csv``)."""
    return [{"label": label, "r": one(csv_rows(f"upsampling_grid/{name}_image_quality.csv"),
                                      model="lesion_inpainting", region="complemented")}
            for name, label in UPSAMPLING_GRID_RUNS.items()]


def _grid_by_epoch(stage: str, path: str) -> Table:
    """The grid peaks of a stage's sample grids by epoch (``benchmarks/probe_grid_in_samples.py``'s CSV), in experiments.md."""
    return Table(
        pages=("experiments.md",),
        header=f"| up-sampling | {stage} stage epoch | grid peak (real) | 1/2 cycle a pixel along rows / columns / both |\n"
        "|---|---|---|---|",
        row="| {r.run} | {r.epoch:.0f} | {r.grid_peak:.1f} ({r.grid_peak_real:.2f}) | {r.half_rows:.1f} / "
        "{r.half_cols:.1f} / {r.half_both:.1f} |",
        rows=lambda: [{"r": r} for r in csv_rows(path)],
    )


LESION_TEXTURE_PROBES = {  # joint stage -> (image_quality.csv, training.csv) under results/, row label
    "resize": ("upsampling_grid/resize_image_quality.csv", "lesion_texture_0_15/resize_joint_training.csv",
               "`lambda_fm` 10, no texture term (the `resize` probe)"),
    "texture": ("lesion_texture_0_15/texture_image_quality.csv", "lesion_texture_0_15/texture_joint_training.csv",
                "`lambda_texture` 10"),
    "fm1": ("lesion_texture_0_15/fm1_image_quality.csv", "lesion_texture_0_15/fm1_joint_training.csv",
            "`lambda_fm` 1 (the recipe since 0.15)"),
}


MAP_ONLY_FM_PROBES = {  # image_quality.csv under results/lesion_texture_0_15/ -> row label
    "map_only_fm10": "`transposed`, `lambda_fm` 10 (the 0.12 recipe run)",
    "map_only_fm1": "`transposed`, `lambda_fm` 1 in the joint stage",
    "map_only_resize": "`resize` (all three stages trained again), `lambda_fm` 10",
}


def _map_only_fm_probes() -> list[dict[str, Any]]:
    """The map-only generator's joint stage with feature matching at 10 and at 1, scored on validation."""
    return [{"label": label, "r": one(csv_rows(f"lesion_texture_0_15/{name}_image_quality.csv"), model="ours",
                                      region="complemented")} for name, label in MAP_ONLY_FM_PROBES.items()]


def _lesion_texture_probes() -> list[dict[str, Any]]:
    """The lesion-inpainting joint stages trained from the same global and local stages, scored on validation."""
    return [{"label": label, "r": one(csv_rows(quality), model="lesion_inpainting", region="complemented"),
             "t": csv_rows(training)[-1]} for quality, training, label in LESION_TEXTURE_PROBES.values()]


REALISM_LABELS = {
    "ours": "map-only (ours)",
    "lesion_inpainting": "lesion inpainting (joint stage 90 epochs)",
    "mean_lung": "mean lung (trivial)",
    "resampled_real": "resampled real (the real slice through the 256-px grid: a perfect 256-px generator)",
}


REALISM_LABELS_0_12 = {
    "ours": "map-only (ours)",
    "lesion_inpainting": "lesion inpainting (joint 90 epochs)",
    "mean_lung": "mean lung (trivial)",
    "resampled_real": "resampled real (the real slice; no resizing at the native grid)",
}


def _recipe_realism(run: str = "medseg_recipe", labels: dict[str, str] = REALISM_LABELS) -> list[dict[str, Any]]:
    """A recipe run's ``image_quality.csv``, whole slices (the region redrawn, the rest real), one row a model."""
    rows = [r for r in csv_rows(f"{run}/image_quality.csv") if r.region == "complemented"]
    return [{"r": r, "label": labels[r.model]} for r in rows]


def _critics() -> list[dict[str, Any]]:
    names = {"instance_norm": "instance norm (0.11)", "no_norm": "no norm (0.12)"}
    return [
        {"label": label, **{s[0]: last(f"critics_0_12/{run}_{s}_training.csv") for s in ("global", "local", "joint")}}
        for run, label in names.items()
    ]


SLICE_LABELS = {
    "ours": "ours",
    "pix2pixhd": "pix2pixHD",
    "pix2pix": "pix2pix (as published)",
    "mean_lung": "mean lung (trivial)",
}
PHANTOM_LABELS = {
    "ours": "ours",
    "pix2pixhd": "pix2pixHD",
    "pix2pix": "pix2pix (as published: BCE loss, batch norm, 70x70 PatchGAN)",
    "mean_lung": "mean lung (trivial)",
}
SMALLEST_LABELS = {
    "ours": "ours",
    "pix2pixhd": "pix2pixHD",
    "pix2pix": "pix2pix (as published)",
    "mean_lung": "mean_lung (trivial)",
}


def _slice_table_ii() -> list[dict[str, Any]]:
    realism = by(csv_rows("medseg_slice_split/table_realism.csv"), "model")
    return [
        {"q": q, "r": realism[q.model], "label": SLICE_LABELS[q.model]}
        for q in csv_rows("medseg_slice_split/table_ii_image_quality.csv")
    ]


def _slice_tables_iii_iv() -> list[dict[str, Any]]:
    a_rows = csv_rows("medseg_slice_split/table_iii_replace.csv")
    b_rows = csv_rows("medseg_slice_split/table_iv_add.csv")
    a_boot = md_tables("medseg_slice_split/report.md", "## Table III")[1]
    b_boot = md_tables("medseg_slice_split/report.md", "## Table IV")[1]
    return [{"a": a, "b": b, "ab": ab, "bb": bb} for a, b, ab, bb in zip(a_rows, b_rows, a_boot, b_boot, strict=True)]


def _phantom_table_ii() -> list[dict[str, Any]]:
    return [{"q": q, "label": PHANTOM_LABELS[q.model]} for q in csv_rows("phantom_demo/table_ii_image_quality.csv")]


def _smallest_table_ii() -> list[dict[str, Any]]:
    return [
        {"q": q, "label": SMALLEST_LABELS[q.model]} for q in csv_rows("phantom_smallest/table_ii_image_quality.csv")
    ]


# the 0.12 run's steps as its page names them; None: in the total only (the report step, 1.4 s, had no row)
TIME_LABELS_0_12: dict[str, str | None] = {
    "generator_map": "map-only generator (30/30/30 epochs)",
    "generator_lesion_inpainting": "lesion-inpainting generator (30/30/90 epochs)",
    "image_quality": "image quality and realism",
    "segmentation_map": "segmentation, map-only (real only, A, B; 1 seed)",
    "segmentation_lesion_inpainting": "segmentation, B lesion inpainting (1 seed)",
    "evaluation_report": None,
}


def _recipe_time(
    run: str = "medseg_recipe", labels: dict[str, str | None] | None = None, total: str = "**all**"
) -> list[dict[str, Any]]:
    """A recipe run's ``timings.csv``, a row a step (named by ``labels`` where given) and the total."""
    steps = vars(key_values(f"{run}/timings.csv"))
    assert labels is None or labels.keys() == steps.keys(), f"{run}/timings.csv has steps {list(steps)}"
    rows = [{"step": k if labels is None else labels[k], "s": v} for k, v in steps.items()]
    return [r for r in rows if r["step"] is not None] + [{"step": total, "s": sum(steps.values())}]


def _critic_test() -> list[dict[str, Any]]:
    runs = {"critic_test": 256, "critic_test_global_lung": 512, "critic_test_global_lesion_blur": 512}
    return [
        {"r": r, "px": px}
        for name, px in runs.items()
        for r in md_tables(f"benchmarks/results/amd-epyc-avx512-bf16/{name}.md", "# Critic test")[0]
    ]


def _amd_full() -> list[dict[str, Any]]:
    """The AMD EPYC's full benchmark (``full.md``; the HU difference from ``full.json``, which keeps it unrounded)
    and its targets, for the summary on performance.md: one names dict (every row has a template of its own)."""
    folder = "benchmarks/results/amd-epyc-avx2/"
    train = md_tables(folder + "full.md", "## Training step")[0]
    synth = md_tables(folder + "full.md", "## Synthesis")[0]
    data = md_tables(folder + "full.md", "## Data loading")[0]
    targets = md_tables(folder + "full.md", "## Targets")[0]
    runs = json.loads((REPO / folder / "full.json").read_text(encoding="utf-8"))["synthesis"]

    def met(rows: list[Row]) -> str:
        assert rows, "no target rows"
        yes = sum(r.met == "yes" for r in rows)
        return "yes" if yes == len(rows) else "no" if yes == 0 else f"{yes} of {len(rows)}"

    def goal(rows: list[Row], pattern: str) -> tuple[str, ...]:
        """The numbers of a target (``>= 2x``) that every row states alike."""
        (found,) = {search(pattern, r.target).groups() for r in rows}
        return found

    def wait(size: str, loader: str) -> float:
        row = next(r for r in data if r.image_size == size and r.loader.split(",")[0] == loader)
        return num(row.waiting_share_after_epoch_1)

    psnr = lambda variant: [
        float(r.psnr_vs_fp32_db) for r in synth if r.variant.startswith(variant) and r.psnr_vs_fp32_db != "inf"
    ]
    t_train = [r for r in targets if r.target.startswith("training") and "step >=" in r.target]
    t_synth = lambda batch: [r for r in targets if r.target.startswith(f"synthesis 512, batch {batch}:")]
    t_memory = [r for r in targets if "peak memory" in r.target]
    (synth_x, synth_db) = goal(t_synth(1) + t_synth(8), r">= (\d+)x fp32 eager, within (\d+) dB")
    return [
        {
            **_bench(),
            "eager": [float(r.s_step) for r in train if r.variant == "fp32_eager"],
            "compiled_psnr": psnr("compiled_fp32"),
            "slices_psnr": psnr("fp32_default"),
            "hu": max(case["results"]["compiled_fp32"]["difference"]["max_abs_hu"] for case in runs),
            "memory": [float(r.peak_memory_gb) for r in md_tables(folder + "full.md", "## Peak memory")[0]],
            "wait": wait,
            "data": data[0],
            "met": met,
            "t_train": t_train,
            "t_synth": t_synth,
            "t_memory": t_memory,
            "t_wait": [r for r in targets if "train.yaml default" in r.target],
            "train_x": goal(t_train, r"step >= (\d+)x")[0],
            "synth_x": synth_x,
            "synth_db": int(synth_db),
            "memory_gb": goal(t_memory, r"peak memory < (\d+) GB")[0],
            "wait_share": goal([r for r in targets if "data waiting" in r.target], r"< (\d+)% of epoch time")[0],
        }
    ]


# the two synthesis rows share their first cells; "{b}" (the batch) is put in before the template is filled
SYNTH_512 = (
    "| synthesis 512 px, batch {b} | {num(amd('512', '{b}', 'fp32_eager').slices_s):.2f} slices/s | compiled fp32 "
    "{num(amd('512', '{b}', 'compiled_fp32').speed_up):.2f}× ({num(amd('512', '{b}', 'compiled_fp32').speed_up, 1):.2f}–"
    "{num(amd('512', '{b}', 'compiled_fp32').speed_up, 2):.2f})"
)
AMD_FULL_ROWS = (
    "| training step, {len(eager)} cases (stage × 256/512 × ngf 32/64, batch 1) | {min(eager):.2g}–{max(eager):.2g} s | "
    "default (fused Adam): {min(amd_fast):.2f}–{max(amd_fast):.2f}× ({min(amd_fast_range):.2f}–"
    "{max(amd_fast_range):.2f}); compiled: {min(amd_compiled):.2f}–{max(amd_compiled):.2f}× | ≥ {train_x}× | "
    "{met(t_train)} |",
    SYNTH_512.replace("{b}", "1") + " | ≥ {synth_x}×, within {synth_db} dB | {met(t_synth(1))} |",
    SYNTH_512.replace("{b}", "8")
    + "; default CPU slices {num(amd('512', '8', 'fp32_default').speed_up):.2f}× "
    "({num(amd('512', '8', 'fp32_default').speed_up, 1):.2f}–{num(amd('512', '8', 'fp32_default').speed_up, 2):.2f}) "
    "| ≥ {synth_x}×, within {synth_db} dB | {met(t_synth(8))} |",
    "| fast output vs fp32 | | compiled {min(compiled_psnr):.0f} dB PSNR (largest difference {hu:.2f} HU); "
    "CPU slices {min(slices_psnr):.0f} dB | ≥ {synth_db} dB | "
    "{'yes' if min(compiled_psnr + slices_psnr) >= synth_db else 'no'} |",
    "| peak memory, a process training joint 512 px ngf 64, batch 1 | | {max(memory):.1f} GB (fused or not) | "
    "< {memory_gb} GB | {met(t_memory)} |",
    "| data waiting after epoch 1 (train.yaml pipeline, {data.items_epoch} items, batch {data.batch}) | | "
    "`ThreadDataLoader` {wait('256', 'ThreadDataLoader'):.1f} % (256 px), {wait('512', 'ThreadDataLoader'):.1f} % "
    "(512 px); torch `DataLoader` {wait('256', 'DataLoader'):.1f} %, {wait('512', 'DataLoader'):.1f} % | "
    "< {wait_share} % | {met(t_wait)} (default) |",
)


DICE = "{r.%s_dice:.1f} [{r.%s_boot_low:.1f}, {r.%s_boot_high:.1f}]"
TABLES: dict[str, Table] = {
    "recipe-segmentation": Table(
        pages=("README.md", "results.md"),
        header="| run | generator | real + synthetic | infection | GGO | consolidation | infection vs real only |\n"
        "|---|---|---|---|---|---|---|",
        row="| {r.run} | {'–' if r.generator == '-' else r.generator} | {r.train_real:.0f} + {r.train_synthetic:.0f} | "
        + DICE % (("infection",) * 3)
        + "; {r.infection_fold_mean:.1f} ± {r.infection_fold_half_width:.1f} | "
        + DICE % (("ggo",) * 3)
        + " | "
        + DICE % (("consolidation",) * 3)
        + " | {paired(r, 'infection')} |",
        rows=_recipe_segmentation,
    ),
    # B's per-class differences beside its infection difference: the 0.12 issue's targets are B's
    "recipe-0-12-segmentation": Table(
        pages=("results.md",),
        header="| run | generator | infection | GGO | consolidation | infection vs real only (paired, 48 slices x 1 seed) |\n"
        "|---|---|---|---|---|---|",
        row="| {r.run} | {'–' if r.generator == '-' else r.generator} | "
        + " | ".join(DICE % ((c,) * 3) for c in ("infection", "ggo", "consolidation"))
        + " | {paired(r, 'infection')}{' (GGO ' + paired(r, 'ggo') + ', consolidation ' + paired(r, 'consolidation')"
        " + ')' if r.run.startswith('B') else ''} |",
        rows=partial(_recipe_segmentation, "medseg_recipe_0_12"),
    ),
    "recipe-realism": Table(
        pages=("README.md", "results.md"),
        header="| model | region redrawn | PSNR (dB) | SSIM | FID | KID | vesselness ratio | two-sample acc. |\n"
        "|---|---|---|---|---|---|---|---|",
        row="| {label} | {r.realism_region} | {r.psnr:.2f} | {r.ssim:.3f} | {r.fid:.3f} | {r.kid:.4f} | "
        "{r.vesselness_ratio:.2f} | {r.two_sample_accuracy:.2f} [{r.two_sample_low:.2f}, {r.two_sample_high:.2f}] |",
        rows=_recipe_realism,
    ),
    "recipe-0-12-realism": Table(
        pages=("results.md",),
        header="| model | region redrawn | PSNR (dB) | SSIM | FID | vesselness ratio | two-sample acc. |\n"
        "|---|---|---|---|---|---|---|",
        row="| {label} | {r.realism_region} | {na(r.psnr, '.2f')} | {r.ssim:.3f} | {r.fid:.3f} | "
        "{r.vesselness_ratio:.2f} | {r.two_sample_accuracy:.2f} [{r.two_sample_low:.2f}, {r.two_sample_high:.2f}] |",
        rows=partial(_recipe_realism, "medseg_recipe_0_12", REALISM_LABELS_0_12),
    ),
    "upsampling-grid": Table(
        pages=("experiments.md",),
        header="| generator | grid peak (its real slices) | vesselness ratio | two-sample accuracy | FID |\n"
        "|---|---|---|---|---|",
        row="| {label} | {r.grid_peak:.1f} ({r.grid_peak_real:.2f}) | {r.vesselness_ratio:.2f} | "
        "{r.two_sample_accuracy:.2f} [{r.two_sample_low:.2f}, {r.two_sample_high:.2f}] | {r.fid:.3f} |",
        rows=_upsampling_grid,
    ),
    "upsampling-grid-local": _grid_by_epoch("local", "upsampling_grid/local_stage_samples.csv"),
    "upsampling-grid-joint": _grid_by_epoch("joint", "upsampling_grid/joint_stage_samples.csv"),
    "lesion-texture-probes": Table(
        pages=("experiments.md",),
        header="| joint stage (90 epochs, `resize`) | grid peak (real) | vesselness ratio | two-sample accuracy | FID | "
        "composite PSNR (dB) | local D ranking, last epoch |\n|---|---|---|---|---|---|---|",
        row="| {label} | {r.grid_peak:.1f} ({r.grid_peak_real:.2f}) | {r.vesselness_ratio:.2f} | "
        "{r.two_sample_accuracy:.2f} [{r.two_sample_low:.2f}, {r.two_sample_high:.2f}] | {r.fid:.3f} | {r.psnr:.2f} | "
        "{t.local_d_ranking:.2f} |",
        rows=_lesion_texture_probes,
    ),
    "map-only-fm-probe": Table(
        pages=("experiments.md",),
        header="| map-only generator (30 epochs a stage) | grid peak (real) | vesselness ratio | two-sample accuracy | "
        "FID |\n|---|---|---|---|---|",
        row="| {label} | {r.grid_peak:.1f} ({r.grid_peak_real:.2f}) | {r.vesselness_ratio:.2f} | "
        "{r.two_sample_accuracy:.2f} [{r.two_sample_low:.2f}, {r.two_sample_high:.2f}] | {r.fid:.3f} |",
        rows=_map_only_fm_probes,
    ),
    "recipe-time": Table(
        pages=("results.md",),
        header="| step (`timings.csv`) | minutes |\n|---|---|",
        row="| {step} | {s / 60:.1f} |",
        rows=_recipe_time,
    ),
    "recipe-0-12-time": Table(
        pages=("results.md",),
        header="| step | minutes |\n|---|---|",
        row="| {step} | {s / 60:.1f} |",
        rows=partial(_recipe_time, "medseg_recipe_0_12", TIME_LABELS_0_12, "all"),
    ),
    "critics-0-12": Table(
        pages=("results.md",),
        header="| critics | `d1_ranking` | `d2_ranking` | `local_d_ranking` | `d_loss` / `d_local` (joint) | `g_fm` (joint) |\n"
        "|---|---|---|---|---|---|",
        row="| {label} | {g.d1_ranking:.2f} / {l.d1_ranking:.2f} / {j.d1_ranking:.2f} | "
        "{g.d2_ranking:.2f} / {l.d2_ranking:.2f} / {j.d2_ranking:.2f} | "
        "{g.local_d_ranking:.2f} / {l.local_d_ranking:.2f} / {j.local_d_ranking:.2f} | "
        "{j.d_loss:.3f} / {j.d_local:.3f} | {j.g_fm:.3f} |",
        rows=_critics,
    ),
    "critic-test": Table(
        pages=("results.md",),
        header="| critic | region | norm | degradation | px | steps | paired accuracy (per scale) | first step ≥ 0.9 | D loss (last 10 steps) |\n"
        "|---|---|---|---|---|---|---|---|---|",
        row="| {r.critic} | {r.region} | {r.norm} | {r.degradation} | {px} | {r.steps} | "
        "{r.held_out_paired_accuracy_per_scale} | {r.first_step_0_9} | {r.d_loss_last_10_steps} |",
        rows=_critic_test,
    ),
    "critic-test-generators": Table(
        pages=("results.md",),
        header="| critic | region | norm | fakes | steps | paired accuracy (per scale) | first step ≥ 0.9 | D loss (last 10 steps) |\n"
        "|---|---|---|---|---|---|---|---|",
        row="| {r.critic} | {r.region} | {r.norm} | {r.degradation} | {r.steps} | "
        "{r.held_out_paired_accuracy_per_scale} | {r.first_step_0_9} | {r.d_loss_last_10_steps} |",
        rows=lambda: [{"r": r} for r in md_tables(
            "benchmarks/results/amd-epyc-avx512-bf16/critic_test_generators_0_12.md", "# Critic test")[0]],
    ),
    "slice-split-table-ii": Table(
        pages=("results.md",),
        header="| model | FID | PSNR (dB) | SSIM | RMSE | FID lung | PSNR lung | SSIM lung | vesselness ratio | two-sample acc. |\n"
        "|---|---|---|---|---|---|---|---|---|---|",
        row="| {label} | {q.fid_complemented:.3f} | {q.psnr_complemented:.2f} | {q.ssim_complemented:.3f} | "
        "{q.rmse_complemented:.3f} | {q.fid_lung_only:.3f} | {q.psnr_lung_only:.2f} | {q.ssim_lung_only:.3f} | "
        "{r.vesselness_ratio:.2f} | {r.two_sample_accuracy:.2f} [{r.two_sample_low:.2f}, {r.two_sample_high:.2f}] |",
        rows=_slice_table_ii,
        extra=("| *paper (their data, 512 px, 20 epochs a stage)* | – | 26.89 | 0.894 | 0.081 | | | | | |",),
    ),
    "slice-split-tables-iii-iv": Table(
        pages=("results.md",),
        header="| synthetic | A: replaced, folds | A: bootstrap | B: added, folds | B: bootstrap |\n|---|---|---|---|---|",
        row="| {a.ratio * 100:.0f}% | {a.infection_dice_mean:.2f} ± {(a.infection_dice_fold_high - a.infection_dice_fold_low) / 2:.2f} | "
        "{num(ab.infection_dice_patient_bootstrap):.1f} [{a.infection_dice_boot_low:.1f}, {a.infection_dice_boot_high:.1f}] | "
        "{b.infection_dice_mean:.2f} ± {(b.infection_dice_fold_high - b.infection_dice_fold_low) / 2:.2f} | "
        "{num(bb.infection_dice_patient_bootstrap):.1f} [{b.infection_dice_boot_low:.1f}, {b.infection_dice_boot_high:.1f}] |",
        rows=_slice_tables_iii_iv,
        extra=("| *paper* | *89.57 (0%) → 89.19 (50%)* | | *90.19 (40%)* | |",),
    ),
    "phantom-table-ii": Table(
        pages=("results.md",),
        header="| model | FID | PSNR (dB) | SSIM | RMSE (HU) | FID lung | PSNR lung | SSIM lung |\n|---|---|---|---|---|---|---|---|",
        row="| {label} | {q.fid_complemented:.3f} | {q.psnr_complemented:.2f} | {q.ssim_complemented:.3f} | "
        "{q.rmse_hu_complemented:.1f} | {q.fid_lung_only:.3f} | {q.psnr_lung_only:.2f} | {q.ssim_lung_only:.3f} |",
        rows=_phantom_table_ii,
    ),
    "smallest-table-ii": Table(
        pages=("results.md",),
        header="| Model | FID | PSNR | SSIM | PSNR lung | FID lung |\n|---|---|---|---|---|---|",
        row="| {label} | {q.fid_complemented:.3f} | {q.psnr_complemented:.2f} | {q.ssim_complemented:.3f} | "
        "{q.psnr_lung_only:.2f} | {q.fid_lung_only:.2f} |",
        rows=_smallest_table_ii,
    ),
    "amd-epyc-avx2-full": Table(
        pages=("performance.md",),
        header="| | fp32 eager | best fast path (speed-up, range) | target | met |\n|---|---|---|---|---|",
        row=AMD_FULL_ROWS,
        rows=_amd_full,
    ),
}


# ---- the prose numbers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fact:
    """A prose fragment with ``{expression:format}`` placeholders; its filled text must be in every page named."""

    pages: tuple[str, ...]
    text: str
    names: Callable[[], dict[str, Any]]


def _recipe(run: str = "medseg_recipe") -> dict[str, Any]:
    """A recipe run's results (``run``: its folder under ``bundle/docs/results``)."""
    seg = csv_rows(f"{run}/segmentation.csv")
    iq = {r.model: r for r in csv_rows(f"{run}/image_quality.csv") if r.region == "complemented"}
    t = key_values(f"{run}/timings.csv")
    published = lambda method: md_row(f"{run}/report.md", "## Published results", method=method)
    # "Semi-Inf-Net" also starts "Semi-Inf-Net + multi-class U-Net": match the whole cell there
    semi = next(r for r in md_tables(f"{run}/report.md", "## Published results")[0] if r.method == "Semi-Inf-Net")
    return {
        "real": one(seg, run="real slices only"),
        "a": one(seg, run="A: 50 % replaced"),
        "bm": one(seg, run="B: 50 % added", generator="map-only"),
        "bl": one(seg, run="B: 50 % added", generator="lesion inpainting"),
        "ours": iq["ours"],
        "ours_lung": one(csv_rows(f"{run}/image_quality.csv"), model="ours", region="lung_only"),
        "li": iq["lesion_inpainting"],
        "rr": iq["resampled_real"],
        "t": t,
        "total": sum(vars(t).values()),
        "joint": md_row(f"{run}/report.md", "## Lesion inpainting", stage="joint"),
        "infnet": published("Inf-Net"),
        "semi": semi,
        "semi_mc": published("Semi-Inf-Net + multi-class"),
        "unet": next(r for r in md_tables(f"{run}/report.md", "## Published results")[0] if r.method == "U-Net"),
        "unetpp": published("U-Net++"),
    }


def _recipe_0_12() -> dict[str, Any]:
    """The 0.12 recipe run's results, 0.11's as ``old`` (``old.li``), the last joint epochs' critic rankings."""
    run = "medseg_recipe_0_12"
    return {
        **_recipe(run),
        "old": Row(**_recipe()),
        "li_joint": last(f"{run}/lesion_inpainting_joint_training.csv"),
        "map_joint": last(f"{run}/map_only_joint_training.csv"),
    }


def _slice_split() -> dict[str, Any]:
    a = csv_rows("medseg_slice_split/table_iii_replace.csv")
    b = csv_rows("medseg_slice_split/table_iv_add.csv")
    realism = by(csv_rows("medseg_slice_split/table_realism.csv"), "model")
    gains = [r.infection_dice_mean - b[0].infection_dice_mean for r in b[1:]]
    return {"a": a, "b": b, "gains": gains, "re": realism}


def _phantom() -> dict[str, Any]:
    return {"re": by(csv_rows("phantom_demo/table_realism.csv"), "model")}


def _smallest() -> dict[str, Any]:
    a = by(csv_rows("phantom_smallest/table_iii_replace.csv"), "ratio")
    b = by(csv_rows("phantom_smallest/table_iv_add.csv"), "ratio")
    half = lambda r: (r.infection_dice_fold_high - r.infection_dice_fold_low) / 2
    return {"a": a, "b": b, "half": half, "ab": csv_rows("phantom_smallest/table_v_ablation.csv")}


def _critic_runs() -> dict[str, Any]:
    return {
        "i": last("critics_0_12/instance_norm_joint_training.csv"),
        "n": last("critics_0_12/no_norm_joint_training.csv"),
    }


def _critic_test_rows() -> dict[str, Any]:
    base = "benchmarks/results/amd-epyc-avx512-bf16/"
    main = md_tables(base + "critic_test.md", "# Critic test")[0]
    lung = md_tables(base + "critic_test_global_lung.md", "# Critic test")[0]
    blur = md_tables(base + "critic_test_global_lesion_blur.md", "# Critic test")[0]

    def row(table: tuple[Row, ...], critic: str, norm: str, degradation: str) -> Row:
        found = [r for r in table if (r.critic, r.norm, r.degradation) == (critic, norm, degradation)]
        assert len(found) == 1
        return found[0]

    instance = [num(r.held_out_paired_accuracy_per_scale) for r in main if r.norm == "instance"]
    local_loss = [float(r.d_loss_last_10_steps) for r in main if r.critic == "local"]
    global_loss = [float(r.d_loss_last_10_steps) for r in (*main, *lung, *blur) if r.critic == "global"]
    global_256 = [float(r.d_loss_last_10_steps) for r in main if r.critic == "global"]
    return {
        "row": row,
        "main": main,
        "lung": lung,
        "blur": blur,
        "instance": instance,
        "local_loss": local_loss,
        "global_loss": global_loss,
        "global_256": global_256,
    }


def _norm_probe() -> dict[str, Any]:
    path = "benchmarks/results/amd-epyc-avx512-bf16/generator_norm_on_crops.md"
    text = (REPO / path).read_text(encoding="utf-8")
    mean, absolute = map(float, search(r"whole - crop (-?[\d.]+) HU \(abs ([\d.]+) HU\)", text).groups())
    rows = md_tables(path, "# Generator instance norm")[0]
    bias = [[float(x) for x in r.bias_from_real_crop_whole_sliding_hu.split(" / ")] for r in rows]
    return {
        "g": Row(
            mean=mean,
            abs=absolute,
            whole=sum(abs(b[1]) for b in bias) / len(bias),
            sliding=sum(abs(b[2]) for b in bias) / len(bias),
        )
    }


def _unet_budget() -> dict[str, Any]:
    rows = md_tables("benchmarks/results/amd-epyc-avx512-bf16/unet_budget.md", "# Segmentation UNet budget")[0]
    return {
        "old": next(r for r in rows if "0.11 recipe" in r.unet),
        "new": next(r for r in rows if "0.12 recipe" in r.unet),
    }


def _bench() -> dict[str, Any]:
    quick = "benchmarks/results/intel-xeon-amx/quick.md"
    full = "benchmarks/results/amd-epyc-avx2/full.md"
    synth = md_tables(quick, "## Synthesis")[0]
    train = md_tables(quick, "## Training step")[0]
    variant = lambda table, name: next(r for r in table if r.variant.startswith(name))
    amd = md_tables(full, "## Synthesis")[0]
    amd_row = lambda size, batch, name: next(
        r for r in amd if (r.image_size, r.batch) == (size, batch) and r.variant.startswith(name)
    )
    amd_train = md_tables(full, "## Training step")[0]
    amd_fast = [num(r.speed_up) for r in amd_train if r.variant == "fast"]
    amd_fast_range = [num(r.speed_up, i) for r in amd_train if r.variant == "fast" for i in (1, 2)]
    amd_compiled = [num(r.speed_up) for r in amd_train if r.variant == "compiled"]
    ceiling = md_tables(full, "## fp32 compute ceiling")[0]
    shares = [num(r.share_of_peak) for r in ceiling]
    train_shares = [num(r.share_of_peak) for r in ceiling if r.case.startswith("training")]
    return {
        "int8": variant(synth, "int8_inductor"),
        "cbf16": variant(synth, "compiled_amp"),
        "ort": variant(synth, "int8_onnxruntime"),
        "amp": variant(synth, "amp"),
        "fp32": variant(synth, "fp32_eager"),
        "fast": variant(train, "fast"),
        "train_shares": train_shares,
        "amd": amd_row,
        "amd_fast": amd_fast,
        "amd_fast_range": amd_fast_range,
        "amd_compiled": amd_compiled,
        "shares": shares,
    }


def _demo() -> dict[str, Any]:
    """The demo's settings (train.yaml) and its training-slice count (the phantom runs' FID feature-net record)."""
    import yaml

    config = yaml.safe_load((REPO / "bundle" / "configs" / "train.yaml").read_text(encoding="utf-8"))
    feature_net = csv_rows("phantom_smallest/image_quality.csv")[0].feature_net
    slices = int(search(r"on (\d+) real training slices", feature_net).group(1))
    paper = yaml.safe_load((REPO / "bundle" / "configs" / "paper.yaml").read_text(encoding="utf-8"))
    return {
        "epochs": config["epochs"],
        "batch": config["batch_size"],
        "slices": slices,
        "ceil": math.ceil,
        "c": config,
        "paper": paper,
    }


def _parameter_counts() -> dict[str, Any]:
    """The generators' counts in design.md's table (tests/networks/test_param_count.py builds that table from the code)."""
    lines = (DOCS / "design.md").read_text(encoding="utf-8").splitlines()
    count = lambda start: _cells(next(line for line in lines if line.startswith(start)))[1].split(" ")[0]
    return {"demo": count("| `train.yaml`: ngf 16"), "paper": count("| `train.yaml` + `paper.yaml`: ngf 64")}


def _recipe_machine() -> dict[str, Any]:
    text = (RESULTS / "medseg_recipe" / "report.md").read_text(encoding="utf-8")
    cpu = search(r"Machine: Intel\(R\) Xeon\(R\) Processor \(([^)]+)\), 2 logical CPUs", text).group(1)
    return {"machine": f"Intel Xeon with {cpu}"}


def _configs() -> dict[str, Any]:
    """Defaults the docs quote: train.yaml (``c``) and evaluate.yaml's ``realism`` mapping (``r``)."""
    import yaml

    configs = REPO / "bundle" / "configs"
    train = yaml.safe_load((configs / "train.yaml").read_text(encoding="utf-8"))
    evaluate = yaml.safe_load((configs / "evaluate.yaml").read_text(encoding="utf-8"))
    return {"c": train, "r": evaluate["realism"]}


def _reliability_tests() -> dict[str, Any]:
    """The sizes the reliability tests run with (their module constants)."""

    def constant(file: str, name: str) -> int:
        text = (REPO / "tests" / "reliability" / file).read_text(encoding="utf-8")
        return int(search(rf"(?m)^{name} = (\d+)", text).group(1))

    return {
        "prepare": constant("test_fuzz_prepare.py", "MAX_EXAMPLES"),
        "synthesis": constant("test_fuzz_synthesis.py", "MAX_EXAMPLES"),
        "kills": constant("test_kill_resume.py", "KILLS"),
    }


def _metadata() -> dict[str, Any]:
    return {"meta": json.loads((REPO / "bundle" / "configs" / "metadata.json").read_text(encoding="utf-8"))}


RECIPE_TIME = "map-only generator {t.generator_map / 60:.1f} min, lesion-inpainting generator {t.generator_lesion_inpainting / 60:.1f}"
def _upsampling_grid_names() -> dict[str, Any]:
    """The lesion-inpainting generators' grid peak on the validation slices (``upsampling_grid/``): ``g`` the 0.12
    recipe's (transposed), ``r`` the resize probe's."""
    rows = _upsampling_grid()
    return {"g": rows[0]["r"], "r": rows[1]["r"]}


def _critic_generator_rows() -> dict[str, Any]:
    """The critic test's rows on the 0.12 generators' output (``critic_test_generators_0_12.md``) and the mean-fill
    rows they are compared with (``critic_test.md``)."""
    rows = md_tables("benchmarks/results/amd-epyc-avx512-bf16/critic_test_generators_0_12.md", "# Critic test")[0]
    fill = md_tables("benchmarks/results/amd-epyc-avx512-bf16/critic_test.md", "# Critic test")[0]
    acc = "held_out_paired_accuracy_per_scale"
    pick = {(r.critic, r.degradation.split(":")[-1]): r for r in rows}
    mean = {r.critic: r for r in fill if r.region == "lesion" and r.norm == "none" and r.degradation == "mean_fill"}
    return {"li": pick[("local", "lesion_inpainting")], "gi": pick[("global", "lesion_inpainting")],
            "lm": pick[("local", "map_only")], "gm": pick[("global", "map_only")], "acc": acc,
            "lf": mean["local"], "gf": mean["global"]}


FACTS: list[Fact] = [
    # the critic test on the 0.12 generators' output (results.md, "1. The critic test")
    Fact(("results.md",), "ranked below real ones by the local D {num(li.held_out_paired_accuracy_per_scale):.2f} and "
         "the global D {num(gi.held_out_paired_accuracy_per_scale):.2f} of the time (mean fill:\n"
         "{num(lf.held_out_paired_accuracy_per_scale):.2f} and {num(gf.held_out_paired_accuracy_per_scale):.2f}), and "
         "the map-only generator's lungs by the global D {num(gm.held_out_paired_accuracy_per_scale):.2f} (0.9 at step "
         "{gm.first_step_0_9}; its full-resolution\nscale {num(gm.held_out_paired_accuracy_per_scale, 1):.2f}), while a "
         "local D on 128-px crops of the map-only lung stays at chance ({num(lm.held_out_paired_accuracy_per_scale):.2f})",
         _critic_generator_rows),
    # the up-sampling grid of the 0.12 lesion-inpainting generator (upsampling_grid/transposed_image_quality.csv)
    Fact(("experiments.md",), "At the end the `resize` generator's grid peak is {r.grid_peak:.0f} against {g.grid_peak:.0f} "
         "(its real slices {r.grid_peak_real:.2f}), its vesselness ratio the same\n({r.vesselness_ratio:.2f}), FID lower "
         "({r.fid:.3f} against {g.fid:.3f})", _upsampling_grid_names),
    Fact(("design.md",), "grid peak on validation {r.grid_peak:.0f} against {g.grid_peak:.0f}, vesselness unchanged",
         _upsampling_grid_names),
    Fact(("results.md",), "and to {r.grid_peak:.0f} after the joint stage", _upsampling_grid_names),
    Fact(("experiments.md",), "grid peak {c.grid_peak:.1f} against {a.grid_peak:.1f}, vesselness\n{c.vesselness_ratio:.2f}, "
         "two-sample {c.two_sample_accuracy:.2f} [{c.two_sample_low:.2f}, {c.two_sample_high:.2f}]; FID rose ({c.fid:.3f} "
         "against {a.fid:.3f})", lambda: dict(zip("abc", (row["r"] for row in _map_only_fm_probes())))),
    Fact(("results.md",), "(its grid peak rose from {a.grid_peak:.0f} to {b.grid_peak:.0f})",
         lambda: dict(zip("ab", (row["r"] for row in _map_only_fm_probes())))),
    Fact(("experiments.md",), "(`quarter_rows` {q.quarter_rows:.1f} in", lambda: {
        "q": one(csv_rows("lesion_texture_0_15/joint_stage_samples.csv"), run="fm1", epoch=90)}),
    Fact(("README.md",), "(grid peak {g.grid_peak:.0f}\n  on the validation slices", _upsampling_grid_names),
    Fact(("results.md",), "scores {g.grid_peak:.0f} on the validation slices, its\n  real slices {g.grid_peak_real:.2f}",
         _upsampling_grid_names),
    Fact(("experiments.md",), "stands {g.grid_peak:.0f} times above its ring at a grid frequency; its real slices at the "
         "same\nwindows {g.grid_peak_real:.2f}", _upsampling_grid_names),
    # the recipe's time (timings.csv)
    Fact(("results.md",), RECIPE_TIME, _recipe),
    Fact(("results.md",), "image quality and realism {t.image_quality / 60:.1f}", _recipe),
    Fact(
        ("results.md",),
        "segmentation real-only/A/B {t.segmentation_map / 60:.1f}, segmentation\nB with inpainting "
        "{t.segmentation_lesion_inpainting / 60:.1f}; **{total / 60:.0f} min in all as measured** ({total / 60:.1f})",
        _recipe,
    ),
    Fact(("README.md",), "Time: **{total / 60:.0f} min in all**", _recipe),
    Fact(
        ("results.md", "usage.md"),
        "about {(t.segmentation_map + t.segmentation_lesion_inpainting) / 60:.0f} min a seed",
        _recipe,
    ),
    Fact(("../../README.md",), "0.11's one-seed, 256-px recipe took {total / 60:.0f} min", _recipe),
    # the recipe's segmentation and realism (segmentation.csv, image_quality.csv, report.md)
    Fact(
        ("README.md",),
        "changed infection Dice by\n  {bm.infection_diff:+.1f} points (paired interval {bm.infection_diff_low:.1f} to "
        "{bm.infection_diff_high:+.1f}), less than the real-only fold half-width of {real.infection_fold_half_width:.1f}",
        _recipe,
    ),
    Fact(
        ("README.md",),
        "with the lesion-inpainting generator {bl.infection_diff:.1f}. Replacing half the real slices (A) cost "
        "{-a.infection_diff:.1f} points",
        _recipe,
    ),
    Fact(("README.md",), "reaches {real.infection_dice:.1f}, Inf-Net's {num(infnet.infection):.1f}", _recipe),
    Fact(("README.md",), "vesselness ratio is {li.vesselness_ratio:.2f} (target", _recipe),
    Fact(
        ("README.md",),
        "scores {rr.vesselness_ratio:.2f} and\n  two-sample accuracy {rr.two_sample_accuracy:.2f}",
        _recipe,
    ),
    Fact(
        ("results.md",),
        "raised infection Dice by {bm.infection_diff:.1f} points (paired interval {bm.infection_diff_low:.1f} to "
        "{bm.infection_diff_high:+.1f}), less than the\nreal-only fold half-width of {real.infection_fold_half_width:.1f}",
        _recipe,
    ),
    Fact(
        ("results.md",),
        "GGO and\nconsolidation Dice went down by {real.ggo_dice - bm.ggo_dice:.1f} and "
        "{real.consolidation_dice - bm.consolidation_dice:.1f}",
        _recipe,
    ),
    Fact(
        ("results.md",),
        "B changed infection Dice by\n{bl.infection_diff:.1f} ({bl.infection_diff_low:.1f} to {bl.infection_diff_high:+.1f}; "
        "−0.5 with the 0.9.0 generator), GGO by {bl.ggo_dice - real.ggo_dice:.1f} and consolidation by "
        "{bl.consolidation_dice - real.consolidation_dice:+.1f}",
        _recipe,
    ),
    Fact(("results.md",), "Replacing half the real slices (A) cost {-a.infection_diff:.1f} points", _recipe),
    Fact(
        ("results.md",),
        "(≥ {num(infnet.infection):.1f}) is **met** ({real.infection_dice:.1f} real-only, "
        "{max(real.infection_dice, a.infection_dice, bm.infection_dice, bl.infection_dice):.1f} best)",
        _recipe,
    ),
    Fact(("results.md",), "(whole-slice FID\n{li.fid:.3f} against {ours.fid:.3f} for map-only", _recipe),
    Fact(
        ("results.md",),
        "**{li.vesselness_ratio:.2f}** of real (0.58 with a 60-epoch and 0.47 with a 30-epoch joint stage; "
        "target 0.8–1.2: missed by {0.8 - li.vesselness_ratio:.2f})",
        _recipe,
    ),
    Fact(
        ("results.md",),
        "**{100 * li.two_sample_accuracy:.1f} %** of the time [{100 * li.two_sample_low:.1f}, "
        "{100 * li.two_sample_high:.1f}]",
        _recipe,
    ),
    Fact(("results.md",), "target < 70 %: missed by {100 * li.two_sample_accuracy - 70:.1f} points", _recipe),
    Fact(
        ("results.md",),
        "`d_local` ended the joint stage at {num(joint.local_d_loss):.3f} (chance\n0.25), the global `d_loss` "
        "at {num(joint.d_loss):.3f}",
        _recipe,
    ),
    Fact(("results.md",), "vesselness ratio of only **{rr.vesselness_ratio:.2f}**", _recipe),
    Fact(
        ("results.md",),
        "**{100 * rr.two_sample_accuracy:.0f} %** of the time ([{rr.two_sample_low:.2f}, {rr.two_sample_high:.2f}] in the lung",
        _recipe,
    ),
    Fact(
        ("results.md",),
        "lesion inpainting's {li.two_sample_accuracy:.3f} [{li.two_sample_low:.3f}, {li.two_sample_high:.3f}]",
        _recipe,
    ),
    Fact(
        ("results.md",),
        "would need {100 * 0.8 / rr.vesselness_ratio:.0f} % of that ceiling; lesion inpainting reaches "
        "{li.vesselness_ratio:.2f}, {100 * li.vesselness_ratio / rr.vesselness_ratio:.0f} % of it",
        _recipe,
    ),
    Fact(
        ("results.md",),
        "binary infection U-Net {num(unet.infection):.1f}, U-Net++ {num(unetpp.infection):.1f}, Inf-Net "
        "{num(infnet.infection):.1f}, Semi-Inf-Net {num(semi.infection):.1f}",
        _recipe,
    ),
    Fact(("results.md",), "GGO {num(semi_mc.ggo):.1f}, consolidation {num(semi_mc.consolidation):.1f}", _recipe),
    Fact(
        ("results.md",),
        "reaches {real.infection_dice:.1f} (Inf-Net's level; below Semi-Inf-Net by "
        "{num(semi.infection) - real.infection_dice:.1f} points), GGO {real.ggo_dice:.1f}\n({num(semi_mc.ggo) - real.ggo_dice:.1f} below) "
        "and consolidation {real.consolidation_dice:.1f} ({real.consolidation_dice - num(semi_mc.consolidation):.1f} above)",
        _recipe,
    ),
    Fact(
        ("evaluation.md",),
        "vesselness {rr.vesselness_ratio:.2f} and two-sample accuracy {rr.two_sample_accuracy:.2f} "
        "[{rr.two_sample_low:.2f}, {rr.two_sample_high:.2f}] in the lung",
        _recipe,
    ),
    # the 0.12 recipe run (medseg_recipe_0_12/: one segmentation seed), against 0.11's where a page compares
    Fact(
        ("README.md",),
        "lesion-inpainting vesselness {li.vesselness_ratio:.2f} and FID {li.fid:.3f}\n(0.11: "
        "{old.li.vesselness_ratio:.2f}, {old.li.fid:.3f}), but a visible checkerboard that the two-sample classifier "
        "finds ({li.two_sample_accuracy:.2f}), and a B gain of {signed(bl.infection_diff)}\ninfection Dice points "
        "[{signed(bl.infection_diff_low)}, {signed(bl.infection_diff_high)}] (GGO and consolidation above zero); "
        "{total / 60:.0f} min with one seed",
        _recipe_0_12,
    ),
    Fact(("README.md",), "the recipe takes {total / 60:.0f} min with one segmentation seed", _recipe_0_12),
    Fact(
        ("../../README.md",),
        "0.12's took {total / 60:.0f} min with one seed, about "
        "{(t.segmentation_map + t.segmentation_lesion_inpainting) / 60:.0f} min a seed of segmentation",
        _recipe_0_12,
    ),
    Fact(
        ("usage.md",),
        "in the 0.12 run a seed took about {(t.segmentation_map + t.segmentation_lesion_inpainting) / 60:.0f} min "
        "and the one-seed recipe {total / 60:.0f} min in all",
        _recipe_0_12,
    ),
    Fact(
        ("results.md",),
        "The lesion-inpainting vesselness ratio rose from {old.li.vesselness_ratio:.2f} to {li.vesselness_ratio:.2f} "
        "and FID fell from {old.li.fid:.3f} to {li.fid:.3f}, but\n  the two-sample classifier separates the lesions "
        "better ({li.two_sample_accuracy:.2f} against {old.li.two_sample_accuracy:.2f})",
        _recipe_0_12,
    ),
    Fact(
        ("results.md",),
        "The map-only vesselness ratio ({ours.vesselness_ratio:.2f}, {old.ours.vesselness_ratio:.2f} in 0.11)",
        _recipe_0_12,
    ),
    Fact(
        ("results.md",),
        "its two-sample accuracy is {ours.two_sample_accuracy:.2f} ({old.ours.two_sample_accuracy:.2f})",
        _recipe_0_12,
    ),
    Fact(
        ("results.md",),
        "the rankings are d1 {li_joint.d1_ranking:.2f}, d2 {li_joint.d2_ranking:.2f}, local "
        "{li_joint.local_d_ranking:.2f} (lesion\n  inpainting; map-only d1 {map_joint.d1_ranking:.2f}, d2 "
        "{map_joint.d2_ranking:.2f})",
        _recipe_0_12,
    ),
    Fact(
        ("results.md",),
        "Lesion-inpainting B gains {signed(bl.infection_diff)} infection Dice points [{signed(bl.infection_diff_low)}, "
        "{signed(bl.infection_diff_high)}] over real only, with GGO\n  {paired(bl, 'ggo')} and consolidation "
        "{paired(bl, 'consolidation')} above zero",
        _recipe_0_12,
    ),
    Fact(
        ("results.md",),
        "real-only infection Dice is {real.infection_dice:.1f} (0.11's 32-512 UNet: {old.real.infection_dice:.1f}), "
        "so the\n  Inf-Net level ({num(infnet.infection):.1f})",
        _recipe_0_12,
    ),
    Fact(
        ("results.md",),
        "**Time.** {total / 60:.0f} min with one seed (over the 2 h target even before the two further seeds, about "
        "{(t.segmentation_map + t.segmentation_lesion_inpainting) / 60:.0f} min each)",
        _recipe_0_12,
    ),
    Fact(
        ("results.md",),
        "lesion vesselness {li.vesselness_ratio:.2f} (target 0.85-1.15, missed by {0.85 - li.vesselness_ratio:.2f}) "
        "and two-sample {li.two_sample_accuracy:.2f}\n(target ≤ 0.62, missed by {li.two_sample_accuracy - 0.62:.2f})",
        _recipe_0_12,
    ),
    Fact(
        ("results.md",),
        "map-only vesselness {ours.vesselness_ratio:.2f} (target ≥ 0.8, met) and\ntwo-sample "
        "{ours.two_sample_accuracy:.2f} (target ≤ 0.70, missed by {ours.two_sample_accuracy - 0.70:.2f})",
        _recipe_0_12,
    ),
    Fact(
        ("results.md",),
        "{total / 60:.0f} min (target ≤ 120, missed by {total / 60 - 120:.0f} with one seed)",
        _recipe_0_12,
    ),
    # int8 against bf16 (the bf16 side is the recipe's map-only row; the int8 run's files were not kept)
    Fact(
        ("results.md",),
        "lung FID 0.2248 vs\n{ours_lung.fid:.4f}, lung KID 0.00411 vs {ours_lung.kid:.5f}, whole-slice PSNR against the real "
        "slices 17.77 vs {ours.psnr:.2f} dB, vesselness ratio\n0.679 vs {ours.vesselness_ratio:.3f}, two-sample accuracy 0.76 [0.71, 0.81] "
        "vs {ours.two_sample_accuracy:.2f} [{ours.two_sample_low:.2f}, {ours.two_sample_high:.2f}]",
        _recipe,
    ),
    Fact(
        ("results.md",),
        "so its FID moved 0.296 → {ours.fid:.3f} and its vesselness 0.66 → {ours.vesselness_ratio:.2f}",
        _recipe,
    ),
    # 0.12 measurements (critics_0_12/, critic test benchmarks)
    Fact(
        ("results.md",), "The feature-matching term fell {i.g_fm / n.g_fm:.1f}x at the same `lambda_fm`", _critic_runs
    ),
    Fact(
        ("results.md",),
        "Local D (64-px crops, 100 steps): no norm {num(row(main, 'local', 'none', 'mean_fill').held_out_paired_accuracy_per_scale):.2f} "
        "(0.9 at step {row(main, 'local', 'none', 'mean_fill').first_step_0_9}) on mean fill and "
        "{num(row(main, 'local', 'none', 'blur').held_out_paired_accuracy_per_scale):.2f} (step "
        "{row(main, 'local', 'none', 'blur').first_step_0_9}) on blur",
        _critic_test_rows,
    ),
    Fact(
        ("results.md",),
        "0.92 on mean fill (0.9 at step {row(lung, 'global', 'none', 'mean_fill').first_step_0_9}), "
        "{num(row(lung, 'global', 'none', 'blur').held_out_paired_accuracy_per_scale):.2f} on blur (step "
        "{row(lung, 'global', 'none', 'blur').first_step_0_9})",
        _critic_test_rows,
    ),
    Fact(
        ("results.md",),
        "{num(row(blur, 'global', 'none', 'blur').held_out_paired_accuracy_per_scale):.2f} after 300 steps "
        "(D1 {num(row(blur, 'global', 'none', 'blur').held_out_paired_accuracy_per_scale, 1):.2f}, D2 at half resolution "
        "{num(row(blur, 'global', 'none', 'blur').held_out_paired_accuracy_per_scale, 2):.2f}",
        _critic_test_rows,
    ),
    Fact(
        ("design.md",),
        "the instance-norm critics stayed at\n  {min(instance):.2f}-{max(instance):.2f}, the local D without norm reached 0.9 in "
        "{row(main, 'local', 'none', 'mean_fill').first_step_0_9} (mean fill) / {row(main, 'local', 'none', 'blur').first_step_0_9} (blur) "
        "of 100 steps and the global D {num(row(main, 'global', 'none', 'mean_fill').held_out_paired_accuracy_per_scale):.2f}\n  after 300 "
        "(mean fill), while their losses read {min(local_loss):.3f}-{max(local_loss):.3f} (local) and "
        "{min(global_256):.3f}-{max(global_256):.3f} (global)",
        _critic_test_rows,
    ),
    Fact(
        ("design.md",),
        "(spectral norm: local {num(row(main, 'local', 'spectral', 'mean_fill').held_out_paired_accuracy_per_scale):.2f} "
        "mean fill but {num(row(main, 'local', 'spectral', 'blur').held_out_paired_accuracy_per_scale):.2f} blur, global 0.9 only at step "
        "{row(main, 'global', 'spectral', 'mean_fill').first_step_0_9})",
        _critic_test_rows,
    ),
    Fact(
        ("results.md",),
        "The losses read {min(local_loss):.3f}-{max(local_loss):.3f} (local) and "
        "{min(global_loss):.3f}-{max(global_loss):.3f} (global) in every row",
        _critic_test_rows,
    ),
    # the generator's instance norm on crops, the segmentation UNet's budget (benchmarks)
    Fact(("results.md",), "by {g.abs:.0f} HU (mean absolute; mean {g.mean:.0f} HU)", _norm_probe),
    Fact(
        ("results.md",),
        "the mean absolute bias from the real region was {g.sliding:.0f} HU\nthrough windows and {g.whole:.0f} HU on the "
        "whole slice",
        _norm_probe,
    ),
    Fact(("usage.md",), "0.12's UNet is {num(new.speed_vs_the_first):.2f}× faster an iteration", _unet_budget),
    Fact(
        ("results.md",),
        "{num(new.s_an_iteration):.3f} s an\n  iteration against {num(old.s_an_iteration):.3f} s at batch 4, "
        "{num(new.speed_vs_the_first):.2f}× faster",
        _unet_budget,
    ),
    # the slice-level split (tables III, IV, realism)
    Fact(
        ("results.md",),
        "(as in the paper: {a[0].infection_dice_mean:.1f} -> {a[-1].infection_dice_mean:.1f} at 50 %), and adding "
        "synthetic slices raised it by {min(gains):.1f}–{max(gains):.1f} points",
        _slice_split,
    ),
    Fact(("results.md",), "from {b[0].consolidation_dice_mean:.1f} % with real slices only", _slice_split),
    Fact(
        ("results.md",),
        "(vesselness {re['ours'].vesselness_ratio:.2f}–{re['pix2pixhd'].vesselness_ratio:.2f}) and a\n"
        "classifier tells their crops from real ones {100 * re['pix2pixhd'].two_sample_accuracy:.0f}–"
        "{100 * re['pix2pix'].two_sample_accuracy:.0f} % of the time",
        _slice_split,
    ),
    # the phantom (realism)
    Fact(
        ("results.md",),
        "{re['ours'].vesselness_ratio:.2f} (ours), {re['pix2pixhd'].vesselness_ratio:.2f} (pix2pixHD), "
        "{re['pix2pix'].vesselness_ratio:.2f} (pix2pix) and {re['mean_lung'].vesselness_ratio:.2f} (fill)",
        _phantom,
    ),
    Fact(
        ("results.md",),
        "accuracy {re['ours'].two_sample_accuracy:.2f}, {re['pix2pixhd'].two_sample_accuracy:.2f}, "
        "{re['pix2pix'].two_sample_accuracy:.2f} and {re['mean_lung'].two_sample_accuracy:.2f}",
        _phantom,
    ),
    # the smallest scale (tables III, IV, V)
    Fact(
        ("results.md",),
        "{a[0.0].infection_dice_mean:.1f} ± {half(a[0.0]):.1f} % with real slices only, "
        "{a[0.5].infection_dice_mean:.1f} ± {half(a[0.5]):.1f} % with 50 %\nreplaced (A), "
        "{b[0.5].infection_dice_mean:.1f} ± {half(b[0.5]):.1f} % with 50 % added (B)",
        _smallest,
    ),
    Fact(
        ("results.md",),
        "FID {min(r.fid for r in ab):.3f}-{max(r.fid for r in ab):.3f}, PSNR {min(r.psnr for r in ab):.1f}-"
        "{max(r.psnr for r in ab):.1f}, Dice {min(r.dice_infection for r in ab):.1f}-{max(r.dice_infection for r in ab):.1f} %",
        _smallest,
    ),
    # speed (benchmarks/results)
    Fact(("README.md",), "joint training step at 256 px {num(fast.speed_up):.2f}× faster than fp32", _bench),
    Fact(("README.md",), "int8 synthesis at 512 px runs {num(int8.speed_up):.2f}× fp32 eager", _bench),
    Fact(("README.md",), "runs at {min(train_shares):.0f}–{max(train_shares):.0f} % of the CPU's peak", _bench),
    Fact(
        ("performance.md",),
        "**{num(int8.speed_up):.2f}×** ({num(int8.speed_up, 1):.2f}–{num(int8.speed_up, 2):.2f}) fp32 eager, "
        "against {num(cbf16.speed_up):.2f}× for compiled bf16 and {num(ort.speed_up):.2f}×\nfor ONNX Runtime's int8",
        _bench,
    ),
    Fact(
        ("performance.md",),
        "| {num(fp32.slices_s):.2f} slices/s | int8 (inductor, bf16 between) {num(int8.speed_up):.2f}× "
        "({num(int8.speed_up, 1):.2f}–{num(int8.speed_up, 2):.2f})",
        _bench,
    ),
    Fact(
        ("performance.md",),
        "fp32 eager at {min(train_shares):.0f}–{max(train_shares):.0f} % of the machine's measured fp32 peak",
        _bench,
    ),
    Fact(
        ("README.md",),
        "(AMD EPYC: a training step {min(amd_fast):.2f}–{max(amd_fast):.2f}×, synthesis at 512 px "
        "{num(amd('512', '1', 'compiled_fp32').speed_up):.2f}–{num(amd('512', '8', 'compiled_fp32').speed_up):.2f}× with "
        "`compile: true`)",
        _bench,
    ),
    Fact(
        ("README.md",),
        "a training step {num(fast.speed_up):.2f}× and int8 synthesis {num(int8.speed_up):.2f}× "
        "(compiled bf16 {num(cbf16.speed_up):.2f}×)",
        _bench,
    ),
    # the demo (train.yaml's defaults)
    Fact(
        ("results.md",),
        "{epochs * ceil(slices / batch)} iterations a stage ({slices} training slices, batch {batch}, {epochs} epochs)",
        _demo,
    ),
    Fact(
        ("README.md",),
        "2^(`n_downsampling` + 1): {2 ** (c['n_downsampling'] + 1)} with the defaults, "
        "{2 ** (paper['n_downsampling'] + 1)} with `paper.yaml`",
        _demo,
    ),
    Fact(("README.md",), "least-squares GAN loss + {c['lambda_fm']:.0f} × DFM", _demo),
    Fact(
        ("README.md",),
        "(level {c['window_level']}, width {c['window_width']}: [{c['window_level'] - c['window_width'] // 2}, "
        "{c['window_level'] + c['window_width'] // 2}] HU)",
        _demo,
    ),
    Fact(
        ("data.md",),
        "(level {c['window_level']}, width {c['window_width']}): HU are clipped to "
        "[{c['window_level'] - c['window_width'] // 2}, {c['window_level'] + c['window_width'] // 2}]",
        _demo,
    ),
    Fact(
        ("README.md",),
        "({c['phantom_patients']} patients × {c['phantom_slices']} slices at {c['phantom_size']} px by default)",
        _demo,
    ),
    Fact(("README.md",), "(demo generator {demo}, paper-size generator {paper})", _parameter_counts),
    Fact(("README.md",), "on a 2-core {machine}", _recipe_machine),
    Fact(
        ("design.md",),
        "`n_blocks_local` residual blocks ({paper['n_blocks_local']} in pix2pixHD and `paper.yaml`, "
        "{c['n_blocks_local']} in the demo's `train.yaml`)",
        _demo,
    ),
    Fact(
        ("reliability.md",),
        "{prepare + synthesis} damaged inputs a run, drawn by hypothesis with a fixed seed: {prepare} raw datasets for "
        "`prepare`",
        _reliability_tests,
    ),
    Fact(("reliability.md",), "and {synthesis}\n  input sets for synthesis", _reliability_tests),
    Fact(("reliability.md",), "({kills} in a row at random points", _reliability_tests),
    Fact(("README.md",), "The tests feed {prepare + synthesis} damaged inputs a run", _reliability_tests),
    # defaults the pages quote (configs)
    Fact(("design.md",), "`lambda_fm` ({c['lambda_fm']:.0f}) × DFM", _configs),
    Fact(("design.md",), "`lambda_local` ({c['lambda_local']:.0f})", _configs),
    Fact(("design.md",), "the first `ranking_count` ({c['ranking_count']}) validation slices", _configs),
    Fact(("evaluation.md",), "`kid_subsets` ({r['kid_subsets']}) random subsets", _configs),
    Fact(("evaluation.md",), "use `picture_pixel_mm`, {r['picture_pixel_mm']})", _configs),
    Fact(
        ("evaluation.md",),
        "`crops_per_slice` ({r['crops_per_slice']}) crops of `crop_size` ({r['crop_size']}) px",
        _configs,
    ),
    Fact(
        ("evaluation.md",),
        "for `iterations` ({r['iterations']}) Adam steps per fold; `folds` ({r['folds']}) folds",
        _configs,
    ),
    Fact(
        ("evaluation.md",),
        "Scales sigma = {', '.join(format(s, 'g') for s in r['vessel_sigmas_mm'])} mm",
        _configs,
    ),
    # the metadata's output description
    Fact(
        ("README.md",),
        "| output (`pred`) | one channel, H × W | [{meta['network_data_format']['outputs']['pred']['value_range'][0]}, "
        "{meta['network_data_format']['outputs']['pred']['value_range'][1]}] (tanh)",
        _metadata,
    ),
]


# ---- numbers quoted from another text ---------------------------------------------------------------------

# (page, the text it quotes, fragment): a number a page repeats from a benchmark write-up or another page must be
# in both, so the summary and its source cannot part.
QUOTES: list[tuple[str, str, str]] = [
    ("experiments.md", "benchmarks/README.md", "6.66×"),
    ("experiments.md", "benchmarks/README.md", "3.72×"),
    ("experiments.md", "benchmarks/README.md", "4.72×"),
    ("experiments.md", "benchmarks/README.md", "0.96× of the kept"),
    ("experiments.md", "benchmarks/README.md", "0.97–1.23×"),
    ("experiments.md", "benchmarks/README.md", "266 s"),
    ("experiments.md", "benchmarks/README.md", "1.08–1.18×"),
    ("performance.md", "benchmarks/README.md", "3.07× fp32 eager"),
    ("performance.md", "benchmarks/README.md", "2.09× (1.88–2.22)"),
    ("README.md", "bundle/docs/reliability.md", "200 damaged inputs a run"),
    ("README.md", "bundle/docs/reliability.md", "6 kills"),
    ("README.md", "bundle/docs/data.md", "[−1350, 150]"),
    ("README.md", "bundle/docs/data.md", "300 : 73 : 73"),
]


@pytest.mark.parametrize("index", range(len(QUOTES)))
def test_quoted_numbers_are_in_their_source(index: int) -> None:
    page, source, fragment = QUOTES[index]
    for name, text in (
        (page, _page(page).read_text(encoding="utf-8")),
        (source, (REPO / source).read_text(encoding="utf-8")),
    ):
        assert _words(fragment) in _words(text), f"{name} does not have {fragment!r}"


# ---- the checks -------------------------------------------------------------------------------------------


def _words(text: str) -> str:
    """Text with every run of white space (line breaks, indentation) as one space: prose may be re-wrapped."""
    return " ".join(text.split())


def _page(name: str) -> Path:
    return (DOCS / name).resolve()


def _tables_after_markers(text: str) -> dict[str, list[str]]:
    """Each marker's id (or ``source: ...``) -> the table lines right after it."""
    lines = text.splitlines()
    found: dict[str, list[str]] = {}
    for i, line in enumerate(lines):
        match = MARKER.match(line.strip())
        if match:
            j = i + 1
            table = []
            while j < len(lines) and lines[j].startswith("|"):
                table.append(lines[j])
                j += 1
            assert match.group(1) not in found, f"marker {match.group(1)!r} twice"
            found[match.group(1)] = table
    return found


@pytest.mark.parametrize("table_id", sorted(TABLES))
def test_generated_tables_equal_the_result_files(table_id: str) -> None:
    spec = TABLES[table_id]
    expected = spec.text()
    assert len(expected) > 2, f"{table_id}: no rows from the result files"
    for page in spec.pages:
        tables = _tables_after_markers(_page(page).read_text(encoding="utf-8"))
        assert table_id in tables, f"{page}: no '<!-- numbers: {table_id} -->' table"
        assert tables[table_id] == expected, (
            f"{page}: table {table_id} differs from the result files; run `python tests/test_docs.py --write`.\n"
            + "\n".join(expected)
        )


@pytest.mark.parametrize("index", range(len(FACTS)))
def test_prose_numbers_equal_the_result_files(index: int) -> None:
    fact = FACTS[index]
    expected = fill(fact.text, fact.names())
    for page in fact.pages:
        text = _page(page).read_text(encoding="utf-8")
        assert _words(expected) in _words(text), f"{page} does not say (from the result files):\n{expected}"


def _tables(text: str) -> list[tuple[int, list[str]]]:
    """(line index of the header, table lines) for every Markdown table outside code blocks."""
    lines = text.splitlines()
    out = []
    fence = False
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            fence = not fence
        if not fence and lines[i].startswith("|") and (i == 0 or not lines[i - 1].startswith("|")):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.append((i, lines[i:j]))
            i = j
            continue
        i += 1
    return out


@pytest.mark.parametrize("page", [p.name for p in DOCS.glob("*.md")])
def test_every_table_with_numbers_says_where_they_come_from(page: str) -> None:
    lines = _page(page).read_text(encoding="utf-8").splitlines()
    unmarked = []
    for start, table in _tables("\n".join(lines)):
        if not any(re.search(r"\d\.\d", row) for row in table[2:]):
            continue
        above = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        match = MARKER.match(above)
        if not match:
            unmarked.append(table[0])
            continue
        ref = match.group(1)
        assert ref in TABLES or (ref.startswith("source: ") and len(ref) > 20), f"{page}: marker {ref!r}"
        assert ref not in TABLES or page in TABLES[ref].pages, f"{page}: table {ref} is not declared for this page"
    assert not unmarked, f"{page}: tables with numbers and no '<!-- numbers: ... -->' line above:\n" + "\n".join(
        unmarked
    )


# ---- links ------------------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces -> '-'."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        match = re.match(r"^(#{1,6}) (.+?)\s*#*$", line)
        if match and not fence:
            base = slug(match.group(2))
            n = seen.get(base, 0)
            out.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return out


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return LINK.findall(text)


@pytest.mark.parametrize("page", [str(p.relative_to(REPO)) for p in PAGES])
def test_relative_links_and_anchors_resolve(page: str) -> None:
    path = REPO / page
    broken = []
    links = _links(path)
    for link in links:
        if re.match(r"^[a-z]+:", link):
            continue  # http(s), mailto: not checked here
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(f"{link}: no {file.relative_to(REPO) if file.is_relative_to(REPO) else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{link}: no heading with anchor #{anchor} in {file.name}")
    assert not broken, f"{page}: broken links:\n" + "\n".join(broken)


def test_the_guide_links_every_page_and_stays_a_guide() -> None:
    guide = DOCS / "README.md"
    lines = guide.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 300, f"bundle/docs/README.md has {len(lines)} lines; move details into a page"
    linked = {link.partition("#")[0] for link in _links(guide)}
    pages = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    assert pages <= linked, f"pages the guide does not link: {sorted(pages - linked)}"
    for section in (
        "## Model overview",
        "## Data",
        "## Commands",
        "## Main results",
        "## Limitations",
        "## References",
        "## License",
    ):
        assert section in lines, f"the guide has no '{section}' section"


def test_top_level_readme_links_the_guide() -> None:
    links = _links(REPO / "README.md")
    assert "bundle/docs/README.md" in links


# ---- versions ---------------------------------------------------------------------------------------------


def test_versions_agree() -> None:
    meta = json.loads((REPO / "bundle" / "configs" / "metadata.json").read_text(encoding="utf-8"))
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg", encoding="utf-8")
    version = meta["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert cfg["metadata"]["version"] == version, "setup.cfg and metadata.json name different versions"
    newest = max(meta["changelog"], key=lambda v: tuple(int(x) for x in v.split(".")))
    assert newest == version, f"metadata.json's newest changelog entry is {newest}, its version {version}"
    assert next(iter(meta["changelog"])) == version, "the changelog lists the newest version first"
    guide = (DOCS / "README.md").read_text(encoding="utf-8")
    assert re.findall(r"Bundle version \*\*(\d+\.\d+\.\d+)\*\*", guide) == [version], (
        "the guide's 'Bundle version' line"
    )
    monai, torch = search(r"MONAI (\d[\w.]*), PyTorch (\d[\w.]*)\.", guide).groups()
    assert meta["monai_version"] == monai and meta["pytorch_version"].startswith(torch), (
        "the guide's MONAI / PyTorch versions"
    )
    torch_top, monai_top = search(r"PyTorch (\d[\w.]*), MONAI (\d[\w.]*)", (REPO / "README.md").read_text()).groups()
    assert meta["monai_version"] == monai_top and meta["pytorch_version"].startswith(torch_top), "README.md's versions"
    # versions the pages' headings name ("0.12: critics ...", "(0.11)"): none newer than the bundle, each in the changelog
    headings = [line for p in PAGES for line in p.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    named = {m for line in headings for m in re.findall(r"\b0\.\d+(?:\.\d+)?\b", line)}
    assert named, "no heading names a version"
    releases = {v.rsplit(".", 1)[0] for v in meta["changelog"]} | set(meta["changelog"])
    assert named <= releases, f"headings name versions the changelog does not have: {sorted(named - releases)}"


def test_requirements_pins_agree_with_the_metadata() -> None:
    """Every exact pin of requirements.txt and metadata.json's versions of the same package are one version."""
    meta = json.loads((REPO / "bundle" / "configs" / "metadata.json").read_text(encoding="utf-8"))
    named = {**meta["required_packages_version"], "torch": meta["pytorch_version"], "monai": meta["monai_version"]}
    pins = dict(re.findall(r"(?m)^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "requirements.txt").read_text(encoding="utf-8")))
    assert pins, "requirements.txt pins nothing"
    differ = {p: (v, named[p]) for p, v in pins.items() if p in named and named[p] != v}
    assert not differ, f"requirements.txt and metadata.json disagree (pin, metadata): {differ}"
    assert {"torch", "monai"} <= pins.keys()


def test_metadata_describes_the_output_as_the_network_writes_it() -> None:
    meta = json.loads((REPO / "bundle" / "configs" / "metadata.json").read_text(encoding="utf-8"))
    pred = meta["network_data_format"]["outputs"]["pred"]
    # tanh output on the model scale, not Hounsfield units: HU only after the inverse intensity transform
    assert pred["value_range"] == [-1, 1]
    assert pred["format"] == "magnitude", "a [-1, 1] output is not in Hounsfield units"
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["format"] == "segmentation" and image["value_range"] == [0, 1]
    assert len(image["channel_def"]) == image["num_channels"] == 4


# ---- rewriting the generated tables -----------------------------------------------------------------------


def write_tables() -> list[str]:
    """Replace every generated table in the pages with the one built from the result files; return what changed."""
    changed = []
    for table_id, spec in TABLES.items():
        for page in spec.pages:
            path = _page(page)
            lines = path.read_text(encoding="utf-8").splitlines()
            at = next((i for i, line in enumerate(lines) if line.strip() == f"<!-- numbers: {table_id} -->"), None)
            if at is None:
                raise SystemExit(f"{page}: add a line '<!-- numbers: {table_id} -->' where the table goes")
            end = at + 1
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            new = spec.text()
            if lines[at + 1 : end] != new:
                lines[at + 1 : end] = new
                path.write_text("\n".join(lines) + "\n", encoding="utf-8")
                changed.append(f"{page}: {table_id}")
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/test_docs.py --write   (rewrites the generated tables of the docs)")
    print("\n".join(write_tables()) or "every generated table is up to date")
