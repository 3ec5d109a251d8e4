"""Two synthesis runs of the same inputs compared inside the lung: table, picture, and clear errors."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from covid_ct_cgan.errors import InputError
from covid_ct_cgan.evaluation.compare_synthesis import compare_synthesis


def _run(folder: Path, images: dict[str, np.ndarray], label: np.ndarray) -> Path:
    """A synthesis output folder as inference.yaml writes it: manifest.csv, images/, labels/, settings.json."""
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    rows = []
    for stem, image in images.items():
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(folder / "images" / f"{stem}_v0.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(folder / "labels" / f"{stem}_v0.nii.gz"))
        rows.append({"output": f"images/{stem}_v0.nii.gz", "label_map": f"labels/{stem}_v0.nii.gz"})
    with (folder / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["output", "label_map"])
        writer.writeheader()
        writer.writerows(rows)
    (folder / "settings.json").write_text(json.dumps({"window_width": 1500.0}))
    return folder


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    rng = np.random.default_rng(0)
    label = np.zeros((24, 20), np.uint8)
    label[4:20, 4:16] = 1  # lung: 192 pixels
    reference = {s: rng.integers(-1000, 0, (24, 20)).astype(np.int16) for s in ("a", "b")}
    other = {s: image.copy() for s, image in reference.items()}
    other["a"][label > 0] += 15  # 15 HU everywhere in the lung of slice a
    other["b"][0, 0] += 500      # outside the lung: not counted
    return _run(tmp_path / "fp32", reference, label), _run(tmp_path / "int8", other, label), label


def test_differences_inside_the_lung_only(runs, tmp_path: Path) -> None:
    reference, other, _ = runs
    summary = compare_synthesis(reference, other, tmp_path / "out")
    assert summary["slices"] == 2 and summary["unit"] == "HU"
    assert summary["max_abs"] == 15.0 and summary["p99_abs"] == 15.0
    assert summary["psnr_db"] == pytest.approx(10 * math.log10(1500.0**2 / (15.0**2 / 2)))  # half the pixels moved
    with (tmp_path / "out" / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["output"] for r in rows] == ["images/a_v0.nii.gz", "images/b_v0.nii.gz", "all"]
    assert float(rows[0]["psnr_db"]) == pytest.approx(10 * math.log10(1500.0**2 / 225.0)) and rows[1]["psnr_db"] == "inf"
    assert (tmp_path / "out" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="exists"):
        compare_synthesis(reference, other, tmp_path / "out")  # nothing replaced without overwrite
    compare_synthesis(reference, other, tmp_path / "out", overwrite=True)


def test_folders_that_cannot_be_compared_are_named(runs, tmp_path: Path) -> None:
    reference, _, label = runs
    with pytest.raises(InputError, match=r"no manifest\.csv"):
        compare_synthesis(reference, tmp_path, tmp_path / "out")
    elsewhere = _run(tmp_path / "other_inputs", {"c": np.zeros((24, 20), np.int16)}, label)
    with pytest.raises(InputError, match="not the same inputs"):
        compare_synthesis(reference, elsewhere, tmp_path / "out")
    smaller = _run(tmp_path / "smaller", {"a": np.zeros((10, 10), np.int16)}, label[:10, :10])
    with pytest.raises(InputError, match=r"images/a_v0\.nii\.gz: shape \(10, 10\) here, \(24, 20\)"):
        compare_synthesis(reference, smaller, tmp_path / "out")


@pytest.mark.integration
def test_command_line_prints_the_summary_and_one_error_line(runs, tmp_path: Path) -> None:
    reference, other, _ = runs
    module = "covid_ct_cgan.evaluation.compare_synthesis"
    done = subprocess.run([sys.executable, "-m", module, str(reference), str(other), "--output_dir", str(tmp_path / "o")],
                          capture_output=True, text=True, check=True)
    assert done.stdout.startswith("2 slices: lung PSNR") and "largest difference 15.0 HU" in done.stdout
    bad = subprocess.run([sys.executable, "-m", module, str(reference), str(tmp_path), "--output_dir", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("ERROR: ")
