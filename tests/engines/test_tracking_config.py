"""``training --tracking mlflow``: each stage's MLflow run logs that stage's own config, exactly once."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from covid_ct_cgan.settings import run_bundle

from tiny_training import TINY, TRAIN_YAML

pytestmark = pytest.mark.integration  # a whole train.yaml run through monai.bundle


def test_each_stage_run_logs_its_own_config_once(work_dir: Path) -> None:
    run_bundle(run_id="training", config_file=TRAIN_YAML, **{**TINY, "work_dir": str(work_dir), "epochs": 1},
               tracking="mlflow")
    out = work_dir / "output"
    con = sqlite3.connect(out / "mlruns.db")
    try:
        runs = dict(con.execute("select name, artifact_uri from runs").fetchall())
        stage_params = dict(con.execute(
            "select runs.name, params.value from params join runs on params.run_uuid = runs.run_uuid "
            "where params.key = 'stage'").fetchall())
    finally:
        con.close()
    assert sorted(runs) == ["stage_global", "stage_joint", "stage_local"]
    assert stage_params == {f"stage_{s}": s for s in ("global", "local", "joint")}
    for stage in ("global", "local", "joint"):
        root = Path(runs[f"stage_{stage}"].removeprefix("file://"))
        configs = [p for p in root.rglob("*.json") if p.name.startswith("config")]
        assert [p.relative_to(root).as_posix() for p in configs] == [f"config/config_{stage}.json"], configs
        logged = json.loads(configs[0].read_text())
        assert logged["stage"] == stage
        assert logged["epochs"] == 1 and logged["work_dir"] == str(work_dir)  # the command's overrides
        assert logged["save_execute_config"] is None  # MONAI's own copy is not written or logged
        assert (out / stage / f"config_{stage}.json").is_file()
    assert not list(out.glob("config_*.json"))  # no shared config_<time>.json files in output_dir
