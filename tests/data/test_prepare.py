"""The preparation step: every layout, the splits, the outputs, and every bad input of issue item 7."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from covid_ct_cgan.data import prepare as prep
from covid_ct_cgan.data.phantom import PHANTOM_MARKER
from covid_ct_cgan.data.prepare import SPLITS, prepare_dataset, prepare_if_needed, run_prepare, split_items
from covid_ct_cgan.errors import InputError
from covid_ct_cgan.fileio import staged_directory, write_json


def load_datalist(data_dir):
    return json.loads((data_dir / "datalist.json").read_text())


def patients_by_split(datalist):
    return {name: {it["patient"] for it in datalist[name]} for name in SPLITS}


def assert_no_patient_in_two_splits(datalist):
    groups = list(patients_by_split(datalist).values())
    for i in range(len(groups)):
        for j in range(i + 1, len(groups)):
            assert not groups[i] & groups[j]


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tree(folder):
    """Every path under ``folder`` (files and folders, hidden ones included) with a file's bytes."""
    return {p.relative_to(folder): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


# --------------------------------------------------------------------------- layouts


def test_radiopaedia_patient_split_outputs(tmp_path, builders, capsys):
    raw = builders.write_radiopaedia(tmp_path / "raw", n_patients=4, nz=3, size=32)
    out = tmp_path / "data"
    summary = prepare_dataset(str(raw), str(out), validation_fraction=0.3)
    printed = capsys.readouterr().out
    assert "| training |" in printed and "test_segmentation" in printed
    datalist = load_datalist(out)
    assert sum(len(datalist[s]) for s in SPLITS) == 4 * 2  # slice 0 of each volume has no lesion: dropped
    assert all(datalist[s] for s in SPLITS)
    assert_no_patient_in_two_splits(datalist)
    props = datalist["properties"]
    assert props["scale"] == "hu" and props["layout"] == "radiopaedia" and props["num_classes"] == 4
    assert props["lung_masks_derived"] == 0 and props["split"] == "patient" and props["seed"] == 0

    item = datalist["training"][0]
    assert set(item) >= {"image", "label", "patient", "slice", "scale"}
    image = nib.load(str(out / item["image"]))
    label = nib.load(str(out / item["label"]))
    assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
    assert image.shape == (32, 32) == label.shape
    np.testing.assert_allclose(image.affine[:3, :3], np.diag([-0.7, -0.7, 2.5]))
    np.testing.assert_allclose(image.affine[2, 3], 2.5 * item["slice"])
    hu, lung, codes = builders.synthetic_volume(3, 32, seed=10 * int(item["patient"]))
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), hu[:, :, item["slice"]])
    expected = np.where(lung[:, :, item["slice"]] > 0, 1, 0)
    expected[codes[:, :, item["slice"]] == 1] = 2
    expected[codes[:, :, item["slice"]] == 2] = 3
    np.testing.assert_array_equal(np.asanyarray(label.dataobj), expected)

    for key in SPLITS:  # a MONAI datalist: paths relative to the file
        for entry in load_decathlon_datalist(str(out / "datalist.json"), data_list_key=key):
            assert entry["image"].startswith(str(out)) and (out / entry["label"]).is_file()
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["splits"]["training"]["slices"] == len(datalist["training"])
    fractions = saved["splits"]["training"]["class_fractions"]
    assert set(fractions) == {"outside_lung", "lung", "ggo", "consolidation"}
    assert abs(sum(fractions.values()) - 1.0) < 1e-9 and fractions["ggo"] > 0
    assert "| training |" in (out / "summary.md").read_text()


def test_keep_effusion_and_include_healthy(tmp_path, builders):
    raw = builders.write_radiopaedia(tmp_path / "raw", n_patients=3, nz=3, size=24)
    path = raw / "rp_msk" / "1.nii.gz"
    codes = np.asanyarray(nib.load(str(path)).dataobj).copy()
    codes[codes == 2] = 3  # effusion
    builders.save_nifti(codes, path)
    out = tmp_path / "data"
    prepare_dataset(str(raw), str(out), split="paper", keep_effusion=True, include_healthy=True)
    datalist = load_datalist(out)
    assert sum(len(datalist[s]) for s in SPLITS) == 9  # healthy slices kept
    assert datalist["properties"]["num_classes"] == 5
    values = set()
    for s in SPLITS:
        for it in datalist[s]:
            values |= set(np.unique(np.asanyarray(nib.load(str(out / it["label"])).dataobj)).tolist())
    assert 4 in values and values <= {0, 1, 2, 3, 4}


def test_medseg_volume(tmp_path, builders):
    raw = builders.write_medseg(tmp_path / "raw", nz=5, size=24)
    out = tmp_path / "data"
    summary = prepare_dataset(str(raw), str(out))
    datalist = load_datalist(out)
    names = sorted(it["patient"] for s in SPLITS for it in datalist[s])
    assert names == ["medseg_1", "medseg_2", "medseg_3", "medseg_4"]
    assert any("each slice is its own patient" in n for n in summary["notes"])


def test_slice_folders_binary_masks_derived_lungs_regex(tmp_path, builders):
    raw = builders.write_slices(tmp_path / "raw", ["p1_1", "p1_2", "p2_1", "p3_1", "p3_2"], binary255=True)
    out = tmp_path / "data"
    summary = prepare_dataset(str(raw), str(out), patient_regex=r"(p\d+)_\d+", validation_fraction=0.0)
    datalist = load_datalist(out)
    assert_no_patient_in_two_splits(datalist)
    assert {it["patient"] for s in SPLITS for it in datalist[s]} == {"p1", "p2", "p3"}
    assert summary["lung_masks_derived"] == 5 and "lung masks derived for 5 slices" in summary["notes"][0]
    assert any("0/255" in n for n in summary["notes"])
    item = datalist["training"][0]
    image = np.asanyarray(nib.load(str(out / item["image"])).dataobj)
    label = np.asanyarray(nib.load(str(out / item["label"])).dataobj)
    assert image.dtype == np.uint8 and item["scale"] == "8bit"
    assert set(np.unique(label).tolist()) == {0, 1, 2}  # binary infection -> GGO


def test_slice_folders_with_lung_masks(tmp_path, builders):
    raw = builders.write_slices(tmp_path / "raw", ["1", "2", "3"], lungs=True)
    summary = prepare_dataset(str(raw), str(tmp_path / "data"), split="paper")
    assert summary["lung_masks_derived"] == 0 and summary["slices_kept"] == 3


@pytest.mark.integration
def test_dicom_series(tmp_path, builders):
    raw = builders.write_dicom_dataset(tmp_path / "raw", names=("a", "b", "c"), nz=3, size=24)
    out = tmp_path / "data"
    summary = prepare_dataset(str(raw), str(out))
    datalist = load_datalist(out)
    assert summary["layout"] == "dicom" and summary["slices_kept"] == 6 and summary["lung_masks_derived"] == 6
    item = datalist["test_synthesis"][0]
    image = nib.load(str(out / item["image"]))
    np.testing.assert_allclose(np.diag(image.affine)[:2], [-0.7, -0.8])
    assert image.get_data_dtype() == np.int16


# --------------------------------------------------------------------------- splits


def test_split_items_patient_and_paper_are_deterministic():
    items = [{"image": f"images/{p}_{k:04d}", "patient": str(p)} for p in range(12) for k in range(p % 4 + 1)]
    first, _ = split_items(items, "patient", seed=3)
    again, _ = split_items(items, "patient", seed=3)
    assert first == again and all(first[s] for s in SPLITS)
    assert_no_patient_in_two_splits(first)
    paper, notes = split_items(items, "paper", seed=3)
    assert sum(len(paper[s]) for s in SPLITS) == len(items) and "patients appear in several splits" in notes[0]
    sizes = [len(paper["training"]) + len(paper["validation"]), len(paper["test_synthesis"])]
    sizes.append(len(paper["test_segmentation"]))
    assert sizes == [20, 5, 5]  # 30 slices at 300:73:73
    assert split_items(items, "paper", seed=4)[0] != paper


def test_split_single_training_patient_validation_from_slices():
    items = [{"image": f"a_{k}", "patient": "a"} for k in range(10)]
    items += [{"image": "b", "patient": "b"}, {"image": "c", "patient": "c"}]
    splits, notes = split_items(items, "patient", validation_fraction=0.2)
    assert {it["patient"] for it in splits["training"]} == {"a"} == {it["patient"] for it in splits["validation"]}
    assert len(splits["validation"]) == 2 and "share" in notes[0]


def test_split_argument_errors():
    items = [{"image": str(k), "patient": str(k)} for k in range(2)]
    with pytest.raises(InputError, match="needs at least 3 patients.*split=paper"):
        split_items(items, "patient")
    with pytest.raises(InputError, match="unknown split"):
        split_items(items, "random")
    with pytest.raises(InputError, match="split_ratios"):
        split_items(items, "paper", split_ratios=(1, 0, 1))
    with pytest.raises(InputError, match="at least 3 slices"):
        split_items(items, "paper")


@pytest.mark.integration
def test_real_medseg_slices_both_modes(tmp_path, medseg_slices_dir):
    runs = {}
    for mode in ("patient", "paper"):
        out = tmp_path / mode
        summary = prepare_dataset(str(medseg_slices_dir), str(out), split=mode)
        datalist = load_datalist(out)
        runs[mode] = datalist
        assert summary["slices_kept"] == 98 and summary["scale"] == "8bit"
        assert "lung masks derived for 98 slices (threshold + largest components)" in summary["notes"]
        assert all(datalist[s] for s in SPLITS)
        for it in datalist["training"][:5] + datalist["test_segmentation"][:5]:
            image = nib.load(str(out / it["image"]))
            label = np.asanyarray(nib.load(str(out / it["label"])).dataobj)
            assert image.get_data_dtype() == np.uint8
            assert set(np.unique(label).tolist()) <= {0, 1, 2, 3} and (label >= 2).any()
            assert 0.1 < (label >= 1).mean() < 0.85
    assert_no_patient_in_two_splits(runs["patient"])
    assert patients_by_split(runs["patient"]) != patients_by_split(runs["paper"])


def test_same_seed_same_files(tmp_path, builders):
    raw = builders.write_slices(tmp_path / "raw", [str(k) for k in range(8)], size=24)
    prepare_dataset(str(raw), str(tmp_path / "a"), seed=7)
    prepare_dataset(str(raw), str(tmp_path / "b"), seed=7)
    assert snapshot(tmp_path / "a" / "images") == snapshot(tmp_path / "b" / "images")
    a, b = load_datalist(tmp_path / "a"), load_datalist(tmp_path / "b")
    assert {s: a[s] for s in SPLITS} == {s: b[s] for s in SPLITS}


# --------------------------------------------------------------------------- bad input


def _corrupt(raw, builders):
    (raw / "rp_im" / "2.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    return raw / "rp_im" / "2.nii.gz", "cannot read"


def _shape(raw, builders):
    builders.save_nifti(np.zeros((24, 20, 2), np.uint8), raw / "rp_msk" / "2.nii.gz")
    return raw / "rp_msk" / "2.nii.gz", r"lesion mask shape \(24, 20, 2\) differs from image shape \(24, 24, 2\)"


def _labels(raw, builders):
    codes = np.zeros((24, 24, 2), np.uint8)
    codes[3:6, 3:6, 1] = 7
    builders.save_nifti(codes, raw / "rp_msk" / "2.nii.gz")
    return raw / "rp_msk" / "2.nii.gz", r"unknown label values \[7\]"


def _nan(raw, builders):
    image = np.asanyarray(nib.load(str(raw / "rp_im" / "3.nii.gz")).dataobj).astype(np.float32)
    image[1, 1, 1] = np.nan
    builders.save_nifti(image, raw / "rp_im" / "3.nii.gz")
    return raw / "rp_im" / "3.nii.gz", "non-finite"


def _no_infection(raw, builders):
    for p in (1, 2, 3):
        builders.save_nifti(np.zeros((24, 24, 2), np.uint8), raw / "rp_msk" / f"{p}.nii.gz")
    return raw, "no slice with infection"


def _empty_folder(raw, builders):
    for p in sorted(raw.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    return raw, "dataset_dir is empty"


def _missing(raw, builders):
    return raw / "nowhere", "dataset_dir does not exist"


def _too_few_patients(raw, builders):
    for p in ("2", "3"):
        for folder in ("rp_im", "rp_msk", "rp_lung_msk"):
            (raw / folder / f"{p}.nii.gz").unlink()
    return None, "split=patient needs at least 3 patients"


@pytest.mark.parametrize(
    "damage", [_corrupt, _shape, _labels, _nan, _no_infection, _empty_folder, _missing, _too_few_patients],
    ids=lambda f: f.__name__.strip("_"),
)
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_bad_input_names_file_and_writes_nothing(tmp_path, builders, damage, existing):
    raw = builders.write_radiopaedia(tmp_path / "raw", n_patients=3, nz=2, size=24)
    culprit, message = damage(raw, builders)
    dataset_dir = culprit if damage is _missing else raw
    out = tmp_path / "data"
    if existing:
        out.mkdir()
        (out / "keep.txt").write_text("user data")
    with pytest.raises(InputError, match=message) as err:
        prepare_dataset(str(dataset_dir), str(out), overwrite=existing)
    if culprit is not None:
        assert str(err.value).startswith(f"{culprit}: ")
    if existing:
        assert snapshot(out) == {out.joinpath("keep.txt").relative_to(out): b"user data"}
    else:
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_existing_data_dir_needs_overwrite(tmp_path, builders):
    raw = builders.write_radiopaedia(tmp_path / "raw", n_patients=3, nz=2, size=24)
    out = tmp_path / "data"
    prepare_dataset(str(raw), str(out))
    before = snapshot(out)
    with pytest.raises(InputError, match=f"{out}: already exists"):
        prepare_dataset(str(raw), str(out), seed=1)
    assert snapshot(out) == before
    prepare_dataset(str(raw), str(out), seed=1, overwrite=True)
    assert load_datalist(out)["properties"]["seed"] == 1


def test_data_dir_that_could_delete_data_refused(tmp_path, builders, monkeypatch):
    raw = builders.write_radiopaedia(tmp_path / "raw", n_patients=3, nz=2, size=24)
    with pytest.raises(InputError, match="outside dataset_dir"):
        prepare_dataset(str(raw), str(raw / "prepared"))
    with pytest.raises(InputError, match="outside dataset_dir"):
        prepare_dataset(str(raw), str(tmp_path), overwrite=True)
    assert (raw / "rp_im" / "1.nii.gz").is_file() and not (raw / "prepared").exists()
    with pytest.raises(InputError, match="no data_dir given"):
        prepare_dataset(str(raw), "", overwrite=True)
    (tmp_path / "work" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work" / "sub")
    with pytest.raises(InputError, match="current folder"):
        prepare_dataset(str(raw), str(tmp_path / "work"), overwrite=True)
    assert (tmp_path / "work" / "sub").is_dir()


@pytest.mark.integration
def test_run_prepare_exits_with_one_error_line(tmp_path):
    """As the configs call it (through entry_point): one ERROR line, status 2, nothing written."""
    code = (f"from covid_ct_cgan.data.prepare import run_prepare; from covid_ct_cgan.errors import entry_point; "
            f"entry_point(run_prepare, dataset_dir=r'{tmp_path / 'missing'}', data_dir=r'{tmp_path / 'data'}')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert errors == [f"ERROR: {tmp_path / 'missing'}: dataset_dir does not exist"]
    assert "Traceback" not in result.stderr and not (tmp_path / "data").exists()


# --------------------------------------------------------------------------- prepare_if_needed and the phantom


@pytest.fixture
def fake_phantom(monkeypatch, builders):
    """Stand-in for covid_ct_cgan.data.phantom (tested on its own): writes the Radiopaedia layout."""
    calls = []

    def generate_phantom_dataset(out_dir, num_patients, size, num_slices, seed, overwrite):
        calls.append((num_patients, size, num_slices, seed))
        with staged_directory(out_dir, overwrite=overwrite) as tmp:  # as the real generator: marker inside
            builders.write_radiopaedia(tmp, n_patients=num_patients, nz=num_slices, size=size)
            params = {"num_patients": num_patients, "size": size, "num_slices": num_slices, "seed": seed}
            write_json(params, tmp / PHANTOM_MARKER)
        return out_dir

    module = types.ModuleType("covid_ct_cgan.data.phantom")
    module.generate_phantom_dataset = generate_phantom_dataset
    monkeypatch.setitem(sys.modules, "covid_ct_cgan.data.phantom", module)
    return calls


def test_prepare_if_needed_phantom_then_reuse(tmp_path, fake_phantom, capsys):
    out = tmp_path / "work" / "data"
    kwargs = dict(phantom_patients=3, phantom_size=24, phantom_slices=2)
    first = prepare_if_needed("", str(out), **kwargs)
    assert (tmp_path / "work" / "phantom_raw" / "rp_im" / "1.nii.gz").is_file()
    assert first["layout"] == "radiopaedia" and fake_phantom == [(3, 24, 2, 0)]
    before = snapshot(out)
    capsys.readouterr()
    again = prepare_if_needed(None, str(out), **kwargs)
    assert f"prepared data found at {out}" in capsys.readouterr().out
    assert again == json.loads(json.dumps(first)) and snapshot(out) == before and len(fake_phantom) == 1
    with pytest.raises(InputError, match=r"other settings or data: data_seed was 0, now 5; pass --overwrite True"):
        prepare_if_needed("", str(out), seed=5, **kwargs)
    assert snapshot(out) == before and len(fake_phantom) == 1  # refused before the phantom was touched
    prepare_if_needed("", str(out), seed=5, overwrite=True, **kwargs)
    assert load_datalist(out)["properties"]["seed"] == 5 and fake_phantom[-1] == (3, 24, 2, 5)


def test_prepare_if_needed_notices_changed_raw_files(tmp_path, builders):
    raw = builders.write_radiopaedia(tmp_path / "raw", n_patients=3, nz=2, size=24)
    out = tmp_path / "data"
    prepare_if_needed(str(raw), str(out))
    builders.write_radiopaedia(tmp_path / "raw", n_patients=4, nz=2, size=24)  # 1-3 rewritten with the same bytes
    added = "3 added (rp_im/4.nii.gz, rp_lung_msk/4.nii.gz, rp_msk/4.nii.gz)"
    with pytest.raises(InputError) as err:
        prepare_if_needed(str(raw), str(out))
    assert str(err.value) == (
        f"{out}: holds data prepared with other settings or data: the raw files in dataset_dir differ from those "
        f"it was prepared from: {added}; pass --overwrite True to prepare it again"
    )


def test_run_prepare_phantom_dir_not_ours(tmp_path, fake_phantom):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "a.txt").write_text("x")
    with pytest.raises(InputError):
        run_prepare("", str(tmp_path / "data"), phantom_dir=str(foreign))
    assert fake_phantom == []


def test_real_phantom_prepares(tmp_path):
    summary = prep.run_prepare("", str(tmp_path / "data"), phantom_patients=5, phantom_size=64, phantom_slices=3)
    datalist = load_datalist(tmp_path / "data")
    assert summary["scale"] == "hu" and all(datalist[s] for s in SPLITS)
    assert_no_patient_in_two_splits(datalist)
    marker = json.loads((tmp_path / "phantom_raw" / PHANTOM_MARKER).read_text())
    assert marker == {"num_patients": 5, "size": 64, "num_slices": 3, "seed": 0}
    assert datalist["properties"]["settings"]["phantom_patients"] == 5


# --------------------------------------------------------------------------- a work folder that never traps you


def test_other_data_in_data_dir_refused_before_the_phantom(tmp_path, fake_phantom):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "notes.txt").write_text("someone else's data")
    before = tree(tmp_path)
    for call, message in (
        (lambda: prepare_if_needed("", str(work / "data")), "holds other files and no datalist.json; pass --overwrite True"),
        (lambda: run_prepare("", str(work / "data")), "already exists and is not empty; pass --overwrite True"),
    ):
        with pytest.raises(InputError) as err:
            call()
        assert str(err.value).startswith(f"{work / 'data'}: {message}")
        assert tree(tmp_path) == before and fake_phantom == []  # nothing generated, nothing written
    prepare_if_needed("", str(work / "data"), overwrite=True, phantom_patients=3, phantom_size=24, phantom_slices=2)
    assert load_datalist(work / "data")["properties"]["layout"] == "radiopaedia" and len(fake_phantom) == 1


def test_phantom_overrides_then_defaults_name_the_setting_and_overwrite_forwards(tmp_path, fake_phantom):
    out, phantom = tmp_path / "work" / "data", tmp_path / "work" / "phantom_raw"
    small = dict(phantom_size=24, phantom_slices=2)
    prepare_if_needed("", str(out), phantom_patients=4, **small)
    before = tree(tmp_path)
    with pytest.raises(InputError) as err:
        prepare_if_needed("", str(out), phantom_patients=3, **small)
    assert str(err.value) == (
        f"{out}: holds data prepared with other settings or data: phantom_patients was 4, now 3; "
        "pass --overwrite True to prepare it again"
    )
    assert tree(tmp_path) == before and fake_phantom == [(4, 24, 2, 0)]  # the phantom was not regenerated first
    prepare_if_needed("", str(out), phantom_patients=4, **small)  # back to the recorded settings: reused as is
    assert tree(tmp_path) == before and len(fake_phantom) == 1

    prepare_if_needed("", str(out), phantom_patients=3, overwrite=True, **small)
    assert fake_phantom[-1] == (3, 24, 2, 0) and json.loads((phantom / PHANTOM_MARKER).read_text())["num_patients"] == 3
    assert load_datalist(out)["properties"]["settings"]["phantom_patients"] == 3
    after = snapshot(out)
    prepare_if_needed("", str(out), phantom_patients=3, overwrite=True, **small)  # overwrite keeps matching data
    assert snapshot(out) == after and len(fake_phantom) == 2


def test_phantom_of_other_settings_needs_overwrite(tmp_path, fake_phantom):
    work = tmp_path / "work"
    run_prepare("", str(work / "data"), phantom_patients=4, phantom_size=24, phantom_slices=2)
    shutil.rmtree(work / "data")
    before = tree(tmp_path)
    with pytest.raises(InputError) as err:
        prepare_if_needed("", str(work / "data"), phantom_patients=3, phantom_size=24, phantom_slices=2)
    assert str(err.value) == (
        f"{work / 'phantom_raw'}: holds a phantom generated with other settings (phantom_patients was 4, now 3); "
        "pass --overwrite True to generate it again"
    )
    assert tree(tmp_path) == before and len(fake_phantom) == 1
    prepare_if_needed("", str(work / "data"), phantom_patients=3, phantom_size=24, phantom_slices=2, overwrite=True)
    assert fake_phantom[-1] == (3, 24, 2, 0) and (work / "data" / "datalist.json").is_file()


def test_copied_work_folder_and_touched_files_are_the_same_data(tmp_path, builders, fake_phantom):
    work = tmp_path / "work"
    prepare_if_needed("", str(work / "data"), phantom_patients=3, phantom_size=24, phantom_slices=2)
    copy = tmp_path / "copy"
    shutil.copytree(work, copy, copy_function=shutil.copy)  # as `cp -r`: new modification times
    assert (copy / "phantom_raw" / "rp_im" / "1.nii.gz").stat().st_mtime_ns != (
        work / "phantom_raw" / "rp_im" / "1.nii.gz").stat().st_mtime_ns
    before = tree(copy)
    prepare_if_needed("", str(copy / "data"), phantom_patients=3, phantom_size=24, phantom_slices=2)
    assert tree(copy) == before and len(fake_phantom) == 1

    raw = builders.write_radiopaedia(tmp_path / "raw", n_patients=3, nz=2, size=24)
    out = tmp_path / "data"
    prepare_if_needed(str(raw), str(out))
    moved = tmp_path / "moved_raw"
    shutil.copytree(raw, moved, copy_function=shutil.copy)
    for path in moved.rglob("*.nii.gz"):
        os.utime(path, ns=(1, 1))  # other times, same bytes
    before = tree(out)
    prepare_if_needed(str(moved), str(out))  # a moved dataset with the same contents is the same data
    assert tree(out) == before
    victim = moved / "rp_msk" / "2.nii.gz"
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF  # same size, other bytes
    victim.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"raw files in dataset_dir differ from those it was prepared from: "
                                         r"1 changed \(rp_msk/2.nii.gz\); pass --overwrite True"):
        prepare_if_needed(str(moved), str(out))
    assert tree(out) == before


def test_failed_runs_leave_no_empty_folders(tmp_path, builders, fake_phantom, monkeypatch):
    raw = builders.write_radiopaedia(tmp_path / "raw", n_patients=3, nz=2, size=24)
    (raw / "rp_im" / "2.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    before = tree(tmp_path)
    for call in (prepare_if_needed, prep.run_prepare):  # the prepare run id with a dataset folder too
        with pytest.raises(InputError, match="cannot read"):
            call(str(raw), str(tmp_path / "new_work" / "data"))
        assert tree(tmp_path) == before  # no empty work folder, no lock file

    def failing_generator(**kwargs):
        (kwargs["out_dir"].parent).mkdir(parents=True, exist_ok=True)  # it got as far as the work folder
        raise InputError("disk on fire", kwargs["out_dir"])

    monkeypatch.setattr(sys.modules["covid_ct_cgan.data.phantom"], "generate_phantom_dataset", failing_generator)
    for call in (prepare_if_needed, prep.run_prepare):
        with pytest.raises(InputError, match="disk on fire"):
            call("", str(tmp_path / "w2" / "data"), phantom_size=24, phantom_slices=2)
        assert tree(tmp_path) == before


# --------------------------------------------------------------------------- split: predefined


def _predefined_dataset(root, builders, train=("t1", "t2", "t3", "t4", "t5"), test=("s1", "s2", "s3")):
    builders.write_slices(root / "train", list(train), size=24)
    builders.write_slices(root / "test", list(test), size=24)
    return root


def test_predefined_split_keeps_train_and_test_apart(tmp_path, builders):
    raw = _predefined_dataset(tmp_path / "raw", builders)
    summaries = {}
    for seed in (0, 1):
        out = tmp_path / f"data{seed}"
        summaries[seed] = prepare_dataset(str(raw), str(out), split="predefined", validation_fraction=0.4, seed=seed)
        datalist = load_datalist(out)
        sources = {name: sorted(it["source"] for it in datalist[name]) for name in SPLITS}
        assert sources["test_synthesis"] == sources["test_segmentation"] == [f"test/images/s{k}.png" for k in (1, 2, 3)]
        learn = sources["training"] + sources["validation"]
        assert sorted(learn) == [f"train/images/t{k}.png" for k in range(1, 6)]
        assert len(sources["validation"]) == 2 and not set(sources["training"]) & set(sources["validation"])
        assert {it["subset"] for name in ("training", "validation") for it in datalist[name]} == {"train"}
        assert datalist["properties"]["split"] == "predefined"
        summaries[seed]["validation"] = sources["validation"]
    assert summaries[0]["validation"] != summaries[1]["validation"]  # carved with data_seed
    assert "test_synthesis and test_segmentation both hold the same 3 slices of test/" in summaries[0]["notes"][1]


def test_predefined_split_refused_without_train_and_test(tmp_path, builders, fake_phantom):
    flat = builders.write_slices(tmp_path / "flat", ["1", "2", "3"], size=24)
    volumes = builders.write_radiopaedia(tmp_path / "rp", n_patients=3, nz=2, size=24)
    extra = _predefined_dataset(tmp_path / "extra", builders)
    builders.write_slices(extra / "val", ["v1"], size=24)
    only_train = builders.write_slices(tmp_path / "only" / "train", ["1", "2"], size=24).parent
    wanted = r"split=predefined needs the dataset's own train/ \(with train/images and train/labels\) and test/"
    cases = [(flat, "not one images/ folder"), (volumes, "this is a radiopaedia dataset"),
             (extra, "and no other image folders; found test/, train/, val/"), (only_train, "found train/$")]
    for dataset, detail in cases:
        with pytest.raises(InputError, match=wanted + ".*" + detail) as err:
            prepare_dataset(str(dataset), str(tmp_path / "data"), split="predefined")
        assert str(err.value).startswith(f"{dataset}: ")
    with pytest.raises(InputError, match="split=predefined needs a dataset with its own train/ and test/ folders"):
        prepare_if_needed("", str(tmp_path / "work" / "data"), split="predefined")
    assert not (tmp_path / "data").exists() and not (tmp_path / "work").exists() and fake_phantom == []


@pytest.mark.integration
def test_predefined_split_real_medseg_test_slices_never_train(tmp_path, medseg_slices_dir):
    out = tmp_path / "data"
    summary = prepare_dataset(str(medseg_slices_dir), str(out), split="predefined")
    datalist = load_datalist(out)
    test_files = sorted(f"test/images/{p.name}" for p in (medseg_slices_dir / "test" / "images").iterdir())
    train_files = sorted(f"train/images/{p.name}" for p in (medseg_slices_dir / "train" / "images").iterdir())
    assert len(test_files) == 48 and len(train_files) == 50 and summary["slices_kept"] == 98
    for name in ("test_synthesis", "test_segmentation"):
        assert sorted(it["source"] for it in datalist[name]) == test_files
    learn = [it for name in ("training", "validation") for it in datalist[name]]
    assert sorted(it["source"] for it in learn) == train_files
    test_images = {it["image"] for it in datalist["test_segmentation"]}
    assert not test_images & {it["image"] for it in learn}  # no test slice trains a generator or a segmenter
    assert len(datalist["validation"]) == 5


@pytest.mark.integration
def test_train_yaml_forwards_patient_regex_and_overwrite(tmp_path, builders, repo_root):
    raw = builders.write_slices(tmp_path / "raw", ["p1_1", "p1_2", "p2_1", "p3_1"], size=24)
    work = tmp_path / "work"
    command = [sys.executable, "-m", "monai.bundle", "run", "prepare_if_needed",
               "--config_file", str(repo_root / "bundle" / "configs" / "train.yaml"),
               "--dataset_dir", str(raw), "--work_dir", str(work)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(command + ["--patient_regex", r"(p\d+)_\d+"], capture_output=True, text=True, env=env,
                           cwd=repo_root, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    datalist = load_datalist(work / "data")
    assert {it["patient"] for s in SPLITS for it in datalist[s]} == {"p1", "p2", "p3"}
    second = subprocess.run(command, capture_output=True, text=True, env=env, cwd=repo_root, timeout=300)
    errors = [line for line in second.stderr.splitlines() if line.startswith("ERROR")]
    assert second.returncode == 2 and errors == [
        f"ERROR: {work / 'data'}: holds data prepared with other settings or data: patient_regex was "
        "'(p\\\\d+)_\\\\d+', now unset; pass --overwrite True to prepare it again"
    ]
    third = subprocess.run(command + ["--overwrite", "True"], capture_output=True, text=True, env=env, cwd=repo_root,
                           timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert len({it["patient"] for s in SPLITS for it in load_datalist(work / "data")[s]}) == 4


def test_flags_given_as_words(tmp_path, builders):
    raw = builders.write_radiopaedia(tmp_path / "raw", n_patients=3, nz=2, size=24)
    out = tmp_path / "data"
    prepare_if_needed(str(raw), str(out), keep_effusion="false")
    assert load_datalist(out)["properties"]["keep_effusion"] is False
    with pytest.raises(InputError, match="data_seed was 0, now 1"):
        prepare_if_needed(str(raw), str(out), seed=1, overwrite="false")  # the word false is not a true value
    prepare_if_needed(str(raw), str(out), seed=1, overwrite="TRUE")
    assert load_datalist(out)["properties"]["seed"] == 1
    with pytest.raises(InputError, match=r"^overwrite must be true or false, got 'yes please'$"):
        prepare_if_needed(str(raw), str(out), seed=2, overwrite="yes please")
