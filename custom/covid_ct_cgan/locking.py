"""One run per output folder: an exclusive lock file that dies with its process.

Two runs writing checkpoints, samples or a staged output into the same folder
would overwrite each other's files. :class:`OutputLock` takes an exclusive
``flock`` on ``<folder>/.lock`` and writes the holder's pid, host and start
time into it; a second run is refused with one :class:`InputError` naming the
folder and the holder. The kernel releases the lock when its process dies (a
crash or ``kill -9`` included), so a lock file left behind by a dead run is
taken over silently, never waited on. On file systems without ``flock`` the
lock falls back to an exclusive-create pid file, taken over when its pid is no
longer running on this host.

Typical use::

    with OutputLock(output_dir):
        ...  # write into output_dir
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import InputError
from .fileio import WRITE_ERRNOS, write_hint

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_NO_FLOCK_ERRNOS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: pid-file fallback only
    fcntl = None  # type: ignore[assignment]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _cannot_create(err: OSError, what: str, path: Path) -> InputError:
    """``what`` failed with ``err``: the reason, and what to do when the folder refused the write."""
    hint = f"; {write_hint(err.errno)}" if err.errno in WRITE_ERRNOS else ""
    return InputError(f"{what} ({err.strerror}){hint}", path)


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "holder unknown"
    parts = [f"pid {holder.get('pid', '?')}"]
    if holder.get("host"):
        parts.append(f"on {holder['host']}")
    if holder.get("started"):
        parts.append(f"since {holder['started']}")
    return " ".join(parts)


def read_holder(lock_path: str | Path) -> dict[str, Any] | None:
    """The ``pid``, ``host``, ``started`` and ``command`` recorded in a lock file, or None if unreadable."""
    try:
        data = json.loads(Path(lock_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class OutputLock:
    """Exclusive lock of an output folder for the lifetime of one run.

    Args:
        folder: the folder to lock (created if missing).
        lock_file: the lock file; default ``<folder>/.lock``.

    Raises:
        InputError: on :meth:`acquire` (or entering the ``with`` block) when another
            live run holds the lock; the message names the folder and the holder's pid.
    """

    def __init__(self, folder: str | Path, lock_file: str | Path | None = None) -> None:
        self.folder = Path(folder)
        self.path = Path(lock_file) if lock_file is not None else self.folder / LOCK_NAME
        self._fd: int | None = None
        self.previous_holder: dict[str, Any] | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> OutputLock:
        """Take the lock (never waits).

        Returns:
            ``self``.

        Raises:
            InputError: the folder is locked by another live run, or the lock file cannot be written.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this object")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _cannot_create(err, "cannot create the output folder", self.path.parent) from None
        if fcntl is None:
            self._acquire_pid_file()
        else:
            self._acquire_flock()
        return self

    def _refuse(self, holder: dict[str, Any] | None) -> None:
        raise InputError(
            f"is in use by another run ({_describe(holder)}, lock file {self.path.name}); "
            "wait for it to finish or choose another folder",
            self.folder,
        )

    def _acquire_flock(self) -> None:
        while True:
            try:
                try:
                    fd, created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), True
                except FileExistsError:
                    fd, created = os.open(self.path, os.O_RDWR), False
            except FileNotFoundError:  # removed by its holder between the two opens
                continue
            except OSError as err:
                raise _cannot_create(err, f"cannot create the lock file {self.path.name}", self.folder) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = read_holder(self.path)
                os.close(fd)
                self._refuse(holder)
            except OSError as err:
                os.close(fd)
                if err.errno in _NO_FLOCK_ERRNOS:  # e.g. some network file systems: exclusive-create pid file
                    if created:
                        self.path.unlink()
                    self._acquire_pid_file()
                    return
                raise
            # the previous holder may have removed the file between our open and flock: retry on the new one
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.previous_holder = read_holder(self.path)
        if self.previous_holder and self.previous_holder.get("pid") != os.getpid():
            logger.info(f"{self.folder}: took over the lock left by a run that ended ({_describe(self.previous_holder)})")
        self._fd = fd
        self._write_holder(fd)

    def _acquire_pid_file(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                holder = read_holder(self.path)
                pid = holder.get("pid") if holder else None
                same_host = holder is not None and holder.get("host") == socket.gethostname()
                if isinstance(pid, int) and same_host and not _pid_alive(pid):
                    self.previous_holder = holder
                    logger.info(f"{self.folder}: took over the stale lock of {_describe(holder)}")
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                self._refuse(holder)
            except OSError as err:
                raise _cannot_create(err, f"cannot create the lock file {self.path.name}", self.folder) from None
            self._fd = fd
            self._write_holder(fd)
            return
        self._refuse(read_holder(self.path))

    def _write_holder(self, fd: int) -> None:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(holder) + "\n").encode("utf-8"))

    def release(self) -> None:
        """Give the lock back and remove the lock file (no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    self.path.unlink()  # while still locked: a waiting opener re-checks the inode and retries
        finally:
            os.close(fd)  # releases the flock

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lock is released with its object, as with the process
        with contextlib.suppress(Exception):
            self.release()


def output_lock(folder: str | Path) -> OutputLock:
    """An :class:`OutputLock` on ``<folder>/.lock`` (use it in a ``with`` statement)."""
    return OutputLock(folder)


def sibling_lock(path: str | Path) -> OutputLock:
    """An :class:`OutputLock` for a file or folder that is replaced as a whole: ``<parent>/.<name>.lock``.

    Used by :func:`covid_ct_cgan.fileio.staged_directory`, whose folder is moved
    away and replaced, so its lock cannot live inside it.
    """
    path = Path(path)
    return OutputLock(path, lock_file=path.parent / f".{path.name}.lock")
