"""train.yaml end to end at tiny size: stages, hand-over, resume, skipping, MLflow, DDP, non-finite loss."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from covid_ct_cgan.settings import run_bundle as run  # monai.bundle.run with the command recorded

from covid_ct_cgan.engines.handlers import linear_decay_lambda
from covid_ct_cgan.engines.stages import checkpoint_candidates

from tiny_training import REPO_ROOT, TINY, TRAIN_YAML, tiny_cli

# only against a hung run: the waits end on events (a checkpoint written, the exit); a loaded machine is slow, not hung
HANG_GUARD_S = 1800


def _run(run_id: str, work_dir: Path, **overrides: object) -> None:
    run(run_id=run_id, config_file=TRAIN_YAML, **{**TINY, "work_dir": str(work_dir), **overrides})


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.integration
def test_training_runs_every_stage_and_hands_over(work_dir: Path) -> None:
    _run("training", work_dir)
    out = work_dir / "output"
    for stage in ("global", "local", "joint"):
        final = out / stage / "checkpoint_epoch=2.pt"
        assert final.is_file(), f"{stage} wrote no final checkpoint"
        ckpt = _ckpt(final)
        assert {"generator", "discriminator", "dfm", "g_optimizer", "d_optimizer", "g_lr_scheduler", "trainer"} <= set(ckpt)
        assert ckpt["trainer"]["iteration"] == 2 * ckpt["trainer"]["epoch_length"]
        assert (out / stage / "best_generator.pt").is_file()
        assert (out / stage / "samples" / "latest.png").stat().st_size > 0
        assert (out / stage / "validation_curve.png").is_file()
        rows = (out / stage / "validation.csv").read_text().strip().splitlines()
        assert rows[0] == "epoch,val_ssim,val_psnr" and len(rows) == 3
        with open(out / stage / "training.csv", newline="") as handle:
            means = list(csv.DictReader(handle))
        assert [int(r["epoch"]) for r in means] == [1, 2]
        for r in means:  # the epoch means of the losses the stage trains; the local D is off (nan)
            assert all(math.isfinite(float(r[k])) for k in ("loss", "d_loss", "g_gan", "g_fm", "lr")), r
            assert math.isnan(float(r["d_local"]))
            # what the critics can tell: each scale's paired ranking accuracy on the validation batch
            assert all(0.0 <= float(r[k]) <= 1.0 for k in ("d1_ranking", "d2_ranking")), r
            assert "local_d_ranking" not in r
        assert float(means[0]["lr"]) == 0.0002
    joint = _ckpt(out / "joint" / "checkpoint_epoch=2.pt")
    assert {"dfm_optimizer", "dfm_lr_scheduler"} <= set(joint)  # the DFM net learns in the joint stage only
    assert not {"dfm_optimizer", "dfm_lr_scheduler"} & set(_ckpt(out / "local" / "checkpoint_epoch=2.pt"))
    # the DFM net is on G's and D's schedule: after 2 epochs of 2 (1 constant, 1 decaying) the rate is 0
    rates = {k: joint[k]["param_groups"][0]["lr"] for k in ("g_optimizer", "d_optimizer", "dfm_optimizer")}
    assert rates == {k: 0.0002 * linear_decay_lambda(2, 1)(2) for k in rates}
    assert joint["dfm_lr_scheduler"]["last_epoch"] == joint["g_lr_scheduler"]["last_epoch"] == 2
    # the joint stage started from the local stage's G2: its weights moved on from there, but
    # a fresh G2 would be far further away than a few joint epochs move it
    local_g = _ckpt(out / "local" / "checkpoint_epoch=2.pt")["generator"]
    key = "local_net.head.1.weight" if "local_net.head.1.weight" in local_g else sorted(k for k in local_g if k.startswith("local_net"))[0]
    delta = (joint["generator"][key] - local_g[key]).abs().mean()
    assert delta < local_g[key].abs().mean()


@pytest.mark.integration
def test_training_skips_finished_stages(work_dir: Path) -> None:
    _run("train_local", work_dir)
    stage_dir = work_dir / "output" / "local"

    def files() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in stage_dir.rglob("*") if p.is_file() and "tensorboard" not in p.parts}

    before = files()
    _run("train_local", work_dir)
    assert files() == before  # nothing trained, nothing rewritten


def test_joint_without_earlier_stages_fails_clearly(work_dir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        _run("train_joint", work_dir)
    assert stop.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR")]
    assert err == [f"ERROR: {work_dir / 'output' / 'global'}: no checkpoint to start 'global_net' from; train that stage first"]
    assert not list((work_dir / "output" / "joint").glob("*.pt"))


@pytest.mark.integration
def test_killed_stage_resumes_at_saved_iteration_with_same_lr(work_dir: Path, subprocess_env: dict) -> None:
    """SIGKILL a stage mid-epoch, then resume: same iteration, same learning rate, full length."""
    epochs = 3
    cmd = [sys.executable, "-m", "monai.bundle", "run", "train_local", "--config_file", TRAIN_YAML]
    cmd += tiny_cli(work_dir, epochs=epochs, checkpoint_every=1, keep_checkpoints=1)
    stage_dir = work_dir / "output" / "local"
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=subprocess_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = None
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while time.monotonic() < deadline and proc.poll() is None:
            names = [p.name for p in stage_dir.glob("checkpoint_iteration=*.pt")] if stage_dir.is_dir() else []
            its = [int(re.search(r"=(\d+)", n).group(1)) for n in names]
            if any(epoch_files for epoch_files in stage_dir.glob("checkpoint_epoch=1.pt")) and its and max(its) >= 2:
                proc.send_signal(signal.SIGKILL)
                killed_at = max(its)
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert killed_at is not None, "the run finished or stalled before it could be killed"

    newest = checkpoint_candidates(stage_dir)[0]
    saved = _ckpt(newest)
    saved_iteration = saved["trainer"]["iteration"]
    saved_lr = saved["g_optimizer"]["param_groups"][0]["lr"]

    from monai.bundle import ConfigParser

    from covid_ct_cgan.engines.stages import resume

    parser = ConfigParser()
    parser.read_config(TRAIN_YAML)
    parser.update({**TINY, "work_dir": str(work_dir), "epochs": epochs, "checkpoint_every": 1, "stage": "local"})
    trainer = parser.get_parsed_content("train#trainer")
    loaded = resume(trainer, parser.get_parsed_content("save_dict"), stage_dir)
    assert loaded == newest
    assert trainer.state.iteration == saved_iteration
    assert parser.get_parsed_content("g_optimizer").param_groups[0]["lr"] == saved_lr
    trainer.run()
    epoch_length = trainer.state.epoch_length
    assert trainer.state.iteration == epochs * epoch_length
    assert trainer.state.epoch == epochs
    final = _ckpt(stage_dir / f"checkpoint_epoch={epochs}.pt")
    assert final["trainer"]["iteration"] == epochs * epoch_length
    # the paper's schedule after `epochs` scheduler steps: constant for epochs // 2, then linear decay to 0
    expected_lr = 0.0002 * linear_decay_lambda(epochs, epochs // 2)(epochs)
    assert final["g_optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected_lr)


@pytest.mark.integration
def test_non_finite_loss_stops_cleanly_and_keeps_last_good_checkpoint(work_dir: Path, capsys: pytest.CaptureFixture) -> None:
    _run("train_local", work_dir, epochs=1)
    good = work_dir / "output" / "local" / "checkpoint_epoch=1.pt"
    good_bytes = good.read_bytes()
    with pytest.raises(SystemExit) as stop:
        _run("train_local", work_dir, epochs=2, lambda_fm="$float('nan')")
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "ERROR: non-finite loss at epoch 2" in err and "last good" in err
    assert good.read_bytes() == good_bytes
    assert not (work_dir / "output" / "local" / "checkpoint_epoch=2.pt").exists()
    for path in checkpoint_candidates(work_dir / "output" / "local"):
        state = _ckpt(path)["generator"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.integration
def test_mlflow_tracking_records_metrics_params_and_artifacts(work_dir: Path) -> None:
    _run("train_joint", work_dir, handover="$None", handover_discriminator="$None", tracking="mlflow")
    db = work_dir / "output" / "mlruns.db"
    assert db.is_file()
    con = sqlite3.connect(db)
    try:
        metrics = {r[0] for r in con.execute("select distinct key from metrics")}
        params = {r[0] for r in con.execute("select distinct key from params")}
        runs = [r[0] for r in con.execute("select name from runs")]
    finally:
        con.close()
    assert runs == ["stage_joint"]
    assert {"train_loss", "train_d_loss", "train_desum_weight", "train_dfm_weight", "lr", "val_ssim", "val_psnr"} <= metrics
    assert {"train_dfm_weight_at_low", "train_dfm_weight_at_high"} <= metrics  # the learned b's spread per epoch
    assert {"d1_ranking", "d2_ranking"} <= metrics  # what the critics can tell, beside the losses
    assert {"learning_rate", "batch_size", "image_size", "generator.desum", "generator.ngf", "dfm.mode", "stage"} <= params  # the record, flat
    artifacts = {p.relative_to(work_dir / "output").as_posix() for p in (work_dir / "output").rglob("*") if "mlruns" in p.parts and p.is_file()}
    names = {a.split("/artifacts/", 1)[1] for a in artifacts if "/artifacts/" in a}
    assert {"samples/epoch_0002.png", "validation_curve.png", "validation.csv"} <= names
    assert any(n.startswith("config/config_") for n in names)
    events = EventAccumulator(str(work_dir / "output" / "joint" / "tensorboard"), size_guidance={"histograms": 0})
    events.Reload()
    histograms = events.Histograms("train_dfm_weight")
    assert [h.step for h in histograms] == [1, 2]
    slices = len(json.loads((work_dir / "data" / "datalist.json").read_text())["training"])
    assert all(h.histogram_value.num == slices for h in histograms)  # every sample's b, each epoch
    assert all(0.1 <= h.histogram_value.min <= h.histogram_value.max <= 0.9 for h in histograms)


@pytest.mark.integration
def test_torchrun_two_cpu_processes_only_rank0_writes(work_dir: Path, subprocess_env: dict) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    configs = "['bundle/configs/train.yaml','bundle/configs/multi_gpu_train.yaml']"
    cmd = [str(torchrun), "--nproc_per_node=2", "--master_port", str(29500 + os.getpid() % 1000)]
    cmd += ["-m", "monai.bundle", "run", "train_local", "--config_file", configs]
    cmd += tiny_cli(work_dir, epochs=1)
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    stage_dir = work_dir / "output" / "local"
    assert (stage_dir / "checkpoint_epoch=1.pt").is_file()
    writers = {p.name.split(".")[4] for p in (stage_dir / "tensorboard").glob("events.out.tfevents.*")}
    assert len(writers) == 1, f"TensorBoard files from several processes: {writers}"
    assert len(list((stage_dir / "samples").glob("epoch_*.png"))) == 1


@pytest.mark.integration
@pytest.mark.parametrize("overlay, stages", [("pix2pixhd.yaml", ("global", "local", "joint")), ("pix2pix.yaml", ("joint",))])
def test_baseline_overlays_train_on_the_same_trainer(work_dir: Path, overlay: str, stages: tuple[str, ...]) -> None:
    configs = [TRAIN_YAML, str(REPO_ROOT / "bundle" / "configs" / overlay)]
    run(run_id="training", config_file=configs, **{**TINY, "work_dir": str(work_dir), "epochs": 1})
    out = work_dir / ("output_" + overlay.split(".")[0])
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(stages)
    ckpt = _ckpt(out / stages[-1] / "checkpoint_epoch=1.pt")
    if overlay == "pix2pix.yaml":
        assert not any(k.startswith("global_net") for k in ckpt["generator"])  # the U-Net
        assert len({k.split(".")[1] for k in ckpt["discriminator"] if k.startswith("discriminators")}) == 1
    else:
        assert "dfm_optimizer" not in ckpt  # equal feature matching: nothing to learn
        assert {k.split(".")[0] for k in ckpt["generator"]} == {"global_net", "local_net", "desum"}
