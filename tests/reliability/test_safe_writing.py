"""Safe writing: normal permissions, no clobbering, read-only and full locations fail clearly before work is lost."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest

from covid_ct_cgan import fileio
from covid_ct_cgan.errors import InputError
from covid_ct_cgan.fileio import atomic_path, check_writable, current_umask, staged_directory, write_json, write_nifti


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_results_get_normal_permissions_under_the_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        write_json({"a": 1}, tmp_path / "a.json")
        write_nifti(np.zeros((4, 4), np.uint8), np.eye(4), tmp_path / "b.nii.gz")
        with staged_directory(tmp_path / "out") as stage:
            write_json({}, stage / "inner.json")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.json") == mode(tmp_path / "b.nii.gz") == 0o666 & ~mask  # not mkstemp's 0600
    assert mode(tmp_path / "out") == 0o777 & ~mask  # not mkdtemp's 0700
    assert mode(tmp_path / "out" / "inner.json") == 0o666 & ~mask


def test_a_file_written_meanwhile_is_never_replaced_without_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    with pytest.raises(InputError, match=f"^{target}: already exists \\(written by another process meanwhile\\)"):
        with atomic_path(target) as tmp:
            tmp.write_text("ours")
            target.write_text("theirs")  # another process finished first
    assert target.read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]  # no temporary left


def test_disk_full_while_writing_is_one_clear_error_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    import nibabel as nib

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(nib, "save", full)
    target = tmp_path / "x.nii.gz"
    with pytest.raises(InputError) as err:
        write_nifti(np.zeros((4, 4), np.int16), np.eye(4), target)
    assert str(err.value) == f"{target}: cannot write here (No space left on device); free some space or choose another folder"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match=f"^{tmp_path / 'out' / 'x.nii.gz'}: cannot write here \\(No space left on device\\)"):
        with staged_directory(tmp_path / "out") as stage:
            (stage / "done.txt").write_text("first file")
            write_nifti(np.zeros((4, 4), np.int16), np.eye(4), stage / "x.nii.gz")
    assert list(tmp_path.iterdir()) == []  # no partial folder, no temporary, no lock file


def test_read_only_location_is_refused_by_every_writer(tmp_path: Path, monkeypatch) -> None:
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(InputError, match=f"^{tmp_path / 'a.json'}: cannot write here \\(Read-only file system\\)"):
        write_json({}, tmp_path / "a.json")
    with pytest.raises(InputError, match=f"^{tmp_path}: cannot write here \\(Read-only file system\\)"):
        with staged_directory(tmp_path / "out"):
            pass
    with pytest.raises(InputError, match=f"^{tmp_path / 'new' / 'deeper'}: cannot write here \\(checked {tmp_path}"):
        check_writable(tmp_path / "new" / "deeper")
    assert list(tmp_path.iterdir()) == []


def _refuses_locked_folder(locked: Path) -> None:
    with pytest.raises(InputError, match="Permission denied"):
        check_writable(locked)
    with pytest.raises(InputError, match="Permission denied"):
        write_json({}, locked / "a.json")


def test_folder_without_write_permission_is_refused() -> None:
    """A folder the user may not write to is refused; as root (who may write anywhere) the check runs as ``nobody``."""
    base = Path(tempfile.mkdtemp())
    locked = base / "locked"
    locked.mkdir()
    base.chmod(0o755)  # reachable by the unprivileged user
    locked.chmod(0o555)
    report = base / "child_error.txt"  # written by the unprivileged child when its check fails
    report.write_text("")
    report.chmod(0o666)
    try:
        if os.geteuid() != 0:
            _refuses_locked_folder(locked)
            return
        pid = os.fork()
        if pid == 0:  # the child drops root, runs the check and reports by its exit status
            status = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                _refuses_locked_folder(locked)
                status = 0
            except BaseException as err:  # noqa: BLE001 - reported to the parent
                report.write_text(repr(err))
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, f"as nobody: {report.read_text()}"
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)
        shutil.rmtree(base)


def test_check_writable_space_and_obstacles(tmp_path: Path) -> None:
    free = check_writable(tmp_path / "not" / "yet")
    assert free > 0 and not (tmp_path / "not").exists()  # checked, not created
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
    with pytest.raises(InputError) as err:
        check_writable(tmp_path, min_free_bytes=free * 1000 + 2**50)
    assert str(err.value).startswith(f"{tmp_path}: only ") and "the run needs at least" in str(err.value)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match=f"^{blocker / 'sub'}: cannot create this folder: {blocker} is a file"):
        check_writable(blocker / "sub")


def test_other_os_errors_are_not_disguised(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):  # a bug in a writer stays a bug, with its traceback
        with atomic_path(tmp_path / "a.txt"):
            raise RuntimeError("writer bug")
    with pytest.raises(OSError) as err:
        with atomic_path(tmp_path / "b.txt"):
            raise OSError(errno.EIO, "I/O error")
    assert not isinstance(err.value, InputError)
    assert fileio.WRITE_ERRNOS >= {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}
    assert list(tmp_path.iterdir()) == []
