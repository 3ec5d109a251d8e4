"""A failed stage leaves no empty folders: :func:`covid_ct_cgan.engines.cleanup.removing_empty_outputs`."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from covid_ct_cgan.engines.cleanup import event_records, removing_empty_outputs
from covid_ct_cgan.errors import InputError


def paths(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


def open_writer(log_dir, scalars=0):
    writer = SummaryWriter(log_dir=str(log_dir))  # as TensorBoardStatsHandler does when the stage is built
    for step in range(scalars):
        writer.add_scalar("loss", 1.0 / (step + 1), step)
    writer.close()


def test_failed_stage_removes_what_it_created_empty(tmp_path):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    stage = work / "output" / "joint"
    with pytest.raises(InputError, match="no checkpoint"):
        with removing_empty_outputs(stage):
            open_writer(stage / "tensorboard")
            assert [event_records(p) for p in (stage / "tensorboard").iterdir()] == [1]  # the header only
            raise InputError("no checkpoint to start 'global_net' from", work / "output" / "global")
    assert paths(work) == [Path("data")]  # output/ and output/joint/tensorboard gone, the data kept


def test_failed_stage_keeps_content_and_what_existed(tmp_path):
    stage = tmp_path / "output" / "global"
    open_writer(stage / "tensorboard", scalars=3)  # an earlier run that trained
    (stage / "checkpoint_epoch=1.pt").write_bytes(b"weights")
    (stage / "empty_before").mkdir()
    before = paths(stage)
    with pytest.raises(SystemExit):
        with removing_empty_outputs(stage):
            open_writer(stage / "tensorboard")  # a failed resume: one more header-only file
            (stage / "samples").mkdir()
            (stage / "samples" / "epoch_1.png").write_bytes(b"png")  # content made before the failure: kept
            raise SystemExit(1)
    after = set(paths(stage))
    assert set(before) <= after and after - set(before) == {Path("samples"), Path("samples/epoch_1.png")}


def test_success_and_no_folder_touch_nothing(tmp_path):
    stage = tmp_path / "output" / "local"
    with removing_empty_outputs(stage):
        open_writer(stage / "tensorboard")
    assert len(list((stage / "tensorboard").iterdir())) == 1
    with pytest.raises(ValueError):
        with removing_empty_outputs(None):
            raise ValueError("nothing to clean")
