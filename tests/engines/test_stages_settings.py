"""A stage keeps the record of the networks it trained (read from the networks built) and the data they were trained
on: resuming it (or starting from it) with another is refused, and synthesis rebuilds the generator from it; the
stage runner re-reads the run's command, and refuses to guess one."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from monai.bundle import run as monai_run
from monai.bundle import ConfigParser
from tiny_training import REPO_ROOT, TINY, TRAIN_YAML

from covid_ct_cgan.engines.stages import SETTINGS_FILE, check_stage_settings, run_stage, run_stages
from covid_ct_cgan.errors import InputError, entry_point
from covid_ct_cgan.networks import recorded_arguments
from covid_ct_cgan.settings import run_bundle

SETTINGS = {"generator": "covid_ct_cgan.networks.GlobalLocalGenerator", "image_size": 32, "ngf": 8, "desum": "dynamic"}
INFERENCE_YAML = str(REPO_ROOT / "bundle" / "configs" / "inference.yaml")


class StubTrainer:
    """Just enough of a trainer for :func:`run_stage`: a state and a ``run`` that counts its calls."""

    def __init__(self) -> None:
        self.state = SimpleNamespace(epoch=0, max_epochs=1, iteration=0, stop_reason=None)
        self.generator = torch.nn.Linear(1, 1)
        self.runs = 0

    def run(self) -> None:
        self.runs += 1


def _stage_with(folder: Path, settings: dict, checkpoint: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / SETTINGS_FILE).write_text(json.dumps(settings))
    if checkpoint:
        torch.save({"generator": {}}, folder / "checkpoint_epoch=1.pt")
    return folder


def _errors(capsys: pytest.CaptureFixture) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR")]


def test_fresh_stage_records_its_settings(tmp_path: Path) -> None:
    trainer = StubTrainer()
    run_stage(trainer, {}, tmp_path / "local", resume_training=True, settings={**SETTINGS, "betas": (0.5, 0.9)})
    assert trainer.runs == 1
    assert json.loads((tmp_path / "local" / SETTINGS_FILE).read_text()) == {**SETTINGS, "betas": [0.5, 0.9]}


def test_resume_with_other_network_settings_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    stage = _stage_with(tmp_path / "local", SETTINGS)
    trainer = StubTrainer()
    with pytest.raises(SystemExit) as stop:  # as train.yaml's run id calls it
        entry_point(run_stage, trainer, {}, stage, resume_training=True, settings={**SETTINGS, "image_size": 64, "ngf": 16})
    assert stop.value.code == 2
    assert _errors(capsys) == [
        f"ERROR: {stage / SETTINGS_FILE}: cannot resume this stage: it was trained with other network settings "
        "(image_size: 32 -> 64; ngf: 8 -> 16); use the settings it was trained with, or start over in another "
        "output_dir (or with resume=false)"
    ]
    assert trainer.runs == 0
    assert json.loads((stage / SETTINGS_FILE).read_text()) == SETTINGS  # the record is kept


def test_record_from_before_upsampling_was_a_setting_resumes_as_transposed(tmp_path: Path) -> None:
    """Runs recorded before ``upsampling`` existed were trained with transposed convolutions: they resume with
    the default, and a resize generator is refused on them."""
    stage = _stage_with(tmp_path / "local", SETTINGS)
    check_stage_settings(stage, {**SETTINGS, "upsampling": "transposed"}, "resume")  # accepted
    with pytest.raises(InputError, match=r"\(upsampling: 'transposed' -> 'resize'\); use the settings"):
        check_stage_settings(stage, {**SETTINGS, "upsampling": "resize"}, "resume")


def test_record_from_before_the_discriminator_norms_were_settings_resumes_as_instance(tmp_path: Path) -> None:
    """Runs recorded before ``d_norm`` / ``local_d_norm`` existed trained instance-norm critics (pix2pix's U-Net
    runs a batch-norm one): they resume with those norms, and other critics are refused on them."""
    stage = _stage_with(tmp_path / "local", SETTINGS)
    check_stage_settings(stage, {**SETTINGS, "d_norm": "instance", "local_d_norm": "instance"}, "resume")  # accepted
    with pytest.raises(InputError, match=r"\(d_norm: 'instance' -> 'spectral'\); use the settings"):
        check_stage_settings(stage, {**SETTINGS, "d_norm": "spectral", "local_d_norm": "instance"}, "resume")
    with pytest.raises(InputError, match=r"\(local_d_norm: 'instance' -> 'none'\); use the settings"):
        check_stage_settings(stage, {**SETTINGS, "d_norm": "instance", "local_d_norm": "none"}, "resume")
    unet = {**SETTINGS, "generator": "covid_ct_cgan.networks.UNetGenerator"}
    pix2pix = _stage_with(tmp_path / "pix2pix", unet)
    check_stage_settings(pix2pix, {**unet, "d_norm": "batch", "local_d_norm": "instance"}, "resume")  # accepted
    with pytest.raises(InputError, match=r"\(d_norm: 'batch' -> 'instance'\); use the settings"):
        check_stage_settings(pix2pix, {**unet, "d_norm": "instance", "local_d_norm": "instance"}, "resume")


def test_starting_over_replaces_the_record(tmp_path: Path) -> None:
    stage = _stage_with(tmp_path / "local", SETTINGS)
    trainer = StubTrainer()
    run_stage(trainer, {}, stage, resume_training=False, settings={**SETTINGS, "image_size": 64})
    assert trainer.runs == 1
    assert json.loads((stage / SETTINGS_FILE).read_text())["image_size"] == 64


def test_joint_stage_refuses_sources_trained_with_other_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _stage_with(tmp_path / "global", SETTINGS)
    local = _stage_with(tmp_path / "local", {**SETTINGS, "image_size": 64})
    trainer = StubTrainer()
    with pytest.raises(SystemExit) as stop:
        entry_point(run_stage, trainer, {}, tmp_path / "joint", True, {"global_net": tmp_path / "global", "local_net": local},
                  local, settings=SETTINGS)
    assert stop.value.code == 2
    assert _errors(capsys) == [
        f"ERROR: {local / SETTINGS_FILE}: cannot start from this stage: it was trained with other network settings "
        "(image_size: 64 -> 32); use the settings it was trained with, or start over in another output_dir "
        "(or with resume=false)"
    ]
    assert trainer.runs == 0 and not (tmp_path / "joint" / SETTINGS_FILE).exists()


@pytest.mark.integration
def test_resumed_bundle_stage_with_another_image_size_is_refused(work_dir: Path, capsys: pytest.CaptureFixture) -> None:
    run_bundle("train_local", config_file=TRAIN_YAML, **{**TINY, "work_dir": str(work_dir), "epochs": 1})
    stage = work_dir / "output" / "local"
    recorded = json.loads((stage / SETTINGS_FILE).read_text())
    generator = recorded["networks"]["generator"]
    assert recorded["image_size"] == 32 and generator["ngf"] == 8 and generator["_target_"].endswith("GlobalLocalGenerator")
    before = sorted(p.name for p in stage.glob("*.pt"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # a longer run at another size: not continued silently
        run_bundle("train_local", config_file=TRAIN_YAML, **{**TINY, "work_dir": str(work_dir), "epochs": 2, "image_size": 64})
    assert stop.value.code == 2
    errors = _errors(capsys)
    assert len(errors) == 1 and "cannot resume this stage" in errors[0] and "(image_size: 32 -> 64)" in errors[0]
    assert sorted(p.name for p in stage.glob("*.pt")) == before


@pytest.mark.integration
def test_stage_runner_needs_a_command(work_dir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:  # monai.bundle.run from Python records no command to re-read
        monai_run("train_local", config_file=TRAIN_YAML, **{**TINY, "work_dir": str(work_dir)})
    assert stop.value.code == 2
    errors = _errors(capsys)
    assert len(errors) == 1 and "re-reads its configuration" in errors[0] and "run_bundle" in errors[0]
    assert not (work_dir / "output").exists()
    with pytest.raises(InputError, match="re-reads its configuration"):
        run_stages(["local"], None)


def test_a_network_built_with_other_arguments_is_recorded_and_synthesised_as_built(
    work_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--network_def#ngf 32`` (the generator's own argument, not the ``ngf`` setting) trains a 32-wide generator:
    the record saved with it says 32, synthesis rebuilds it 32 wide, and resuming with another width is refused."""
    train = {**TINY, "work_dir": str(work_dir), "epochs": 1, "handover": "$None", "handover_discriminator": "$None"}
    run_bundle("train_joint", config_file=TRAIN_YAML, **train, **{"network_def#ngf": 32})
    joint = work_dir / "output" / "joint"
    best = torch.load(joint / "best_generator.pt", map_location="cpu", weights_only=True)
    assert best["network_settings"]["networks"]["generator"]["ngf"] == 32 != TINY["ngf"]
    assert best["generator"]["global_net.body.1.weight"].shape[0] == 32  # G1's first convolution: 32 wide
    assert json.loads((joint / SETTINGS_FILE).read_text())["networks"]["generator"]["ngf"] == 32
    for ckpt in joint.glob("checkpoint_*.pt"):
        assert torch.load(ckpt, map_location="cpu", weights_only=True)["network_settings"] == best["network_settings"]

    out = work_dir / "synthesis"
    run_bundle("run", config_file=INFERENCE_YAML, work_dir=str(work_dir), output_dir=str(out), amp=False)
    assert json.loads((out / "settings.json").read_text())["outputs"] > 0  # loaded strictly: a 32-wide generator
    parser = ConfigParser()
    parser.read_config(INFERENCE_YAML)
    parser.update({"work_dir": str(work_dir)})
    assert recorded_arguments(parser.get_parsed_content("network_def"))["ngf"] == 32

    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # the same stage built 8 wide (the ngf setting): not resumed
        run_bundle("train_joint", config_file=TRAIN_YAML, **{**train, "epochs": 2})
    assert stop.value.code == 2
    errors = _errors(capsys)
    assert len(errors) == 1 and "cannot resume this stage" in errors[0] and "(generator.ngf: 32 -> 8)" in errors[0]
