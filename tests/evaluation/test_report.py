"""The report from fake result CSVs: every table, CSV and figure, provenance, missing sections."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from covid_ct_cgan.errors import InputError
from covid_ct_cgan.evaluation import ablation, image_quality, segmentation
from covid_ct_cgan.evaluation.report import run_report

REALISM = {"kid": 0.0123, "kid_sd": 0.004, "vesselness_ratio": 0.62, "two_sample_accuracy": 0.71,
           "two_sample_low": 0.6, "two_sample_high": 0.82, "two_sample_folds": 5, "two_sample_crops": 24,
           "realism_region": "lung"}
PROV = {"data": "data:test (6 slices, 2 patients)", "image_size": "32", "epochs": "global 1, local 1, joint 1",
        "seed": "0", "commit": "abc1234"}


def _write(path: Path, columns, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _image_quality(folder: Path, dataset: Path) -> list[str]:
    models = ["ours", "pix2pixhd", "mean_lung"]
    items = json.loads(dataset.read_text())["test_synthesis"]
    summary, per_image = [], []
    for k, model in enumerate(models):
        for region in ("complemented", "lung_only"):
            summary.append({"model": model, "region": region, "images": 3, "psnr": 25.0 + k, "psnr_sd": 1.0,
                            "ssim": 0.8, "ssim_sd": 0.01, "rmse": 0.1, "rmse_sd": 0.01, "rmse_hu": 75.0,
                            "fid": 0.5 - 0.1 * k, **REALISM, **PROV, "checkpoint": "ckpt", "feature_net": "test features"})
            for it in items:
                rel = f"synthesis/{model}/images/{Path(it['image']).name}"
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(dataset.parent / it["image"], folder / rel)
                per_image.append({"model": model, "region": region, "image": str(dataset.parent / it["image"]),
                                  "label": str(dataset.parent / it["label"]), "patient": it["patient"],
                                  "slice": it["slice"], "z": 0, "generated": rel, "psnr": 25, "ssim": 0.8,
                                  "rmse": 0.1, "rmse_hu": 75})
    _write(folder / "image_quality.csv", image_quality.SUMMARY_COLUMNS, summary)
    _write(folder / "per_image.csv", image_quality.PER_IMAGE_COLUMNS, per_image)
    return models


def _segmentation(folder: Path) -> None:
    rows = []
    for experiment in ("A", "B"):
        for ratio in (0.0, 0.1, 0.5):
            for c in segmentation.CLASSES:
                for metric in ("dice", "sensitivity", "specificity"):
                    rows.append({"experiment": experiment, "ratio": ratio, "run": f"{experiment}_{ratio}", "class": c,
                                 "metric": metric, "mean": 80 + 10 * ratio, "fold_low": 79, "fold_high": 81 + 10 * ratio,
                                 "fold_half_width": 1.0, "folds": 10, "estimate": 80.5, "boot_low": 70.0,
                                 "boot_high": 90.0, "patients": 2, "boot_draws": 1000, "train_real": 10,
                                 "train_synthetic": int(10 * ratio), "test_slices": 6, **PROV, "generator": "gan ckpt"})
    _write(folder / "summary.csv", segmentation.SUMMARY_COLUMNS, rows)


def _ablation(folder: Path) -> None:
    rows = [{"ablation": name, "description": text, "fid": 0.3, "psnr": 24.0, "ssim": 0.8, "fid_lung": 0.4,
             "psnr_lung": 15.0, "dice_infection": 70.0, "dice_fold_low": 68, "dice_fold_high": 72,
             "dice_fold_half_width": 2.0, "dice_boot_low": 60, "dice_boot_high": 80, **PROV, "checkpoint": "c",
             "segmentation": "experiment A, 50% synthetic"} for name, text in ablation.ABLATIONS.items()]
    _write(folder / "ablation.csv", ablation.COLUMNS, rows)


def test_report_has_every_table_csv_and_figure(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    models = _image_quality(out / "image_quality", dataset)
    _segmentation(tmp_path / "segmentation" / "results")
    _ablation(out / "ablation")
    path = run_report(out, segmentation_dir=tmp_path / "segmentation" / "results", grid_rows=2)
    folder = out / "report"
    assert path == folder / "report.md"
    assert {p.name for p in folder.iterdir()} == {
        "report.md", "table_ii_image_quality.csv", "table_realism.csv", "table_iii_replace.csv", "table_iv_add.csv", "table_v_ablation.csv",
        "image_quality.csv", "image_quality_per_image.csv", "segmentation_summary.csv", "ablation.csv",
        "dice_vs_ratio.png", "model_grid.png"}
    text = path.read_text()
    for title in ("Table II", "Realism: measures that see structure", "Table III", "Table IV", "Table V"):
        assert f"## {title}" in text
    assert "Not run" not in text
    for model in models:
        assert f"| {model} |" in text
    assert "| 10% | 81.00 ± 1.00 |" in text  # ratio row: mean ± fold half-width
    assert "[70.0, 90.0]" in text  # the patient bootstrap interval
    assert text.count("commit: abc1234") == 5  # every table says where its numbers come from
    # the realism table: KID ± its subset sd, the vesselness ratio and the two-sample accuracy with its interval
    assert "| ours | lung | 0.500 | 0.0123 ± 0.0040 | 0.500 | 0.0123 ± 0.0040 | 0.62 | 0.71 [0.60, 0.82] | 5 | 24 |" in text
    with open(folder / "table_realism.csv", newline="") as f:
        realism = list(csv.DictReader(f))
    assert [r["model"] for r in realism] == models
    assert float(realism[2]["fid_complemented"]) == pytest.approx(0.3) and realism[0]["two_sample_high"] == "0.82"
    assert "epochs: global 1, local 1, joint 1" in text and "image size: 32" in text
    assert "| w/o DESUM (F1 + F2) |" in text and "| D = 1 |" in text
    assert "![Dice against the synthetic ratio](dice_vs_ratio.png)" in text
    with open(folder / "table_iii_replace.csv", newline="") as f:
        table_iii = list(csv.DictReader(f))
    assert [float(r["ratio"]) for r in table_iii] == [0.0, 0.1, 0.5]
    assert float(table_iii[2]["infection_dice_mean"]) == 85.0 and table_iii[2]["seed"] == "0"
    grid = Image.open(folder / "model_grid.png")
    plot = Image.open(folder / "dice_vs_ratio.png")
    assert grid.size[0] > grid.size[1]  # 2 rows, 2 + 3 columns
    assert plot.size == (1000, 400)
    with pytest.raises(InputError, match="overwrite"):  # exists, no overwrite
        run_report(out, segmentation_dir=tmp_path / "segmentation" / "results")
    run_report(out, segmentation_dir=tmp_path / "segmentation" / "results", overwrite=True)


def test_missing_sections_are_reported_and_nothing_at_all_is_an_error(tmp_path: Path) -> None:
    _segmentation(tmp_path / "seg")
    text = run_report(tmp_path / "evaluation", segmentation_dir=tmp_path / "seg").read_text()
    assert "## Table II: image quality\n\nNot run" in text and "## Table V: ablations\n\nNot run" in text
    assert "## Table III" in text and "Not run (no rows" not in text
    with pytest.raises(InputError, match="^nothing to report"):
        run_report(tmp_path / "empty")
