"""Shared pytest fixtures: repository paths and the read-only shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
MEDSEG_SLICES = SHARED_DIR / "data" / "medseg-slices"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where ``bundle/`` and ``custom/`` live)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The team's read-only ``shared/`` folder beside the repository."""
    return SHARED_DIR


@pytest.fixture(scope="session")
def medseg_slices_dir() -> Path:
    """The 98 real MedSeg slices; the tests that need them are skipped, with the reason, in a clone without them."""
    if not MEDSEG_SLICES.is_dir():
        pytest.skip(f"real-data check needs {MEDSEG_SLICES} (the team's shared/ folder beside the repository)")
    return MEDSEG_SLICES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every ``slow`` test ``integration`` too, so that the unit tier (``-m "not integration"``) leaves it out."""
    for item in items:
        if item.get_closest_marker("slow") is not None and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)
