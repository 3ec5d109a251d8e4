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
example must follow these rules. The regression tests below pin the reader
behaviours the fuzzer once found broken (a damaged NIfTI read by a fallback
reader, a damaged DICOM slice skipped while its mask was blamed, a NaN float
TIFF ending in a raw traceback).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fuzz_inputs import apply, attempt, common_verdict, mentions, mutations, names_damaged
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from covid_ct_cgan.data.prepare import prepare_dataset
from covid_ct_cgan.errors import InputError

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


def run_one(layout: str, muts: list, kit, scratch: Path) -> tuple[str | None, str]:
    """Build a dataset in ``layout``, damage it with ``muts``, prepare it; returns (what broke the rules, outcome)."""
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        base = Path(tmp)
        root = base / "raw"
        files = build(layout, root, kit)
        done = apply(muts, files)
        out = base / "data"
        outcome, err = attempt(lambda: prepare_dataset(str(root), str(out), split="paper"))
        if outcome == "ok":
            check_output(out)
            assert kit.leftovers(base, "data") == ["data"], "temporaries left next to the output"
        else:
            assert kit.leftovers(base, "data") == [], f"partial output after {type(err).__name__}: {err}"
        return verdict(layout, done, outcome, err, root), outcome


@pytest.mark.integration
def test_prepare_survives_damaged_datasets(kit, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    stats: Counter = Counter()

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None, phases=PHASES,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(layout=st.sampled_from(LAYOUTS), muts=mutations())
    def check(layout: str, muts: list) -> None:
        problem, outcome = run_one(layout, muts, kit, tmp_path)
        stats["examples"] += 1
        stats[outcome] += 1
        assert problem is None, f"{layout} with {muts}: {problem}"

    check()
    with capsys.disabled():
        print(f"\nprepare fuzz: {dict(stats)}")
    assert stats["examples"] >= MAX_EXAMPLES * 0.9
    assert stats["ok"] > 0 and stats["error"] > 0  # both outcomes were exercised


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
