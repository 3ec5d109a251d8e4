"""Faults of the place written to and of prepared data, drawn by the fuzz tests beside damaged input.

A fault is plain data (so hypothesis can print it):

- ``("read_only",)``: the output's folder is on a read-only mount: every attempt to create a file or a
  folder there (``os.open`` for writing, ``os.mkdir``; ``tempfile`` and ``pathlib`` go through them, so
  :func:`covid_ct_cgan.fileio.check_writable`, the lock files of :mod:`covid_ct_cgan.locking` and the
  temporaries of :func:`covid_ct_cgan.fileio.atomic_path` all meet it) fails with ``OSError(EROFS)``;
- ``("disk_full", n)``: the disk fills up during the ``n``-th file written through
  :func:`covid_ct_cgan.fileio.atomic_path`, the one path every writer of the package takes: half of that
  file's bytes reach the disk, then ``OSError(ENOSPC)`` (a run that writes fewer files completes);
- ``("damaged_prepared", which, seed, how)``: once a preparation succeeded, one file of the prepared
  folder (``which``: a slice of ``images/`` or ``labels/``, drawn with ``seed``, or one of the files
  ``prepare`` writes beside them) is cut short, has a byte changed, is replaced by random bytes or is
  deleted (``how``); then a run that reads the folder starts.

:class:`DiskFault` puts a write fault in place for the duration of a ``with`` block and records where
it fired; :func:`damage_prepared` applies the third kind; :func:`snapshot` and :func:`temporaries`
tell whether a failed run left the previous state intact.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from hypothesis import strategies as st

from covid_ct_cgan import fileio

DAMAGES = ("cut", "byte", "garbage", "delete")
PREPARED = ("images", "labels", "datalist.json", "raw_files.json", "prepared_files.json", "summary.json", "summary.md")
# what an error about the place written to tells the user to do, beside "or choose another folder"
HINTS = {errno.EROFS: "permissions", errno.ENOSPC: "free some space"}
# what the package's writers leave while they write: atomic_path's ".<name>.<8>.tmp[...]", staged_directory's
# ".<folder>.<8>.tmp" / ".old", the lock files ".<name>.lock" and check_writable's probe ".write_test.<8>.tmp"
TEMPORARY = re.compile(r"^\..+\.([A-Za-z0-9_]{8}\.(tmp|old)(\..+)?|lock)$")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def faults(max_write: int = 20) -> st.SearchStrategy:
    """No fault (``None``, drawn as often as the three faults together) or one fault."""
    one = st.one_of(
        st.just(("read_only",)),
        st.tuples(st.just("disk_full"), st.integers(1, max_write)),
        st.tuples(st.just("damaged_prepared"), st.sampled_from(PREPARED), st.integers(0, 2**16), st.sampled_from(DAMAGES)),
    )
    return st.one_of(st.none(), one)


class DiskFault:
    """A ``read_only`` or ``disk_full`` fault under ``root`` while the ``with`` block runs (other faults: no-op).

    Attributes:
        fired: the path whose write failed (the final name for ``disk_full``; the file or folder whose
            creation was refused for ``read_only``), None while nothing failed.
        code: the ``errno`` raised.
    """

    def __init__(self, fault: tuple | None, root: Path) -> None:
        self.kind = fault[0] if fault else None
        self.at = int(fault[1]) if self.kind == "disk_full" else 0
        self.code = errno.EROFS if self.kind == "read_only" else errno.ENOSPC
        self.root = root.resolve()
        self.fired: Path | None = None
        self.writes = 0
        self._undo = contextlib.ExitStack()

    def _under_root(self, path: Any) -> bool:
        try:
            return Path(os.fsdecode(path)).resolve().is_relative_to(self.root)
        except (TypeError, ValueError):  # a file descriptor or an odd argument: not a path under root
            return False

    def _refuse(self, path: Any) -> None:
        self.fired = self.fired or Path(os.fsdecode(path))
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def __enter__(self) -> DiskFault:
        if self.kind == "read_only":
            real_open, real_mkdir = os.open, os.mkdir

            def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
                exclusive_on_existing = flags & os.O_EXCL and os.path.lexists(path)  # EEXIST comes first
                if flags & _WRITE_FLAGS and self._under_root(path) and not exclusive_on_existing:
                    self._refuse(path)
                return real_open(path, flags, *args, **kwargs)

            def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
                if self._under_root(path) and not os.path.lexists(path):  # an existing folder: EEXIST, as the kernel says
                    self._refuse(path)
                real_mkdir(path, *args, **kwargs)

            self._patch(os, "open", open_)
            self._patch(os, "mkdir", mkdir)
        elif self.kind == "disk_full":
            real_atomic_path = fileio.atomic_path

            @contextlib.contextmanager
            def atomic_path(path: str | Path, *args: Any, **kwargs: Any) -> Iterator[Path]:
                with real_atomic_path(path, *args, **kwargs) as tmp:
                    yield tmp  # the writer writes its file ...
                    self.writes += 1
                    if self.writes == self.at:  # ... and the disk was full half-way through
                        size = tmp.stat().st_size if tmp.is_file() else 0
                        with open(tmp, "r+b") if tmp.is_file() else contextlib.nullcontext() as handle:
                            if handle is not None:
                                handle.truncate(size // 2)
                        self.fired = Path(path)
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

            self._patch(fileio, "atomic_path", atomic_path)
        return self

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        original = getattr(owner, name)
        setattr(owner, name, value)
        self._undo.callback(setattr, owner, name, original)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._undo.close()


def damage_file(victim: Path, how: str, rng: random.Random) -> None:
    """Damage ``victim`` as ``how`` says: ``cut`` short, one ``byte`` changed (same size), replaced by ``garbage``,
    or (anything else) deleted."""
    data = victim.read_bytes()
    if how == "cut":
        victim.write_bytes(data[: rng.randrange(len(data))])
    elif how == "byte":  # same size, one byte changed
        i = rng.randrange(len(data))
        victim.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    elif how == "garbage":
        victim.write_bytes(rng.randbytes(rng.randrange(1, 400)))
    else:
        victim.unlink()


def damage_prepared(data_dir: Path, which: str, seed: int, how: str) -> Path:
    """Damage one file of a prepared ``data_dir`` (``which``, see :func:`faults`) as ``how`` says; returns it."""
    rng = random.Random(seed)
    victim = rng.choice(sorted((data_dir / which).iterdir())) if (data_dir / which).is_dir() else data_dir / which
    damage_file(victim, how, rng)
    return victim


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (empty when it does not exist)."""
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list[str]:
    """Temporary files and folders of the package's writers under ``folder``."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if TEMPORARY.match(p.name))
