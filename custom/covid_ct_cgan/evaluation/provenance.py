"""Where a number comes from: data, image size, epochs, seed, code version.

Every CSV row the evaluation writes carries these columns, and every table in
the report is headed by them, so a number can always be traced to the run
that produced it.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..checkpoints import CheckpointError, load_latest_checkpoint, read_checkpoint

PROVENANCE_COLUMNS: tuple[str, ...] = ("data", "image_size", "epochs", "seed", "commit")


@functools.lru_cache(maxsize=4)
def code_version(repo_dir: str = ".") -> str:
    """Short git commit of ``repo_dir`` (``+dirty`` with uncommitted changes), or ``"unknown"``."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo_dir, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_dir, capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit or "unknown"


def trained_epochs(checkpoint: str | Path) -> int | None:
    """Epochs done by the trainer whose checkpoint (file or stage folder) this is, if it says so."""
    path = Path(checkpoint)
    ckpt: Any = None
    if path.is_dir():
        found = load_latest_checkpoint(path, required=["trainer"])
        ckpt = found[1] if found else None
    elif path.is_file():
        try:
            ckpt = read_checkpoint(path)
        except CheckpointError:  # provenance is best effort; the loader reports real problems
            return None
    state = ckpt.get("trainer") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "iteration" not in state or not state.get("epoch_length"):
        return None
    return int(state["iteration"]) // int(state["epoch_length"])


def stage_epochs(output_dir: str | Path, stages: Sequence[str]) -> str:
    """``"global 2, local 2, joint 2"``: epochs trained in each stage folder of a training run (``?`` if unknown)."""
    parts = []
    for stage in stages:
        done = trained_epochs(Path(output_dir) / stage)
        parts.append(f"{stage} {done if done is not None else '?'}")
    return ", ".join(parts)


def data_description(data_dir: str | Path, key: str, items: Sequence[Mapping[str, Any]]) -> str:
    """``"<data_dir>:<key> (12 slices, 2 patients)"``."""
    patients = len({str(it.get("patient", "?")) for it in items})
    return f"{data_dir}:{key} ({len(items)} slices, {patients} patient{'' if patients == 1 else 's'})"


def provenance(data: str, image_size: int | str, epochs: int | str, seed: int) -> dict[str, str]:
    """The provenance columns of a result row."""
    return {"data": str(data), "image_size": str(image_size), "epochs": str(epochs), "seed": str(seed),
            "commit": code_version()}
