"""The evaluation report: ``evaluate.yaml`` run id ``report`` (:class:`EvaluationReport`).

Reads what the other run ids wrote and turns it into the paper's tables:

- Table II from ``<image_quality_dir>/image_quality.csv`` (``evaluate.yaml run``), and from the same file
  the realism table (FID, KID, vesselness ratio, classifier two-sample test);
- Tables III (experiment A, replace) and IV (experiment B, add) from
  ``<segmentation_dir>/summary.csv`` (``segmentation.yaml run``), with the
  10-fold intervals in the tables and the patient-bootstrap intervals beside;
- Table V from ``<ablation_dir>/ablation.csv`` (``evaluate.yaml ablation``).

A section whose input is missing says so (at least one must exist). Every
table is headed by the provenance of its numbers (data, image size, epochs,
seed, commit). Outputs (``<output_dir>/report/``, built under a temporary name,
replaced only with ``overwrite``)::

    report.md
    table_ii_image_quality.csv, table_realism.csv, table_iii_replace.csv, table_iv_add.csv, table_v_ablation.csv
    image_quality.csv, image_quality_per_image.csv, segmentation_summary.csv, ablation.csv   (the inputs, every number)
    dice_vs_ratio.png   Dice against the synthetic ratio, experiments A and B, 95% fold intervals
    model_grid.png      the same label maps synthesised by every model, beside the real slice
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import intensity
from ..errors import InputError
from ..figures import label_picture, pyplot, to_uint8_picture, write_figure
from ..fileio import staged_directory, write_text
from ..inference import SynthesisInput, load_input
from ..labels import GGO
from .image_quality import csv_text
from .segmentation import CLASSES, read_csv

FOLDER = "report"
CLASS_TITLES = {"ggo": "GGO", "consolidation": "Consolidation", "infection": "Infection"}
METRIC_TITLES = {"dice": "Dice", "sensitivity": "Sen", "specificity": "Spec"}
PAPER_NOTE = (
    "Paper (their data, not comparable): complemented PSNR 26.89, SSIM 0.8936, RMSE 0.0813 (pix2pixHD 26.63 / "
    "0.8893, pix2pix 26.56 / 0.8870); infection Dice 89.19 with 50% replaced (89.57 real only), 90.19 with 40% "
    "added; without DESUM 84.60, without DFM 86.10."
)


def as_number(value: Any) -> float:
    """A CSV cell as a float; ``nan`` for an empty or non-numeric cell."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def format_number(value: Any, digits: int = 2) -> str:
    """``value`` (a number or a CSV cell) with ``digits`` decimals: ``n/a`` when missing, ``inf`` when infinite."""
    x = as_number(value)
    return "n/a" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.{digits}f}")


def _plus_minus(mean: Any, half: Any, digits: int = 2) -> str:
    """``mean ± half`` (just the mean when ``half`` is missing; ``n/a`` without a mean)."""
    m, h = as_number(mean), as_number(half)
    if math.isnan(m):
        return "n/a"
    return f"{m:.{digits}f} ± {h:.{digits}f}" if not math.isnan(h) else f"{m:.{digits}f}"


def _interval(low: Any, high: Any, digits: int = 1) -> str:
    lo, hi = as_number(low), as_number(high)
    return "n/a" if math.isnan(lo) or math.isnan(hi) else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def provenance_line(rows: Sequence[Mapping[str, Any]], keys: Sequence[str] = ("data", "image_size", "epochs", "seed", "commit")) -> str:
    """``*data: ...; image size: ...; ...*``: the distinct provenance values of some result rows."""
    parts = []
    for key in keys:
        values = list(dict.fromkeys(str(r.get(key, "")) for r in rows if str(r.get(key, "")) != ""))
        if values:
            parts.append(f"{key.replace('_', ' ')}: {' / '.join(values)}")
    return "*" + "; ".join(parts) + "*" if parts else "*provenance unknown*"


# --------------------------------------------------------------------------- Table II


def image_quality_section(rows: Sequence[Mapping[str, str]]) -> tuple[str, list[dict[str, Any]]]:
    """Table II (complemented and lung-only image quality per model): Markdown and its wide CSV rows."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    get = {(r["model"], r["region"]): r for r in rows}
    header = ["Model", "FID", "PSNR (dB)", "SSIM", "RMSE", "RMSE (HU)", "FID lung", "PSNR lung", "SSIM lung",
              "RMSE lung", "RMSE lung (HU)", "slices", "image size", "epochs", "seed"]
    table, wide = [], []
    for m in models:
        c, lung = get.get((m, "complemented"), {}), get.get((m, "lung_only"), {})
        table.append([m, format_number(c.get("fid"), 3), format_number(c.get("psnr")), format_number(c.get("ssim"), 4), format_number(c.get("rmse"), 4),
                      format_number(c.get("rmse_hu"), 1), format_number(lung.get("fid"), 3), format_number(lung.get("psnr")), format_number(lung.get("ssim"), 4),
                      format_number(lung.get("rmse"), 4), format_number(lung.get("rmse_hu"), 1), c.get("images", ""), c.get("image_size", ""),
                      c.get("epochs", ""), c.get("seed", "")])
        wide.append({"model": m, **{f"{k}_complemented": c.get(k, "") for k in ("fid", "psnr", "ssim", "rmse", "rmse_hu")},
                     **{f"{k}_lung_only": lung.get(k, "") for k in ("fid", "psnr", "ssim", "rmse", "rmse_hu")},
                     **{k: c.get(k, "") for k in ("images", "data", "image_size", "epochs", "seed", "commit", "checkpoint")}})
    feature = list(dict.fromkeys(r.get("feature_net", "") for r in rows))
    text = "\n\n".join([
        "## Table II: image quality",
        provenance_line(rows, ("data", "commit")),
        markdown_table(header, table),
        "Metrics on the model scale [-1, 1] (data range 2) at each slice's own resolution; RMSE (HU) = RMSE x "
        "window width / 2. *Complemented*: the generated lung composited into the real slice, whole slice. "
        "*Lung*: PSNR and RMSE over lung pixels, SSIM map averaged over windows centred in the lung, FID on "
        "slices with everything outside the lung set to -1. `mean_lung` is the trivial baseline (the lung "
        "filled with the training set's mean lung intensity): PSNR and SSIM reward blur, so a sharp, plausible "
        "lung can score below it; FID and the segmentation tables measure realism and usefulness. "
        "`resampled_real` is the real slice passed through the first model's grid and back (area down, bilinear "
        "up): what a perfect generator at that image size would score. "
        f"FID features: {'; '.join(feature)}. FID values are only comparable within this table.",
    ])
    return text, wide


# --------------------------------------------------------------------------- realism


def realism_section(rows: Sequence[Mapping[str, str]]) -> tuple[str, list[dict[str, Any]]]:
    """The realism table (FID, KID, vesselness ratio, two-sample accuracy per model): Markdown and its CSV rows."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    get = {(r["model"], r["region"]): r for r in rows}
    header = ["Model", "generated region", "FID", "KID", "FID lung", "KID lung", "vesselness ratio",
              "two-sample accuracy [95% CI]", "folds", "crops per class"]
    table, wide = [], []
    for m in models:
        c, lung = get.get((m, "complemented"), {}), get.get((m, "lung_only"), {})
        acc = c.get("two_sample_accuracy")
        table.append([m, c.get("realism_region", ""), format_number(c.get("fid"), 3), _plus_minus(c.get("kid"), c.get("kid_sd"), 4),
                      format_number(lung.get("fid"), 3), _plus_minus(lung.get("kid"), lung.get("kid_sd"), 4), format_number(c.get("vesselness_ratio")),
                      f"{format_number(acc)} {_interval(c.get('two_sample_low'), c.get('two_sample_high'), 2)}"
                      if not math.isnan(as_number(acc)) else "n/a",
                      c.get("two_sample_folds", ""), c.get("two_sample_crops", "")])
        wide.append({"model": m, "realism_region": c.get("realism_region", ""),
                     **{f"{k}_complemented": c.get(k, "") for k in ("fid", "kid", "kid_sd")},
                     **{f"{k}_lung_only": lung.get(k, "") for k in ("fid", "kid", "kid_sd")},
                     **{k: c.get(k, "") for k in ("vesselness_ratio", "two_sample_accuracy", "two_sample_low",
                                                  "two_sample_high", "two_sample_folds", "two_sample_crops", "images",
                                                  "data", "image_size", "epochs", "seed", "commit")}})
    text = "\n\n".join([
        "## Realism: measures that see structure",
        provenance_line(rows, ("data", "commit")),
        markdown_table(header, table),
        "Lower FID and KID are closer to the real test slices (same features as Table II; KID: unbiased cubic-kernel "
        "MMD², mean ± sd over random subsets of the slices, usable with few slices, can be slightly negative). "
        "*Vesselness ratio*: mean Frangi response to bright tubes inside the generated region, generated / real on "
        "the same slices (1 = as much vessel-like structure as real, a flat fill about 0). *Two-sample accuracy*: "
        "held-out accuracy of a small CNN trained to tell real from generated crops of the generated region, "
        "cross-validated with the crops of a slice in one fold, 95% Student-t interval over folds (0.5 = "
        "indistinguishable, 1 = always told apart). `mean_lung` is the trivial baseline; `resampled_real` (the real "
        "slice through the first model's grid and back) is the ceiling that the models' image size sets: a "
        "vesselness ratio below 1 or a two-sample accuracy above 0.5 there comes from resolution alone.",
    ])
    return text, wide


# --------------------------------------------------------------------------- Tables III and IV


def segmentation_section(rows: Sequence[Mapping[str, str]], experiment: str) -> tuple[str, list[dict[str, Any]]]:
    """Table III (``"A"``) or IV (``"B"``): Markdown with fold and bootstrap intervals, and its wide CSV rows."""
    title = {"A": "Table III: segmentation, real slices replaced by synthetic (experiment A)",
             "B": "Table IV: segmentation, synthetic slices added (experiment B)"}[experiment]
    mine = [r for r in rows if r["experiment"] == experiment]
    if not mine:
        return f"## {title}\n\nNot run (no rows for experiment {experiment}).", []
    ratios = sorted({as_number(r["ratio"]) for r in mine})
    get = {(as_number(r["ratio"]), r["class"], r["metric"]): r for r in mine}
    header = ["Ratio"] + [f"{CLASS_TITLES[c]} {METRIC_TITLES[m]} (%)" for c in CLASSES for m in METRIC_TITLES]
    boot_header = ["Ratio"] + [f"{CLASS_TITLES[c]} Dice, patient bootstrap" for c in CLASSES] + ["train real", "train synthetic", "test slices", "patients"]
    table, boot, wide = [], [], []
    for ratio in ratios:
        cells, boot_cells, out = [f"{ratio:.0%}"], [f"{ratio:.0%}"], {"experiment": experiment, "ratio": ratio}
        for c in CLASSES:
            for m in METRIC_TITLES:
                r = get.get((ratio, c, m), {})
                cells.append(_plus_minus(r.get("mean"), r.get("fold_half_width")))
                out.update({f"{c}_{m}_mean": r.get("mean", ""), f"{c}_{m}_fold_low": r.get("fold_low", ""),
                            f"{c}_{m}_fold_high": r.get("fold_high", ""), f"{c}_{m}_boot_low": r.get("boot_low", ""),
                            f"{c}_{m}_boot_high": r.get("boot_high", "")})
            d = get.get((ratio, c, "dice"), {})
            boot_cells.append(f"{format_number(d.get('estimate'))} {_interval(d.get('boot_low'), d.get('boot_high'))}")
        any_row = get.get((ratio, "infection", "dice"), {})
        boot_cells += [any_row.get("train_real", ""), any_row.get("train_synthetic", ""), any_row.get("test_slices", ""),
                       any_row.get("patients", "")]
        fp = get.get((ratio, "infection", "fp_slice_rate"))
        if fp:
            out["infection_fp_slice_rate"] = fp.get("mean", "")
        table.append(cells)
        boot.append(boot_cells)
        wide.append({**out, **{k: any_row.get(k, "") for k in ("train_real", "train_synthetic", "test_slices", "patients",
                                                               "data", "image_size", "epochs", "seed", "commit", "generator")}})
    patients = {r.get("patients", "") for r in mine}
    note = ("Mean ± half-width of the 95% Student-t interval over 10 contiguous folds of the test slices (the "
            "paper's format; folds in datalist order, patient by patient). Second table: Dice on all test slices with "
            "the 95% percentile bootstrap interval over patients (slices of a patient are correlated; fold intervals "
            "alone overstate certainty).")
    if patients <= {"1", "0"}:
        note += " The test set holds a single patient: no patient-level interval exists (n/a)."
    fp_rows = [r for r in mine if r["metric"] == "fp_slice_rate"]
    if fp_rows:
        note += " Infection-free test slices are included; their false-positive rate is in the CSV (infection_fp_slice_rate)."
    text = "\n\n".join([
        f"## {title}",
        provenance_line(mine, ("data", "image_size", "epochs", "seed", "commit", "generator")),
        markdown_table(header, table),
        markdown_table(boot_header, boot),
        note,
    ])
    return text, wide


def dice_plot(rows: Sequence[Mapping[str, str]], path: Path) -> Path:
    """``dice_vs_ratio.png``: Dice (%) against the synthetic ratio, one panel per experiment, 95% fold intervals."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, experiment, title in zip(axes, ("A", "B"), ("A: real replaced by synthetic", "B: synthetic added")):
        for c in CLASSES:
            pts = sorted((as_number(r["ratio"]) * 100, as_number(r["mean"]), as_number(r["fold_half_width"])) for r in rows
                         if r["experiment"] == experiment and r["class"] == c and r["metric"] == "dice")
            if pts:
                x, y, e = zip(*pts)
                ax.errorbar(x, y, yerr=[0 if math.isnan(v) else v for v in e], marker="o", capsize=3, label=CLASS_TITLES[c])
        ax.set_title(title)
        ax.set_xlabel("synthetic slices (% of the real ones)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Dice (%), mean ± 95% fold interval")
    axes[0].legend()
    prov = provenance_line(rows, ("image_size", "epochs", "seed")).strip("*")
    fig.suptitle(f"UNet Dice vs synthetic ratio ({prov})", fontsize=9)
    return write_figure(fig, path)


# --------------------------------------------------------------------------- model grid


def _slice_of(path: Path, label: Path | None, z: int, scale: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    loaded = load_input(SynthesisInput(path.name, path, label or path, scale))
    return loaded.image[:, :, z], loaded.label[:, :, z], loaded.scale


def model_grid(per_image: Sequence[Mapping[str, str]], image_quality_dir: Path, path: Path, rows: int = 4,
               window_level: float = -600.0, window_width: float = 1500.0) -> Path:
    """``model_grid.png``: label map | real | each model, for the same test label maps (most lesion first)."""
    plt = pyplot()
    comp = [r for r in per_image if r["region"] == "complemented"]
    models = list(dict.fromkeys(r["model"] for r in comp))
    keys = list(dict.fromkeys((r["image"], r["label"], int(r["z"])) for r in comp))
    reals = {}
    for image, label, z in keys:
        real, lab, scale = _slice_of(Path(image), Path(label), z, None)
        reals[(image, z)] = (real, lab, scale)
    chosen = sorted(keys, key=lambda k: (-int((reals[(k[0], k[2])][1] >= GGO).sum()), k[0]))[:rows]
    chosen = sorted(chosen, key=lambda k: k[0])
    generated = {(r["model"], r["image"], int(r["z"])): r["generated"] for r in comp}
    columns = ["label map", "real"] + models
    fig, axes = plt.subplots(len(chosen), len(columns), figsize=(2.2 * len(columns), 2.3 * len(chosen)), squeeze=False)
    for i, (image, label, z) in enumerate(chosen):
        real, lab, scale = reals[(image, z)]
        tiles = [label_picture(lab), to_uint8_picture(intensity.to_model(real, scale, window_level, window_width))]
        for m in models:
            gen_path = image_quality_dir / generated[(m, image, z)]
            gen, _, _ = _slice_of(gen_path, Path(label), z, scale)
            tiles.append(to_uint8_picture(intensity.to_model(gen, scale, window_level, window_width)))
        for j, tile in enumerate(tiles):
            ax = axes[i, j]
            ax.imshow(tile, cmap=None if tile.ndim == 3 else "gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(Path(image).name.split(".")[0], fontsize=8)
    fig.suptitle(f"Same test label maps, every model (lung window L {window_level:g} W {window_width:g})", fontsize=9)
    return write_figure(fig, path)


# --------------------------------------------------------------------------- Table V


def ablation_section(rows: Sequence[Mapping[str, str]]) -> tuple[str, list[dict[str, Any]]]:
    """Table V (ablations): Markdown and its CSV rows."""
    header = ["Method", "FID", "PSNR (dB)", "SSIM", "Dice infection (%)", "Dice patient bootstrap", "image size", "epochs"]
    table = [[r["description"], format_number(r["fid"], 3), format_number(r["psnr"]), format_number(r["ssim"], 4),
              _plus_minus(r["dice_infection"], r["dice_fold_half_width"]), _interval(r["dice_boot_low"], r["dice_boot_high"]),
              r["image_size"], r["epochs"]] for r in rows]
    segs = list(dict.fromkeys(r.get("segmentation", "") for r in rows))
    text = "\n\n".join([
        "## Table V: ablations",
        provenance_line(rows, ("data", "seed", "commit")),
        markdown_table(header, table),
        "FID and PSNR: complemented test slices (as Table II). Dice: infection, "
        f"{'; '.join(segs)}; mean ± 95% fold half-width, and the patient bootstrap interval.",
    ])
    return text, [dict(r) for r in rows]


# --------------------------------------------------------------------------- entry point


def run_report(
    output_dir: str | Path,
    image_quality_dir: str | Path | None = None,
    segmentation_dir: str | Path | None = None,
    ablation_dir: str | Path | None = None,
    overwrite: bool = False,
    grid_rows: int = 4,
    window_level: float = intensity.DEFAULT_WINDOW_LEVEL,
    window_width: float = intensity.DEFAULT_WINDOW_WIDTH,
) -> Path:
    """Write ``<output_dir>/report/`` (see the module docstring). Bundle run id ``report``.

    Args:
        output_dir: the evaluation folder.
        image_quality_dir: ``evaluate.yaml run``'s output (default ``<output_dir>/image_quality``).
        segmentation_dir: ``segmentation.yaml run``'s ``results`` folder.
        ablation_dir: ``evaluate.yaml ablation``'s output (default ``<output_dir>/ablation``).
        overwrite: replace an existing report.
        grid_rows: label maps in the model grid.
        window_level: HU window of the pictures.
        window_width: HU window of the pictures.

    Returns:
        The path of ``report.md``.

    Raises:
        InputError: no input exists, or the report exists without ``overwrite`` (``evaluate.yaml`` reports it
            with one ``ERROR:`` line).
    """
    output_dir = Path(output_dir)
    iq_dir = Path(image_quality_dir) if image_quality_dir else output_dir / "image_quality"
    abl_dir = Path(ablation_dir) if ablation_dir else output_dir / "ablation"
    sources = {
        "image_quality": iq_dir / "image_quality.csv",
        "segmentation": Path(segmentation_dir) / "summary.csv" if segmentation_dir else None,
        "ablation": abl_dir / "ablation.csv",
    }
    found = {k: p for k, p in sources.items() if p is not None and p.is_file()}
    if not found:
        listed = ", ".join(str(p) for p in sources.values() if p is not None)
        raise InputError(f"nothing to report: none of {listed} exists; run evaluate.yaml run, segmentation.yaml run "
                         "or evaluate.yaml ablation first")
    target = output_dir / FOLDER
    sections = ["# Evaluation report", PAPER_NOTE]
    with staged_directory(target, overwrite=overwrite) as stage:
        if "image_quality" in found:
            rows = read_csv(found["image_quality"])
            text, wide = image_quality_section(rows)
            sections.append(text)
            write_text(csv_text(wide, list(wide[0]) if wide else ["model"]), stage / "table_ii_image_quality.csv")
            if any(r.get("kid", "") != "" for r in rows):  # results written before the realism measures have none
                text, wide = realism_section(rows)
                sections.append(text)
                write_text(csv_text(wide, list(wide[0]) if wide else ["model"]), stage / "table_realism.csv")
            shutil.copyfile(found["image_quality"], stage / "image_quality.csv")
            per_image_path = iq_dir / "per_image.csv"
            if per_image_path.is_file():
                shutil.copyfile(per_image_path, stage / "image_quality_per_image.csv")
                model_grid(read_csv(per_image_path), iq_dir, stage / "model_grid.png", grid_rows, window_level, window_width)
                sections.append("![models on the same label maps](model_grid.png)")
        else:
            sections.append(f"## Table II: image quality\n\nNot run (no {sources['image_quality']}).")
        if "segmentation" in found:
            rows = read_csv(found["segmentation"])
            for experiment, name in (("A", "table_iii_replace.csv"), ("B", "table_iv_add.csv")):
                text, wide = segmentation_section(rows, experiment)
                sections.append(text)
                if wide:
                    write_text(csv_text(wide, list(wide[0])), stage / name)
            shutil.copyfile(found["segmentation"], stage / "segmentation_summary.csv")
            dice_plot(rows, stage / "dice_vs_ratio.png")
            sections.append("![Dice against the synthetic ratio](dice_vs_ratio.png)")
        else:
            sections.append("## Tables III and IV: segmentation\n\nNot run (no segmentation results; "
                            "run segmentation.yaml run and pass its results folder as segmentation_dir).")
        if "ablation" in found:
            rows = read_csv(found["ablation"])
            text, wide = ablation_section(rows)
            sections.append(text)
            write_text(csv_text(wide, list(wide[0]) if wide else ["ablation"]), stage / "table_v_ablation.csv")
            shutil.copyfile(found["ablation"], stage / "ablation.csv")
        else:
            sections.append(f"## Table V: ablations\n\nNot run (no {sources['ablation']}).")
        write_text("\n\n".join(sections) + "\n", stage / "report.md")
    print(f"report: {target / 'report.md'}", flush=True)
    return target / "report.md"


@dataclass
class EvaluationReport:
    """Bundle run id ``report`` of ``evaluate.yaml`` (its ``evaluation_report`` component): ``$@evaluation_report.run()``.

    Args: those of :func:`run_report`.
    """

    output_dir: str | Path
    image_quality_dir: str | Path | None = None
    segmentation_dir: str | Path | None = None
    ablation_dir: str | Path | None = None
    overwrite: bool = False
    grid_rows: int = 4
    window_level: float = intensity.DEFAULT_WINDOW_LEVEL
    window_width: float = intensity.DEFAULT_WINDOW_WIDTH

    def run(self) -> Path:
        """Write the report (:func:`run_report`); the path of ``report.md``.

        Raises:
            InputError: as :func:`run_report`.
        """
        return run_report(**asdict(self))
