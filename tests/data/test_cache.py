"""Caching the training slices shows progress (minutes on real data, silent with MONAI's bar turned off)."""

from __future__ import annotations

import logging
from pathlib import Path

from monai.bundle import ConfigParser

from covid_ct_cgan.data.cache import ProgressCacheDataset

TRAIN_YAML = Path(__file__).resolve().parents[2] / "bundle" / "configs" / "train.yaml"


def test_cache_fill_logs_progress_lines(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="covid_ct_cgan.progress"):
        data = ProgressCacheDataset([{"x": i} for i in range(5)], transform=lambda d: {"x": d["x"] * 2},
                                    desc="caching training slices", every_s=0, progress=False)
    assert [data[i]["x"] for i in range(5)] == [0, 2, 4, 6, 8]
    lines = [r.getMessage() for r in caplog.records if r.name == "covid_ct_cgan.progress"]
    assert lines and all(line.startswith("caching training slices") for line in lines)
    assert "5/5" in lines[-1]


def test_train_yaml_caches_with_progress() -> None:
    config = ConfigParser.load_config_file(TRAIN_YAML)
    for part in ("train", "validate"):
        assert config[part]["dataset"]["_target_"] == "covid_ct_cgan.data.cache.ProgressCacheDataset", part
