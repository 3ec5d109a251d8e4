"""Damaged state: a cut-short checkpoint is reported and the previous good one used; mismatches fail clearly."""

from __future__ import annotations

import errno
import logging
import os
import tempfile
import types
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from covid_ct_cgan.engines.stages import hand_over, load_latest_checkpoint, resume, run_stage
from covid_ct_cgan.errors import InputError, entry_point
from covid_ct_cgan.inference import load_generator
from covid_ct_cgan.locking import output_lock
from covid_ct_cgan.networks import GlobalLocalGenerator

SETTINGS = dict(n_downsampling=1, n_blocks_global=1, n_blocks_local=1)


def generator(ngf: int = 8) -> GlobalLocalGenerator:
    torch.manual_seed(ngf)
    return GlobalLocalGenerator(4, 1, mode="joint", ngf=ngf, **SETTINGS)


def engine_at(iteration: int, epoch_length: int = 3, max_epochs: int = 4) -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.iteration, engine.state.epoch_length, engine.state.max_epochs = iteration, epoch_length, max_epochs
    engine.state.epoch = iteration // epoch_length
    return engine


def write_checkpoints(folder: Path, ngf: int = 8) -> tuple[Path, Path]:
    """``checkpoint_epoch=1.pt`` (good) and a newer ``checkpoint_iteration=5.pt`` cut to half its bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    good, cut = folder / "checkpoint_epoch=1.pt", folder / "checkpoint_iteration=5.pt"
    torch.save({"generator": generator(ngf).state_dict(), "trainer": engine_at(3).state_dict()}, good)
    torch.save({"generator": generator(ngf).state_dict(), "trainer": engine_at(5).state_dict()}, cut)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    os.utime(good, ns=(1_000_000_000, 1_000_000_000))  # the cut file is the newest
    return good, cut


def test_cut_short_checkpoint_is_reported_and_the_previous_good_one_used(tmp_path: Path, caplog) -> None:
    good, cut = write_checkpoints(tmp_path / "joint")
    with caplog.at_level(logging.WARNING, logger="covid_ct_cgan.checkpoints"):
        path, ckpt = load_latest_checkpoint(tmp_path / "joint", required=["generator", "trainer"])
    assert path == good and ckpt["trainer"]["iteration"] == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"{cut}: unreadable checkpoint") and "trying the previous one" in m for m in warnings)
    # training resumes from it ...
    trainer, net = engine_at(0), generator()
    assert resume(trainer, {"generator": net}, tmp_path / "joint") == good and trainer.state.iteration == 3
    # ... synthesis loads it ...
    assert load_generator(generator(), tmp_path / "joint") == good
    # ... and the cut file named directly is one clear error
    with pytest.raises(InputError) as err:
        load_generator(generator(), cut)
    assert str(err.value).startswith(f"{cut}: cannot read checkpoint") and "\n" not in str(err.value)


def test_no_good_checkpoint_left_is_a_clear_error_for_hand_over_and_synthesis(tmp_path: Path) -> None:
    good, cut = write_checkpoints(tmp_path / "global")
    good.unlink()
    with pytest.raises(InputError, match=f"^{tmp_path / 'global'}: no checkpoint to start 'global_net' from"):
        hand_over(generator(), {"global_net": tmp_path / "global"})
    with pytest.raises(InputError, match=f"^{tmp_path / 'global'}: no readable generator checkpoint"):
        load_generator(generator(), tmp_path / "global")


def test_checkpoint_of_another_network_is_refused_by_synthesis(tmp_path: Path) -> None:
    write_checkpoints(tmp_path / "joint", ngf=16)
    with pytest.raises(InputError, match="checkpoint is from another network configuration .*shape mismatch"):
        load_generator(generator(8), tmp_path / "joint")


def test_resume_with_another_network_configuration_is_one_clear_error(tmp_path: Path) -> None:
    good, _ = write_checkpoints(tmp_path / "joint", ngf=16)
    with pytest.raises(InputError) as err:
        resume(engine_at(0), {"generator": generator(8)}, tmp_path / "joint")
    assert str(good) in str(err.value)


def test_resume_refuses_readable_checkpoints_of_another_configuration(tmp_path: Path) -> None:
    write_checkpoints(tmp_path / "joint")
    save_dict = {"generator": generator(), "dfm_optimizer": torch.optim.Adam(generator().parameters())}
    with pytest.raises(InputError, match="dfm_optimizer"):
        resume(engine_at(0), save_dict, tmp_path / "joint")


def _trainer_that_must_not_run() -> types.SimpleNamespace:
    def run() -> None:
        raise AssertionError("training started")

    return types.SimpleNamespace(state=types.SimpleNamespace(epoch=0, max_epochs=1, iteration=0), run=run)


def test_training_refuses_a_stage_folder_in_use(tmp_path: Path, capsys) -> None:
    stage = tmp_path / "output" / "local"
    with output_lock(stage):
        with pytest.raises(SystemExit) as stop:  # as train.yaml's run id calls it
            entry_point(run_stage, _trainer_that_must_not_run(), {}, stage, resume_training=False)
    assert stop.value.code == 2
    assert f"ERROR: {stage}: is in use by another run (pid {os.getpid()}" in capsys.readouterr().err


def test_training_refuses_a_read_only_stage_folder_before_training(tmp_path: Path, monkeypatch, capsys) -> None:
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    stage = tmp_path / "output" / "local"
    with pytest.raises(SystemExit) as stop:
        entry_point(run_stage, _trainer_that_must_not_run(), {}, stage, resume_training=False)
    assert stop.value.code == 2
    assert "Read-only file system" in capsys.readouterr().err
