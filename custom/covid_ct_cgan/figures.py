"""Figures the tools write for people to look at: matplotlib without a display, PNGs written atomically."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from .fileio import atomic_path


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_figure(fig: Any, path: str | Path, overwrite: bool = False) -> Path:
    """Lay ``fig`` out, write it to ``path`` as a 100-dpi PNG (temporary name, then rename) and close it."""
    fig.tight_layout()
    try:
        with atomic_path(path, overwrite=overwrite) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        pyplot().close(fig)
    return Path(path)
