"""One run per output folder: the lock refuses a second run, names the holder, and dies with its process."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from covid_ct_cgan import locking
from covid_ct_cgan.errors import InputError
from covid_ct_cgan.fileio import staged_directory
from covid_ct_cgan.locking import LOCK_NAME, OutputLock, output_lock, read_holder, sibling_lock

HOLDER = (
    "import sys, time\n"
    "from covid_ct_cgan.locking import OutputLock\n"
    "lock = OutputLock(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None).acquire()\n"
    "print('locked', flush=True)\n"
    "time.sleep(120)\n"
)


def hold_in_child(folder: Path, lock_file: Path | None = None) -> subprocess.Popen:
    """Another process holding the lock of ``folder`` (until killed)."""
    args = [sys.executable, "-c", HOLDER, str(folder)] + ([str(lock_file)] if lock_file else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_lock_in_the_same_process_is_refused_and_released_on_exit(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    with output_lock(folder) as lock:
        assert lock.held and (folder / LOCK_NAME).is_file()
        assert read_holder(folder / LOCK_NAME)["pid"] == os.getpid()
        with pytest.raises(InputError) as err:
            OutputLock(folder).acquire()
        message = str(err.value)
        assert message.startswith(f"{folder}: is in use by another run (pid {os.getpid()}")
        assert "\n" not in message
    assert not lock.held and not (folder / LOCK_NAME).exists()  # nothing left behind
    with output_lock(folder):  # free again
        pass


@pytest.mark.integration
def test_other_process_holds_then_dies_and_its_lock_is_taken_over(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    proc = hold_in_child(folder)
    try:
        with pytest.raises(InputError, match=rf"in use by another run \(pid {proc.pid} on "):
            OutputLock(folder).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    assert read_holder(folder / LOCK_NAME)["pid"] == proc.pid  # the dead run's lock file is still there
    with OutputLock(folder) as lock:  # ... and is taken over, not waited on
        assert lock.previous_holder["pid"] == proc.pid
        assert read_holder(folder / LOCK_NAME)["pid"] == os.getpid()


@pytest.mark.integration
def test_staged_output_is_refused_while_another_run_builds_it(tmp_path: Path) -> None:
    final = tmp_path / "data"
    proc = hold_in_child(final, sibling_lock(final).path)
    try:
        with pytest.raises(InputError, match=rf"^{final}: is in use by another run \(pid {proc.pid}"):
            with staged_directory(final) as stage:
                (stage / "x").write_text("never")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    assert not final.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data.lock"]  # the dead holder's lock file only
    with staged_directory(final) as stage:
        (stage / "x").write_text("done")
    assert (final / "x").read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_prepare_and_synthesis_refuse_an_output_being_built(tmp_path: Path, kit, generator_checkpoint: Path) -> None:
    from covid_ct_cgan.data.prepare import prepare_dataset
    from covid_ct_cgan.inference import run_synthesis

    raw = tmp_path / "raw"
    for p in (1, 2, 3):
        hu, lung, codes = kit.ct_volume(1, 24, seed=p)
        kit.save_nifti(hu, raw / "rp_im" / f"{p}.nii.gz")
        kit.save_nifti(codes, raw / "rp_msk" / f"{p}.nii.gz")
    with sibling_lock(tmp_path / "data"):
        with pytest.raises(InputError, match="is in use by another run"):
            prepare_dataset(str(raw), str(tmp_path / "data"))
    hu, lung, codes = kit.ct_slice()
    image = kit.save_nifti(hu, tmp_path / "in" / "a.nii.gz")
    label = kit.save_nifti(kit.label_map(lung, codes), tmp_path / "in" / "a_label.nii.gz")
    with sibling_lock(tmp_path / "synth"):
        with pytest.raises(InputError, match="is in use by another run"):
            run_synthesis(kit.make_generator(), checkpoint=generator_checkpoint, output_dir=tmp_path / "synth",
                                      image=image, label=label, image_size=kit.IMAGE_SIZE)
    assert not (tmp_path / "data").exists() and not (tmp_path / "synth").exists()


@pytest.mark.integration
def test_pid_file_fallback_without_flock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locking.fcntl, "flock", no_flock)
    folder = tmp_path / "out"
    with OutputLock(folder):
        with pytest.raises(InputError, match=rf"pid {os.getpid()}"):
            OutputLock(folder).acquire()
    assert not (folder / LOCK_NAME).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    with OutputLock(folder) as lock:  # the dead pid's lock file is taken over
        assert lock.previous_holder["pid"] == dead.pid


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC])
def test_a_lock_file_the_folder_refuses_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """Found by the prepare fuzz test: on a read-only folder the lock file is the first write, and its error gave the
    reason only; it now says what to do, as every error of the place written to does (``fileio.write_hint``)."""
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(code, os.strerror(code), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    hint = {errno.EROFS: "check the folder's permissions", errno.ENOSPC: "free some space"}[code]
    for lock, named in ((OutputLock(tmp_path), tmp_path), (sibling_lock(tmp_path / "data"), tmp_path / "data")):
        with pytest.raises(InputError) as err:
            lock.acquire()
        assert str(err.value) == (f"{named}: cannot create the lock file {lock.path.name} ({os.strerror(code)}); "
                                  f"{hint} or choose another folder")
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_a_killed_staged_run_are_cleaned_and_a_moved_away_folder_restored(tmp_path: Path) -> None:
    final = tmp_path / "out"
    stale_tmp = tmp_path / ".out.abcd1234.tmp"
    (stale_tmp / "half").mkdir(parents=True)  # a run killed while building
    stale_old = tmp_path / ".out.efgh5678.old"
    (stale_old / "content").mkdir(parents=True)  # a run killed between moving out/ away and the new one in
    (stale_old / "content" / "results.csv").write_text("previous results")
    unrelated = tmp_path / ".outside.abcd1234.tmp"
    unrelated.mkdir()
    with pytest.raises(InputError, match="already exists and is not empty"):
        with staged_directory(final):
            pass
    assert (final / "results.csv").read_text() == "previous results"  # put back, not deleted
    assert not stale_tmp.exists() and not stale_old.exists() and unrelated.is_dir()
