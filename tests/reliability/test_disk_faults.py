"""A read-only or full disk under a training run: one ``ERROR:`` line naming the file and what to do, exit 2,
no temporary file left, and a resume that goes on from the last complete checkpoint.

The faults are simulated in the process: the checkpoint writer (``torch.save`` of a training checkpoint)
raises ``OSError(ENOSPC)`` / ``OSError(EROFS)`` after writing part of its bytes, and a read-only
``output_dir`` refuses the probe file of :func:`covid_ct_cgan.fileio.check_writable`. (By hand, on a
small ``tmpfs`` as ``output_dir`` filled once the first checkpoint exists, the same line is printed:
bundle/docs/reliability.md.) Where the machine lets an unprivileged user mount (``unshare --user
--map-root-user --mount``: a private mount namespace that ends with the process), ``prepare`` also
runs on a real ``tmpfs``, too small for the prepared slices, and on a read-only one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from covid_ct_cgan.errors import entry_point
from covid_ct_cgan.settings import run_bundle

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_YAML = str(REPO_ROOT / "bundle" / "configs" / "train.yaml")
TINY = {
    "image_size": 32, "epochs": 2, "batch_size": 2, "ngf": 8, "n_downsampling": 1, "n_blocks_global": 1,
    "n_blocks_local": 1, "ndf": 8, "n_layers_d": 2, "sample_count": 1, "phantom_patients": 3, "phantom_slices": 4,
    "phantom_size": 64, "amp": False, "checkpoint_every": 100,
}
TEMPORARY = re.compile(r"^(tmp[a-z0-9_]{8}|\..+\.[a-z0-9_]{8}\.tmp(\..+)?)$")


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("ERROR")]


def _tracebacks(text: str) -> int:
    """Tracebacks in ``text``, less those of a log handler whose stream an earlier test's capsys closed."""
    return text.count("Traceback") - text.count("--- Logging error ---\nTraceback")


def _temporaries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if TEMPORARY.match(p.name))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work folder with the tiny phantom prepared."""
    from covid_ct_cgan.data.prepare import prepare_if_needed

    root = tmp_path_factory.mktemp("disk_faults")
    prepare_if_needed("", str(root / "data"), phantom_dir=str(root / "phantom_raw"), phantom_size=TINY["phantom_size"],
                      phantom_patients=TINY["phantom_patients"], phantom_slices=TINY["phantom_slices"], seed=0)
    return root


@pytest.mark.integration
def test_read_only_output_dir_is_one_line_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    read_only = tmp_path / "mounted_read_only"
    read_only.mkdir()
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if str(kwargs.get("dir", "")).startswith(str(read_only)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as stop:
        run_bundle("training", config_file=TRAIN_YAML, **TINY, work_dir=str(work), output_dir=str(read_only / "out"))
    assert stop.value.code == 2
    assert _errors(capsys.readouterr().err) == [
        f"ERROR: {read_only / 'out'}: cannot write here (checked {read_only}, where it would be created): "
        "Read-only file system; check its permissions or choose another folder"
    ]
    assert not work.exists()  # refused before the data was prepared
    assert not any(read_only.iterdir())


@pytest.mark.integration
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_disk_refusing_the_first_checkpoint_is_one_line_and_leaves_no_temporary(
    prepared: Path, tmp_path: Path, monkeypatch, capsys, code: int
) -> None:
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - torch.save's signature
        if isinstance(obj, dict) and "trainer" in obj:
            calls["n"] += 1
            with open(f, "wb") as handle:  # part of the bytes reach the disk, then it is full
                handle.write(b"\0" * 1024)
            raise OSError(code, os.strerror(code))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    output = tmp_path / "output"
    overrides = {**TINY, "work_dir": str(prepared), "output_dir": str(output)}
    with pytest.raises(SystemExit) as stop:
        run_bundle("train_global", config_file=TRAIN_YAML, **overrides)
    assert stop.value.code == 2 and calls["n"] == 1
    err = capsys.readouterr().err
    assert _tracebacks(err) == 0
    [line] = _errors(err)
    stage = output / "global"
    assert line.startswith(f"ERROR: {stage / 'checkpoint_epoch=1.pt'}: cannot write here ({os.strerror(code)}); ")
    assert "then resume with: " in line and "no checkpoint was written yet" in line
    assert _temporaries(output) == []
    assert not list(stage.glob("checkpoint_*.pt"))  # nothing partial

    # a temporary file that a killed writer left is removed when the stage starts again; the resume ends the stage
    monkeypatch.setattr(torch, "save", real_save)
    (stage / "tmpab12cd34").write_bytes(b"")
    (stage / ".checkpoint_epoch=1.pt.ab12cd34.tmp").write_bytes(b"\0" * 10)
    run_bundle("train_global", config_file=TRAIN_YAML, **overrides)
    assert _temporaries(output) == []
    assert sorted(p.name for p in stage.glob("checkpoint_*.pt")) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]


def test_stale_temporaries_only_are_removed(tmp_path: Path) -> None:
    from covid_ct_cgan.fileio import remove_stale_temporaries

    keep = ["checkpoint_epoch=1.pt", "tmp_notes.txt", ".hidden", "samples/latest.png", ".x.tmp"]
    stale = ["tmpab12cd34", ".checkpoint_epoch=2.pt.ab12cd34.tmp", "samples/.latest.png.z9y8x7w6.tmp.png"]
    for name in keep + stale:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert sorted(str(p.relative_to(tmp_path)) for p in remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all((tmp_path / name).exists() for name in keep)


@contextlib.contextmanager
def _read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``folder`` as on a read-only mount: a temporary file or folder created in it fails with ``EROFS``."""
    real = {name: getattr(tempfile, name) for name in ("mkstemp", "mkdtemp")}

    def refusing(name: str):
        def create(*args, **kwargs):
            if str(kwargs.get("dir", "")).startswith(str(folder)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return real[name](*args, **kwargs)
        return create

    with monkeypatch.context() as patch:
        for name in real:
            patch.setattr(tempfile, name, refusing(name))
        yield


def _one_error(capsys: pytest.CaptureFixture) -> str:
    [line] = _errors(capsys.readouterr().err)
    return line


def test_prepare_refuses_a_read_only_data_dir_before_reading_the_raw_files(
    prepared: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from covid_ct_cgan.data import prepare

    read = []
    monkeypatch.setattr(prepare, "hash_raw_files", lambda *a, **k: read.append("hash"))
    monkeypatch.setattr(prepare, "find_cases", lambda *a, **k: read.append("cases"))
    with _read_only(tmp_path, monkeypatch), pytest.raises(SystemExit) as stop:
        entry_point(prepare.run_prepare, str(prepared / "phantom_raw"), str(tmp_path / "data"))
    assert stop.value.code == 2 and read == []
    assert _one_error(capsys) == (f"ERROR: {tmp_path / 'data'}: cannot write here (checked {tmp_path}, where it would be "
                                  "created): Read-only file system; check its permissions or choose another folder")
    assert list(tmp_path.iterdir()) == []


def test_image_quality_refuses_a_read_only_output_before_the_fid_features_train(
    prepared: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from covid_ct_cgan.evaluation.fid_features import FIDFeatures
    from covid_ct_cgan.evaluation.image_quality import evaluate_image_quality

    trained = []
    monkeypatch.setattr(FIDFeatures, "extractor", lambda *a, **k: trained.append("FID features"))
    with _read_only(tmp_path, monkeypatch), pytest.raises(SystemExit) as stop:
        entry_point(evaluate_image_quality, [], prepared / "data" / "datalist.json", tmp_path / "evaluation",
                    mean_lung_baseline=True)
    assert stop.value.code == 2 and trained == []
    assert _one_error(capsys).startswith(f"ERROR: {tmp_path / 'evaluation'}: cannot write here (checked {tmp_path}, ")


@pytest.mark.parametrize("fault", ["read_only", "no_segmentation_config"])
def test_ablation_study_refuses_before_the_ablations_train(
    prepared: Path, tmp_path: Path, monkeypatch, capsys, fault: str
) -> None:
    from covid_ct_cgan.evaluation import ablation

    trained = []
    monkeypatch.setattr(ablation, "train_ablation", lambda *a, **k: trained.append(a))
    configs = REPO_ROOT / "bundle" / "configs"
    out = tmp_path / "out" / "evaluation"
    segmentation = configs / ("segmentation.yaml" if fault == "read_only" else "nope.yaml")
    study = ablation.AblationStudy(out, prepared / "data" / "datalist.json", ablations=["ours"], config_dir=configs,
                                   segmentation_config=segmentation)
    with _read_only(tmp_path / "out", monkeypatch) if fault == "read_only" else contextlib.nullcontext():
        (tmp_path / "out").mkdir()
        with pytest.raises(SystemExit) as stop:
            entry_point(study.run)
    assert stop.value.code == 2 and trained == []
    line = _one_error(capsys)
    if fault == "read_only":
        assert line.startswith(f"ERROR: {out}: cannot write here (checked {tmp_path / 'out'}, ")
    else:
        assert line == f"ERROR: {segmentation}: segmentation config not found; set segmentation_config"


def test_synthesis_refuses_a_read_only_output_before_reading_its_inputs(
    prepared: Path, tmp_path: Path, monkeypatch, capsys, kit, generator_checkpoint: Path
) -> None:
    from covid_ct_cgan.inference import SynthesisDataset, run_synthesis

    expensive: list[str] = []
    monkeypatch.setattr(SynthesisDataset, "prepare", lambda *a, **k: expensive.append("inputs read"))
    generator = kit.make_generator()
    generator.register_forward_hook(lambda *a: expensive.append("synthesis"))
    with _read_only(tmp_path, monkeypatch), pytest.raises(SystemExit) as stop:
        entry_point(run_synthesis, generator, checkpoint=generator_checkpoint, output_dir=tmp_path / "synthesis",
                      input=prepared / "data" / "datalist.json", image_size=kit.IMAGE_SIZE)
    assert stop.value.code == 2 and expensive == []
    assert _one_error(capsys).startswith(f"ERROR: {tmp_path / 'synthesis'}: cannot write here (checked {tmp_path}, ")
    assert list(tmp_path.iterdir()) == []


# run in a private mount namespace: mount a tmpfs on argv[1] (options argv[2]), then prepare argv[3] into it and
# list what is left there (the namespace, and with it the tmpfs, ends with the process)
IN_TMPFS = """
import json, sys
from pathlib import Path
from covid_ct_cgan.data.prepare import run_prepare
from covid_ct_cgan.errors import entry_point
mnt = Path(sys.argv[1])
try:
    entry_point(run_prepare, sys.argv[2], str(mnt / "data"))
finally:
    print(json.dumps(sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*"))), flush=True)
"""


def _prepare_in_tmpfs(mount_point: Path, options: str, raw: Path) -> subprocess.CompletedProcess:
    mount = 'mount -t tmpfs -o "$1" tmpfs "$0" || exit 97; shift; exec "$@"'
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount, str(mount_point), options,
           sys.executable, "-c", IN_TMPFS, str(mount_point), str(raw)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("fault", ["full", "read_only"])
def test_prepare_on_a_real_tmpfs_that_is_too_small_or_read_only(prepared: Path, tmp_path: Path, fault: str) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a tmpfs in a private mount namespace")
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    size = sum(p.stat().st_size for p in (prepared / "data").rglob("*") if p.is_file())
    options = f"size={size // 2}" + (",ro" if fault == "read_only" else "")  # half the prepared slices fit
    done = _prepare_in_tmpfs(mount_point, options, prepared / "phantom_raw")
    if done.returncode == 97 or "unshare:" in done.stderr:
        pytest.skip(f"this machine does not let a user mount a tmpfs: {done.stderr.strip()[-200:]}")
    assert done.returncode == 2, done.stderr[-2000:]
    [line] = _errors(done.stderr)
    data = mount_point / "data"
    if fault == "full":
        assert re.fullmatch(rf"ERROR: {re.escape(str(data))}/\S+: cannot write here \(No space left on device\); "
                            "free some space or choose another folder", line), line
    else:
        assert line == (f"ERROR: {data}: cannot write here (checked {mount_point}, where it would be created): "
                        "Read-only file system; check its permissions or choose another folder")
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []  # nothing partial, no temporary, no lock
    assert _tracebacks(done.stderr) == 0
