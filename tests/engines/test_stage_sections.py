"""Each stage's own section of train.yaml (`global`, `local`, `joint`): its trainer's, evaluator's and handlers'
arguments, set from the command line for that stage alone (covid_ct_cgan.engines.stages.stage_config)."""

from __future__ import annotations

import copy
import csv
import subprocess
import sys
from pathlib import Path

import pytest
from covid_ct_cgan.engines.stages import (
    STAGE_SECTION_IDS,
    stage_config,
    stage_overrides,
)
from covid_ct_cgan.errors import InputError
from covid_ct_cgan.settings import run_bundle
from monai.bundle import ConfigParser
from tiny_training import REPO_ROOT, TINY, TRAIN_YAML, tiny_cli

CONFIGS = REPO_ROOT / "bundle" / "configs"
OVERLAYS = ("multi_gpu_train.yaml", "pix2pix.yaml", "pix2pixhd.yaml", "lesion_inpainting.yaml", "paper.yaml")


def _train_yaml() -> dict:
    return ConfigParser.load_config_files(TRAIN_YAML)


def _at(config: dict, target: str) -> object:
    node: object = config
    for part in target.split("#"):
        node = node[part]  # type: ignore[index]
    return node


def _epochs(path: Path) -> list[int]:
    with open(path, newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("overlay", [None, *OVERLAYS])
def test_each_section_has_one_entry_per_handler(overlay: str | None) -> None:
    files = [TRAIN_YAML] + ([str(CONFIGS / overlay)] if overlay else [])
    config = ConfigParser.load_config_files(files)
    for stage in ("global", "local", "joint"):
        for name, target in STAGE_SECTION_IDS.items():
            entry, defined = config[stage][name], _at(config, target)
            if isinstance(defined, list):
                assert entry == [{}] * len(defined), f"{stage}#{name} and {target} differ in length"
            else:
                assert entry == {}, f"{stage}#{name}"
        assert stage_overrides(config, stage) == {}


def test_a_section_changes_its_own_stage_only() -> None:
    config = _train_yaml()
    config["local"]["handlers"][4]["csv_path"] = "elsewhere.csv"
    config["joint"]["trainer"]["max_epochs"] = 7
    config["joint"]["val_handlers"][3]["metric_names"] = ["val_ssim"]
    assert stage_overrides(config, "local") == {"train#handlers#4#csv_path": "elsewhere.csv"}
    assert stage_overrides(config, "joint") == {"train#trainer#max_epochs": 7,
                                                "validate#handlers#3#metric_names": ["val_ssim"]}
    local, joint, plain = stage_config(config, "local"), stage_config(config, "joint"), stage_config(config, "global")
    assert (local["stage"], joint["stage"], plain["stage"]) == ("local", "joint", "global")
    assert local["train"]["handlers"][4]["csv_path"] == "elsewhere.csv"
    assert local["train"]["trainer"]["max_epochs"] == config["train"]["trainer"]["max_epochs"]
    assert joint["train"]["trainer"]["max_epochs"] == 7
    assert joint["train"]["handlers"][4]["csv_path"] == config["train"]["handlers"][4]["csv_path"]
    assert plain["train"] == config["train"] and plain["validate"] == config["validate"]
    assert config["train"]["trainer"]["max_epochs"] == "@stage_epochs"  # the given config is left as it was


def test_a_baseline_stage_without_a_section_is_built_from_the_definitions() -> None:
    config = _train_yaml()
    del config["joint"]
    assert stage_overrides(config, "joint") == {}
    assert stage_config(config, "joint")["train"] == config["train"]


@pytest.mark.parametrize(("stage", "entry", "value", "message"), [
    ("joint", "trainer", {"max_epoch": 3},
     "unknown key 'joint#trainer#max_epoch'; did you mean 'joint#trainer#max_epochs'?"),
    ("local", "handlers", [{}, {}, {}, {}, {"csv_pat": "x.csv"}],
     "unknown key 'local#handlers#4#csv_pat'; did you mean 'local#handlers#4#csv_path'?"),
    ("local", "handlers", [{}] * 12 + [{"epoch_log": "true"}],
     "local#handlers#12#epoch_log: must be True or False, got 'true' (write --local#handlers#12#epoch_log True)"),
    ("global", "val_handlers", [{}] * 5 + [{"output_dir": "x"}],
     "global#val_handlers: has 6 entries for the 4 handlers of validate#handlers"),
    ("global", "val_handlers", {"output_dir": "x"},
     "global#val_handlers: must be a list with one mapping of arguments per handler, got {'output_dir': 'x'}"),
    ("global", "evaluator", ["x"], "global#evaluator: must be a mapping of arguments, got ['x']"),
    ("global", "optimizer", {}, "global#optimizer: unknown entry; a stage's section holds trainer, handlers, evaluator, val_handlers"),
])
def test_a_bad_section_entry_is_refused_in_the_users_words(stage: str, entry: str, value: object, message: str) -> None:
    config = _train_yaml()
    config[stage][entry] = copy.deepcopy(value)
    with pytest.raises(InputError) as refused:
        stage_overrides(config, stage)
    assert str(refused.value) == message


def test_a_bad_section_entry_stops_the_run_before_any_work(work_dir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:  # the joint stage's typo, found before the global stage trains
        run_bundle("training", config_file=TRAIN_YAML, **{**TINY, "work_dir": str(work_dir), "joint#trainer#max_epoch": 2})
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR")]
    assert errors == ["ERROR: unknown key 'joint#trainer#max_epoch'; did you mean 'joint#trainer#max_epochs'?"]
    assert not (work_dir / "output").exists()


def test_command_line_sets_a_local_handler_and_the_joint_trainer(work_dir: Path, subprocess_env: dict) -> None:
    """One handler of the local stage and one setting of the joint stage's trainer, given on the command line."""
    local_csv = work_dir / "local_epochs.csv"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN_YAML]
    cmd += tiny_cli(work_dir, epochs=1)
    cmd += ["--local#handlers#4#csv_path", str(local_csv), "--joint#trainer#max_epochs", "2"]
    done = subprocess.run(cmd, check=False, cwd=REPO_ROOT, env=subprocess_env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    out = work_dir / "output"
    assert _epochs(local_csv) == [1]  # the local stage's EpochMeans wrote where its section says ...
    assert not (out / "local" / "training.csv").exists()
    assert _epochs(out / "global" / "training.csv") == [1]  # ... and the other stages' where train.yaml says
    assert _epochs(out / "joint" / "training.csv") == [1, 2]  # the joint trainer ran 2 epochs, the others `epochs`
    assert (out / "joint" / "checkpoint_epoch=2.pt").is_file()
    assert not (out / "global" / "checkpoint_epoch=2.pt").exists() and not (out / "local" / "checkpoint_epoch=2.pt").exists()
