"""Figures the tools write for people to look at: 8-bit pictures of slices and label maps, matplotlib
without a display, PNGs written atomically.

Shared by the training previews (:mod:`covid_ct_cgan.engines.handlers`), the synthesis previews
(:mod:`covid_ct_cgan.inference.outputs`) and the evaluation report.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .fileio import atomic_path

# label-map colours for previews: outside lung, lung, GGO, consolidation, effusion
LABEL_COLOURS = np.array(
    [[0, 0, 0], [70, 110, 160], [250, 210, 60], [220, 50, 40], [60, 200, 220]], dtype=np.uint8
)


def to_uint8_picture(image: np.ndarray) -> np.ndarray:
    """A [x, y] image in [-1, 1] as an 8-bit picture (rows = y)."""
    return np.clip((np.asarray(image, dtype=np.float32).T + 1.0) * 127.5, 0, 255).astype(np.uint8)


def label_picture(label: np.ndarray) -> np.ndarray:
    """A [x, y] integer label map as an RGB picture (rows = y)."""
    lab = np.clip(np.asarray(label).astype(np.int64).T, 0, len(LABEL_COLOURS) - 1)
    return LABEL_COLOURS[lab]


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
