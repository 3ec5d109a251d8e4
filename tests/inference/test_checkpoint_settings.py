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
    network_record,
    record_differences,
    resolve_network_settings,
    saved_network_settings,
    setting_differences,
)
from covid_ct_cgan.data.prepare import prepare_if_needed
from covid_ct_cgan.errors import InputError
from covid_ct_cgan.evaluation.models import trained_model
from covid_ct_cgan.networks import DfmWeight, GlobalLocalGenerator, MultiResolutionDiscriminator
from covid_ct_cgan.settings import run_bundle

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_YAML = str(REPO_ROOT / "bundle" / "configs" / "train.yaml")
GENERATOR = "covid_ct_cgan.networks.GlobalLocalGenerator"
DATA = {"image_size": 64, "crop_size": 0, "condition": "map", "context_region": "lung", "context_dilation": 3,
        "keep_effusion": False, "window_level": -600, "window_width": 1500}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# the settings of conftest's `checkpoint_dir` (a checkpoint saved without any record, as the oldest runs saved them)
OLD_KEYS = {"image_size": 32, "ngf": 8, "n_downsampling": 1, "n_blocks_global": 1, "n_blocks_local": 1}
LEGACY = ["--legacy_settings", str(OLD_KEYS)]


def _record(mode: str = "joint", ngf: int = 8, **data: object) -> dict:
    """A record as train.yaml saves it: the data settings and the networks built (tiny ones)."""
    networks = {
        "generator": GlobalLocalGenerator(4, 1, ngf=ngf, n_downsampling=1, n_blocks_global=1, n_blocks_local=1, mode=mode),
        "discriminator": MultiResolutionDiscriminator(5, 8, 2, norm="none"),
        "dfm": DfmWeight(16, mode="dynamic" if mode == "joint" else "equal"),
        "g_optimizer": object(),  # not a network: left out
    }
    return network_record({**DATA, **data}, networks)


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


def test_record_is_read_from_the_networks_and_round_trips(tmp_path: Path) -> None:
    record = _record(ngf=12)
    assert list(record["networks"]) == ["generator", "discriminator", "dfm"]
    assert record["networks"]["generator"]["ngf"] == 12 and record["networks"]["dfm"]["bounds"] == [0.1, 0.9]
    assert record["networks"]["generator"]["_target_"] == GENERATOR and record["image_size"] == 64
    path = _save(tmp_path / "joint" / "checkpoint_epoch=1.pt", record)
    assert saved_network_settings(path) == (path, record)
    assert resolve_network_settings(path) == record  # inference rebuilds the generator from it as it is


def test_resolve_refuses_legacy_settings_for_a_record_of_the_networks(tmp_path: Path) -> None:
    ckpt = _save(tmp_path / "joint" / "checkpoint_epoch=1.pt", _record())
    with pytest.raises(InputError, match=r"^legacy_settings: the checkpoint .* records the networks it was trained with; "
                                         r"leave legacy_settings out"):
        resolve_network_settings(ckpt, {"ngf": 8})
    with pytest.raises(InputError, match=r"^legacy_settings: unknown key 'ngff'; one of image_size, "):
        resolve_network_settings(ckpt, {"ngff": 8})


def test_resolve_reads_a_flat_record_of_older_runs(tmp_path: Path) -> None:
    """A record of train.yaml's keys (before the networks' arguments were recorded) is read as the joint generator's;
    keys added later count as the value those runs had (upsampling: transposed, the window: -600 / 1500)."""
    ckpt = _save(tmp_path / "joint" / "checkpoint_epoch=1.pt", {"generator": GENERATOR, "ngf": 32, "image_size": 64,
                 "n_downsampling": 1, "condition": "map+context", "keep_effusion": False, "d_norm": "instance"})
    resolved = resolve_network_settings(ckpt)
    generator = resolved["networks"]["generator"]
    assert generator == {"_target_": GENERATOR, "in_channels": 5, "out_channels": 1, "ngf": 32, "n_downsampling": 1,
                         "n_blocks_global": 3, "n_blocks_local": 2, "desum": "dynamic", "upsampling": "transposed",
                         "mode": "joint"}  # keys it lacks: train.yaml's defaults then
    assert (resolved["image_size"], resolved["condition"], resolved["window_level"], resolved["crop_size"]) == (
        64, "map+context", -600, 0)
    assert "d_norm" not in resolved  # a discriminator setting: not the generator's, not a data setting
    assert resolve_network_settings(ckpt, {"ngf": 32, "condition": "map+context"})["networks"]["generator"]["ngf"] == 32
    with pytest.raises(InputError) as err:
        resolve_network_settings(ckpt, {"ngf": 16})
    assert str(err.value).startswith(f"legacy_settings#ngf: the checkpoint {ckpt} was trained with 32, the config gives 16")
    with pytest.raises(InputError, match=r"^legacy_settings#keep_effusion: must be True or False, got 'true' "
                                         r"\(write --legacy_settings#keep_effusion True\)"):
        resolve_network_settings(ckpt, {"keep_effusion": "true"})
    with pytest.raises(InputError, match=r"^legacy_settings#ngf: must be a whole number, got 8.5"):
        resolve_network_settings(ckpt, {"ngf": 8.5})
    unet = _save(tmp_path / "pix2pix" / "checkpoint_epoch=1.pt", {"generator": "covid_ct_cgan.networks.UNetGenerator"})
    with pytest.raises(InputError, match=r"trained with generator .*UNetGenerator, recorded without its constructor "
                                         r"arguments: only .*GlobalLocalGenerator is rebuilt"):
        resolve_network_settings(unet)
    # a checkpoint saved without any record: the given values, else train.yaml's defaults then
    old = _save(tmp_path / "old" / "checkpoint_epoch=1.pt", None)
    resolved = resolve_network_settings(old, {"ngf": 8, "keep_effusion": True})
    assert resolved["networks"]["generator"]["ngf"] == 8 and resolved["networks"]["generator"]["in_channels"] == 5
    assert resolved["networks"]["generator"]["n_downsampling"] == 2 and resolved["image_size"] == 128


def test_setting_differences_name_each_key() -> None:
    assert setting_differences({"image_size": 32, "betas": (0.5, 0.9)}, {"image_size": 32, "betas": [0.5, 0.9]}) == []
    assert setting_differences({"image_size": 32, "ngf": 8}, {"image_size": 64, "ngf": 8, "dfm": "equal"}) == [
        "dfm: '(not set)' -> 'equal'", "image_size: 32 -> 64"]


def test_record_differences_name_each_argument() -> None:
    recorded = _record(mode="global")
    assert record_differences(recorded, _record(mode="global")) == []
    assert record_differences(recorded, _record(mode="global", ngf=16, image_size=32)) == [
        "generator.ngf: 8 -> 16", "image_size: 64 -> 32"]
    # the joint stage starts from the global one: its generator's mode and its DFM net differ by design
    joint = _record(mode="joint")
    assert record_differences(recorded, joint) == ["dfm.mode: 'equal' -> 'dynamic'", "generator.mode: 'global' -> 'joint'"]
    assert record_differences(recorded, joint, ignore=("generator.mode", "dfm")) == []
    # an argument recorded before it existed counts as its default; a network built on one side only is one line
    older = json.loads(json.dumps(recorded))
    del older["networks"]["generator"]["upsampling"], older["networks"]["dfm"]
    assert record_differences(older, recorded) == ["dfm: '(not built)' -> 'covid_ct_cgan.networks.DfmWeight'"]


def test_record_differences_with_a_flat_record_of_older_runs() -> None:
    """A stage recorded before the networks' arguments were is compared in its own keys: later keys count as the
    value it was trained with, keys of networks the run does not build are not compared."""
    flat = {"generator": GENERATOR, "image_size": 64, "condition": "map", "context_region": "lung",
            "context_dilation": 3, "keep_effusion": False, "ngf": 8, "n_downsampling": 1, "n_blocks_global": 1,
            "n_blocks_local": 1, "desum": "dynamic", "discriminator": "covid_ct_cgan.networks.MultiResolutionDiscriminator",
            "ndf": 8, "n_layers_d": 2, "num_d": 2, "dfm": "dynamic", "dfm_feature_index": 1, "local_d_norm": "none"}
    current = _record(mode="joint")
    assert record_differences(flat, current) == ["d_norm: 'instance' -> 'none'"]  # before d_norm: instance-norm critics
    assert record_differences({**flat, "d_norm": "none"}, current) == []
    assert record_differences({**flat, "d_norm": "none", "ngf": 16}, current) == ["ngf: 16 -> 8"]
    assert record_differences({**flat, "d_norm": "none", "local_d": True}, current) == ["local_d: True -> False"]
    assert record_differences({**flat, "d_norm": "none", "dfm": "equal"}, current) == ["dfm: 'equal' -> 'dynamic'"]
    assert record_differences({**flat, "d_norm": "none", "dfm": "equal"}, _record(mode="global")) == []  # not joint


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
    for ckpt in [*joint.glob("checkpoint_*.pt"), joint / "best_generator.pt"]:  # every saver writes the record
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)[NETWORK_SETTINGS_KEY]
        generator = saved["networks"]["generator"]
        assert (generator["ngf"], generator["n_downsampling"], saved["image_size"], generator["_target_"],
                generator["upsampling"]) == (12, 1, 32, GENERATOR, "resize")
        assert saved["networks"]["discriminator"]["norm"] == "spectral" and "local_discriminator" not in saved["networks"]
    assert json.loads((joint / "settings.json").read_text())["networks"]["generator"]["ngf"] == 12

    hu, lab = builders.tiny_slice()
    image = builders.save_nifti(hu, tmp_path / "in" / "slice.nii.gz")
    label = builders.save_nifti(lab, tmp_path / "in" / "slice_label.nii.gz")
    good = subprocess.run(_synthesis_cmd(work / "output", image, label, tmp_path / "out"),
                          cwd=REPO_ROOT, capture_output=True, text=True, env=ENV, timeout=300)
    assert good.returncode == 0, good.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "settings.json").read_text())["image_size"] == 32

    bad = subprocess.run(_synthesis_cmd(work / "output", image, label, tmp_path / "out_bad", "--legacy_settings",
                                        "{'ngf': 16}"),
                         cwd=REPO_ROOT, capture_output=True, text=True, env=ENV, timeout=300)
    assert bad.returncode == 2, bad.stderr[-2000:]
    errors = [line for line in bad.stderr.splitlines() if line.startswith("ERROR")]
    assert errors == [f"ERROR: legacy_settings: the checkpoint {next(joint.glob('checkpoint_*.pt'))} records the networks "
                      "it was trained with; leave legacy_settings out (it describes checkpoints saved without that "
                      "record)"], bad.stderr[-2000:]
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
    """A checkpoint saved before any record was (``{"generator": ...}`` only) works with the legacy_settings given."""
    assert saved_network_settings(checkpoint_dir / "joint") is None
    hu, lab = builders.tiny_slice()
    image = builders.save_nifti(hu, tmp_path / "in" / "slice.nii.gz")
    label = builders.save_nifti(lab, tmp_path / "in" / "slice_label.nii.gz")
    done = subprocess.run(_synthesis_cmd(checkpoint_dir, image, label, tmp_path / "out", *LEGACY),
                          cwd=REPO_ROOT, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "settings.json").read_text())["image_size"] == OLD_KEYS["image_size"]
    # without the keys, the defaults (ngf 16 ...) do not match its weights: refused, naming the mismatch
    done = subprocess.run(_synthesis_cmd(checkpoint_dir, image, label, tmp_path / "out2", "--legacy_settings",
                                         "{'image_size': 32}"),
                          cwd=REPO_ROOT, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 2 and "checkpoint is from another network configuration" in done.stderr


@pytest.mark.integration
def test_single_dicom_file_gets_a_hint_to_pass_its_series_folder(tmp_path: Path, builders, checkpoint_dir: Path) -> None:
    hu, lab = builders.tiny_volume()
    series = builders.write_dicom_series(tmp_path / "series", hu)
    one = sorted(series.iterdir())[0]
    label = builders.save_nifti(lab[:, :, :1], tmp_path / "label.nii.gz")
    done = subprocess.run(_synthesis_cmd(checkpoint_dir, one, label, tmp_path / "out", *LEGACY),
                          cwd=REPO_ROOT, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert errors == [f"ERROR: {one}: is a single DICOM file; pass its series folder instead (image: {series}), "
                      "which holds the .dcm files of all the slices"], done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
