"""Errors raise, entry points exit: library functions raise InputError; entry_point turns it into one line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from monai.bundle import ConfigParser

from covid_ct_cgan.data.prepare import run_prepare
from covid_ct_cgan.engines.stages import run_stage, run_stages
from covid_ct_cgan.errors import (
    INTERRUPTED_STATUS,
    InputError,
    StoppedError,
    entry_point,
    exit_status,
    reported_error,
)
from covid_ct_cgan.evaluation.ablation import AblationStudy
from covid_ct_cgan.evaluation.recipe import run_recipe
from covid_ct_cgan.evaluation.report import run_report
from covid_ct_cgan.settings import BundleCommand, check_command, using_command

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "bundle" / "configs"


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("ERROR")]


def _check_misspelt_key() -> None:
    with using_command(BundleCommand.from_arguments(config_file=str(CONFIGS / "train.yaml"), epoch=1)):
        check_command()


# functions the bundle configs call, each given bad input directly from Python
LIBRARY_CALLS: dict[str, tuple[Callable[[Path], Any], str]] = {
    "check_command": (lambda tmp: _check_misspelt_key(), "^unknown key 'epoch'; did you mean 'epochs'"),
    "run_stages": (lambda tmp: run_stages(["local"], None), "re-reads its configuration"),
    "run_prepare": (lambda tmp: run_prepare("", ""), "^no data_dir given$"),
    "run_report": (lambda tmp: run_report(tmp / "empty"), "^nothing to report"),
    "run_recipe": (lambda tmp: run_recipe(None, {}), "^the recipe runs as a bundle command"),
    "AblationStudy.run": (
        lambda tmp: AblationStudy(tmp / "evaluation", tmp / "d.json", ablations=["nope"], config_dir=CONFIGS).run(),
        r"^no ablation overlay for \['nope'\]",
    ),
}


@pytest.mark.parametrize("name", list(LIBRARY_CALLS))
def test_library_functions_raise_input_error_not_system_exit(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    call, message = LIBRARY_CALLS[name]
    with pytest.raises(InputError, match=message):  # a SystemExit would fail here
        call(tmp_path)
    assert _errors(capsys.readouterr().err) == []  # the caller decides what to show
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_entry_point_reports_an_input_error_with_one_line_and_status_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        entry_point(run_prepare, "", "")
    assert stop.value.code == 2
    assert _errors(capsys.readouterr().err) == ["ERROR: no data_dir given"]


def test_entry_point_finds_the_input_error_in_monais_wrapper(capsys: pytest.CaptureFixture) -> None:
    # a run id that re-reads a config (run_stages) meets errors of nested expressions as MONAI's RuntimeError
    parser = ConfigParser({"stages": "$covid_ct_cgan.engines.stages.run_stages(['local'], None)"},
                          globals={"covid_ct_cgan": "covid_ct_cgan"})
    with pytest.raises(RuntimeError, match="Failed to evaluate") as wrapped:
        parser.get_parsed_content("stages")
    assert isinstance(reported_error(wrapped.value), InputError)
    with pytest.raises(SystemExit) as stop:
        entry_point(parser.get_parsed_content, "stages")
    assert stop.value.code == 2
    [line] = _errors(capsys.readouterr().err)
    assert line.startswith("ERROR: this run id re-reads its configuration")


def test_a_stopped_stage_raises_and_its_entry_point_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def stops() -> None:
        trainer.state.stop_reason = "non-finite loss at epoch 1, iteration 1"

    trainer = SimpleNamespace(state=SimpleNamespace(epoch=0, max_epochs=1, iteration=0, stop_reason=None), run=stops)
    with pytest.raises(StoppedError, match=f"^non-finite loss at epoch 1, iteration 1; checkpoints in {tmp_path / 'a'}$"):
        run_stage(trainer, {}, tmp_path / "a", resume_training=False)
    trainer.state.stop_reason = None
    with pytest.raises(SystemExit) as stop:
        entry_point(run_stage, trainer, {}, tmp_path / "b", resume_training=False)
    assert stop.value.code == 1
    assert _errors(capsys.readouterr().err) == [
        f"ERROR: non-finite loss at epoch 1, iteration 1; checkpoints in {tmp_path / 'b'}"]


def test_other_errors_keep_their_traceback_and_status() -> None:
    def fails() -> None:
        raise ZeroDivisionError("a bug, not bad input")

    with pytest.raises(ZeroDivisionError):
        entry_point(fails)
    assert reported_error(RuntimeError("Failed to evaluate x")) is None
    assert exit_status(ZeroDivisionError()) == 1
    assert exit_status(InputError("bad")) == 2
    assert exit_status(StoppedError("stopped")) == 1
    assert exit_status(KeyboardInterrupt()) == INTERRUPTED_STATUS
    assert exit_status(SystemExit(3)) == 3
    wrapped = RuntimeError("Failed to instantiate x")
    wrapped.__cause__ = InputError("bad", "x.json")
    assert exit_status(wrapped) == 2 and str(reported_error(wrapped)) == "x.json: bad"


HANG_GUARD_S = 1800  # only against a hung run: each run ends on its own exit, seconds after it starts

BUSY_THREAD_CONFIG = """
imports:
  - $import threading
  - $import torch
  - $import covid_ct_cgan
  - $import covid_ct_cgan.data.prepare
  - $from covid_ct_cgan.errors import entry_point
run:
  - "$threading.Thread(target=lambda: [torch.tanh(torch.mm(torch.randn(200, 200), torch.randn(200, 200))) for _ in iter(int, 1)], daemon=True).start()"
  - "$entry_point(covid_ct_cgan.data.prepare.run_prepare, '', '')"
"""


@pytest.mark.integration
def test_the_command_ends_with_its_status_while_a_daemon_thread_is_inside_torch(tmp_path: Path) -> None:
    # a data loader's prefetch thread inside a torch operation when the command ends: Python's teardown would stop
    # it where it stands and abort the process ("terminate called without an active exception", status -6)
    import os
    import subprocess
    import sys

    config = tmp_path / "busy.yaml"
    config.write_text(BUSY_THREAD_CONFIG)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "custom")}
    for _ in range(3):
        done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
        assert done.returncode == 2, done.stderr[-2000:]
        assert _errors(done.stderr) == ["ERROR: no data_dir given"] and "terminate called" not in done.stderr
