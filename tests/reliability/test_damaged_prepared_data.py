"""A prepared work folder is verified before it is trusted: a file damaged since preparation (cut short, a byte
changed, deleted) is named with what to do, exit 2, before any training; ``--overwrite True`` prepares it again."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from covid_ct_cgan.data.prepare import PREPARED_FILES, prepare_if_needed, verify_prepared_files
from covid_ct_cgan.errors import entry_point

PHANTOM = dict(phantom_patients=3, phantom_slices=4, phantom_size=64, seed=0)
FIX = "; prepare the data again with --overwrite True (or restore the file)"


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("ERROR")]


@pytest.fixture(scope="module")
def prepared_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    prepare_if_needed("", str(root / "data"), phantom_dir=str(root / "phantom_raw"), **PHANTOM)
    return root


@pytest.fixture
def work(prepared_once: Path, tmp_path: Path) -> Path:
    """A private copy of the prepared work folder (copied: times and sizes kept)."""
    shutil.copytree(prepared_once, tmp_path / "work")
    return tmp_path / "work"


def _prepare(work: Path, **extra) -> None:
    """``prepare_if_needed`` as train.yaml's ``prepare_if_needed`` calls it: bad input is one ERROR line, exit 2."""
    entry_point(prepare_if_needed, "", str(work / "data"), phantom_dir=str(work / "phantom_raw"), **PHANTOM, **extra)


def _damage(path: Path, how: str, rng: random.Random) -> None:
    data = path.read_bytes()
    if how == "cut":
        path.write_bytes(data[: rng.randrange(len(data))])
    elif how == "byte":  # same size, one byte changed
        i = rng.randrange(len(data))
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    else:
        path.unlink()


def test_an_intact_prepared_folder_is_used(work: Path, capsys) -> None:
    assert (work / "data" / PREPARED_FILES).is_file() and verify_prepared_files(work / "data") is None
    _prepare(work)
    assert "prepared data found" in capsys.readouterr().out


@pytest.mark.parametrize("seed", range(6))
def test_a_damaged_prepared_file_is_named_before_it_is_used(work: Path, capsys, seed: int) -> None:
    rng = random.Random(seed)
    data = work / "data"
    candidates = sorted(p for p in data.rglob("*.nii.gz"))
    victim = rng.choice(candidates)
    how = ["cut", "byte", "delete"][seed % 3]
    _damage(victim, how, rng)
    with pytest.raises(SystemExit) as stop:
        _prepare(work)
    assert stop.value.code == 2
    [line] = _errors(capsys.readouterr().err)
    assert line.startswith(f"ERROR: {victim}: ") and line.endswith(FIX)
    assert {"cut": "damaged: ", "byte": "damaged: its contents differ", "delete": "missing"}[how] in line
    # the fix it gives works: prepared again, then verified
    _prepare(work, overwrite=True)
    assert verify_prepared_files(data) is None


def test_a_damaged_record_is_named(work: Path, capsys) -> None:
    record = work / "data" / PREPARED_FILES
    record.write_text("{", encoding="utf-8")
    with pytest.raises(SystemExit):
        _prepare(work)
    [line] = _errors(capsys.readouterr().err)
    assert line == (f"ERROR: {record}: missing or unreadable, so the prepared files cannot be checked (prepared by an "
                    "older version?); prepare the data again with --overwrite True")


def test_training_on_damaged_data_stops_before_any_stage(work: Path, capsys) -> None:
    from covid_ct_cgan.settings import run_bundle

    victim = sorted((work / "data" / "labels").glob("*.nii.gz"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    train_yaml = str(Path(__file__).resolve().parents[2] / "bundle" / "configs" / "train.yaml")
    with pytest.raises(SystemExit) as stop:
        run_bundle("training", config_file=train_yaml, work_dir=str(work), image_size=32, ngf=8, n_downsampling=1,
                   n_blocks_global=1, n_blocks_local=1, ndf=8, n_layers_d=2, amp=False, phantom_patients=3,
                   phantom_slices=4, phantom_size=64)
    assert stop.value.code == 2
    assert _errors(capsys.readouterr().err) == [f"ERROR: {victim}: damaged: 100 bytes, {_recorded_size(work, victim)} "
                                                f"when it was prepared{FIX}"]
    assert not (work / "output").exists()


def _recorded_size(work: Path, path: Path) -> int:
    import json

    record = json.loads((work / "data" / PREPARED_FILES).read_text(encoding="utf-8"))
    return record[path.relative_to(work / "data").as_posix()]["size"]


def test_overwrite_with_other_data_retires_the_stages_trained_on_the_old(work: Path, capsys) -> None:
    from covid_ct_cgan.data.prepare import RETIRED_PREFIX

    output = work / "output"
    (output / "global").mkdir(parents=True)
    (output / "global" / "checkpoint_epoch=10.pt").write_bytes(b"weights of the old data")
    # the same data prepared again (a damaged file repaired): the stages stay
    (work / "data" / "images" / sorted(p.name for p in (work / "data" / "images").iterdir())[0]).unlink()
    _prepare(work, overwrite=True, output_dir=str(output))
    assert (output / "global" / "checkpoint_epoch=10.pt").is_file()
    # other data (one more patient): the stages trained on the old data are moved aside, named in one line
    prepare_if_needed("", str(work / "data"), phantom_dir=str(work / "phantom_raw"),
                      **{**PHANTOM, "phantom_patients": 4}, overwrite=True, output_dir=str(output))
    [retired] = list(output.glob(f"{RETIRED_PREFIX}*"))
    assert sorted(p.name for p in output.iterdir()) == [retired.name]
    assert (retired / "global" / "checkpoint_epoch=10.pt").read_bytes() == b"weights of the old data"
    assert f"{output}: moved global to {retired}: trained on the data prepared before" in capsys.readouterr().out


def test_train_yaml_hands_output_dir_to_prepare() -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(__file__).resolve().parents[2] / "bundle" / "configs" / "train.yaml"))
    assert parser["prepare_args"]["output_dir"] == "@output_dir"
