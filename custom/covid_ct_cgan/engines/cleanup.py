"""A failed stage leaves no empty output folders behind.

Building a stage's handlers already creates folders: MONAI's
``TensorBoardStatsHandler`` opens a ``SummaryWriter``, which creates
``<stage_dir>/tensorboard`` and writes an event file holding only its header.
When the stage then stops before it has trained anything (a missing
hand-over checkpoint, a refused resume, an interrupted start), those folders
would hold nothing and suggest that the stage ran. :func:`removing_empty_outputs`
removes, on failure, only what the failed attempt itself created and left
without content: new TensorBoard event files with no event after the header,
then new folders that are empty. Anything that existed before, and anything
with content (checkpoints, samples, logged values), is kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

EVENT_FILE_MARK = "tfevents"


def event_records(path: str | Path) -> int:
    """Number of records in a TensorBoard event file (TFRecord framing: length, CRC, data, CRC).

    Args:
        path: an ``events.out.tfevents.*`` file.

    Returns:
        The number of complete records (a freshly opened writer's file holds one: its header).
    """
    count = 0
    with open(path, "rb") as handle:
        while True:
            head = handle.read(12)
            if len(head) < 12:
                return count
            (length,) = struct.unpack("<Q", head[:8])
            handle.seek(length + 4, os.SEEK_CUR)
            count += 1


def _is_empty_event_file(path: Path) -> bool:
    if EVENT_FILE_MARK not in path.name or not path.is_file():
        return False
    try:
        return event_records(path) <= 1
    except OSError:
        return False


@contextlib.contextmanager
def removing_empty_outputs(folder: str | Path | None) -> Iterator[None]:
    """On any failure inside the block, remove what it created under ``folder`` and left without content.

    Removed: TensorBoard event files that are new and hold only their header,
    then new folders that are empty (``folder`` itself and the folders above
    it that the block created included). Kept: everything that existed
    before, and every other file. On success nothing is touched.

    Args:
        folder: the output folder of the block (e.g. a stage folder); None: do nothing.
    """
    if folder is None:
        yield
        return
    root = Path(folder).expanduser().absolute()
    created_above: list[Path] = []
    existing = root
    while not existing.exists() and existing.parent != existing:
        created_above.append(existing)
        existing = existing.parent
    before = {p for p in root.rglob("*")} if root.is_dir() else set()
    try:
        yield
    except BaseException:
        if root.is_dir():
            new = sorted((p for p in root.rglob("*") if p not in before), key=lambda p: len(p.parts), reverse=True)
            for path in new:  # deepest first: files, then the folders they leave empty
                with contextlib.suppress(OSError):
                    if _is_empty_event_file(path):
                        path.unlink()
                    elif path.is_dir() and not any(path.iterdir()):
                        path.rmdir()
        for path in created_above:  # the folder itself first (if the block created it), then the ones above
            with contextlib.suppress(OSError):  # not empty: kept
                path.rmdir()
                logger.debug(f"removed {path}: created by the failed run and left empty")
        raise
