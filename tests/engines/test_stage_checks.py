"""A stage's refusals that files and settings tell come before its training slices are cached (minutes on real
data): a joint stage without the stages it starts from, a resume with other network settings, a disk without
room for the checkpoints. Each is one ``ERROR`` line, exit 2, and ``train#dataset`` never cached a slice."""

from __future__ import annotations

import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from tiny_training import TINY, TRAIN_YAML

from covid_ct_cgan.data.cache import ProgressCacheDataset
from covid_ct_cgan.engines.stages import SETTINGS_FILE
from covid_ct_cgan.settings import run_bundle


@pytest.fixture()
def cached(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ``desc`` of every dataset that started caching slices (the expensive step the checks must precede)."""
    calls: list[str] = []
    real = ProgressCacheDataset._fill_cache

    def fill_cache(self, *args, **kwargs):
        calls.append(self.desc)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ProgressCacheDataset, "_fill_cache", fill_cache)
    return calls


def _refused(capsys: pytest.CaptureFixture, run_id: str, work_dir: Path, **extra: object) -> str:
    with pytest.raises(SystemExit) as stop:
        run_bundle(run_id, config_file=TRAIN_YAML, **{**TINY, "work_dir": str(work_dir), **extra})
    assert stop.value.code == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR")]
    return line


def test_joint_stage_without_the_stages_it_starts_from(work_dir: Path, capsys, cached: list[str]) -> None:
    line = _refused(capsys, "train_joint", work_dir)
    assert line == f"ERROR: {work_dir / 'output' / 'global'}: no checkpoint to start 'global_net' from; train that stage first"
    assert cached == []
    assert not (work_dir / "output" / "joint").exists()


def test_resume_with_other_network_settings(work_dir: Path, capsys, cached: list[str]) -> None:
    stage = work_dir / "output" / "local"
    stage.mkdir(parents=True)
    torch.save({"generator": {}}, stage / "checkpoint_epoch=1.pt")
    (stage / SETTINGS_FILE).write_text(json.dumps({"image_size": 64}))
    line = _refused(capsys, "train_local", work_dir)
    assert line.startswith(f"ERROR: {stage / SETTINGS_FILE}: cannot resume this stage: it was trained with other network "
                           "settings (") and "image_size: 64 -> 32" in line
    assert cached == []


def test_too_little_space_for_the_checkpoints(work_dir: Path, capsys, cached: list[str], monkeypatch) -> None:
    usage = namedtuple("usage", "total used free")
    real = shutil.disk_usage
    output = work_dir / "output"

    def disk_usage(path):
        return usage(1 << 30, (1 << 30) - 4096, 4096) if str(path).startswith(str(output)) else real(path)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    output.mkdir()  # the disk under output_dir is nearly full (the command's own check sees the data folder's disk)
    line = _refused(capsys, "train_global", work_dir, output_dir=str(output))
    assert line.startswith(f"ERROR: {output / 'global'}: only 4.0 KiB free, the run needs at least ")
    assert line.endswith("; free some space or choose another folder")
    assert cached == []
