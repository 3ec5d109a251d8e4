"""Image quality end to end: a generator rebuilt from train.yaml, the mean-lung baseline, FID, outputs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from covid_ct_cgan import intensity
from covid_ct_cgan.errors import InputError, entry_point
from covid_ct_cgan.evaluation.fid_features import FIDFeatures
from covid_ct_cgan.evaluation.image_quality import (
    ImageQuality,
    evaluate_image_quality,
    generated_region,
    load_datalist,
    mean_lung_intensity,
    resampled_real,
)
from covid_ct_cgan.evaluation.models import trained_model
from covid_ct_cgan.evaluation.realism import mean_vesselness
from covid_ct_cgan.networks import GlobalLocalGenerator, UNetGenerator
from covid_ct_cgan.transforms import synthesis_region

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundle" / "configs"


def tiny_features(tmp_path: Path) -> FIDFeatures:
    """The project's FID feature network at 32 px, one epoch."""
    return FIDFeatures(tmp_path / "fid_features", image_size=32, epochs=1, batch_size=2)


def test_model_is_rebuilt_from_its_training_configs(tmp_path: Path, generator_checkpoint: Path, tiny_overrides: dict) -> None:
    ours = trained_model("ours", [CONFIGS / "train.yaml"], tiny_overrides, checkpoint=generator_checkpoint)
    assert isinstance(ours.network, GlobalLocalGenerator) and ours.network.mode == "joint"
    assert ours.settings["image_size"] == 32 and ours.settings["condition"] == "map"
    assert ours.epochs == "global ?, local ?, joint 2"  # read from the checkpoints' trainer state
    ours.network.load_state_dict(torch.load(generator_checkpoint / "checkpoint_epoch=2.pt")["generator"])
    pix2pix = trained_model("pix2pix", [CONFIGS / "train.yaml", CONFIGS / "pix2pix.yaml"], tiny_overrides)
    assert isinstance(pix2pix.network, UNetGenerator)
    assert pix2pix.checkpoint == tmp_path / "output_pix2pix" / "joint"
    # an overlay that declares its own imports keeps the base config's (a plain merge would drop them)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text('imports: ["$import math"]\nngf: "$int(math.sqrt(64))"\n')
    without_ngf = {k: v for k, v in tiny_overrides.items() if k != "ngf"}
    other = trained_model("other", [CONFIGS / "train.yaml", overlay], without_ngf)
    assert next(other.network.global_net.parameters()).shape[0] == 8  # ngf from the overlay's math expression
    with pytest.raises(InputError, match="not found"):
        trained_model("x", [CONFIGS / "missing.yaml"])


def _real_model_scale(path: str) -> np.ndarray:
    return intensity.to_model(nib.load(path).get_fdata().astype(np.float32), "hu")


@pytest.mark.integration
def test_evaluation_scores_models_and_the_mean_lung_baseline(
    dataset: Path, tmp_path: Path, generator_checkpoint: Path, tiny_overrides: dict
) -> None:
    model = trained_model("ours", [CONFIGS / "train.yaml"], tiny_overrides, checkpoint=generator_checkpoint)
    out = tmp_path / "evaluation"
    summary = evaluate_image_quality([model], dataset, out, features=tiny_features(tmp_path),
                                     realism={"folds": 2, "iterations": 20, "kid_subsets": 10})
    folder = out / "image_quality"
    assert {p.name for p in folder.iterdir()} >= {"image_quality.csv", "per_image.csv", "settings.json", "synthesis"}
    assert [(r["model"], r["region"]) for r in summary] == [
        ("ours", "complemented"), ("ours", "lung_only"), ("mean_lung", "complemented"), ("mean_lung", "lung_only"),
        ("resampled_real", "complemented"), ("resampled_real", "lung_only")]
    assert all(r["images"] == 3 and math.isfinite(r["fid"]) and r["fid"] >= -1e-6 for r in summary)
    assert all(r["commit"] and r["seed"] == "0" for r in summary)
    assert summary[0]["epochs"] == "global ?, local ?, joint 2" and summary[0]["image_size"] == "32"
    # realism beside FID for every model and the baseline: KID per region, the rest once per model (both rows)
    assert all(math.isfinite(r["kid"]) and r["kid_sd"] >= 0 and r["realism_region"] == "lung" for r in summary)
    assert all(0.0 <= r["two_sample_accuracy"] <= 1.0 and r["two_sample_folds"] == 2 and r["two_sample_crops"] == 24
               for r in summary)
    assert summary[0]["vesselness_ratio"] == summary[1]["vesselness_ratio"] > 0.1  # a random generator draws speckle
    assert summary[2]["vesselness_ratio"] < 0.1  # the flat mean-lung fill has no tubes
    # the grid peak needs 32-px windows 90 % inside the region: none fits the lungs of these 32-px slices
    assert all(math.isnan(r["grid_peak"]) and math.isnan(r["grid_peak_real"]) for r in summary)
    # the resolution reference at the model's own 32 px: these slices are 32 px, so it is the real slice itself
    assert (summary[4]["image_size"], summary[4]["epochs"]) == ("32", "none (the real slice)")
    assert summary[4]["vesselness_ratio"] == pytest.approx(1.0) and summary[4]["fid"] == pytest.approx(0.0, abs=1e-6)
    assert summary[4]["rmse"] == 0.0 and math.isnan(summary[4]["psnr"])  # identical slices: PSNR is inf, not averaged
    with open(folder / "per_image.csv", newline="") as f:
        per_image = list(csv.DictReader(f))
    assert len(per_image) == 3 * 3 * 2  # models x slices x regions
    assert all((folder / r["generated"]).is_file() for r in per_image)

    # the mean-lung baseline, recomputed here with numpy and scikit-image
    train = load_datalist(dataset, "training")
    lungs = [(_real_model_scale(it["image"]), nib.load(it["label"]).get_fdata() > 0) for it in train]
    fill = np.concatenate([img[lung] for img, lung in lungs]).mean()
    assert mean_lung_intensity(train, -600, 1500) == pytest.approx(fill, rel=1e-6)
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["mean_lung_intensity"]["model_scale"] == pytest.approx(fill, rel=1e-6)
    for r in (r for r in per_image if r["model"] == "mean_lung"):
        real = _real_model_scale(r["image"])
        lung = nib.load(r["label"]).get_fdata() > 0
        composite = np.where(lung, fill, real)
        if r["region"] == "complemented":
            assert float(r["psnr"]) == pytest.approx(peak_signal_noise_ratio(real, composite, data_range=2.0), abs=1e-3)
            ssim = structural_similarity(real, composite, data_range=2.0, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)
            assert float(r["ssim"]) == pytest.approx(ssim, abs=1e-4)
        else:
            rmse = math.sqrt(((composite - real)[lung] ** 2).mean())
            assert float(r["rmse"]) == pytest.approx(rmse, rel=1e-4)
            assert float(r["rmse_hu"]) == pytest.approx(rmse * 750.0, rel=1e-4)
    # the baseline's composite is written like a synthesis output (the report's model grid reads it)
    written = nib.load(folder / per_image[-1]["generated"]).get_fdata()
    assert written.shape == (32, 32)

    settings = json.loads((folder / "settings.json").read_text())
    assert settings["realism"]["folds"] == 2 and settings["realism"]["vessel_sigmas_mm"] == [0.75, 1.5, 2.25, 3.0]
    ratio = [np.mean([float(r[k]) for r in per_image if r["model"] == "ours" and r["region"] == "lung_only"])
             for k in ("vesselness", "vesselness_real")]
    assert summary[0]["vesselness_ratio"] == pytest.approx(ratio[0] / ratio[1], rel=1e-4)  # from the per-slice values

    with pytest.raises(InputError, match="overwrite"):
        evaluate_image_quality([model], dataset, out, features=tiny_features(tmp_path))
    with pytest.raises(InputError, match="unknown key"):
        evaluate_image_quality([model], dataset, tmp_path / "other", features=tiny_features(tmp_path),
                               realism={"crop": 16})


def test_generated_region_is_the_region_the_model_draws(dataset: Path) -> None:
    label = nib.load(load_datalist(dataset, "test_synthesis")[0]["label"]).get_fdata().astype(np.uint8)
    assert np.array_equal(generated_region(label, {}), label > 0)  # the mean-lung baseline and map-only models
    assert np.array_equal(generated_region(label, {"condition": "map", "context_region": "lesion"}), label > 0)
    lesion = {"condition": "map+context", "context_region": "lesion", "context_dilation": 4, "image_size": 64}
    region = generated_region(label, lesion)  # 4 px at 64 px = 2 px at the slice's 32 px, as run_synthesis scales it
    expected = synthesis_region(torch.from_numpy(label.astype(np.int64))[None], "lesion", 2)[0].numpy()
    assert np.array_equal(region, expected) and region.sum() < (label > 0).sum() and (region >= (label >= 2)).all()


def test_missing_checkpoint_is_one_clear_error(dataset: Path, tmp_path: Path, tiny_overrides: dict) -> None:
    model = trained_model("ours", [CONFIGS / "train.yaml"], tiny_overrides)
    with pytest.raises(InputError, match="no checkpoint for model 'ours'"):
        evaluate_image_quality([model], dataset, tmp_path / "evaluation", features=tiny_features(tmp_path))
    assert not (tmp_path / "evaluation" / "image_quality").exists()  # nothing half-written


def test_model_names_select_entries_of_models_in_their_order(tmp_path: Path) -> None:
    models = {"ours": {"configs": ["train.yaml"]}, "pix2pix": {"configs": ["train.yaml", "pix2pix.yaml"]}}
    run = ImageQuality(models, tmp_path / "datalist.json", tmp_path / "evaluation", model_names=["pix2pix", "ours"])
    assert list(run.selected_models()) == ["pix2pix", "ours"]
    assert list(ImageQuality(models, "d.json", "out").selected_models()) == ["ours", "pix2pix"]  # None: all
    with pytest.raises(InputError, match=r"^model_names: no entry \['mine'\] in models \(entries: ours, pix2pix\)$"):
        ImageQuality(models, "d.json", "out", model_names=["ours", "mine"]).selected_models()
    with pytest.raises(InputError, match="named twice"):
        ImageQuality(models, "d.json", "out", model_names=["ours", "ours"]).selected_models()


def test_run_refuses_an_unknown_model_name_with_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = ImageQuality({"ours": {"configs": [str(CONFIGS / "train.yaml")]}}, tmp_path / "datalist.json",
                       tmp_path / "evaluation", model_names=["mine"])
    with pytest.raises(InputError):  # the library raises; evaluate.yaml's entry point reports it
        run.run()
    with pytest.raises(SystemExit) as stop:
        entry_point(run.run)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == ["ERROR: model_names: no entry ['mine'] in models (entries: ours)"]
    assert not (tmp_path / "evaluation").exists()


def test_resampled_real_is_the_real_slice_at_the_model_grid() -> None:
    """The resolution reference: area down to the grid, bilinear back; thin vessels fade, so its vesselness is < 1."""
    real = np.full((64, 48), -0.8, dtype=np.float32)
    real[:, 20] = 0.6  # a one-pixel vessel
    real[30, :] = 0.6
    label = np.ones_like(real, dtype=np.int64)
    out = resampled_real(real, label, 32)
    assert out.shape == real.shape
    down = torch.nn.functional.interpolate(torch.from_numpy(real)[None, None], size=(32, 24), mode="area")
    up = torch.nn.functional.interpolate(down, size=(64, 48), mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(out, up, atol=1e-5)
    assert out.max() < 0.6  # the vessel is blurred
    region = np.ones_like(real, dtype=bool)
    ratio = mean_vesselness(out, region, 0.7) / mean_vesselness(real, region, 0.7)
    assert 0.0 < ratio < 1.0
    np.testing.assert_allclose(resampled_real(real, label, 64), real, atol=1e-6)  # the slice fits the grid
