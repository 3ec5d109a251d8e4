"""Quiet, readable logs: noise filtered, final paths, line progress off a terminal, one line on Ctrl-C."""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import monai.bundle
import pytest

from covid_ct_cgan.errors import exit_on_input_error, interrupt_note, resume_command
from covid_ct_cgan.fileio import atomic_path, staged_directory
from covid_ct_cgan.logs import (
    LineProgress,
    ProgressLogger,
    final_paths,
    install_log_filters,
    progress,
    progress_handler,
    tidy_log_handlers,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CLI = [
    "--image_size", "32", "--batch_size", "2", "--ngf", "8", "--n_downsampling", "1", "--n_blocks_global", "1",
    "--n_blocks_local", "1", "--ndf", "8", "--n_layers_d", "2", "--sample_count", "2", "--phantom_patients", "3",
    "--phantom_slices", "4", "--phantom_size", "64", "--amp", "False",
]


@pytest.fixture
def quiet_logs() -> None:
    """The filters every entry point installs when it starts."""
    install_log_filters()


@pytest.mark.usefixtures("quiet_logs")
def test_nvimagecodec_warning_is_dropped_and_other_records_pass(caplog: pytest.LogCaptureFixture) -> None:
    plugin = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    with caplog.at_level(logging.INFO):
        plugin.warning("nvImageCodec is not available; skipping pydicom decoder plugin registration.")
        plugin.warning("some other warning of the plugin")
        logging.getLogger("monai.data").warning("nvImageCodec is not available (another logger)")
    assert [r.getMessage() for r in caplog.records] == [
        "some other warning of the plugin", "nvImageCodec is not available (another logger)"
    ]


@pytest.mark.usefixtures("quiet_logs")
def test_the_real_plugin_warning_is_not_shown(caplog: pytest.LogCaptureFixture) -> None:
    from monai.data.nvimgcodec_pydicom_plugin import is_nvimgcodec_available, register_as_decoder_plugin

    with caplog.at_level(logging.INFO):
        registered = register_as_decoder_plugin()
    assert registered == is_nvimgcodec_available()
    assert not any("nvImageCodec" in r.getMessage() for r in caplog.records)


def test_log_messages_name_final_paths_not_staging_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("covid_ct_cgan.test")
    with caplog.at_level(logging.INFO):
        tidy_log_handlers()  # what every entry point does when it starts (caplog's handler exists now)
        assert logging.getLogRecordFactory() is logging.LogRecord  # no interpreter-wide record factory
        with staged_directory(tmp_path / "results") as stage:
            with atomic_path(stage / "model.nii.gz") as tmp:
                tmp.write_bytes(b"x")
                log.info("writing %s", tmp)
            log.info(f"saved final checkpoint: {stage / 'model.nii.gz'}")
            assert ".tmp" in str(stage) and ".tmp" in str(tmp)
    shown = [r.getMessage() for r in caplog.records]
    final = tmp_path / "results" / "model.nii.gz"
    assert shown == [f"writing {final}", f"saved final checkpoint: {final}"]
    assert final.is_file()
    assert final_paths("kept: /a/b.tmp and /a/.tmp/x") == "kept: /a/b.tmp and /a/.tmp/x"


def test_line_progress_writes_lines_not_carriage_returns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="covid_ct_cgan.progress"):
        assert list(LineProgress(range(3), desc="phantom", unit="patient", every_s=0)) == [0, 1, 2]
        with progress(total=4, desc="synthesis", unit="slice") as bar:  # pytest's stderr is not a terminal
            bar.update(4)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("phantom: 1/3 patients (33%), ") and lines[1].startswith("phantom: 2/3 patients (67%), ")
    assert lines[2].startswith("phantom: 3/3 patients done in ")
    assert lines[3].startswith("synthesis: 4/4 slices done in ")
    assert len(lines) == 4 and not any("\r" in line for line in lines)


def test_progress_handler_is_a_line_logger_off_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    from ignite.engine import Engine

    handler = progress_handler(persist=False, desc="training", output_transform=lambda out: out["loss"])
    assert isinstance(handler, ProgressLogger) and handler.desc == "training"
    handler.every_s = 0  # a line for every iteration
    engine = Engine(lambda engine, batch: {"loss": 0.25 * batch})
    handler.attach(engine)
    with caplog.at_level(logging.INFO, logger="covid_ct_cgan.progress"):
        engine.run([1, 2, 3], max_epochs=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "covid_ct_cgan.progress"]
    assert len(lines) == 6 and not any("\r" in line for line in lines)
    assert lines[0].startswith("training: epoch 1/2, iteration 1/3, ") and lines[0].endswith(", loss 0.2500")
    assert lines[5].startswith("training: epoch 2/2, iteration 3/3, ") and lines[5].endswith(", loss 0.7500")


def test_interrupt_gives_one_line_with_the_resume_command(capsys: pytest.CaptureFixture) -> None:
    @exit_on_input_error
    def entry() -> None:
        with interrupt_note(lambda: "in stage 'global' at epoch 3"):
            raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        entry()
    assert stop.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"INTERRUPTED: stopped in stage 'global' at epoch 3; resume with: {resume_command()}"]
    main = str(Path(monai.bundle.__file__).with_name("__main__.py"))
    assert resume_command([main, "run", "training", "--config_file", "['a.yaml','b.yaml']", "--resume", "false"]) == (
        "python -m monai.bundle run training --config_file \"['a.yaml','b.yaml']\" --resume True"
    )


HANG_GUARD_S = 1800  # only against a hung run: the waits below end on events (a file, a line, the exit), not on time


def _wait_for(event: Callable[[], bool], proc: subprocess.Popen, what: str) -> None:
    """Wait until ``event()`` holds, or fail when the run ended without it."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not event():
        if proc.poll() is not None:  # ended: the event may have come just before
            assert event(), f"the run ended (status {proc.returncode}) before {what}"
            return
        assert time.monotonic() < deadline, f"hung: no {what} after {HANG_GUARD_S} s"
        time.sleep(0.1)


@pytest.mark.parametrize("main_module, frozen", [("monai.bundle.__main__", True), ("pytest.__main__", False)])
def test_the_command_ends_at_once_after_its_line(monkeypatch: pytest.MonkeyPatch, capsys, main_module: str,
                                                 frozen: bool) -> None:
    # Python's last garbage collections at exit took 3-4 s on 2 busy cores after the INTERRUPTED line, and its
    # teardown aborted the process when a daemon thread was inside torch: the command ends from an exit handler
    import atexit
    import gc
    import types

    from covid_ct_cgan import errors

    calls: list[str] = []
    handlers: list = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(atexit, "register", lambda func, *args, **kwargs: handlers.append(func))  # not this pytest's
    monkeypatch.setattr(errors, "_EXIT_STATUS", [])
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__spec__=types.SimpleNamespace(name=main_module)))

    @exit_on_input_error
    def entry() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        entry()
    assert stop.value.code == 130 and calls == (["freeze"] if frozen else [])
    assert len(handlers) == (1 if frozen else 0) and errors._EXIT_STATUS == ([130] if frozen else [])


@pytest.mark.integration
def test_ctrl_c_stops_training_with_one_line_and_the_printed_command_resumes(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "bundle/configs/train.yaml",
           "--work_dir", str(tmp_path / "work"), "--epochs", "40", *TINY_CLI]
    log = tmp_path / "interrupted.log"
    stages = tmp_path / "work" / "output"

    def a_checkpoint() -> bool:  # epoch checkpoints are pruned (keep_checkpoints): wait for any, not one name
        return any(stages.glob("*/checkpoint_epoch=*.pt"))

    with log.open("w") as out:  # a log file: not a terminal
        # SIGINT at its default in the run, as in a terminal: a background job of a non-interactive shell (a
        # test runner started with `&`) inherits it ignored, and Python then installs no KeyboardInterrupt
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            _wait_for(a_checkpoint, proc, f"a checkpoint in {stages}")
            proc.send_signal(signal.SIGINT)
            _wait_for(lambda: "INTERRUPTED:" in log.read_text(), proc, "the INTERRUPTED line")
            status = proc.wait(timeout=HANG_GUARD_S)  # the command ends at once after its line (errors.end_command)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert status == 130, text[-3000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if line.startswith("INTERRUPTED:")]
    assert len(lines) == 1, text[-3000:]
    assert re.search(r"stopped in stage '(global|local|joint)' at epoch ", lines[0]) and "resumes from " in lines[0]
    command = lines[0].split("resume with: ", 1)[1]
    assert command.startswith("python -m monai.bundle run training --config_file bundle/configs/train.yaml ")

    # the printed command resumes (with fewer epochs here, to finish quickly); its log is clean
    args = shlex.split(command)
    args[args.index("--epochs") + 1] = "1"
    done = subprocess.run([sys.executable] + args[1:], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    resumed = done.stdout + done.stderr
    assert done.returncode == 0, resumed[-3000:]
    assert "resumed from " in resumed
    assert (tmp_path / "work" / "output" / "joint" / "checkpoint_epoch=1.pt").is_file()
    for noise in ("\r", "nvImageCodec", ".tmp", "Traceback"):
        assert noise not in text + resumed, f"{noise!r} in the log"
