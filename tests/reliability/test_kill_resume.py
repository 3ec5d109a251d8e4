"""Kill and resume: SIGKILL a training stage at random and at chosen points, resume, compare with an uninterrupted run.

A tiny ``train_local`` stage of ``train.yaml`` (32-px images, 8-channel networks,
3 iterations an epoch, 3 epochs, a mid-epoch checkpoint every 2 iterations) runs
in child processes forked from a server that has already imported torch and
MONAI (``multiprocessing`` "forkserver"), so a start costs seconds, not the
imports; a child runs ``run_bundle("train_local", ...)`` (``monai.bundle.run`` with the
command recorded) as the command line does and dies by SIGKILL (no clean-up handler runs):

- at random points: when a randomly drawn iteration starts, a timer thread of the
  child sends SIGKILL after a random delay (up to an iteration's time), so the
  kill lands wherever the process is then (a training step, the epoch-end
  validation, a checkpoint write); :data:`KILLS` such kills in a row, each
  resumed;
- in the middle of writing a checkpoint;
- during an epoch-end validation (after the LR step, before the epoch checkpoint);
- exactly at an epoch end, just after the epoch checkpoint is in place.

Checked after every kill: every checkpoint is readable with ``weights_only=True``,
holds the full state (none is cut short: they are written atomically) and a
consistent schedule (each LR scheduler has stepped once per completed epoch, and
its optimizer trains at the scheduler's rate); the newest readable checkpoint is
at least at the last epoch the run reported saved (no completed epoch is lost).
Checked at the end: the killed-and-resumed run ends at the same iteration as an
uninterrupted one, with the same optimizer step counts, learning-rate schedule
and finite weights; and resuming is deterministic: two resumes from the same
checkpoint end with bit-identical weights.

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
import threading
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
KILLS = 3  # random kills in a row (docs, "Reliability")
CHILD_TIMEOUT = 1800  # only against a hung child: the joins end when it exits, however loaded the machine is
pytestmark = pytest.mark.integration  # training children killed and resumed

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


def _kill_after_epoch_checkpoint(epoch: int) -> None:
    """SIGKILL the process as soon as ``checkpoint_epoch=<epoch>.pt`` is in place (renamed, older files removed)."""
    from covid_ct_cgan.engines.handlers import _RemoveAfterSave

    real_call = _RemoveAfterSave.__call__

    def call(self, checkpoint, filename, metadata=None):  # noqa: ANN001
        real_call(self, checkpoint, filename, metadata)
        if filename == f"checkpoint_epoch={epoch}.pt":
            os.kill(os.getpid(), signal.SIGKILL)

    _RemoveAfterSave.__call__ = call


def _kill_after_delay(iteration: int, delay: float) -> None:
    """When ``iteration`` starts, start a timer thread that SIGKILLs the process ``delay`` seconds later."""
    from covid_ct_cgan.engines import ConditionalGanTrainer

    real_iteration = ConditionalGanTrainer._iteration

    def _iteration(self, engine, batchdata):  # noqa: ANN001
        if engine.state.iteration == iteration:
            threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
        return real_iteration(self, engine, batchdata)

    ConditionalGanTrainer._iteration = _iteration


def _train_child(overrides: dict, log_path: str, kill: tuple | None = None) -> None:
    """Body of a child: ``run_bundle("train_local", ...)``, output appended to ``log_path``.

    Args:
        kill: ``("in_save", n)`` dies inside the n-th checkpoint write;
            ``("in_validation", epoch)`` when that epoch's validation starts;
            ``("after_epoch_checkpoint", epoch)`` just after that epoch's checkpoint is written;
            ``("timer", iteration, seconds)`` that many seconds after ``iteration`` starts.
    """
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.chdir(REPO_ROOT)
    torch.set_num_threads(1)
    if kill is not None:
        arm = {"in_save": _kill_inside_torch_save, "in_validation": _kill_in_validation,
               "after_epoch_checkpoint": _kill_after_epoch_checkpoint, "timer": _kill_after_delay}[kill[0]]
        arm(*kill[1:])
    from covid_ct_cgan.settings import run_bundle

    run_bundle("train_local", config_file=TRAIN_YAML, **overrides)


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


def check_schedule(path: Path, ckpt: dict, epoch_length: int) -> None:
    """Each LR scheduler of a checkpoint stepped once per completed epoch; each optimizer trains at its rate."""
    epochs_done = ckpt["trainer"]["iteration"] // epoch_length
    schedulers = [k for k in ckpt if k.endswith("_lr_scheduler")]
    assert schedulers, f"{path.name} holds no LR scheduler"
    for key in schedulers:
        assert ckpt[key]["last_epoch"] == epochs_done, (
            f"{path.name}: {key} stepped {ckpt[key]['last_epoch']} times after {epochs_done} completed epoch(s)"
        )
        optimizer = key.replace("_lr_scheduler", "_optimizer")
        if optimizer in ckpt:
            rates = [group["lr"] for group in ckpt[optimizer]["param_groups"]]
            assert rates == ckpt[key]["_last_lr"], f"{path.name}: {optimizer} at {rates}, {key} at {ckpt[key]['_last_lr']}"


def check_after_kill(runner: Runner, epoch_length: int) -> dict:
    """The rules after a kill; returns the audit and the iteration a resume starts from."""
    from covid_ct_cgan.engines.stages import load_latest_checkpoint

    state = audit(runner.stage_dir)
    assert state["bad"] == [], f"unreadable or incomplete checkpoint(s) after a kill: {state['bad']}"
    for path in state["good"]:
        if path.name != "best_generator.pt":
            check_schedule(path, load(path), epoch_length)
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


def check_end_like_reference(runner: Runner, reference: dict) -> dict:
    """The resumed run's final checkpoint: same iteration, optimizer steps and schedule as the uninterrupted run."""
    ref, got = reference["state"], final_state(runner.stage_dir)
    total = EPOCHS * reference["epoch_length"]
    assert got["trainer"]["iteration"] == ref["trainer"]["iteration"] == total  # the end of epoch EPOCHS
    assert adam_steps(got["g_optimizer"]) == adam_steps(ref["g_optimizer"]) == {total}
    assert adam_steps(got["d_optimizer"]) == adam_steps(ref["d_optimizer"]) == {total}
    for key in (k for k in ref if k.endswith("_lr_scheduler")):
        assert got[key]["last_epoch"] == ref[key]["last_epoch"] == EPOCHS, key
        assert got[key]["_last_lr"] == ref[key]["_last_lr"], key
    for key in (k for k in ref if k.endswith("_optimizer")):
        assert [g["lr"] for g in got[key]["param_groups"]] == [g["lr"] for g in ref[key]["param_groups"]], key
    with open(runner.stage_dir / "validation.csv", newline="") as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    assert epochs == list(range(1, EPOCHS + 1)), f"validated epochs {epochs}"
    with open(runner.stage_dir / "training.csv", newline="") as handle:  # a resumed epoch is not kept twice
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    assert epochs == list(range(1, EPOCHS + 1)), f"epoch means of epochs {epochs}"
    assert set(got["generator"]) == set(ref["generator"])
    assert all(torch.isfinite(v).all() for v in got["generator"].values())
    return got


def final_state(stage_dir: Path) -> dict:
    from covid_ct_cgan.engines.stages import load_latest_checkpoint

    found = load_latest_checkpoint(stage_dir, required=SCHEMA)
    assert found is not None
    return found[1]


def adam_steps(optimizer_state: dict) -> set[int]:
    return {int(s["step"]) for s in optimizer_state["state"].values()}


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
    """:data:`KILLS` kills at random points in a row, each resumed; every one lands before the stage ends."""
    runner = Runner(forkserver, work_dir, "killed")
    rng = random.Random(2024)
    length = reference["epoch_length"]
    total = EPOCHS * length
    per_iteration = reference["seconds"] / total
    kill_points, resume_points = [], []
    for _ in range(KILLS):
        done = resume_points[-1] if resume_points else 0
        # spread the kills (leave iterations for the later ones); start the last timer 2 iterations before the
        # end and wait at most one iteration's share of the reference run (epoch ends included), so it lands
        left = KILLS - len(kill_points)
        iteration = rng.randint(done + 1, max(done + 1, done + -(-(total - 2 - done) // left)))
        delay = rng.uniform(0.0, 1.0) * per_iteration
        runner.run_and_die(("timer", iteration, delay))
        kill_points.append(f"{iteration}+{delay * 1000:.0f}ms")
        resume_points.append(check_after_kill(runner, length)["iteration"])
    runner.run_to_end()
    assert audit(runner.stage_dir)["bad"] == []
    got = check_end_like_reference(runner, reference)
    ref = reference["state"]
    differ = max(float((got["generator"][k].float() - ref["generator"][k].float()).abs().max()) for k in ref["generator"])
    with capsys.disabled():
        print(f"\nkill/resume: {KILLS} random kills landed (iteration started + delay: {kill_points}), resume points "
              f"{resume_points} of {total} iterations, LR schedule kept, max |weight difference| vs uninterrupted "
              f"{differ:.3g}")


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
    a, b = check_end_like_reference(first, reference), check_end_like_reference(second, reference)
    for key in a["generator"]:
        assert torch.equal(a["generator"][key], b["generator"][key]), key


def test_kill_in_epoch_end_validation_keeps_the_schedule(forkserver, work_dir: Path, reference: dict) -> None:
    """Killed after epoch 2's LR step, before its checkpoint: the resume repeats the rest of epoch 2 and its step.

    The mid-epoch saver does not write at an epoch's last iteration (iteration 6 here, a multiple of
    ``checkpoint_every``): such a checkpoint, written before the epoch-end LR step, would resume at the
    next epoch with one scheduler step lost.
    """
    runner = Runner(forkserver, work_dir, "epoch_end")
    runner.run_and_die(("in_validation", 2))
    length = reference["epoch_length"]
    assert not (runner.stage_dir / f"checkpoint_iteration={2 * length}.pt").exists()
    assert check_after_kill(runner, length)["iteration"] < 2 * length  # epoch 2 is redone
    runner.run_to_end()
    check_end_like_reference(runner, reference)


def test_kill_just_after_an_epoch_checkpoint_keeps_the_schedule(forkserver, work_dir: Path, reference: dict) -> None:
    """Killed exactly at an epoch end, once its checkpoint is in place: the resume neither loses nor repeats a step."""
    epoch = 2  # a mid-epoch checkpoint of this epoch (iteration 4) is on disk too, older
    runner = Runner(forkserver, work_dir, "after_epoch")
    runner.run_and_die(("after_epoch_checkpoint", epoch))
    length = reference["epoch_length"]
    assert check_after_kill(runner, length)["iteration"] == epoch * length
    runner.run_to_end()
    assert RESUMED_FROM.findall(runner.log_text()) == [("epoch", str(epoch))]
    check_end_like_reference(runner, reference)
