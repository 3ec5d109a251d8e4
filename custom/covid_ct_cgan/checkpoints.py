"""Checkpoint files: the one reader, and finding a stage's newest readable checkpoint.

Every checkpoint the package loads (training resume and hand-over, synthesis,
evaluation, the settings saved with a checkpoint, the FID feature network, the
MONAI Label app's UNet) goes through :func:`read_checkpoint`: a
``torch.load(..., weights_only=True)`` (no pickled code ever runs), one clear
error for a damaged file, for a file that is not a checkpoint (not a dict of
entries) and for one that lacks entries the caller needs (the schema check).
:func:`state_dict_of` picks a network's weights out of a checkpoint.

A stage folder of training holds ``checkpoint_epoch=N.pt`` / ``checkpoint_iteration=N.pt``
files and ``settings.json`` (the network settings it was trained with);
:func:`load_latest_checkpoint` returns its newest readable checkpoint, skipping
damaged ones with a warning, and :func:`read_stage_settings` its settings.

This module sits below :mod:`covid_ct_cgan.engines` and :mod:`covid_ct_cgan.inference`,
which both use it and do not import each other.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import InputError

__all__ = [
    "CHECKPOINT_PATTERN",
    "SETTINGS_FILE",
    "CheckpointError",
    "checkpoint_candidates",
    "load_latest_checkpoint",
    "read_checkpoint",
    "read_stage_settings",
    "state_dict_of",
    "trained_iterations",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"checkpoint_(epoch|iteration)=(\d+)\.pt$")
SETTINGS_FILE = "settings.json"
UNREADABLE, NOT_A_CHECKPOINT, MISSING_KEYS = "unreadable", "not a checkpoint", "missing keys"
MAX_LISTED_KEYS = 6


class CheckpointError(InputError):
    """A checkpoint that cannot be used; the message names the file and the problem.

    Args:
        message: the problem, without the file (kept as ``message``).
        path: the file.
        problem: ``"unreadable"`` (damaged or not a torch file, or one that would run code),
            ``"not a checkpoint"`` (no dict of entries, or no weights where expected) or
            ``"missing keys"`` (a checkpoint without entries the caller needs).
        cause: for an unreadable file, ``"<exception type>: <first line of its message>"``.
        missing: for missing keys, the entries it lacks.
    """

    def __init__(self, message: str, path: str | Path, problem: str, cause: str = "", missing: Sequence[str] = ()) -> None:
        self.problem = problem
        self.message = message
        self.cause = cause
        self.missing = list(missing)
        super().__init__(message, path)


def _listing(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    return shown + (f", ... ({len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else "")


def read_checkpoint(path: str | Path, required: Sequence[str] = (), what: str = "checkpoint",
                    mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint file with ``torch.load(..., weights_only=True)`` and check its entries.

    Args:
        path: the ``.pt``/``.pth`` file.
        required: entries it must hold (e.g. ``["generator", "trainer"]``).
        what: what the file is, for the messages (``"checkpoint"``, ``"the Inception weights"``).
        mmap: map the file instead of reading it (tensors are read when used: cheap for a look at small entries).

    Returns:
        The checkpoint: a dict of entries (a saver's dict, or a bare state dict).

    Raises:
        CheckpointError: ``<file>: <what> file not found``; ``<file>: cannot read <what> (<type>: <detail>)``
            for a damaged file or one that would unpickle code; ``<file>: not a <what>: expected a dict of
            entries, found <type>``; ``<file>: <what> lacks <keys>``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{what} file not found", path, UNREADABLE, cause="not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - torch raises many types for corrupt, foreign or malicious files
        lines = str(err).strip().splitlines()
        cause = type(err).__name__ + (f": {lines[0][:200]}" if lines else "")
        raise CheckpointError(f"cannot read {what} ({cause})", path, UNREADABLE, cause=cause) from err
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"not a {what}: expected a dict of entries, found {type(checkpoint).__name__}", path, NOT_A_CHECKPOINT
        )
    missing = [key for key in required if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{what} lacks {', '.join(missing)}", path, MISSING_KEYS, missing=missing)
    return dict(checkpoint)


def state_dict_of(checkpoint: Mapping[str, Any], keys: Sequence[str], source: str | Path, what: str) -> Mapping[str, Any]:
    """A network's weights in a checkpoint: the first of ``keys`` that holds a dict, or the checkpoint itself
    when it is a bare state dict (every entry a tensor).

    Args:
        checkpoint: as returned by :func:`read_checkpoint` (or a dict loaded otherwise).
        keys: entries that may hold the weights, in order (``["generator"]``, ``["network", "model"]``).
        source: the file (or ``"<state dict>"``), for the message.
        what: the network, for the message (``"generator"``).

    Returns:
        The state dict.

    Raises:
        CheckpointError: ``<source>: not a <what> checkpoint: expected a state dict or one under 'generator',
            found <its keys>``.
    """
    for key in keys:
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    under = " or ".join(repr(k) for k in keys)
    raise CheckpointError(
        f"not a {what} checkpoint: expected a state dict or one under {under}, found {_listing([str(k) for k in checkpoint])}",
        source,
        NOT_A_CHECKPOINT,
    )


def trained_iterations(path: str | Path) -> int | None:
    """The training iterations a checkpoint holds (its ``trainer`` entry), or ``None`` when it cannot tell.

    Reads the file memory-mapped, so the weights are not loaded.
    """
    try:
        return int(read_checkpoint(path, ["trainer"], mmap=True)["trainer"]["iteration"])
    except (CheckpointError, TypeError, KeyError, ValueError):  # damaged or hand-made files: no progress to read
        return None


def checkpoint_candidates(checkpoint_dir: str | Path) -> list[Path]:
    """Resumable checkpoints of a stage, furthest trained first.

    Ordered by the training iterations each holds, so a run folder copied without its
    modification times (``cp -r``) still resumes from its last checkpoint, not from an
    earlier ``checkpoint_iteration=N.pt``; files whose progress cannot be read (damaged,
    or saved without a ``trainer`` entry) come first, newest first by modification time,
    so that :func:`load_latest_checkpoint` reports them before falling back.

    Args:
        checkpoint_dir: the stage folder.

    Returns:
        Its ``checkpoint_epoch=N.pt`` and ``checkpoint_iteration=N.pt`` files (none when the folder is absent).
    """
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("*.pt") if CHECKPOINT_PATTERN.search(p.name)]

    def progress(path: Path) -> tuple[float, int, str]:
        iterations = trained_iterations(path)
        return (math.inf if iterations is None else iterations, path.stat().st_mtime_ns, path.name)

    return sorted(found, key=progress, reverse=True)


def load_latest_checkpoint(checkpoint_dir: str | Path, required: Sequence[str] = ()) -> tuple[Path, dict] | None:
    """Load the newest readable checkpoint of a stage.

    A truncated or unreadable file, or one without the ``required`` entries, is
    reported (``WARNING <file>: unreadable checkpoint (...); trying the previous one``)
    and skipped, and the previous good one is used.

    Args:
        checkpoint_dir: folder of the stage's checkpoints.
        required: keys the checkpoint must hold.

    Returns:
        ``(path, checkpoint)`` or ``None`` when there is no readable checkpoint.
    """
    for path in checkpoint_candidates(checkpoint_dir):
        try:
            return path, read_checkpoint(path, required)
        except CheckpointError as err:
            problem = f"unreadable checkpoint ({err.cause})" if err.problem == UNREADABLE else err.message
            logger.warning(f"{path}: {problem}; trying the previous one")
    return None


def read_stage_settings(stage_dir: str | Path) -> dict[str, Any] | None:
    """The network settings recorded in a stage folder (``settings.json``), or ``None`` when there are none.

    Args:
        stage_dir: the stage folder.

    Returns:
        The recorded ``key -> value`` settings, or ``None`` without a record.

    Raises:
        InputError: the file exists but is not a JSON object.
    """
    path = Path(stage_dir) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the stage's settings ({err}); delete it to accept this run's", path) from None
    if not isinstance(recorded, dict):
        raise InputError("is not a JSON object of settings; delete it to accept this run's", path)
    return recorded
