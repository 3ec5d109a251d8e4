"""Fuzzing the synthesis readers: damaged inputs give complete outputs or one clear error naming the file.

Each example writes valid synthesis inputs in one format (2D NIfTI slices, a 3D
NIfTI volume, 8-bit PNG slices, a DICOM series, or a ``datalist.json`` naming
NIfTI pairs), applies up to two mutations from :mod:`fuzz_inputs` (roles:
``image``; ``lesion`` = the label map; ``lung`` = the ``datalist.json``) and runs
``run_synthesis`` with a tiny random generator. The outcome must be a complete
output folder (one manifest row per input, every output readable) or one
:class:`InputError` naming a changed file (or its partner / series folder), with
no output folder and no temporary left. No allowance: every example must follow
these rules (the reader regressions are pinned in ``test_fuzz_prepare``; a slice
too thin for the model grid is pinned below).
"""

from __future__ import annotations

import csv
import json
import tempfile
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fuzz_inputs import apply, attempt, common_verdict, mentions, mutations, names_damaged
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from covid_ct_cgan.errors import InputError
from covid_ct_cgan.inference import collect_inputs, run_synthesis

FORMATS = ("nifti2d", "nifti3d", "png", "dicom", "datalist")
MAX_EXAMPLES = 80
PHASES = (Phase.explicit, Phase.generate)


def build(fmt: str, root: Path, kit) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {"image": [], "lesion": [], "lung": []}
    if fmt in ("nifti2d", "datalist", "png"):
        for k in range(3):
            hu, lung, codes = kit.ct_slice(24, 20, seed=k)
            label = kit.label_map(lung, codes)
            if fmt == "png":
                files["image"].append(kit.save_picture(kit.to_8bit(hu), root / "images" / f"a{k}.png"))
                files["lesion"].append(kit.save_picture(label, root / "labels" / f"a{k}.png"))
            else:
                files["image"].append(kit.save_nifti(hu, root / "images" / f"a{k}.nii.gz"))
                files["lesion"].append(kit.save_nifti(label, root / "labels" / f"a{k}.nii.gz"))
        if fmt == "datalist":
            items = [{"image": f"images/a{k}.nii.gz", "label": f"labels/a{k}.nii.gz"} for k in range(3)]
            datalist = root / "datalist.json"
            datalist.write_text(json.dumps({"test_synthesis": items}))
            files["lung"].append(datalist)
    elif fmt == "nifti3d":
        hu, lung, codes = kit.ct_volume(2, 24, seed=3)
        files["image"].append(kit.save_nifti(hu, root / "images" / "v.nii.gz"))
        files["lesion"].append(kit.save_nifti(kit.label_map(lung, codes), root / "labels" / "v.nii.gz"))
    else:
        hu, lung, codes = kit.ct_volume(2, 24, seed=4)
        series = kit.write_dicom_series(root / "images" / "ser", hu)
        files["image"] += sorted(series.iterdir())
        files["lesion"].append(kit.save_nifti(kit.label_map(lung, codes), root / "labels" / "ser.nii.gz", kit.DICOM_MASK_AFFINE))
    return files


def partners(path: Path, root: Path) -> list[Path]:
    stem = path.name.split(".")[0]
    if path.suffix == ".dcm":
        return [path.parent, root / "labels" / "ser.nii.gz", root / "images"]
    if stem == "ser":
        return [root / "images" / "ser"]
    return [p for p in root.rglob("*") if p.name.split(".")[0] == stem] + [path.parent, root / "datalist.json"]


def is_read(path: Path, root: Path) -> bool:
    if not path.exists():
        return False
    if path.parent.name == "labels":
        stem = path.name.split(".")[0]
        return any(p.name.split(".")[0] == stem for p in (root / "images").iterdir())
    return True


def check_output(out: Path, n_inputs: int) -> None:
    with open(out / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == n_inputs
    for row in rows:
        result = out / row["output"]
        if result.suffix == ".png":
            assert np.asarray(Image.open(result)).size > 0
        else:
            assert np.all(np.isfinite(np.asanyarray(nib.load(str(result)).dataobj)))


def verdict(done, outcome: str, err: BaseException | None, root: Path) -> str | None:
    broken = common_verdict(done, outcome, err, lambda p: is_read(p, root), "input")
    if broken or outcome != "error":
        return broken
    text = str(err)
    damaged = [p for p in done.damaged if is_read(p, root)]
    if len(done.kinds) == 1 and damaged:
        return None if names_damaged(text, damaged) else f"error does not name the damaged file: {text}"
    candidates = [c for p in done.changed for c in [p, *partners(p, root)]] + [root / "images", root / "labels", root]
    return None if any(mentions(text, c) for c in candidates) else f"error names no changed file: {text}"


def run_one(fmt: str, muts: list, kit, checkpoint: Path, scratch: Path) -> tuple[str | None, str]:
    """Write inputs in ``fmt``, damage them with ``muts``, synthesise; returns (what broke the rules, outcome)."""
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        base = Path(tmp)
        root = base / "in"
        files = build(fmt, root, kit)
        done = apply(muts, files)
        out = base / "out"
        source = root / "datalist.json" if fmt == "datalist" else root
        outcome, err = attempt(lambda: run_synthesis(
            kit.make_generator(), checkpoint=checkpoint, output_dir=out, input=source,
            image_size=kit.IMAGE_SIZE, batch_size=4,
        ))
        if outcome == "ok":
            check_output(out, len(collect_inputs(source)[0]))
            assert kit.leftovers(base, "out") == ["out"], "temporaries left next to the output"
        else:
            assert kit.leftovers(base, "out") == [], f"partial output after {type(err).__name__}: {err}"
        return verdict(done, outcome, err, root), outcome


@pytest.mark.integration
def test_synthesis_survives_damaged_inputs(kit, generator_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    stats: Counter = Counter()

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None, phases=PHASES,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(fmt=st.sampled_from(FORMATS), muts=mutations())
    def check(fmt: str, muts: list) -> None:
        problem, outcome = run_one(fmt, muts, kit, generator_checkpoint, tmp_path)
        stats["examples"] += 1
        stats[outcome] += 1
        assert problem is None, f"{fmt} with {muts}: {problem}"

    check()
    with capsys.disabled():
        print(f"\nsynthesis fuzz: {dict(stats)}")
    assert stats["examples"] >= MAX_EXAMPLES * 0.9
    assert stats["ok"] > 0 and stats["error"] > 0


def test_thin_slice_is_refused_with_a_clear_error(kit, generator_checkpoint: Path, tmp_path: Path) -> None:
    image = kit.save_nifti(np.full((1, 120), -800, np.int16), tmp_path / "in" / "thin.nii.gz")
    label = kit.save_nifti(np.ones((1, 120), np.uint8), tmp_path / "in" / "thin_label.nii.gz")
    with pytest.raises(InputError) as err:
        run_synthesis(kit.make_generator(), checkpoint=generator_checkpoint, output_dir=tmp_path / "out",
                                  image=image, label=label, image_size=kit.IMAGE_SIZE)
    assert str(image) in str(err.value)
    assert not (tmp_path / "out").exists()
