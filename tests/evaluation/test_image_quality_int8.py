"""The evaluation scores an int8 generator (``precision: int8``) beside the float one, calibrated on training slices."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from covid_ct_cgan import intensity
from covid_ct_cgan.errors import InputError, entry_point
from covid_ct_cgan.evaluation.fid_features import FIDFeatures
from covid_ct_cgan.evaluation.image_quality import ImageQuality, load_datalist
from covid_ct_cgan.evaluation.models import synthesise, trained_model
from covid_ct_cgan.inference import export

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundle" / "configs"
TRAIN = str(CONFIGS / "train.yaml")
# PSNR (dB, over the lung, model scale [-1, 1]) of the int8 composite against the float one. Measured on this tiny
# dataset with random tiny generators (torch seeds 0, 1, 2): 38.0-42.4 dB over the lung (43.9-48.2 dB over the whole
# slice), max pixel difference 0.05-0.08 (about 40-60 HU). 30 dB (RMSE 0.063, about 47 HU) keeps an 8 dB margin for
# other CPUs' int8 kernels (inductor's oneDNN, ONNX Runtime) while still failing a broken quantization (wrong scale or zero point: < 20 dB).
MIN_LUNG_PSNR_DB = 30.0


def _model_scale(path: Path) -> np.ndarray:
    return intensity.to_model(nib.load(str(path)).get_fdata().astype(np.float32), "hu")


@pytest.mark.integration
def test_int8_model_is_scored_beside_the_float_one(
    dataset: Path, tmp_path: Path, generator_checkpoint: Path, tiny_overrides: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    calibrations: list[dict[str, Any]] = []
    real_calibration = export.calibration_conditions

    def recording(datalist: Any, image_size: int, *args: Any, **kwargs: Any) -> list[torch.Tensor]:
        conditions = real_calibration(datalist, image_size, *args, **kwargs)
        key = kwargs.get("key", args[4] if len(args) > 4 else export.CALIBRATION_KEY)
        calibrations.append({"datalist": str(datalist), "key": key, "conditions": conditions})
        return conditions

    monkeypatch.setattr(export, "calibration_conditions", recording)  # make_runner imports it when int8 runs
    models = {"ours": {"configs": [TRAIN], "checkpoint": str(generator_checkpoint)},
              "ours_int8": {"configs": [TRAIN], "checkpoint": str(generator_checkpoint), "precision": "int8"}}
    out = tmp_path / "evaluation"
    summary = ImageQuality(models, dataset, out, training_overrides=tiny_overrides,
                           features=FIDFeatures(tmp_path / "fid_features", image_size=32, epochs=1, batch_size=2),
                           realism={"folds": 2, "iterations": 10, "kid_subsets": 10}).run()
    folder = out / "image_quality"

    # both rows, scored with every measure, each saying what it computed in (amp off here: fp32)
    assert [(r["model"], r["region"], r["precision"]) for r in summary] == [
        ("ours", "complemented", "fp32"), ("ours", "lung_only", "fp32"), ("ours_int8", "complemented", "int8"),
        ("ours_int8", "lung_only", "int8"), ("mean_lung", "complemented", ""), ("mean_lung", "lung_only", ""),
        ("resampled_real", "complemented", ""), ("resampled_real", "lung_only", "")]
    for r in summary[:4]:
        assert r["images"] == 3 and all(math.isfinite(r[k]) for k in ("psnr", "ssim", "fid", "kid", "vesselness_ratio"))
        assert 0.0 <= r["two_sample_accuracy"] <= 1.0 and r["two_sample_folds"] == 2
    with open(folder / "image_quality.csv", newline="") as f:
        assert [row["precision"] for row in csv.DictReader(f)] == ["fp32", "fp32", "int8", "int8", "", "", "", ""]
    with open(folder / "per_image.csv", newline="") as f:
        per_image = list(csv.DictReader(f))
    assert {(r["model"], r["precision"]) for r in per_image} == {("ours", "fp32"), ("ours_int8", "int8"),
                                                                  ("mean_lung", ""), ("resampled_real", "")}
    synthesis = json.loads((folder / "synthesis" / "ours_int8" / "settings.json").read_text())
    assert synthesis["precision"] == "int8" and synthesis["amp"] is False

    # calibrated once, on the training list of the evaluation's datalist: the training slices, not the test ones
    assert [(c["datalist"], c["key"]) for c in calibrations] == [(str(dataset), "training")]
    train_images = {it["image"] for it in load_datalist(dataset, "training")}
    test_images = {it["image"] for it in load_datalist(dataset, "test_synthesis")}
    assert train_images.isdisjoint(test_images)
    expected = real_calibration(dataset, 32, key="training")
    test_conditions = real_calibration(dataset, 32, key="test_synthesis")
    used = calibrations[0]["conditions"]
    assert len(used) == len(expected) == 3
    assert all(torch.equal(a, b) for a, b in zip(used, expected))
    assert not any(torch.equal(a, b) for a in used for b in test_conditions)
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["models"]["ours_int8"]["precision"] == "int8"
    assert settings["models"]["ours_int8"]["calibration"] == {"datalist": str(dataset), "key": "training"}
    assert settings["models"]["ours"]["precision"] == "fp32" and "calibration" not in settings["models"]["ours"]

    # the int8 slices differ from the float ones inside the lung only, and are close (see MIN_LUNG_PSNR_DB)
    generated = {(r["model"], r["image"]): r["generated"] for r in per_image if r["region"] == "complemented"}
    for item in load_datalist(dataset, "test_synthesis"):
        float_slice = _model_scale(folder / generated[("ours", item["image"])])
        int8_slice = _model_scale(folder / generated[("ours_int8", item["image"])])
        lung = nib.load(item["label"]).get_fdata() > 0
        assert np.array_equal(float_slice[~lung], int8_slice[~lung])  # the real slice around the lung, both
        mse = float(((float_slice - int8_slice)[lung] ** 2).mean())
        assert mse > 0.0  # the int8 copy ran, not the float network
        assert 10.0 * math.log10(4.0 / mse) >= MIN_LUNG_PSNR_DB


def test_a_bad_precision_is_one_error_line_naming_the_model(
    dataset: Path, tmp_path: Path, tiny_overrides: dict, capsys: pytest.CaptureFixture
) -> None:
    run = ImageQuality({"ours": {"configs": [TRAIN]}, "fast": {"configs": [TRAIN], "precision": "fp8"}}, dataset,
                       tmp_path / "evaluation", training_overrides=tiny_overrides)
    with pytest.raises(InputError):  # the library raises; evaluate.yaml's entry point reports it
        run.run()
    with pytest.raises(SystemExit) as stop:
        entry_point(run.run)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "ERROR: model 'fast': precision must be one of float, int8, int8_onnxruntime, got 'fp8'"]
    assert not (tmp_path / "evaluation").exists()
    with pytest.raises(InputError, match=r"^model 'x': precision must be one of float, int8, int8_onnxruntime, got 8$"):
        trained_model("x", [TRAIN], tiny_overrides, precision=8)  # type: ignore[arg-type]


def test_int8_model_runs_on_the_cpu_and_needs_training_label_maps(
    dataset: Path, tmp_path: Path, generator_checkpoint: Path, tiny_overrides: dict
) -> None:
    model = trained_model("q", [TRAIN], tiny_overrides, generator_checkpoint, device="cpu", precision="int8")
    assert model.precision == "int8" and model.precision_label(amp=True) == "int8"
    assert next(model.network.parameters()).device.type == "cpu"
    with pytest.raises(InputError, match=r"^model 'q' runs in int8 and needs calibration_input"):
        synthesise(model, dataset, tmp_path / "synthesis")
    assert not (tmp_path / "synthesis").exists()
    float_model = trained_model("f", [TRAIN], tiny_overrides, generator_checkpoint)
    assert float_model.precision == "float"
    assert (float_model.precision_label(amp=False), float_model.precision_label(amp=True)) == ("fp32", "bf16")


def test_evaluate_yaml_has_an_int8_entry_of_ours_outside_the_default_models(tmp_path: Path) -> None:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "evaluate.yaml"))
    parser["work_dir"] = str(tmp_path)
    assert "ours_int8" not in parser.get_parsed_content("model_names")
    parser["model_names"] = ["ours", "ours_int8"]
    models = parser.get_parsed_content("image_quality").selected_models()
    assert models["ours_int8"] == {**models["ours"], "precision": "int8"}
    assert "precision" not in models["ours"]
