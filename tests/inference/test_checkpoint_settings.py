"""Inference knows its checkpoint: network settings saved with checkpoints, read back by synthesis and evaluation."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from covid_ct_cgan.checkpoint_settings import (
    NETWORK_SETTINGS_KEY,
    NetworkSettings,
    resolve_network_settings,
    saved_network_settings,
)
from covid_ct_cgan.data.prepare import prepare_if_needed
from covid_ct_cgan.errors import InputError
from covid_ct_cgan.evaluation.models import trained_model
from covid_ct_cgan.settings import run_bundle

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_YAML = str(REPO_ROOT / "bundle" / "configs" / "train.yaml")
GENERATOR = "covid_ct_cgan.networks.GlobalLocalGenerator"
DEFAULTS = {"image_size": 128, "condition": "map", "keep_effusion": False, "ngf": 16, "n_downsampling": 2}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# the network keys of conftest's `checkpoint_dir` (a checkpoint saved without settings, as older runs saved them)
OLD_KEYS = {"image_size": 32, "ngf": 8, "n_downsampling": 1, "n_blocks_global": 1, "n_blocks_local": 1}


def _tiny_settings() -> dict:
    """The tiny train.yaml settings of the training tests (tests/engines/tiny_training.py)."""
    spec = importlib.util.spec_from_file_location("_tiny_training", REPO_ROOT / "tests" / "engines" / "tiny_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return dict(module.TINY)


def _save(path: Path, settings: dict | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"generator": {"w": torch.zeros(1)}}
    if settings is not None:
        ckpt[NETWORK_SETTINGS_KEY] = NetworkSettings(settings).state_dict()
    torch.save(ckpt, path)
    return path


def test_network_settings_object_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    saved = NetworkSettings({"generator": GENERATOR, "ngf": 32, "betas": (0.5, 0.9), "keep_effusion": False})
    path = tmp_path / "checkpoint_epoch=1.pt"
    torch.save({"network_settings": saved.state_dict()}, path)
    loaded = NetworkSettings()
    loaded.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["network_settings"])
    assert loaded.settings == {"generator": GENERATOR, "ngf": 32, "betas": [0.5, 0.9], "keep_effusion": False}


def test_saved_settings_from_a_file_a_folder_and_settings_json(tmp_path: Path) -> None:
    stage = tmp_path / "joint"
    ckpt = _save(stage / "checkpoint_epoch=2.pt", {"generator": GENERATOR, "ngf": 32})
    assert saved_network_settings(ckpt) == (ckpt, {"generator": GENERATOR, "ngf": 32})
    assert saved_network_settings(stage) == (ckpt, {"generator": GENERATOR, "ngf": 32})
    # a checkpoint saved without settings (an older run): the stage folder's settings.json
    old = tmp_path / "old"
    old_ckpt = _save(old / "checkpoint_epoch=1.pt", None)
    assert saved_network_settings(old) is None and saved_network_settings(old_ckpt) is None
    (old / "settings.json").write_text(json.dumps({"generator": GENERATOR, "ngf": 8}))
    assert saved_network_settings(old) == (old / "settings.json", {"generator": GENERATOR, "ngf": 8})
    assert saved_network_settings(old_ckpt) == (old / "settings.json", {"generator": GENERATOR, "ngf": 8})
    # only best_generator.pt (with its settings)
    best = _save(tmp_path / "best" / "best_generator.pt", {"generator": GENERATOR, "ngf": 4})
    assert saved_network_settings(best.parent) == (best, {"generator": GENERATOR, "ngf": 4})
    # nothing readable: loading the weights reports it later
    assert saved_network_settings(tmp_path / "missing") is None
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert saved_network_settings(junk) is None


def test_resolve_takes_the_checkpoints_and_refuses_a_contradiction(tmp_path: Path) -> None:
    ckpt = _save(tmp_path / "joint" / "checkpoint_epoch=1.pt", {"generator": GENERATOR, "ngf": 32, "image_size": 64})
    none = dict.fromkeys(DEFAULTS)
    resolved = resolve_network_settings(ckpt, none, DEFAULTS, {"generator": GENERATOR})
    assert resolved == {**DEFAULTS, "ngf": 32, "image_size": 64}  # keys it does not hold: the defaults
    assert resolve_network_settings(ckpt, {**none, "ngf": 32, "condition": "map"}, DEFAULTS)["ngf"] == 32  # agreeing
    with pytest.raises(InputError) as err:
        resolve_network_settings(ckpt, {**none, "ngf": 16}, DEFAULTS)
    assert str(err.value).startswith(f"ngf: the checkpoint {ckpt} was trained with 32, the config gives 16")
    with pytest.raises(InputError, match=r"trained with generator .*GlobalLocalGenerator, but this config builds .*UNet"):
        resolve_network_settings(ckpt, none, DEFAULTS, {"generator": "covid_ct_cgan.networks.UNetGenerator"})
    with pytest.raises(InputError, match=r"^keep_effusion: must be True or False, got 'true' \(write --keep_effusion True\)"):
        resolve_network_settings(ckpt, {**none, "keep_effusion": "true"}, DEFAULTS)
    with pytest.raises(InputError, match=r"^ngf: must be a whole number, got 8.5"):
        resolve_network_settings(ckpt, {**none, "ngf": 8.5}, DEFAULTS)
    # a checkpoint saved without settings: the given values, else the defaults
    old = _save(tmp_path / "old" / "checkpoint_epoch=1.pt", None)
    assert resolve_network_settings(old, {**none, "ngf": 8}, DEFAULTS) == {**DEFAULTS, "ngf": 8}


def _synthesis_cmd(checkpoint_dir: Path, image: Path, label: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "run", "--config_file", "bundle/configs/inference.yaml",
            "--checkpoint_dir", str(checkpoint_dir), "--image", str(image), "--label", str(label),
            "--output_dir", str(out), "--amp", "False", *extra]


@pytest.mark.integration
def test_trained_checkpoint_is_enough_for_synthesis_and_evaluation(tmp_path: Path, builders) -> None:
    """Train tiny with non-default network keys, then synthesise with only --checkpoint_dir; a contradiction is refused."""
    tiny = {**_tiny_settings(), "epochs": 1, "ngf": 12, "n_downsampling": 1, "upsampling": "resize",
            "d_norm": "spectral", "local_d_norm": "none"}
    work = tmp_path / "work"
    prepare_if_needed("", str(work / "data"), phantom_dir=str(work / "phantom_raw"), seed=0,
                      phantom_patients=tiny["phantom_patients"], phantom_size=tiny["phantom_size"],
                      phantom_slices=tiny["phantom_slices"])
    run_bundle("train_joint", config_file=TRAIN_YAML, **{**tiny, "work_dir": str(work)}, handover="$None",
               handover_discriminator="$None")
    joint = work / "output" / "joint"
    for ckpt in [*joint.glob("checkpoint_*.pt"), joint / "best_generator.pt"]:  # every saver writes the settings
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)[NETWORK_SETTINGS_KEY]
        assert (saved["ngf"], saved["n_downsampling"], saved["image_size"], saved["generator"], saved["upsampling"]) == (
            12, 1, 32, GENERATOR, "resize")
        assert (saved["d_norm"], saved["local_d_norm"]) == ("spectral", "none")
    assert json.loads((joint / "settings.json").read_text())["ngf"] == 12

    hu, lab = builders.tiny_slice()
    image = builders.save_nifti(hu, tmp_path / "in" / "slice.nii.gz")
    label = builders.save_nifti(lab, tmp_path / "in" / "slice_label.nii.gz")
    good = subprocess.run(_synthesis_cmd(work / "output", image, label, tmp_path / "out"),
                          cwd=REPO_ROOT, capture_output=True, text=True, env=ENV, timeout=300)
    assert good.returncode == 0, good.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "settings.json").read_text())["image_size"] == 32

    bad = subprocess.run(_synthesis_cmd(work / "output", image, label, tmp_path / "out_bad", "--ngf", "16"),
                         cwd=REPO_ROOT, capture_output=True, text=True, env=ENV, timeout=300)
    assert bad.returncode == 2, bad.stderr[-2000:]
    errors = [line for line in bad.stderr.splitlines() if line.startswith("ERROR")]
    assert errors == [f"ERROR: ngf: the checkpoint {next(joint.glob('checkpoint_*.pt'))} was trained with 12, "
                      "the command gives 16; leave ngf out to use the checkpoint's"], bad.stderr[-2000:]
    assert "Traceback" not in bad.stderr and not (tmp_path / "out_bad").exists()

    # evaluation rebuilds the model from train.yaml and the checkpoint's settings alone (resize upsampling too)
    model = trained_model("ours", [TRAIN_YAML], {"work_dir": str(work)})
    assert model.settings["image_size"] == 32
    assert any(isinstance(m, torch.nn.Upsample) for m in model.network.modules())
    assert model.network.state_dict().keys() == torch.load(joint / "best_generator.pt", weights_only=True)["generator"].keys()
    with pytest.raises(InputError, match=r"^ngf: the checkpoint .* was trained with 12, the training overrides of model 'ours' give 16"):
        trained_model("ours", [TRAIN_YAML], {"work_dir": str(work), "ngf": 16})


@pytest.mark.integration
def test_old_checkpoint_without_settings_uses_the_given_keys(tmp_path: Path, builders, checkpoint_dir: Path) -> None:
    """A checkpoint saved before settings were saved (``{"generator": ...}`` only) works with the keys given."""
    assert saved_network_settings(checkpoint_dir / "joint") is None
    hu, lab = builders.tiny_slice()
    image = builders.save_nifti(hu, tmp_path / "in" / "slice.nii.gz")
    label = builders.save_nifti(lab, tmp_path / "in" / "slice_label.nii.gz")
    keys = [x for k, v in OLD_KEYS.items() for x in (f"--{k}", str(v))]
    done = subprocess.run(_synthesis_cmd(checkpoint_dir, image, label, tmp_path / "out", *keys),
                          cwd=REPO_ROOT, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "settings.json").read_text())["image_size"] == OLD_KEYS["image_size"]
    # without the keys, the defaults (ngf 16 ...) do not match its weights: refused, naming the mismatch
    done = subprocess.run(_synthesis_cmd(checkpoint_dir, image, label, tmp_path / "out2", "--image_size", "32"),
                          cwd=REPO_ROOT, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 2 and "checkpoint is from another network configuration" in done.stderr


@pytest.mark.integration
def test_single_dicom_file_gets_a_hint_to_pass_its_series_folder(tmp_path: Path, builders, checkpoint_dir: Path) -> None:
    hu, lab = builders.tiny_volume()
    series = builders.write_dicom_series(tmp_path / "series", hu)
    one = sorted(series.iterdir())[0]
    label = builders.save_nifti(lab[:, :, :1], tmp_path / "label.nii.gz")
    keys = [x for k, v in OLD_KEYS.items() for x in (f"--{k}", str(v))]
    done = subprocess.run(_synthesis_cmd(checkpoint_dir, one, label, tmp_path / "out", *keys),
                          cwd=REPO_ROOT, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert errors == [f"ERROR: {one}: is a single DICOM file; pass its series folder instead (image: {series}), "
                      "which holds the .dcm files of all the slices"], done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
