"""evaluate.yaml wired as MONAI components: its run ids run end to end, and a `--key value` reaches its component."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from covid_ct_cgan.evaluation.ablation import AblationStudy
from covid_ct_cgan.evaluation.fid_features import FIDFeatures
from covid_ct_cgan.evaluation.image_quality import PER_IMAGE_COLUMNS, SUMMARY_COLUMNS, ImageQuality
from covid_ct_cgan.evaluation.report import EvaluationReport
from covid_ct_cgan.settings import run_bundle

REPO = Path(__file__).resolve().parents[2]
EVALUATE = str(REPO / "bundle" / "configs" / "evaluate.yaml")
SIZE = 32  # the tiny dataset's and generator's (conftest.py)
TINY_FID = {"fid#image_size": SIZE, "fid#batch_size": 2}
TINY_REALISM = {"realism#folds": 2, "realism#kid_subsets": 10}


def _parsed(**overrides: object) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(EVALUATE)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def test_components_read_the_top_level_settings(tmp_path: Path) -> None:
    parser = _parsed(work_dir=str(tmp_path), **{"fid#epochs": 3, "model_names": ["lesion_inpainting", "ours"]})
    fid = parser.get_parsed_content("fid")
    assert isinstance(fid, FIDFeatures) and fid.epochs == 3 and fid.image_size == 128
    assert fid.cache_dir == tmp_path / "evaluation" / "fid_features"
    assert not fid.cache_dir.exists()  # parsing trains nothing
    quality = parser.get_parsed_content("image_quality")
    assert isinstance(quality, ImageQuality) and quality.features is fid  # one FID network for the run
    assert list(quality.selected_models()) == ["lesion_inpainting", "ours"]
    assert quality.selected_models()["ours"]["checkpoint"] == f"{tmp_path}/output/joint"
    assert quality.training_overrides == {"work_dir": str(tmp_path), "data_dir": f"{tmp_path}/data"}
    study = parser.get_parsed_content("ablation_study")
    assert isinstance(study, AblationStudy) and study.features is fid and study.train is True
    assert study.training_overrides == {"work_dir": str(tmp_path), "data_dir": f"{tmp_path}/data", "image_size": 64,
                                        "epochs": 2}
    report = parser.get_parsed_content("evaluation_report")
    assert isinstance(report, EvaluationReport)
    assert report.segmentation_dir == f"{tmp_path}/segmentation/results"


@pytest.mark.integration
def test_run_and_report_with_component_overrides(
    dataset: Path, tmp_path: Path, generator_checkpoint: Path, tiny_overrides: dict, capsys: pytest.CaptureFixture
) -> None:
    network = {k: v for k, v in tiny_overrides.items() if k not in ("work_dir", "image_size")}  # ngf, ...
    assert tiny_overrides["image_size"] == SIZE
    common = {"work_dir": str(tmp_path), "data_dir": str(dataset.parent), "seed": 0, "overwrite": False}
    # as the recipe calls it (evaluation/recipe.py): checkpoint_dir, model_names and `fid#`/`realism#` overrides;
    # the checkpoint was saved without settings, so its network settings are given
    run_bundle("run", config_file=EVALUATE, checkpoint_dir=str(generator_checkpoint.parent), model_names=["ours"],
               image_size=SIZE, extra_training_overrides=network, **common,
               **{"fid#epochs": 2, "realism#iterations": 7, **TINY_FID, **TINY_REALISM})
    folder = tmp_path / "evaluation" / "image_quality"
    with open(folder / "image_quality.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == SUMMARY_COLUMNS
    assert [(r["model"], r["region"]) for r in rows] == [
        ("ours", "complemented"), ("ours", "lung_only"), ("mean_lung", "complemented"), ("mean_lung", "lung_only"),
        ("resampled_real", "complemented"), ("resampled_real", "lung_only")]
    with open(folder / "per_image.csv", newline="") as f:
        assert tuple(csv.DictReader(f).fieldnames or ()) == PER_IMAGE_COLUMNS
    # the overrides reached their components: the feature net trained 2 epochs at 32 px, the classifier 7 iterations
    cached = list((tmp_path / "evaluation" / "fid_features").glob("*/settings.json"))
    assert len(cached) == 1
    net = json.loads(cached[0].read_text())
    assert (net["epochs"], net["image_size"], net["batch_size"]) == (2, SIZE, 2)
    assert "trained 2 epochs" in rows[0]["feature_net"] and rows[0]["two_sample_folds"] == "2"
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["realism"]["iterations"] == 7 and list(settings["models"]) == ["ours"]
    assert settings["models"]["ours"]["checkpoint"] == str(generator_checkpoint)

    run_bundle("report", config_file=EVALUATE, segmentation_output_dir=str(tmp_path / "segmentation"), **common)
    report = tmp_path / "evaluation" / "report"
    assert (report / "report.md").is_file() and (report / "table_ii_image_quality.csv").is_file()
    assert "Not run (no segmentation results" in (report / "report.md").read_text()

    # a second run without --overwrite is refused with one line, the results kept
    with pytest.raises(SystemExit) as stop:
        run_bundle("run", config_file=EVALUATE, checkpoint_dir=str(generator_checkpoint.parent),
                   model_names=["ours"], image_size=SIZE, extra_training_overrides=network, **common,
                   **TINY_FID)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"ERROR: {folder}: already exists and is not empty; pass --overwrite True to replace it")


@pytest.mark.integration
def test_ablation_run_id_reaches_its_component(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        run_bundle("ablation", config_file=EVALUATE, work_dir=str(tmp_path / "work"), ablations=["nope"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (  # configs_dir: bundle_root + '/configs'
        "ERROR: no ablation overlay for ['nope'] (expected bundle/configs/ablation/<name>.yaml)")
    assert not (tmp_path / "work").exists()


@pytest.mark.integration
def test_command_line_model_names_reach_the_component(tmp_path: Path) -> None:
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "run", "--config_file", "bundle/configs/evaluate.yaml",
           "--work_dir", str(work), "--model_names", "['ours', 'mine']", "--fid#epochs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert errors == ["ERROR: model_names: no entry ['mine'] in models "
                      "(entries: ours, ours_int8, pix2pixhd, pix2pix, lesion_inpainting)"]
    assert not work.exists()


@pytest.mark.integration
def test_a_model_without_checkpoint_is_refused_before_the_fid_features_train(tmp_path: Path, capsys, monkeypatch) -> None:
    # the FID feature network trains for minutes: a missing checkpoint is named first, with the command that
    # trains it in this work folder
    def must_not_train(*args, **kwargs):
        raise AssertionError("the FID features were trained before the checkpoints were checked")

    monkeypatch.setattr(FIDFeatures, "extractor", must_not_train)
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as stop:
        run_bundle("run", config_file=EVALUATE, work_dir=str(work), model_names=["pix2pix"])
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"ERROR: {work / 'output_pix2pix' / 'joint'}: no checkpoint for model 'pix2pix'; train it "
                           "first (python -m monai.bundle run training --config_file \"[")
    assert "pix2pix.yaml']\" " in line
    assert line.endswith(f" --work_dir {work} --data_dir {work / 'data'}) or drop it from model_names")
