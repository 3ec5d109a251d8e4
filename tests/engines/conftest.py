"""Fixtures of the training tests: a tiny prepared phantom dataset, copied per test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from tiny_training import TINY

from covid_ct_cgan.data.prepare import prepare_if_needed


@pytest.fixture(scope="session")
def prepared_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared tiny phantom dataset (made once per session); copy it before writing next to it."""
    root = tmp_path_factory.mktemp("tiny_work")
    prepare_if_needed(
        "", str(root / "data"), phantom_dir=str(root / "phantom_raw"),
        phantom_patients=TINY["phantom_patients"], phantom_size=TINY["phantom_size"],
        phantom_slices=TINY["phantom_slices"], seed=0,
    )
    return root


@pytest.fixture()
def work_dir(prepared_tiny: Path, tmp_path: Path) -> Path:
    """A fresh work folder holding a copy of the tiny prepared data."""
    work = tmp_path / "work"
    shutil.copytree(prepared_tiny, work)
    return work


@pytest.fixture()
def subprocess_env() -> dict[str, str]:
    """Environment for bundle runs in a subprocess: one thread (the CI machine has 2 cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
