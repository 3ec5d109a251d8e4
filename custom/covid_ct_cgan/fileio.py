"""Safe file writing: temporary name, then rename; never replace without permission.

Every file or folder the product writes goes through these helpers, so a
crash or a bad input never leaves a half-written result behind, and existing
user data is only replaced with an explicit ``overwrite``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .errors import InputError


def _tmp_sibling(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    The temporary file keeps the real suffix (``.nii.gz`` etc.) at its end so
    writers that look at the extension work.

    Raises:
        InputError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError("already exists; pass overwrite=true to replace it", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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


@contextlib.contextmanager
def staged_directory(final_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a whole output folder under a temporary name, then move it into place.

    On any error the temporary folder is removed and ``final_dir`` is left as
    it was. With ``overwrite`` an existing non-empty ``final_dir`` is replaced
    only after the new one is complete.

    Raises:
        InputError: ``final_dir`` exists, is not empty, and ``overwrite`` is false.
    """
    final_dir = Path(final_dir)
    if final_dir.exists() and any(final_dir.iterdir()) and not overwrite:
        raise InputError("already exists and is not empty; pass overwrite=true to replace it", final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))
    try:
        yield tmp
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
