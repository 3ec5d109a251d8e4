"""A prepared work folder is verified before it is trusted: a file damaged since preparation (cut short, a byte
changed, deleted) is named with what to do, exit 2, before any training; ``--overwrite True`` prepares it again."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from covid_ct_cgan.data.prepare import PREPARED_FILES, prepare_if_needed, verify_prepared_files
from covid_ct_cgan.errors import entry_point
from fuzz_faults import damage_file

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
    damage_file(victim, how, rng)
    with pytest.raises(SystemExit) as stop:
        _prepare(work)
    assert stop.value.code == 2
    [line] = _errors(capsys.readouterr().err)
    assert line.startswith(f"ERROR: {victim}: ") and line.endswith(FIX)
    assert {"cut": "damaged: ", "byte": "damaged: its contents differ", "delete": "missing"}[how] in line
    # the fix it gives works: prepared again, then verified
    _prepare(work, overwrite=True)
    assert verify_prepared_files(data) is None


@pytest.mark.parametrize("name", ["datalist.json", "raw_files.json"])
def test_a_damaged_file_that_records_the_settings_is_named_not_read_as_other_settings(work: Path, capsys, name: str) -> None:
    """Found by the fuzz test: a cut-short ``datalist.json`` was reported as "holds data prepared with other
    settings" naming the folder; the recorded files are verified first, so it is named with the fix."""
    damaged = work / "data" / name
    damaged.write_bytes(damaged.read_bytes()[:50])
    with pytest.raises(SystemExit) as stop:
        _prepare(work)
    assert stop.value.code == 2
    [line] = _errors(capsys.readouterr().err)
    assert line.startswith(f"ERROR: {damaged}: damaged: 50 bytes, ") and line.endswith(FIX)


@pytest.mark.parametrize("damage", ["cut", "delete"])
def test_a_damaged_summary_is_no_error(work: Path, capsys, damage: str) -> None:
    """Found by the fuzz test: a damaged ``summary.json`` (written for people, not recorded) ended in a traceback."""
    summary = work / "data" / "summary.json"
    if damage == "cut":
        summary.write_bytes(b"\xf7" + summary.read_bytes()[:10])
    else:
        summary.unlink()
    result = prepare_if_needed("", str(work / "data"), phantom_dir=str(work / "phantom_raw"), **PHANTOM)
    assert "prepared data found" in capsys.readouterr().out
    assert result["num_classes"] == 4  # the datalist's properties stand in for the summary


def test_a_damaged_record_is_named(work: Path, capsys) -> None:
    record = work / "data" / PREPARED_FILES
    record.write_text("{", encoding="utf-8")
    with pytest.raises(SystemExit):
        _prepare(work)
    [line] = _errors(capsys.readouterr().err)
    assert line == (f"ERROR: {record}: missing or unreadable, so the prepared files cannot be checked (prepared by an "
                    "older version?); prepare the data again with --overwrite True")


@pytest.mark.integration
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


def _replace_a_test_label(data: Path) -> Path:
    """Overwrite the label map of the first ``test_synthesis`` slice with another slice's: a valid file, other content."""
    import json

    lists = json.loads((data / "datalist.json").read_text(encoding="utf-8"))
    victim, other = data / lists["test_synthesis"][0]["label"], data / lists["training"][0]["label"]
    assert victim.read_bytes() != other.read_bytes()
    victim.write_bytes(other.read_bytes())
    return victim


def test_runs_that_read_a_prepared_folder_verify_it_before_their_first_expensive_step(
    work: Path, tmp_path: Path, capsys, monkeypatch, kit, generator_checkpoint: Path
) -> None:
    """Synthesis, evaluation and segmentation read a prepared ``datalist.json`` without preparing it: a slice replaced
    since preparation by a valid file of other content is named before the generator runs, the FID features train or
    a slice is cached (before, each went on with the replaced slice)."""
    from monai.bundle import ConfigParser

    from covid_ct_cgan.data.cache import ProgressCacheDataset
    from covid_ct_cgan.evaluation.fid_features import FIDFeatures
    from covid_ct_cgan.evaluation.image_quality import evaluate_image_quality
    from covid_ct_cgan.evaluation.segmentation import run_experiments
    from covid_ct_cgan.inference import run_synthesis

    expensive: list[str] = []
    monkeypatch.setattr(FIDFeatures, "extractor", lambda *a, **k: expensive.append("FID features"))
    monkeypatch.setattr(ProgressCacheDataset, "_fill_cache", lambda *a, **k: expensive.append("caching"))
    generator = kit.make_generator()
    generator.register_forward_hook(lambda *a: expensive.append("synthesis"))
    datalist = work / "data" / "datalist.json"
    victim = _replace_a_test_label(work / "data")
    segmentation_yaml = Path(__file__).resolve().parents[2] / "bundle" / "configs" / "segmentation.yaml"
    runs = {
        "synthesis": lambda out: run_synthesis(generator, checkpoint=generator_checkpoint, output_dir=out, input=datalist,
                                               datalist_key="test_synthesis", image_size=kit.IMAGE_SIZE),
        "evaluation": lambda out: evaluate_image_quality([], datalist, out, mean_lung_baseline=True),
        "segmentation": lambda out: run_experiments(out, datalist, experiments=["A"], ratios=[0.0],
                                                    config=ConfigParser.load_config_files(str(segmentation_yaml))),
    }  # called through entry_point, as the configs call them
    for name, run in runs.items():
        out = tmp_path / f"out_{name}"
        with pytest.raises(SystemExit) as stop:
            entry_point(run, out)
        assert stop.value.code == 2, name
        [line] = _errors(capsys.readouterr().err)
        assert line.startswith(f"ERROR: {victim}: damaged: ") and line.endswith(FIX), (name, line)
        assert expensive == [], name
        assert not out.exists(), name
