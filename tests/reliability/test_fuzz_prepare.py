"""Fuzzing the preparation readers: every damaged dataset gives a correct result or one clear error naming the file.

Each example builds a valid tiny dataset in one of the raw layouts (Radiopaedia
NIfTI volumes, PNG slice folders, NIfTI slice folders, DICOM series), applies up
to two mutations from :mod:`fuzz_inputs` (truncated or random bytes, other
dtypes, shapes, NaN/inf, label values, missing partners, empty folders, stray
files) and runs ``prepare_dataset``. The outcome must be either

- a complete ``data_dir`` whose datalist items are readable, finite, of the
  label classes 0..3, or
- one :class:`InputError` whose message names the damaged file (a damaged byte
  stream: that file or its DICOM series; a changed array or a missing file:
  that file or its partner), with no ``data_dir`` and no temporary left.

Never another exception type, never a partial output, and no allowance: every
example must follow these rules.

Beside the damaged input, each example draws a fault from :mod:`fuzz_faults`
(or none): the output folder on a read-only mount, the disk full during a drawn
file's write, or a file of the prepared folder damaged after a successful
preparation and before a run that reads it (``prepare_if_needed``, the first step
of every training run id). Half of the examples start with a previous
``data_dir`` that the run may replace (``overwrite``). Every run goes through the
entry point of its run id (``entry_point(run_prepare)``, ``entry_point(prepare_if_needed)``), so what
is checked is what the user sees: exit status 2 and exactly one line on stderr,
``ERROR: <path>: <problem>; <what to do>``, naming the file or folder the fault
hit; the previous ``data_dir`` byte for byte as it was (none: none left) and no
temporary file, staging folder or lock anywhere.

The regression tests below pin the reader behaviours the fuzzer once found
broken (a damaged NIfTI read by a fallback reader, a damaged DICOM slice skipped
while its mask was blamed, a NaN float TIFF ending in a raw traceback). What it
found under the faults is pinned beside the code it concerns: a damaged
``datalist.json`` or ``raw_files.json`` reported as other settings and a damaged
``summary.json`` ending in a traceback (``test_damaged_prepared_data.py``), a
read-only folder's lock file reported without what to do (``test_locking.py``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fuzz_faults import HINTS, DiskFault, damage_prepared, faults, snapshot, temporaries
from fuzz_inputs import apply, common_verdict, mentions, mutations, names_damaged
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from covid_ct_cgan.data.prepare import PREPARED_FILES, prepare_dataset, prepare_if_needed, run_prepare
from covid_ct_cgan.errors import InputError, entry_point

LAYOUTS = ("radiopaedia", "slices_png", "slices_png_no_lungs", "slices_nifti", "dicom")
MAX_EXAMPLES = 120
PHASES = (Phase.explicit, Phase.generate)  # no shrinking: a failure prints its (small) example as drawn
# errors about the dataset as a whole (after mutations removed lesions or slices): no single file to name
DATASET_LEVEL = re.compile(r"needs at least \d+ (slices|patients)|no slice with infection|no image files|dataset layout; looked for")


def build(layout: str, root: Path, kit) -> dict[str, list[Path]]:
    """A valid tiny dataset; returns its files by role (``image``, ``lesion``, ``lung``)."""
    files: dict[str, list[Path]] = {"image": [], "lesion": [], "lung": []}
    if layout == "radiopaedia":
        for p in (1, 2, 3):
            hu, lung, codes = kit.ct_volume(2, 24, seed=10 * p)
            files["image"].append(kit.save_nifti(hu, root / "rp_im" / f"{p}.nii.gz"))
            files["lesion"].append(kit.save_nifti(codes, root / "rp_msk" / f"{p}.nii.gz"))
            files["lung"].append(kit.save_nifti(lung, root / "rp_lung_msk" / f"{p}.nii.gz"))
    elif layout.startswith("slices"):
        for k in range(4):
            hu, lung, codes = kit.ct_slice(24, 20, seed=k)
            if layout.startswith("slices_png"):
                files["image"].append(kit.save_picture(kit.to_8bit(hu), root / "images" / f"s{k}.png"))
            else:
                files["image"].append(kit.save_nifti(hu, root / "images" / f"s{k}.nii.gz"))
            files["lesion"].append(kit.save_picture(codes, root / "labels" / f"s{k}.png"))
            if not layout.endswith("no_lungs"):  # else lung masks are derived
                files["lung"].append(kit.save_picture(lung * 255, root / "lungs" / f"s{k}.png"))
    else:
        for i, name in enumerate(("s1", "s2", "s3")):
            hu, lung, codes = kit.ct_volume(2, 24, seed=100 + i)
            series = kit.write_dicom_series(root / name, hu)
            files["image"] += sorted(series.iterdir())
            files["lesion"].append(kit.save_nifti(codes, root / f"{name}_lesion.nii.gz", kit.DICOM_MASK_AFFINE))
            files["lung"].append(kit.save_nifti(lung, root / f"{name}_lung.nii.gz", kit.DICOM_MASK_AFFINE))
    return files


def partners(path: Path, root: Path) -> list[Path]:
    """The files of the same case as ``path`` (image, lesion, lung) and the folders holding them."""
    stem = path.name.split(".")[0]
    if path.suffix == ".dcm" or path.parent.name in ("s1", "s2", "s3"):
        series = path.parent.name
        return [path.parent, root / f"{series}_lesion.nii.gz", root / f"{series}_lung.nii.gz"]
    if stem.endswith(("_lesion", "_lung")):
        series = stem.rsplit("_", 1)[0]
        return [root / series, root / f"{series}_lesion.nii.gz", root / f"{series}_lung.nii.gz"]
    found = [p for p in root.rglob("*") if p.name.split(".")[0] == stem]
    return found + [path.parent]


def check_output(data_dir: Path) -> int:
    """A complete prepared folder: every item readable, finite, classes 0..3. Returns the number of items."""
    datalist = json.loads((data_dir / "datalist.json").read_text())
    n = 0
    for split in ("training", "validation", "test_synthesis", "test_segmentation"):
        for item in datalist[split]:
            image = np.asanyarray(nib.load(str(data_dir / item["image"])).dataobj)
            label = np.asanyarray(nib.load(str(data_dir / item["label"])).dataobj)
            assert image.shape == label.shape and np.all(np.isfinite(image))
            assert set(np.unique(label).tolist()) <= {0, 1, 2, 3}
            n += 1
    assert n > 0
    return n


def is_read(path: Path, root: Path) -> bool:
    """Whether the layout reads ``path``: it exists and, for a mask, its image is still there."""
    if not path.exists():
        return False
    stem = path.name.split(".")[0]
    if path.parent.name in ("labels", "lungs"):
        return any(p.name.split(".")[0] == stem for p in (path.parent.parent / "images").glob("*"))
    if path.parent.name in ("rp_msk", "rp_lung_msk"):
        return any((root / "rp_im").glob(f"{stem}.nii*"))
    if stem.endswith(("_lesion", "_lung")):
        return (root / stem.rsplit("_", 1)[0]).is_dir()
    return True


def verdict(layout: str, done, outcome: str, err: BaseException | None, root: Path) -> str | None:
    """None when the example followed the rules, else what went wrong."""
    broken = common_verdict(done, outcome, err, lambda p: is_read(p, root), "dataset")
    if broken or outcome != "error":
        return broken
    text = str(err)
    if DATASET_LEVEL.search(text):
        return None
    damaged = [p for p in done.damaged if is_read(p, root)]
    if len(done.kinds) == 1 and damaged:  # one damaged byte stream: the error must name it (or its DICOM series)
        if names_damaged(text, damaged):
            return None
        return f"error does not name the damaged file(s) {[p.name for p in damaged]}: {text}"
    candidates = [c for p in done.changed for c in [p, *partners(p, root)]]
    if any(mentions(text, c) for c in candidates):
        return None
    return f"error names no changed file: {text}"


def run_command(call: Callable[[], object]) -> tuple[str, BaseException | None, list[str]]:
    """Run an entry point as the command would: ``(outcome, error, ERROR lines on stderr)``.

    ``outcome`` is ``"ok"``, ``"error"`` (it exited with status 2; ``error`` is the :class:`InputError`
    it reported) or ``"raw"`` (any other exception or exit status: a finding).
    """
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            call()
    except SystemExit as stop:
        reported = stop.__context__  # entry_point raises SystemExit(2) from the InputError
        lines = [line for line in stderr.getvalue().splitlines() if line.startswith("ERROR")]
        if stop.code == 2 and isinstance(reported, InputError):
            return "error", reported, lines
        return "raw", stop, lines
    except Exception as caught:  # noqa: BLE001 - the point: anything else is a finding
        return "raw", caught, []
    return "ok", None, [line for line in stderr.getvalue().splitlines() if line.startswith("ERROR")]


def clean_failure(lines: list[str], err: BaseException | None, base: Path, out: Path, before: dict[str, bytes]) -> str | None:
    """None when a failed run printed one ``ERROR`` line and left ``data_dir`` and its folder as they were."""
    if lines != [f"ERROR: {err}"]:
        return f"stderr's ERROR lines are {lines}, not one line for {err}"
    if not before and out.exists():
        return f"a failed run left {out}"
    if snapshot(out) != before:
        return f"the previous {out.name} was changed by a failed run"
    left = temporaries(base)
    return f"temporaries left: {left}" if left else None


def write_fault_verdict(fault: DiskFault, outcome: str, err: BaseException | None, out: Path) -> str | None:
    """None when a read-only or full disk was reported as such: the file or folder it hit, and what to do."""
    if outcome != "error":
        return f"{outcome} after {os.strerror(fault.code)} writing {fault.fired}: {err}"
    text = str(err)
    if not (os.strerror(fault.code) in text and HINTS[fault.code] in text and text.endswith("choose another folder")):
        return f"the error does not say {os.strerror(fault.code)!r} and what to do ({HINTS[fault.code]!r}): {text}"
    if err.path is None or not (Path(err.path) == out or Path(err.path).is_relative_to(out) or out.is_relative_to(err.path)):
        return f"the error names {err.path}, not {out} or a file in it"
    if fault.kind == "disk_full":
        parts = fault.fired.relative_to(out.parent).parts  # written in a staging folder: named as in data_dir
        if Path(err.path) != out.joinpath(*parts[1:]):
            return f"the error names {err.path}, not the file whose write failed ({out.joinpath(*parts[1:])})"
    return None


def damaged_prepared_verdict(victim: Path, out: Path, outcome: str, err: BaseException | None, intact_record: bool) -> str | None:
    """None when a run that reads a damaged prepared folder named the damaged file and the fix (or rightly went on)."""
    if victim.name in ("summary.json", "summary.md") or (victim.name == PREPARED_FILES and intact_record):
        # the summaries are for people, never read as data; a record whose content is unchanged is intact
        return None if outcome == "ok" else f"{outcome} for a damaged {victim.name}, which no run reads: {err}"
    if outcome != "error":
        return f"{outcome} after {victim.name} was damaged: {err}"
    text = str(err)
    fix = "prepare the data again with --overwrite True" + ("" if victim.name == PREPARED_FILES else " (or restore the file)")
    if not (text.startswith(f"{victim}: ") and text.endswith(fix)):
        return f"the error does not name {victim} and the fix ({fix!r}): {text}"
    return None


def run_one(layout: str, muts: list, fault: tuple | None, previous: bool, kit, scratch: Path) -> tuple[str | None, str]:
    """Build a dataset in ``layout``, damage it with ``muts``, prepare it under ``fault``; returns (what broke the
    rules, outcome: ``ok``, ``error`` or the fault that was reported)."""
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        base = Path(tmp)
        root = base / "raw"
        files = build(layout, root, kit)
        done = apply(muts, files)
        out = base / "output" / "data"
        if previous:  # a data_dir the run may replace, and must leave as it was when it fails
            kit.save_nifti(np.zeros((4, 4), np.int16), out / "images" / "old.nii.gz")
            (out / "datalist.json").write_text('{"training": []}\n', encoding="utf-8")
        else:
            out.parent.mkdir()
        before = snapshot(out)
        with DiskFault(fault, out.parent) as disk:
            outcome, err, lines = run_command(
                lambda: entry_point(run_prepare, str(root), str(out), split="paper", overwrite=previous))
        if outcome == "ok":
            check_output(out)
            assert "images/old.nii.gz" not in snapshot(out), "the previous data_dir was merged, not replaced"
            if temporaries(base):
                return f"temporaries left next to a complete output: {temporaries(base)}", outcome
        elif outcome == "error":
            broken = clean_failure(lines, err, base, out, before)
            if broken:
                return broken, outcome
        if disk.fired is not None:
            return write_fault_verdict(disk, outcome, err, out), str(fault[0])
        broken = verdict(layout, done, outcome, err, root)
        if broken or outcome != "ok" or not fault or fault[0] != "damaged_prepared":
            return broken, outcome
        record = json.loads((out / PREPARED_FILES).read_text(encoding="utf-8"))
        victim = damage_prepared(out, *fault[1:])
        try:
            intact_record = json.loads((out / PREPARED_FILES).read_text(encoding="utf-8")) == record
        except (OSError, ValueError):
            intact_record = False
        damaged = snapshot(out)
        outcome, err, lines = run_command(lambda: entry_point(prepare_if_needed, str(root), str(out), split="paper"))
        if outcome == "error":
            broken = clean_failure(lines, err, base, out, damaged)
            if broken:
                return broken, "damaged_prepared"
        return damaged_prepared_verdict(victim, out, outcome, err, intact_record), "damaged_prepared"


@pytest.mark.integration
def test_prepare_survives_damaged_datasets_and_faults(kit, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    stats: Counter = Counter()

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None, phases=PHASES,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(layout=st.sampled_from(LAYOUTS), muts=mutations(), fault=faults(), previous=st.booleans())
    def check(layout: str, muts: list, fault: tuple | None, previous: bool) -> None:
        problem, outcome = run_one(layout, muts, fault, previous, kit, tmp_path)
        stats["examples"] += 1
        stats[outcome] += 1
        assert problem is None, f"{layout} with {muts}, fault {fault}, previous data_dir {previous}: {problem}"

    check()
    with capsys.disabled():
        print(f"\nprepare fuzz: {dict(stats)}")
    assert stats["examples"] >= MAX_EXAMPLES * 0.9
    assert stats["ok"] > 0 and stats["error"] > 0  # both outcomes of bad input were exercised
    for fault in ("read_only", "disk_full", "damaged_prepared"):  # and every fault was hit and checked
        assert stats[fault] > 0, f"no example hit the fault {fault}"


# --------------------------------------------------------------------------- regression tests of the fuzzer's findings


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("keep", [0, 200, 0.9])
def test_truncated_nifti_is_refused_not_read_by_another_reader(kit, tmp_path: Path, suffix: str, keep: float) -> None:
    """Only nibabel reads NIfTI: a cut-short file is an error naming it, never an array from ITK's fallback."""
    from covid_ct_cgan.data.readers import load_image

    path = kit.save_nifti(kit.ct_volume(2, 24)[0], tmp_path / f"ct{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(InputError, match="cannot read this file") as err:
        load_image(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["header", "pixels", "garbage", "every_file"])
def test_damaged_dicom_slice_is_named(kit, tmp_path: Path, damage: str) -> None:
    """A damaged slice of a series is an error naming that file, never a shorter volume (ITK skips such files)."""
    from covid_ct_cgan.data.readers import load_image

    series = kit.write_dicom_series(tmp_path / "s1", kit.ct_volume(3, 24)[0])
    files = sorted(series.iterdir())
    for path in files if damage == "every_file" else [files[1]]:
        data = path.read_bytes()
        cut = {"header": data[:300], "pixels": data[: int(len(data) * 0.9)]}
        path.write_bytes(cut.get(damage, bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8))))
    with pytest.raises(InputError, match="damaged DICOM file") as err:
        load_image(series)
    named = files[0] if damage == "every_file" else files[1]
    assert str(err.value).startswith(f"{named}: ") and "\n" not in str(err.value)


def test_float_picture_with_nan_is_refused(kit, tmp_path: Path) -> None:
    from PIL import Image

    from covid_ct_cgan.data.readers import load_image

    path = tmp_path / "x.tif"
    Image.fromarray(np.full((20, 24), np.nan, np.float32)).save(path)
    with pytest.raises(InputError, match="non-finite") as err:
        load_image(path)
    assert str(err.value).startswith(f"{path}: ")


@pytest.mark.parametrize("role", ["image", "lesion", "lung"])
def test_nan_float_tiff_in_a_slice_folder_is_an_error_naming_it(kit, tmp_path: Path, role: str) -> None:
    """Through ``prepare_dataset``: one ``InputError`` naming the TIFF (never a traceback from a histogram), no output."""
    from PIL import Image

    files = build("slices_png", tmp_path / "raw", kit)
    png = files[role][1]
    tif = png.with_name(png.name.replace(".png", ".tif"))
    png.unlink()
    Image.fromarray(np.full((20, 24), np.nan, np.float32)).save(tif)
    with pytest.raises(InputError, match="non-finite") as err:
        prepare_dataset(str(tmp_path / "raw"), str(tmp_path / "data"), split="paper")
    assert str(err.value).startswith(f"{tif}: ")
    assert kit.leftovers(tmp_path, "data") == []
