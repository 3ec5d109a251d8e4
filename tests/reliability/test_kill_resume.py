"""Kill and resume: SIGKILL a training stage at random points, resume, compare with an uninterrupted run.

A tiny ``train_local`` stage of ``train.yaml`` (32-px images, 8-channel networks,
3 iterations an epoch, 4 epochs, a mid-epoch checkpoint every 2 iterations) runs
in child processes forked from a server that has already imported torch and
MONAI (``multiprocessing`` "forkserver"), so a start costs seconds, not the
imports; a child runs ``monai.bundle.run("train_local", ...)`` as the command
line does. The parent kills it with SIGKILL (no clean-up handler runs).

Checked after every kill: every checkpoint is readable with
``weights_only=True`` and holds the full state (none is cut short: they are
written atomically); the newest readable checkpoint is at least at the last
epoch the run reported saved (no completed epoch is lost). Checked at the end:
the killed-and-resumed run ends at the same iteration as an uninterrupted one,
with the same optimizer step counts, learning-rate schedule and finite weights;
and resuming is deterministic: two resumes from the same checkpoint end with
bit-identical weights.

Not checked, because it does not hold (docs, "Reliability"): bit-equality of the
final weights with the uninterrupted run. Checkpoints do not hold the random
number streams (data order, augmentation), which restart from ``seed`` in a
resumed process, and after a mid-epoch kill Ignite restarts the data iterator,
so the resumed run trains on other batches than the uninterrupted one did.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import random
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_YAML = str(REPO_ROOT / "bundle" / "configs" / "train.yaml")
STAGE = "local"
EPOCHS = 3
TINY = {
    "image_size": 32, "epochs": EPOCHS, "batch_size": 1, "ngf": 8, "n_downsampling": 1, "n_blocks_global": 1,
    "n_blocks_local": 1, "ndf": 8, "n_layers_d": 2, "sample_count": 1, "phantom_patients": 3, "phantom_slices": 4,
    "phantom_size": 64, "amp": False, "checkpoint_every": 2, "keep_checkpoints": 2, "seed": 0,
}
SCHEMA = ("generator", "discriminator", "dfm", "g_optimizer", "d_optimizer", "g_lr_scheduler", "d_lr_scheduler", "trainer")
KILLS = 3
CHILD_TIMEOUT = 120
TRAINING_STARTED = re.compile(r"ConditionalGanTrainer - INFO - Engine run (resuming|starting)")
SAVED_EPOCH = re.compile(r"Saved checkpoint at epoch: (\d+)")
RESUMED_FROM = re.compile(r"resumed from \S*checkpoint_(epoch|iteration)=(\d+)\.pt")
PRELOAD = ["torch", "monai", "monai.bundle", "ignite.engine", "covid_ct_cgan.engines.handlers",
           "covid_ct_cgan.engines.stages", "covid_ct_cgan.data.prepare", "covid_ct_cgan.networks"]


# --------------------------------------------------------------------------- the child process


def _kill_inside_torch_save(after: int) -> None:
    """Make the ``after``-th training-checkpoint ``torch.save`` write half its bytes, then SIGKILL the process."""
    real_save = torch.save
    count = {"n": 0}

    def save(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - torch.save's signature
        if isinstance(obj, dict) and "trainer" in obj:
            count["n"] += 1
            if count["n"] == after:
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
                if isinstance(f, (str, os.PathLike)):
                    with open(f, "wb") as handle:
                        handle.write(half)
                else:
                    f.write(half)
                    f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save


def _kill_in_validation(epoch: int) -> None:
    """SIGKILL the process when the epoch-end validation of ``epoch`` starts."""
    from monai.handlers import ValidationHandler

    real_call = ValidationHandler.__call__

    def call(self, engine):  # noqa: ANN001
        if engine.state.epoch == epoch:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_call(self, engine)

    ValidationHandler.__call__ = call


def _train_child(overrides: dict, log_path: str, kill: tuple | None = None) -> None:
    """Body of a child: ``monai.bundle.run("train_local", ...)``, output appended to ``log_path``.

    Args:
        kill: ``("in_save", n)`` dies inside the n-th checkpoint write;
            ``("in_validation", epoch)`` when that epoch's validation starts.
    """
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.chdir(REPO_ROOT)
    torch.set_num_threads(1)
    if kill is not None and kill[0] == "in_save":
        _kill_inside_torch_save(kill[1])
    elif kill is not None:
        _kill_in_validation(kill[1])
    from monai.bundle import run

    run("train_local", config_file=TRAIN_YAML, **overrides)


# --------------------------------------------------------------------------- the parent's side


class Runner:
    """Starts training children for one output folder and kills them."""

    def __init__(self, ctx: multiprocessing.context.BaseContext, work_dir: Path, name: str) -> None:
        self.ctx = ctx
        self.output_dir = work_dir / f"output_{name}"
        self.stage_dir = self.output_dir / STAGE
        self.log = work_dir / f"{name}.log"
        self.overrides = {**TINY, "work_dir": str(work_dir), "output_dir": str(self.output_dir)}

    def start(self, kill: tuple | None = None) -> multiprocessing.Process:
        proc = self.ctx.Process(target=_train_child, args=(self.overrides, str(self.log), kill))
        proc.start()
        return proc

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def run_to_end(self) -> float:
        """Run a child to completion; returns the seconds of training it took."""
        offset = len(self.log_text())
        proc = self.start()
        proc.join(CHILD_TIMEOUT)
        assert proc.exitcode == 0, f"training child failed ({proc.exitcode}):\n{self.log_text()[offset:][-3000:]}"
        stamps = re.findall(r"(\d\d:\d\d:\d\d,\d+) - ignite.engine.engine.ConditionalGanTrainer", self.log_text()[offset:])
        return _seconds(stamps[-1]) - _seconds(stamps[0]) if len(stamps) >= 2 else 5.0

    def run_and_die(self, kill: tuple) -> None:
        """Run a child that kills itself at the point ``kill`` names (see :func:`_train_child`)."""
        proc = self.start(kill)
        proc.join(CHILD_TIMEOUT)
        assert proc.exitcode == -signal.SIGKILL, f"the child did not die as planned ({proc.exitcode})"

    def kill_during_training(self, delay: float) -> bool:
        """Start a child, wait for training to start, SIGKILL it ``delay`` s later. False if it ended first."""
        offset = len(self.log_text())
        proc = self.start()
        deadline = time.time() + CHILD_TIMEOUT
        while proc.is_alive() and not TRAINING_STARTED.search(self.log_text()[offset:]):
            assert time.time() < deadline, "training did not start"
            time.sleep(0.02)
        time.sleep(delay)
        alive = proc.is_alive()
        if alive:
            proc.kill()  # SIGKILL
        proc.join(30)
        assert proc.exitcode == (-signal.SIGKILL if alive else 0), self.log_text()[offset:][-3000:]
        return alive


def _seconds(stamp: str) -> float:
    h, m, rest = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(rest.replace(",", "."))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def audit(stage_dir: Path) -> dict:
    """Read every ``.pt`` file of a stage: which are readable (with the full state), which are not."""
    files = sorted(stage_dir.glob("*.pt"), key=lambda p: p.stat().st_mtime_ns)
    good, bad = [], []
    for path in files:
        try:
            ckpt = load(path)
            ok = path.name == "best_generator.pt" or all(k in ckpt for k in SCHEMA)
        except Exception:  # noqa: BLE001 - an unreadable file is what is counted
            ok = False
        (good if ok else bad).append(path)
    return {"files": files, "good": good, "bad": bad}


def check_after_kill(runner: Runner, epoch_length: int) -> dict:
    """The rules after a kill; returns the audit and the iteration a resume starts from."""
    from covid_ct_cgan.engines.stages import load_latest_checkpoint

    state = audit(runner.stage_dir)
    assert state["bad"] == [], f"unreadable or incomplete checkpoint(s) after a kill: {state['bad']}"
    saved_epochs = [int(n) for n in SAVED_EPOCH.findall(runner.log_text())]
    found = load_latest_checkpoint(runner.stage_dir, required=SCHEMA)
    if found is None:
        assert not saved_epochs, "no readable checkpoint although an epoch was saved"
        return {**state, "iteration": 0}
    iteration = found[1]["trainer"]["iteration"]
    if saved_epochs:  # no completed epoch is lost
        assert iteration >= max(saved_epochs) * epoch_length, (
            f"resume point iteration {iteration} is before the saved epoch {max(saved_epochs)}"
        )
    return {**state, "iteration": iteration}


def final_state(stage_dir: Path) -> dict:
    from covid_ct_cgan.engines.stages import load_latest_checkpoint

    found = load_latest_checkpoint(stage_dir, required=SCHEMA)
    assert found is not None
    return found[1]


def adam_steps(optimizer_state: dict) -> set[int]:
    return {int(s["step"]) for s in optimizer_state["state"].values()}


def resumed_at_epoch_end(log: str, epoch_length: int) -> bool:
    """A resume started from a mid-epoch checkpoint saved at an epoch's last iteration (see the xfail test)."""
    return any(kind == "iteration" and int(n) % epoch_length == 0 for kind, n in RESUMED_FROM.findall(log))


@pytest.fixture(scope="module")
def forkserver() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work folder with the tiny phantom prepared (the children find it and skip preparation)."""
    from covid_ct_cgan.data.prepare import prepare_if_needed

    root = tmp_path_factory.mktemp("kill_resume")
    prepare_if_needed(
        "", str(root / "data"), phantom_dir=str(root / "phantom_raw"), phantom_patients=TINY["phantom_patients"],
        phantom_size=TINY["phantom_size"], phantom_slices=TINY["phantom_slices"], seed=0,
    )
    return root


@pytest.fixture(scope="module")
def reference(forkserver, work_dir: Path) -> dict:
    """The uninterrupted run."""
    runner = Runner(forkserver, work_dir, "reference")
    seconds = runner.run_to_end()
    state = final_state(runner.stage_dir)
    return {"runner": runner, "seconds": seconds, "state": state, "epoch_length": state["trainer"]["epoch_length"]}


def test_random_kills_lose_no_epoch_and_end_like_an_uninterrupted_run(
    forkserver, work_dir: Path, reference: dict, capsys: pytest.CaptureFixture
) -> None:
    runner = Runner(forkserver, work_dir, "killed")
    rng = random.Random(2024)
    length = reference["epoch_length"]
    total = EPOCHS * length
    kills, attempts, resume_points = 0, 0, []
    while kills < KILLS and attempts < 2 * KILLS:
        attempts += 1
        done = resume_points[-1] if resume_points else 0
        remaining = reference["seconds"] * (1 - done / total)
        if not runner.kill_during_training(rng.uniform(0.05, 0.7) * max(remaining, 0.5)):
            break  # the stage finished before the kill: nothing left to interrupt
        kills += 1
        resume_points.append(check_after_kill(runner, length)["iteration"])
    assert kills >= 2, f"only {kills} kill(s) landed during training"
    runner.run_to_end()
    assert audit(runner.stage_dir)["bad"] == []
    ref, got = reference["state"], final_state(runner.stage_dir)
    assert got["trainer"]["iteration"] == ref["trainer"]["iteration"] == total  # the end of epoch EPOCHS
    assert adam_steps(got["g_optimizer"]) == adam_steps(ref["g_optimizer"]) == {total}
    assert adam_steps(got["d_optimizer"]) == adam_steps(ref["d_optimizer"]) == {total}
    assert set(got["generator"]) == set(ref["generator"])
    assert all(torch.isfinite(v).all() for v in got["generator"].values())
    schedule_kept = got["g_lr_scheduler"]["last_epoch"] == ref["g_lr_scheduler"]["last_epoch"] == EPOCHS
    if not resumed_at_epoch_end(runner.log_text(), length):  # else: the known issue of the xfail test below
        assert schedule_kept
        assert got["g_optimizer"]["param_groups"][0]["lr"] == ref["g_optimizer"]["param_groups"][0]["lr"]
    differ = max(float((got["generator"][k].float() - ref["generator"][k].float()).abs().max()) for k in ref["generator"])
    with capsys.disabled():
        print(f"\nkill/resume: {kills} kills survived in {attempts} starts, resume points {resume_points} of {total} "
              f"iterations, LR schedule kept: {schedule_kept}, max |weight difference| vs uninterrupted {differ:.3g}")


def test_kill_inside_a_checkpoint_write_leaves_no_corrupt_file_and_resumes_deterministically(
    forkserver, work_dir: Path, reference: dict
) -> None:
    """SIGKILL in the middle of writing the 4th checkpoint: no cut-short file; the run resumes and completes.

    The killed run's folder is copied and both copies resume: their final weights are bit-identical
    (CPU, fixed seed), so a resume is deterministic.
    """
    first = Runner(forkserver, work_dir, "midwrite")
    first.run_and_die(("in_save", 4))
    assert check_after_kill(first, reference["epoch_length"])["iteration"] > 0  # and no unreadable checkpoint
    second = Runner(forkserver, work_dir, "midwrite_copy")
    shutil.copytree(first.output_dir, second.output_dir)
    shutil.copy(first.log, second.log)
    first.run_to_end()
    second.run_to_end()
    a, b = final_state(first.stage_dir), final_state(second.stage_dir)
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == reference["state"]["trainer"]["iteration"]
    assert adam_steps(a["g_optimizer"]) == {EPOCHS * reference["epoch_length"]}
    for key in a["generator"]:
        assert torch.equal(a["generator"][key], b["generator"][key]), key


def test_kill_in_epoch_end_validation_keeps_the_schedule(forkserver, work_dir: Path, reference: dict) -> None:
    runner = Runner(forkserver, work_dir, "epoch_end")
    runner.run_and_die(("in_validation", 2))  # checkpoint_iteration=6.pt (the end of epoch 2) is on disk
    check_after_kill(runner, reference["epoch_length"])
    runner.run_to_end()
    got = final_state(runner.stage_dir)
    assert got["trainer"]["iteration"] == reference["state"]["trainer"]["iteration"]
    with open(runner.stage_dir / "validation.csv", newline="") as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    assert epochs == list(range(1, EPOCHS + 1))
    assert got["g_lr_scheduler"]["last_epoch"] == reference["state"]["g_lr_scheduler"]["last_epoch"] == EPOCHS
