"""The bundle's own checks: metadata schema, network input/output, TorchScript export."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from covid_ct_cgan.checkpoint_settings import NetworkSettings, network_record
from covid_ct_cgan.networks import GlobalLocalGenerator

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.integration  # python -m monai.bundle in a subprocess


def _bundle(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=300
    )


def test_verify_metadata() -> None:
    done = _bundle(
        "verify_metadata", "--meta_file", "bundle/configs/metadata.json",
        "--filepath", "bundle/configs/schema/meta_schema_20240725.json",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "metadata is verified with no error" in done.stdout + done.stderr


def test_verify_net_in_out() -> None:
    done = _bundle(
        "verify_net_in_out", "network_def", "--meta_file", "bundle/configs/metadata.json",
        "--config_file", "bundle/configs/inference.yaml", "--checkpoint_dir", "no_training_output",  # the defaults
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "data shape of network is verified with no error" in done.stdout + done.stderr


@pytest.mark.parametrize("saved", ["record", "flat_record", "none"])
def test_ckpt_export_torchscript_equals_eager(tmp_path: Path, saved: str) -> None:
    """A training checkpoint's generator exported with ckpt_export (as the README says) gives the eager output.

    With the record training saves (the generator's constructor arguments) ``--checkpoint`` is enough, and so
    with the flat record of older runs; a checkpoint saved without any record needs ``legacy_settings``
    (atol 1e-5 either way).
    """
    settings = {"ngf": 8, "n_downsampling": 1, "n_blocks_global": 1, "n_blocks_local": 1}
    torch.manual_seed(0)
    generator = GlobalLocalGenerator(4, 1, n_blocks_global=1, n_blocks_local=1, ngf=8, n_downsampling=1, mode="joint")
    ckpt = tmp_path / "joint" / "checkpoint_epoch=1.pt"
    ckpt.parent.mkdir()
    checkpoint = {"generator": generator.state_dict()}
    if saved == "record":
        checkpoint["network_settings"] = NetworkSettings(network_record({"image_size": 32}, {"generator": generator})).state_dict()
    elif saved == "flat_record":
        checkpoint["network_settings"] = NetworkSettings(
            {"generator": "covid_ct_cgan.networks.GlobalLocalGenerator", "image_size": 32, **settings}
        ).state_dict()
    torch.save(checkpoint, ckpt)
    overrides = ["--legacy_settings", str({**settings, "image_size": 32})] if saved == "none" else []
    ts = tmp_path / "generator.ts"
    done = _bundle(
        "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(ckpt), "--key_in_ckpt", "generator",
        "--meta_file", "bundle/configs/metadata.json", "--config_file", "bundle/configs/inference.yaml",
        "--checkpoint_dir", str(tmp_path), *overrides,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    exported = torch.jit.load(str(ts))
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 32, 32)), 4).permute(0, 3, 1, 2).float()
    generator.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(x), generator(x), atol=1e-5, rtol=0)
