"""The one checkpoint reader: weights_only, one clear line for each problem, the schema check."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from covid_ct_cgan.checkpoints import (
    CheckpointError,
    checkpoint_candidates,
    load_latest_checkpoint,
    read_checkpoint,
    state_dict_of,
    trained_iterations,
)
from covid_ct_cgan.errors import InputError


def test_a_good_checkpoint_is_read_with_its_entries(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_epoch=1.pt"
    torch.save({"generator": {"w": torch.ones(2)}, "trainer": {"iteration": 3}}, path)
    ckpt = read_checkpoint(path, required=["generator", "trainer"])
    assert ckpt["trainer"] == {"iteration": 3} and torch.equal(ckpt["generator"]["w"], torch.ones(2))


@pytest.mark.parametrize(
    ("content", "required", "message", "problem"),
    [
        (b"\x00garbage", (), "cannot read checkpoint (UnpicklingError: ", "unreadable"),
        (None, (), "checkpoint file not found", "unreadable"),
        (torch.zeros(3), (), "not a checkpoint: expected a dict of entries, found Tensor", "not a checkpoint"),
        ({"generator": {}}, ("generator", "trainer", "d_optimizer"), "checkpoint lacks trainer, d_optimizer", "missing keys"),
    ],
)
def test_each_problem_is_one_line_naming_the_file(tmp_path: Path, content, required, message: str, problem: str) -> None:
    path = tmp_path / "x.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path, required=required)
    assert isinstance(err.value, InputError) and err.value.problem == problem
    assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value)
    if problem == "missing keys":
        assert err.value.missing == ["trainer", "d_optimizer"]


def test_state_dict_of_finds_the_weights_or_names_what_it_found() -> None:
    weights = {"w": torch.ones(1)}
    assert state_dict_of({"generator": weights, "trainer": {}}, ["generator"], "f.pt", "generator") is weights
    assert state_dict_of(weights, ["generator"], "f.pt", "generator") is weights  # a bare state dict
    assert state_dict_of({"model": weights}, ["network", "model"], "f.pt", "UNet") is weights
    with pytest.raises(CheckpointError, match=r"^f\.pt: not a generator checkpoint: expected a state dict or one under "
                       r"'generator', found network, epoch$"):
        state_dict_of({"network": weights, "epoch": 1}, ["generator"], "f.pt", "generator")


def test_newest_readable_checkpoint_skips_damaged_and_incomplete_ones(tmp_path: Path, caplog) -> None:
    good, lacking, cut = (tmp_path / f"checkpoint_epoch={n}.pt" for n in (1, 2, 3))
    torch.save({"generator": {}, "trainer": {"iteration": 1}}, good)
    torch.save({"generator": {}}, lacking)
    cut.write_bytes(b"PK\x03\x04 cut short")
    (tmp_path / "best_generator.pt").write_bytes(b"not a resumable checkpoint")
    for age, path in enumerate((cut, lacking, good)):
        os.utime(path, ns=(10**9 * (10 - age),) * 2)  # cut newest, good oldest
    assert checkpoint_candidates(tmp_path) == [cut, lacking, good]
    with caplog.at_level(logging.WARNING, logger="covid_ct_cgan.checkpoints"):
        path, ckpt = load_latest_checkpoint(tmp_path, required=["generator", "trainer"])
    assert path == good and ckpt["trainer"] == {"iteration": 1}
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"{cut}: unreadable checkpoint (") and m.endswith("; trying the previous one") for m in messages)
    assert f"{lacking}: checkpoint lacks trainer; trying the previous one" in messages
    assert load_latest_checkpoint(tmp_path / "absent") is None


def test_a_copied_run_resumes_from_its_furthest_checkpoint_whatever_the_file_times(tmp_path: Path) -> None:
    """``cp -r`` gives every file a new time: an earlier iteration checkpoint may look newest; progress decides."""
    last, mid = tmp_path / "checkpoint_epoch=30.pt", tmp_path / "checkpoint_iteration=650.pt"
    torch.save({"generator": {"w": torch.ones(1)}, "trainer": {"iteration": 690}}, last)
    torch.save({"generator": {"w": torch.zeros(1)}, "trainer": {"iteration": 650}}, mid)
    os.utime(last, ns=(10**9,) * 2)
    os.utime(mid, ns=(2 * 10**9,) * 2)  # the earlier checkpoint copied last
    assert trained_iterations(last) == 690 and trained_iterations(tmp_path / "absent.pt") is None
    assert checkpoint_candidates(tmp_path) == [last, mid]
    path, ckpt = load_latest_checkpoint(tmp_path, required=["generator", "trainer"])
    assert path == last and ckpt["trainer"] == {"iteration": 690}

