"""Settings a user types are checked before any work: unknown keys in every config, bad training values,
the command a run re-reads, and no call-stack inspection in the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from covid_ct_cgan.errors import InputError
from covid_ct_cgan.settings import (
    BundleCommand,
    check_overrides,
    check_training,
    command_line,
    current_command,
    load_config,
    run_bundle,
    using_command,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "bundle" / "configs"
TRAIN = str(CONFIGS / "train.yaml")
OVERLAYS = ["paper.yaml", "pix2pix.yaml", "pix2pixhd.yaml", "multi_gpu_train.yaml"] + sorted(
    f"ablation/{p.name}" for p in (CONFIGS / "ablation").glob("*.yaml")
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("ERROR")]


def _file_keys(*files: str) -> dict:
    return BundleCommand(config_files=tuple(files)).load(overrides=False, tracking=False)


# --------------------------------------------------------------------------- a misspelt key, as a user types it


@pytest.mark.parametrize(
    "config, run_id, typo, expected",
    [
        ("train.yaml", "training", ["--epoch", "1"], "ERROR: unknown key 'epoch'; did you mean 'epochs'?"),
        ("inference.yaml", "run", ["--num_variant", "3"], "ERROR: unknown key 'num_variant'; did you mean 'num_variants'?"),
        ("evaluate.yaml", "run", ["--model_name", "ours"], "ERROR: unknown key 'model_name'; did you mean 'model_names'?"),
        ("segmentation.yaml", "run", ["--epoch", "1"], "ERROR: unknown key 'epoch'; did you mean 'epochs'?"),
    ],
)
@pytest.mark.integration
def test_misspelt_key_on_the_command_line_fails_before_any_work(
    tmp_path: Path, config: str, run_id: str, typo: list[str], expected: str
) -> None:
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", f"bundle/configs/{config}",
           "--work_dir", str(work), *typo]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert _errors(done.stderr) == [expected]
    assert "Traceback" not in done.stderr
    assert not work.exists()  # nothing prepared, trained or written


@pytest.mark.parametrize(
    "configs, run_id, override, expected",
    [
        ([TRAIN], "train_local", {"train#dataloader#batch_sise": 4},
         "ERROR: unknown key 'train#dataloader#batch_sise'; did you mean 'train#dataloader#batch_size'?"),
        ([str(CONFIGS / "inference.yaml")], "run", {"augmenter#rotate_rang": 10.0},
         "ERROR: unknown key 'augmenter#rotate_rang'; did you mean 'augmenter#rotate_range'?"),
        ([str(CONFIGS / "evaluate.yaml")], "ablation", {"fid#epoch": 2},
         "ERROR: unknown key 'fid#epoch'; did you mean 'fid#epochs'?"),
        ([str(CONFIGS / "segmentation.yaml")], "run", {"network_def#channel": [4, 8, 16]},
         "ERROR: unknown key 'network_def#channel'; did you mean 'network_def#channels'?"),
        ([TRAIN, str(CONFIGS / "multi_gpu_train.yaml")], "training", {"imge_size": 32},
         "ERROR: unknown key 'imge_size'; did you mean 'image_size'?"),
    ],
)
@pytest.mark.integration
def test_misspelt_id_path_is_refused_in_every_config(
    tmp_path: Path, capsys: pytest.CaptureFixture, configs: list[str], run_id: str, override: dict, expected: str
) -> None:
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as stop:
        run_bundle(run_id, config_file=configs, work_dir=str(work), **override)
    assert stop.value.code == 2
    assert _errors(capsys.readouterr().err) == [expected]
    assert not work.exists()


@pytest.mark.integration
@pytest.mark.parametrize("run_id", ["prepare", "prepare_if_needed", "run", "train_global", "train_local", "train_joint", "training"])
def test_every_training_run_id_checks_its_keys(tmp_path: Path, capsys: pytest.CaptureFixture, run_id: str) -> None:
    with pytest.raises(SystemExit) as stop:
        run_bundle(run_id, config_file=TRAIN, work_dir=str(tmp_path / "work"), num_variant=3)
    assert stop.value.code == 2
    assert _errors(capsys.readouterr().err) == ["ERROR: unknown key 'num_variant'"]
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_keys_are_known_and_typos_refused(overlay: str) -> None:
    config = _file_keys(TRAIN, str(CONFIGS / overlay))
    overlay_keys = list(ConfigParser.load_config_file(CONFIGS / overlay))  # as written, `#`-paths included
    check_overrides(config, overlay_keys)  # whatever an overlay defines may be overridden with it
    check_overrides(config, ["train#dataloader#batch_size", "bundle_root", "_meta_#version", "network_def#_disabled_"])
    with pytest.raises(InputError, match=r"^unknown key 'epoch'; did you mean 'epochs'\?$"):
        check_overrides(config, ["epoch"])
    with pytest.raises(InputError, match=r"^unknown key 'prepare_args#seeed'; did you mean 'prepare_args#seed'\?$"):
        check_overrides(config, ["prepare_args#seeed"])


@pytest.mark.parametrize("config_file", ["train.yaml", "inference.yaml", "evaluate.yaml", "segmentation.yaml"])
def test_flags_take_booleans_not_words(config_file: str) -> None:
    # Fire reads `--overwrite true` as the word 'true', which Python takes as true whatever it says
    config = _file_keys(str(CONFIGS / config_file))
    check_overrides(config, {"overwrite": True})
    check_overrides(config, {"overwrite": False})
    with pytest.raises(InputError, match=r"^overwrite: must be True or False, got 'false' \(write --overwrite False\)$"):
        check_overrides(config, {"overwrite": "false"})
    with pytest.raises(InputError, match=r"^overwrite: must be True or False, got 1 \(write --overwrite True\)$"):
        check_overrides(config, {"overwrite": 1})


@pytest.mark.parametrize(
    "config_file, key, given, expected",
    [
        # a default that is an expression yielding a boolean (amp_by_default is annotated -> bool; a comparison)
        ("train.yaml", "amp", "false", "amp: must be True or False, got 'false' (write --amp False)"),
        ("train.yaml", "cuda_fast", 0, "cuda_fast: must be True or False, got 0 (write --cuda_fast False)"),
        ("inference.yaml", "augment", "false", "augment: must be True or False, got 'false' (write --augment False)"),
        # a #-path: a literal of the config, and a keyword of the component's target with a boolean default
        ("inference.yaml", "inference#handlers#1#iteration_log", "true",
         "inference#handlers#1#iteration_log: must be True or False, got 'true' (write --inference#handlers#1#iteration_log True)"),
        ("train.yaml", "train#dataloader#shuffle", "no",
         "train#dataloader#shuffle: must be True or False, got 'no' (write --train#dataloader#shuffle False)"),
        ("train.yaml", "train#handlers#12#epoch_log", "true",
         "train#handlers#12#epoch_log: must be True or False, got 'true' (write --train#handlers#12#epoch_log True)"),
        ("evaluate.yaml", "realism#two_sample", "1",
         "realism#two_sample: must be True or False, got '1' (write --realism#two_sample True)"),
    ],
)
def test_every_boolean_setting_takes_booleans_wherever_given(config_file: str, key: str, given, expected: str) -> None:
    config = _file_keys(str(CONFIGS / config_file))
    check_overrides(config, {key: True})
    check_overrides(config, {key: False})
    with pytest.raises(InputError) as err:
        check_overrides(config, {key: given})
    assert str(err.value) == expected


def test_settings_that_are_not_booleans_keep_their_values() -> None:
    config = _file_keys(TRAIN)
    # numbers 0 and 1 where the default is a number or an expression yielding one; a run step is never evaluated
    check_overrides(config, {"num_workers": 0, "constant_lr_epochs": 1, "network_def#ngf": 0, "prepare_if_needed": "false"})


@pytest.mark.integration
def test_a_lower_case_boolean_on_the_command_line_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        run_bundle("training", config_file=TRAIN, work_dir=str(tmp_path / "work"), amp="false")
    assert stop.value.code == 2
    assert _errors(capsys.readouterr().err) == ["ERROR: amp: must be True or False, got 'false' (write --amp False)"]
    assert not (tmp_path / "work").exists()


def test_what_monai_adds_stays_accepted() -> None:
    config = _file_keys(TRAIN)
    # a keyword the component's target takes, through **kwargs up to torch's DataLoader
    check_overrides(config, ["train#dataloader#prefetch_factor", "validate#dataloader#persistent_workers"])
    # tracking settings only with --tracking (without it they would be ignored)
    check_overrides(config, ["tracking_uri", "save_execute_config"], ["tracking_uri", "save_execute_config"])
    with pytest.raises(InputError, match="unknown key 'tracking_uri'"):
        check_overrides(config, ["tracking_uri"])
    # an open mapping takes new names: evaluate.yaml's models
    check_overrides(_file_keys(str(CONFIGS / "evaluate.yaml")), ["models#mine", "extra_training_overrides#ngf"])


COMPUTED_NETWORK_SETTINGS = (
    "network_settings#ngf: network_settings is computed by the config "
    "($covid_ct_cgan.checkpoint_settings.network_record(@data_settings, @save_dict)) and has no entries to set; "
    "set the keys it is computed from instead (data_settings, save_dict); ngf is also a key of its own: --ngf"
)


def test_a_path_below_a_computed_value_is_refused() -> None:
    # MONAI cannot set an entry of a string: it fails with a traceback where the path is applied
    config = _file_keys(TRAIN)
    with pytest.raises(InputError) as err:
        check_overrides(config, {"network_settings#ngf": 32})
    assert str(err.value) == COMPUTED_NETWORK_SETTINGS
    with pytest.raises(InputError, match=r"^saved_network_settings#ngf#x: saved_network_settings is computed by "
                                         r"the config \(\$.+\(@network_settings\)\) .+ \(network_settings\)$"):
        check_overrides(config, ["saved_network_settings#ngf#x"])
    # an @ reference: the entry is set where the reference points (a section), or the value it refers to
    toy = {"net": {"_target_": "torch.nn.Identity"}, "alias": "@net", "epochs": 3, "stage_epochs": "@epochs"}
    with pytest.raises(InputError, match=r"^alias#inplace: alias refers to @net and has no entries of its own to set; "
                                         r"set --net#inplace instead$"):
        check_overrides(toy, ["alias#inplace"])
    with pytest.raises(InputError, match=r"^stage_epochs#0: stage_epochs refers to @epochs .+; set --epochs instead$"):
        check_overrides(toy, ["stage_epochs#0"])
    # another override that first makes the value a structure: MONAI's to judge, as before
    check_overrides(config, {"network_settings": {"ngf": 16}, "network_settings#ngf": 32})
    check_overrides(toy, ["alias", "alias#inplace"])


@pytest.mark.integration
def test_a_path_below_a_computed_value_is_refused_before_monai_applies_it(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        run_bundle("training", config_file=TRAIN, work_dir=str(tmp_path / "work"), **{"network_settings#ngf": 32})
    assert stop.value.code == 2
    assert _errors(capsys.readouterr().err) == [f"ERROR: {COMPUTED_NETWORK_SETTINGS}"]
    assert not (tmp_path / "work").exists()


def test_tracking_settings_are_accepted_with_tracking(tmp_path: Path) -> None:
    command = BundleCommand.from_arguments(config_file=TRAIN, tracking="mlflow", tracking_uri="sqlite:///x.db")
    with using_command(command):
        from covid_ct_cgan.settings import check_command

        check_command()  # no error: tracking_uri is a key --tracking adds
    with using_command(BundleCommand.from_arguments(config_file=TRAIN, tracking_uri="sqlite:///x.db")):
        with pytest.raises(InputError, match="unknown key 'tracking_uri'"):
            check_command()


# --------------------------------------------------------------------------- bad training values


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"image_size": 100}, "ERROR: image_size: must be a multiple of 8 for this generator (the global stage works at "
                              "50 px and its generator needs a multiple of 4), got 100"),
        ({"batch_size": 0}, "ERROR: batch_size: must be at least 1, got 0"),
    ],
)
@pytest.mark.integration
def test_bad_training_value_is_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture, override: dict, expected: str
) -> None:
    with pytest.raises(SystemExit) as stop:
        run_bundle("training", config_file=TRAIN, work_dir=str(tmp_path / "work"), **override)
    assert stop.value.code == 2
    assert _errors(capsys.readouterr().err) == [expected]
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ({"epochs": -1}, "epochs: must be at least 1, got -1"),
        ({"epochs": 2.5}, "epochs: must be a whole number, got 2.5"),
        ({"condition": "mask"}, "condition: must be one of map, map+context; got 'mask'"),
        ({"desum": "dynamik"}, "desum: must be one of dynamic, dynamic_from_global, fixed, sum; got 'dynamik'"),
        ({"dfm": "none"}, "dfm: must be one of dynamic, dynamic_from_half, fixed, equal; got 'none'"),
        ({"context_region": "body"}, "context_region: must be one of lung, lesion; got 'body'"),
        ({"stages": ["global", "locall"]}, "stages: must be a non-empty list of global, local, joint; got ['global', 'locall']"),
        ({"learning_rate": 0}, "learning_rate: must be a positive number, got 0"),
        ({"betas": [0.5]}, "betas: must be two numbers in [0, 1), got [0.5]"),
        ({"lambda_fm": -1.0}, "lambda_fm: must be a number of at least 0, got -1.0"),
        ({"augment_prob": 2}, "augment_prob: must be a number in [0, 1], got 2"),
        ({"ngf": 15}, "ngf: must be even (the local generator uses ngf // 2), got 15"),
        ({"num_d": 4}, "num_d: must be 1, 2 or 3, got 4"),
        ({"dfm_feature_index": 5}, "dfm_feature_index: must be at most n_layers_d (3), got 5"),
        ({"constant_lr_epochs": 11}, "constant_lr_epochs: must be at most the stage's epochs (10), got 11"),
        ({"resume": "yes"}, "resume: must be True or False, got 'yes'"),
        ({"gan_mode": "wgan"}, "gan_mode: must be one of lsgan, vanilla; got 'wgan'"),
        ({"d_norm": "layer"}, "d_norm: must be one of instance, batch, none, spectral; got 'layer'"),
        ({"local_d_norm": "spectrall"}, "local_d_norm: must be one of instance, batch, none, spectral; got 'spectrall'"),
        ({"freeze_global_epochs": -2}, "freeze_global_epochs: must be at least 0, got -2"),
        ({"image_size": "$int('x')"}, "image_size: cannot be evaluated (ValueError: invalid literal for int() with base 10: 'x')"),
        ({"n_downsampling": 3, "image_size": 120}, "image_size: must be a multiple of 16 for this generator (the global stage "
                                                    "works at 60 px and its generator needs a multiple of 8), got 120"),
    ],
)
def test_training_values_are_checked(override: dict, message: str) -> None:
    raw = load_config(BundleCommand(config_files=(TRAIN,)), **override)
    with pytest.raises(InputError) as err:
        check_training(raw)
    assert str(err.value) == message


def test_image_size_follows_each_overlays_generator() -> None:
    check_training(load_config(BundleCommand(config_files=(TRAIN,))))
    # pix2pix: a U-Net of depth log2(image_size) (at most 8)
    pix2pix = BundleCommand(config_files=(TRAIN, str(CONFIGS / "pix2pix.yaml")))
    check_training(pix2pix.load(tracking=False))
    with pytest.raises(InputError, match=r"^image_size: must be a multiple of 64 .*got 100$"):
        check_training(load_config(pix2pix, image_size=100))
    # G = 1: the global generator alone at full resolution needs only its own factor
    one_g = BundleCommand(config_files=(TRAIN, str(CONFIGS / "ablation" / "one_g.yaml")))
    check_training(load_config(one_g, image_size=36))
    with pytest.raises(InputError, match=r"^image_size: must be a multiple of 4 .*got 38$"):
        check_training(load_config(one_g, image_size=38))


def test_nan_loss_weight_is_left_to_the_non_finite_guard() -> None:
    # not refused before the run (no InputError): NonFiniteLossGuard stops it at the first non-finite loss
    raw = load_config(BundleCommand(config_files=(TRAIN,)), lambda_fm="$float('nan')")
    assert check_training(raw) is None and raw["lambda_fm"] == "$float('nan')"


# --------------------------------------------------------------------------- the command a run re-reads


def test_command_line_is_parsed_as_monai_parses_it(tmp_path: Path) -> None:
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"config_file": TRAIN, "epochs": 3, "batch_size": 4}))
    argv = ["/x/monai/bundle/__main__.py", "run", "training", "--args_file", str(args_file), "--batch_size=8",
            "--train#dataloader#num_workers", "1", "--tracking", "mlflow", "--betas", "[0.4,0.9]", "--logging_file", "l.conf"]
    command = command_line(argv, main_spec="monai.bundle.__main__")
    assert command == BundleCommand(
        run_id="training", config_files=(TRAIN,), tracking="mlflow",
        overrides={"epochs": 3, "batch_size": 8, "train#dataloader#num_workers": 1, "betas": [0.4, 0.9]},
    )
    files = command_line(["m", "run", "--config_file", "['a.yaml','b.yaml']"], main_spec="monai.bundle.__main__")
    assert files is not None and files.run_id == "run" and files.config_files == ("a.yaml", "b.yaml")
    assert command_line(argv, main_spec="pytest.__main__") is None  # another program: no bundle command
    assert command_line(["m", "verify_metadata", "--meta_file", "x"], main_spec="monai.bundle.__main__") is None


def test_recorded_command_wins_and_is_restored() -> None:
    assert current_command() is None  # pytest is not a bundle command
    inner = BundleCommand(config_files=(TRAIN,), overrides={"stage": "local"})
    with using_command(inner):
        assert current_command() is inner
    assert current_command() is None


def test_command_reads_files_overrides_and_tracking(tmp_path: Path) -> None:
    command = BundleCommand(config_files=(TRAIN, str(CONFIGS / "pix2pix.yaml")), overrides={"epochs": 3},
                            tracking="mlflow")
    raw = load_config(command, stage="joint", work_dir=str(tmp_path), save_execute_config=False)
    assert raw["epochs"] == 3 and raw["stage"] == "joint" and raw["lambda_l1"] == 100.0
    assert raw["_meta_"]["name"]  # metadata.json beside the first config file
    assert raw["tracking_uri"] and any(h.get("_target_") == "MLFlowHandler" for h in raw["train"]["handlers"])
    assert "tracking_uri" not in command.load(tracking=False)
    with pytest.raises(InputError, match="this run id re-reads its configuration"):
        load_config(None)  # type: ignore[arg-type]


def test_no_call_stack_inspection_in_the_package() -> None:
    found = [str(p) for p in (REPO_ROOT / "custom").rglob("*.py") if "inspect.stack" in p.read_text()]
    assert found == []
