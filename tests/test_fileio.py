"""fileio.py: atomic writes, no replacing without permission, staged folders."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from covid_ct_cgan.errors import InputError
from covid_ct_cgan.fileio import atomic_path, staged_directory, write_json, write_nifti


def test_atomic_path_refuses_existing_and_cleans_up_on_error(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("user data")
    with pytest.raises(InputError, match="already exists"):
        with atomic_path(target):
            pass
    with pytest.raises(RuntimeError):
        with atomic_path(target, overwrite=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_write_nifti_keeps_dtype_and_affine(tmp_path: Path) -> None:
    affine = np.diag([-0.7, -0.7, 2.5, 1.0])
    path = write_nifti(np.arange(12, dtype=np.int16).reshape(3, 4), affine, tmp_path / "x.nii.gz")
    img = nib.load(path)
    assert img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.affine, affine)
    assert np.array_equal(np.asanyarray(img.dataobj), np.arange(12).reshape(3, 4))


def test_staged_directory_replaces_only_when_complete(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with staged_directory(final) as tmp:
        write_json({"v": 1}, tmp / "a.json")
    assert (final / "a.json").read_text().strip().endswith("}")
    with pytest.raises(InputError, match="not empty"):
        with staged_directory(final):
            pass
    with pytest.raises(RuntimeError):
        with staged_directory(final, overwrite=True) as tmp:
            write_json({"v": 2}, tmp / "a.json")
            raise RuntimeError("crash")
    assert '"v": 1' in (final / "a.json").read_text()
    with staged_directory(final, overwrite=True) as tmp:
        write_json({"v": 3}, tmp / "b.json")
    assert sorted(p.name for p in final.iterdir()) == ["b.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
