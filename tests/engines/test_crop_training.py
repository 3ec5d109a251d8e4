"""crop_size: training on random crops of the slices at their own pixel size, synthesis on the whole slice."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from tiny_training import REPO_ROOT, TINY, TRAIN_YAML

from covid_ct_cgan.settings import run_bundle

INFERENCE_YAML = str(REPO_ROOT / "bundle" / "configs" / "inference.yaml")
NATIVE = {**TINY, "image_size": 96, "crop_size": 32}  # the tiny phantom's 64-px slices fit the 96-px grid unresized


def _parser(work_dir: Path, stage: str, **overrides: object) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(TRAIN_YAML)
    parser.update({**NATIVE, "work_dir": str(work_dir), "stage": stage, **overrides})
    return parser


def _first(item: object) -> dict:
    return item[0] if isinstance(item, list) else item  # type: ignore[index,return-value]


@pytest.mark.parametrize(("stage", "train_side", "validation_side"), [("global", 16, 48), ("joint", 32, 96)])
def test_training_sees_crops_and_validation_whole_slices(work_dir: Path, stage: str, train_side: int,
                                                        validation_side: int) -> None:
    parser = _parser(work_dir, stage)
    item = _first(parser.get_parsed_content("train#dataset")[0])
    assert tuple(item["image"].shape) == (1, train_side, train_side)
    assert tuple(item["condition"].shape[1:]) == (train_side, train_side)
    assert float(item["region"].sum()) > 0  # crop centres are drawn from the lung and the lesions, never background
    whole = parser.get_parsed_content("validate#dataset")[0]
    assert tuple(whole["image"].shape) == (1, validation_side, validation_side)


def test_slices_keep_their_pixel_size_on_the_grid(work_dir: Path) -> None:
    parser = _parser(work_dir, "joint")
    item = parser.get_parsed_content("validate#dataset")[0]
    first = parser.get_parsed_content("validate#datalist")[0]
    source = np.asarray(nib.load(first["image"]).dataobj)
    height, width = source.shape[:2]
    image = torch.as_tensor(item["image"])[0]
    inside = image[(96 - height) // 2 : (96 - height) // 2 + height, (96 - width) // 2 : (96 - width) // 2 + width]
    assert height <= 64 and width <= 64  # the phantom's slices, smaller than the grid
    assert torch.all(image[: (96 - height) // 2] == -1.0)  # padded with air, not interpolated up
    assert float(inside.std()) > 0


@pytest.mark.integration
def test_a_crop_trained_model_synthesises_the_whole_slice_at_its_own_size(work_dir: Path) -> None:
    run_bundle("training", config_file=TRAIN_YAML, **{**NATIVE, "work_dir": str(work_dir), "epochs": 1})
    joint = work_dir / "output" / "joint"
    assert json.loads((joint / "settings.json").read_text())["crop_size"] == 32
    saved = torch.load(joint / "best_generator.pt", map_location="cpu", weights_only=True)["network_settings"]
    assert saved["crop_size"] == 32 and saved["image_size"] == 96
    out = work_dir / "synthesis"
    run_bundle("run", config_file=INFERENCE_YAML, work_dir=str(work_dir), output_dir=str(out))
    settings = json.loads((out / "settings.json").read_text())
    assert settings["resized_to_grid"] is False and settings["image_size"] == 96
    assert settings["window"] == 32  # the generator runs on windows of the size it was trained on
    manifest = (out / "manifest.csv").read_text().splitlines()
    assert len(manifest) > 1
    written = sorted((out / "images").glob("*.nii.gz"))
    datalist = json.loads((work_dir / "data" / "datalist.json").read_text())["test_synthesis"]
    first = (work_dir / "data" / datalist[0]["image"]).resolve()
    match = [p for p in written if p.name.startswith(first.name.split(".")[0] + "_v0")]
    assert match and nib.load(match[0]).shape[:2] == nib.load(first).shape[:2]


@pytest.mark.integration
@pytest.mark.parametrize(("crop", "message"), [(30, "multiple of 4"), (128, "no larger than image_size")])
def test_bad_crop_sizes_are_refused_before_any_work(work_dir: Path, crop: int, message: str,
                                                    capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        run_bundle("train_local", config_file=TRAIN_YAML, **{**NATIVE, "work_dir": str(work_dir), "crop_size": crop})
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "crop_size" in errors[0] and message in errors[0]
    assert not (work_dir / "output").exists()
