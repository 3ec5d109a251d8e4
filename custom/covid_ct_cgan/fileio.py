"""Safe file writing: temporary name, then rename; never replace without permission.

Every file or folder the product writes goes through these helpers, so a
crash or a bad input never leaves a half-written result behind, and existing
user data is only replaced with an explicit ``overwrite``.

- Results get the usual permissions (``0666`` / ``0777`` less the umask, as
  ``open`` and ``mkdir`` give), not the private ``0600`` / ``0700`` of a
  temporary file.
- A file written without ``overwrite`` is published with a hard link, so it
  can never replace a file that another process wrote in the meantime.
- A staged folder holds a lock (:func:`covid_ct_cgan.locking.sibling_lock`) while
  it is built, so two runs cannot build the same output at once; leftovers of
  a run that was killed are cleaned up (or, if the kill came between moving the
  old folder away and the new one in, the old folder is put back).
- A folder that cannot be written (read-only, no permission, disk or quota
  full) raises :class:`InputError` naming it, not an ``OSError`` from deep
  inside a writer; :func:`check_writable` checks it before any work starts.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .errors import InputError

logger = logging.getLogger(__name__)

# errors of the place written to (not of the data): reported as InputError naming the path
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def current_umask() -> int:
    """The process's umask (read without changing it where the system allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (briefly)
    os.umask(mask)
    return mask


def _normal_mode(path: Path, folder: bool) -> None:
    """Give a ``mkstemp`` / ``mkdtemp`` result the permissions ``open`` / ``mkdir`` would have given."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


class WriteError(InputError):
    """The place written to refused the write (read-only, no permission, disk or quota full)."""


def is_write_error(err: BaseException) -> bool:
    """Whether ``err`` is an error of the place written to (:data:`WRITE_ERRNOS`), not of the data."""
    return isinstance(err, WriteError) or (isinstance(err, OSError) and err.errno in WRITE_ERRNOS)


def _write_error(err: OSError, path: Path) -> WriteError | None:
    """A WriteError naming ``path`` for an error of the place written to, else None."""
    if err.errno not in WRITE_ERRNOS:
        return None
    return WriteError(f"cannot write here ({os.strerror(err.errno)}); {write_hint(err.errno)}", path)


def write_hint(code: int | None) -> str:
    """What to do when a folder refused a write with ``errno`` ``code``: free space, or check permissions."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free some space or choose another folder"
    return "check the folder's permissions or choose another folder"


def as_write_error(err: OSError, fallback: str | Path) -> WriteError:
    """A write error of any writer (a library's too) as a :class:`WriteError` naming its file, else ``fallback``."""
    if isinstance(err, WriteError):
        return err
    return _write_error(err, Path(err.filename if err.filename else fallback))  # type: ignore[return-value]


@contextlib.contextmanager
def _reported_write_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        converted = _write_error(err, path)
        if converted is None:
            raise
        raise converted from None


def check_writable(folder: str | Path, min_free_bytes: int = 0) -> int:
    """Check, before any work, that results can be written into ``folder``.

    ``folder`` need not exist yet: its nearest existing parent is checked (the
    folder is not created). A temporary file is created and removed there, so
    a read-only mount, missing permission or full quota shows up even for root.

    Args:
        folder: where a run will write.
        min_free_bytes: space the run needs at least.

    Returns:
        The free bytes there.

    Raises:
        InputError: naming the folder: a file is in the way, it cannot be
            written, or it has less than ``min_free_bytes`` free.
    """
    target = Path(folder).expanduser()
    existing = target
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot create this folder: {existing} is a file, not a folder", target)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_test.", suffix=".tmp", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        where = "" if existing == target else f" (checked {existing}, where it would be created)"
        raise WriteError(f"cannot write here{where}: {reason}; check its permissions or choose another folder",
                         target) from None
    free = shutil.disk_usage(existing).free
    if free < int(min_free_bytes):
        raise InputError(
            f"only {format_bytes(free)} free, the run needs at least {format_bytes(int(min_free_bytes))}; "
            "free some space or choose another folder",
            target,
        )
    return free


def format_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` to ``path``; without ``overwrite`` never replace a file that appeared meanwhile."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if path exists: no check-then-replace race
    except FileExistsError:
        raise InputError("already exists (written by another process meanwhile); pass --overwrite True to replace it", path) from None
    except OSError:  # no hard links on this file system
        if path.exists():
            raise InputError("already exists; pass --overwrite True to replace it", path) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = False, keep_suffix: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    The temporary file keeps the real suffix (``.nii.gz`` etc.) at its end so
    writers that look at the extension work (``keep_suffix=False``: it ends in
    ``.tmp``, so that a search for ``*.pt`` never finds a half-written checkpoint).
    The result has normal permissions (``0666`` less the umask). On any failure,
    the temporary file is removed; one left by a killed process is removed by
    :func:`remove_stale_temporaries`.

    Raises:
        InputError: ``path`` exists and ``overwrite`` is false, or the folder
            cannot be written (read-only, no permission, disk or quota full).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError("already exists; pass --overwrite True to replace it", path)
    with _reported_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(path.suffixes) if keep_suffix else ""
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
    tmp = Path(name)
    try:
        with _reported_write_errors(path):
            _normal_mode(tmp, folder=False)
            yield tmp
            _publish(tmp, path, overwrite)
    finally:
        if tmp.exists():
            tmp.unlink()


# temporary files: of atomic_path (".<name>.<8 random>.tmp[<suffixes>]") and of Ignite's atomic DiskSaver ("tmp<8 random>")
_STALE_FILE = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)*|tmp[a-z0-9_]{8}")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files that a killed or failed writer left in ``folder`` and its subfolders.

    Call it only while no other process writes there (e.g. with the folder's
    :func:`covid_ct_cgan.locking.output_lock` held).

    Returns:
        The files removed (their number is logged: a log shows a temporary name as its final one,
        see :class:`covid_ct_cgan.logs.FinalPaths`).
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and _STALE_FILE.fullmatch(path.name):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    if removed:
        logger.info(f"removed {len(removed)} temporary file(s) left in {root} by an interrupted or failed run")
    return removed


def write_json(obj: Any, path: str | Path, overwrite: bool = False) -> Path:
    """Write JSON atomically (indented, UTF-8)."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    return Path(path)


def write_text(text: str, path: str | Path, overwrite: bool = False) -> Path:
    """Write a text file atomically."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path, overwrite: bool = False) -> Path:
    """Write a 2D or 3D array as NIfTI with the given 4x4 affine, atomically.

    The array's dtype is kept (use int16 for HU, uint8 for labels and 8-bit
    images); the header's spacing follows the affine.
    """
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(np.asarray(array).dtype)
    with atomic_path(path, overwrite) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def _staging_pattern(final_dir: Path) -> re.Pattern:
    return re.compile(rf"\.{re.escape(final_dir.name)}\.[A-Za-z0-9_]{{8}}\.(tmp|old)")


def _clean_stale_staging(final_dir: Path) -> None:
    """Remove what a killed run of :func:`staged_directory` left next to ``final_dir`` (call with its lock held).

    A ``.old`` folder whose ``content`` is the only copy of ``final_dir`` (the run
    died between moving the old folder away and the new one in) is moved back.
    """
    pattern = _staging_pattern(final_dir)
    leftovers = sorted(p for p in final_dir.parent.iterdir() if p.is_dir() and pattern.fullmatch(p.name))
    for folder in leftovers:
        if folder.name.endswith(".old") and (folder / "content").is_dir() and not final_dir.exists():
            os.replace(folder / "content", final_dir)
            logger.warning(f"{final_dir}: restored the previous folder, which an interrupted run had moved away")
        shutil.rmtree(folder, ignore_errors=True)
        logger.info(f"removed {folder}, left by an interrupted run")


@contextlib.contextmanager
def _named_as_final(tmp: Path, final_dir: Path) -> Iterator[None]:
    """Errors about files in the hidden staging folder name them where the user will look: in ``final_dir``."""
    try:
        yield
    except InputError as err:
        if err.path is None or not (err.path == str(tmp) or err.path.startswith(f"{tmp}{os.sep}")):
            raise
        message = str(err)[len(err.path) + 2 :]
        raise InputError(message, final_dir / Path(err.path).relative_to(tmp)) from None


@contextlib.contextmanager
def staged_directory(final_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a whole output folder under a temporary name, then move it into place.

    On any error the temporary folder is removed and ``final_dir`` is left as
    it was. With ``overwrite`` an existing non-empty ``final_dir`` is replaced
    only after the new one is complete. While the folder is built, the lock
    ``<parent>/.<name>.lock`` is held, so a second run for the same folder is
    refused; temporary folders left by a killed run are removed first.

    Raises:
        InputError: ``final_dir`` exists, is not empty, and ``overwrite`` is
            false; another run is building it; its parent cannot be written.
    """
    from .locking import sibling_lock

    final_dir = Path(final_dir)
    if final_dir.exists() and not final_dir.is_dir():
        raise InputError("exists and is not a folder", final_dir)
    with _reported_write_errors(final_dir.parent):
        final_dir.parent.mkdir(parents=True, exist_ok=True)
    with sibling_lock(final_dir):
        _clean_stale_staging(final_dir)
        if final_dir.exists() and any(final_dir.iterdir()) and not overwrite:
            raise InputError("already exists and is not empty; pass --overwrite True to replace it", final_dir)
        with _reported_write_errors(final_dir.parent):
            tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))
        try:
            with _reported_write_errors(final_dir), _named_as_final(tmp, final_dir):
                _normal_mode(tmp, folder=True)
                yield tmp
                if final_dir.exists() and any(final_dir.iterdir()) and not overwrite:  # appeared meanwhile
                    raise InputError("was filled by something else while this run built it; nothing replaced", final_dir)
                if final_dir.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".old", dir=final_dir.parent))
                    os.replace(final_dir, old / "content")
                    os.replace(tmp, final_dir)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(tmp, final_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
