"""Synthesis end to end at tiny sizes: every input format, geometry, exact compositing, variants, safety."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from covid_ct_cgan.checkpoint_settings import network_record
from covid_ct_cgan.errors import InputError
from covid_ct_cgan.inference import ModelGrid, run_synthesis, synthesis
from covid_ct_cgan.networks import GlobalLocalGenerator

from conftest import NET_SETTINGS

IMAGE_SIZE = 32
ODD_AFFINE = np.array([[0, 0.7, 0, 3], [0.8, 0, 0, 4], [0, 0, -2.5, 5], [0, 0, 0, 1.0]])  # axes A, R, I


def synth(builders, checkpoint_dir: Path, output_dir: Path, **kwargs):
    """run_synthesis with the tiny random generator of ``checkpoint_dir``."""
    kwargs.setdefault("checkpoint", checkpoint_dir / "joint")
    kwargs.setdefault("image_size", IMAGE_SIZE)
    kwargs.setdefault("batch_size", 3)
    return run_synthesis(builders.make_generator(), output_dir=output_dir, **kwargs)


def read_nifti(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img


def rows_of(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def nifti_2d(tmp_path: Path, builders) -> tuple[Path, Path]:
    hu, label = builders.tiny_slice()
    return builders.save_nifti(hu, tmp_path / "in" / "slice.nii.gz"), builders.save_nifti(label, tmp_path / "in" / "slice_label.nii.gz")


def check_nifti_output(image: Path, out_image: Path, out_label: Path) -> None:
    """Same shape, affine, dtype, header codes; outside the label map's lung the input, exactly."""
    real, real_img = read_nifti(image)
    fake, fake_img = read_nifti(out_image)
    used, used_img = read_nifti(out_label)
    assert fake.shape == real.shape and used.shape == real.shape
    assert fake.dtype == real.dtype and used.dtype == np.uint8
    np.testing.assert_array_equal(fake_img.affine, real_img.affine)
    np.testing.assert_array_equal(used_img.affine, real_img.affine)
    assert int(fake_img.header["sform_code"]) == int(real_img.header["sform_code"])
    np.testing.assert_allclose(fake_img.header.get_zooms(), real_img.header.get_zooms())
    outside = used == 0
    np.testing.assert_array_equal(fake[outside], real[outside])
    assert np.any(fake[~outside] != real[~outside])  # the lung was synthesised
    assert fake[~outside].min() >= -1350 and fake[~outside].max() <= 150  # inside the lung window


def test_2d_nifti(tmp_path: Path, builders, checkpoint_dir: Path, nifti_2d) -> None:
    image, label = nifti_2d
    rows = synth(builders, checkpoint_dir, tmp_path / "out", image=image, label=label)
    out = tmp_path / "out"
    assert [r["output"] for r in rows] == ["images/slice_v0.nii.gz"]
    check_nifti_output(image, out / "images/slice_v0.nii.gz", out / "labels/slice_v0.nii.gz")
    np.testing.assert_array_equal(read_nifti(out / "labels/slice_v0.nii.gz")[0], read_nifti(label)[0])  # variant 0: own map
    manifest = rows_of(out)
    assert manifest[0]["input"] == str(image) and manifest[0]["augmentation"] == "original label map"
    preview = np.asarray(Image.open(out / manifest[0]["preview"]))
    assert preview.ndim == 3 and preview.shape[1] > 3 * preview.shape[0] - 10  # three tiles side by side
    assert json.loads((out / "datalist.json").read_text())["synthetic"][0]["label"] == "labels/slice_v0.nii.gz"


def test_3d_volume_in_its_own_orientation(tmp_path: Path, builders, checkpoint_dir: Path) -> None:
    hu, label = builders.tiny_volume(nz=3)
    image = builders.save_nifti(hu, tmp_path / "in" / "vol.nii.gz", ODD_AFFINE)
    lab = builders.save_nifti(label, tmp_path / "in" / "vol_label.nii.gz", ODD_AFFINE)
    rows = synth(builders, checkpoint_dir, tmp_path / "out", image=image, label=lab, num_variants=2)
    assert [int(r["slices_synthesised"]) for r in rows] == [2, 2]  # the slice without lung is copied
    for row in rows:
        check_nifti_output(image, tmp_path / "out" / row["output"], tmp_path / "out" / row["label_map"])
    fake = read_nifti(tmp_path / "out" / rows[1]["output"])[0]
    np.testing.assert_array_equal(fake[:, :, 2], hu[:, :, 2])
    assert "slice 0" in rows[1]["augmentation"] and "slice 1" in rows[1]["augmentation"]  # the file's slice numbers


def test_png_8bit(tmp_path: Path, builders, checkpoint_dir: Path) -> None:
    hu, label = builders.tiny_slice()
    real = builders.to_8bit(hu)
    image = builders.save_picture(real, tmp_path / "in" / "images" / "s1.png")
    builders.save_picture(label, tmp_path / "in" / "labels" / "s1.png")
    rows = synth(builders, checkpoint_dir, tmp_path / "out", input=tmp_path / "in")
    out = Image.open(tmp_path / "out" / rows[0]["output"])
    assert out.mode == "L" and out.size == Image.open(image).size
    fake = np.asarray(out).T
    used = np.asarray(Image.open(tmp_path / "out" / rows[0]["label_map"])).T
    np.testing.assert_array_equal(used, label)
    np.testing.assert_array_equal(fake[label == 0], real[label == 0])
    assert np.any(fake[label > 0] != real[label > 0])


def test_dicom_series(tmp_path: Path, builders, checkpoint_dir: Path) -> None:
    hu, label = builders.tiny_volume(nz=3)
    series = builders.write_dicom_series(tmp_path / "in" / "series1", hu)
    affine = np.diag([-0.7, -0.8, 2.5, 1.0])
    affine[:3, 3] = [100.0, 120.0, 50.0]  # the series' LPS grid in nibabel's RAS world
    lab = builders.save_nifti(label, tmp_path / "in" / "series1_label.nii.gz", affine)
    rows = synth(builders, checkpoint_dir, tmp_path / "out", image=series, label=lab)
    fake, img = read_nifti(tmp_path / "out" / rows[0]["output"])
    assert fake.shape == hu.shape and fake.dtype == np.int16
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(fake[label == 0], hu[label == 0])


def test_datalist_and_folder_inputs(tmp_path: Path, builders, checkpoint_dir: Path) -> None:
    data = tmp_path / "data"
    items = []
    for k in range(3):
        hu, label = builders.tiny_slice(seed=k)
        builders.save_nifti(hu, data / "images" / f"p{k}_0001.nii.gz")
        builders.save_nifti(label, data / "labels" / f"p{k}_0001.nii.gz")
        items.append({"image": f"images/p{k}_0001.nii.gz", "label": f"labels/p{k}_0001.nii.gz", "scale": "hu"})
    (data / "datalist.json").write_text(json.dumps({"training": items[:1], "test_synthesis": items[1:]}))
    rows = synth(builders, checkpoint_dir, tmp_path / "out1", input=data / "datalist.json")
    assert [Path(r["input"]).name for r in rows] == ["p1_0001.nii.gz", "p2_0001.nii.gz"]
    rows = synth(builders, checkpoint_dir, tmp_path / "out2", input=data, datalist_key="training")
    assert [Path(r["input"]).name for r in rows] == ["p0_0001.nii.gz"]
    (data / "datalist.json").unlink()  # a plain images/ + labels/ folder
    rows = synth(builders, checkpoint_dir, tmp_path / "out3", input=data)
    assert len(rows) == 3
    for row in rows:
        check_nifti_output(Path(row["input"]), tmp_path / "out3" / row["output"], tmp_path / "out3" / row["label_map"])


def test_variants_differ_and_are_reproducible(tmp_path: Path, builders, checkpoint_dir: Path, nifti_2d) -> None:
    image, label = nifti_2d
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        synth(builders, checkpoint_dir, tmp_path / name, image=image, label=label, num_variants=4, seed=seed)
        runs[name] = [read_nifti(tmp_path / name / f"images/slice_v{k}.nii.gz")[0] for k in range(4)]
        labels = [read_nifti(tmp_path / name / f"labels/slice_v{k}.nii.gz")[0] for k in range(4)]
        lung = read_nifti(label)[0] > 0
        for used in labels:
            np.testing.assert_array_equal(used > 0, lung)  # augmented lesions stay inside the same lung
            assert np.count_nonzero(used >= 2) > 0
        assert len({u.tobytes() for u in labels}) == 4
    assert len({v.tobytes() for v in runs["a"]}) == 4  # variants differ
    for k in range(4):
        np.testing.assert_array_equal(runs["a"][k], runs["b"][k])  # same seed, same outputs
    assert any(not np.array_equal(runs["a"][k], runs["c"][k]) for k in range(1, 4))
    seeds_a = [r["seed"] for r in rows_of(tmp_path / "a")]
    assert seeds_a == [r["seed"] for r in rows_of(tmp_path / "b")] and len(set(seeds_a)) == 4


def lesion_inpainting_synthesis(tmp_path: Path, builders, image: Path, label: Path, **kwargs) -> None:
    """Synthesis into ``tmp_path / "out"`` with a random lesion-inpainting generator (``map+context``, lesion)."""
    ckpt = tmp_path / "ctx.pt"
    torch.save({"generator": builders.make_generator(5).state_dict()}, ckpt)
    run_synthesis(builders.make_generator(5), ckpt, tmp_path / "out", image=image, label=label,
                              image_size=IMAGE_SIZE, condition="map+context", context_region="lesion",
                              context_dilation=1, **kwargs)


def test_lesion_context_region_keeps_the_rest_of_the_lung(tmp_path: Path, builders, nifti_2d) -> None:
    image, label = nifti_2d
    lesion_inpainting_synthesis(tmp_path, builders, image, label)
    real, fake = read_nifti(image)[0], read_nifti(tmp_path / "out/images/slice_v0.nii.gz")[0]
    lab = read_nifti(label)[0]
    changed = fake != real
    assert np.all(lab[changed] > 0)  # only lung pixels change ...
    assert np.count_nonzero(changed) < np.count_nonzero(lab > 0) * 0.9  # ... and not the whole lung
    lesion = lab >= 2
    assert np.count_nonzero(changed & lesion) > 0.5 * np.count_nonzero(lesion)


def test_model_grid_round_trip() -> None:
    grid = ModelGrid(32)
    x, y = np.meshgrid(np.linspace(-1, 1, 40), np.linspace(-1, 1, 36), indexing="ij")
    smooth = (0.5 * x * y).astype(np.float32)
    img, lab = grid.to_grid(smooth, (x > 0).astype(np.uint8))
    assert img.shape == (1, 32, 32) and lab.shape == (1, 32, 32) and lab.dtype == torch.int64
    assert float(img[0, 16, 0]) == -1.0 and int(lab.max()) == 1  # padded along y (the short side)
    back = grid.from_grid(img, (40, 36))
    assert back.shape == (40, 36)
    assert np.abs(back - smooth).max() < 0.08


def test_bf16_autocast_close_to_fp32(tmp_path: Path, builders, checkpoint_dir: Path, nifti_2d) -> None:
    image, label = nifti_2d
    synth(builders, checkpoint_dir, tmp_path / "fp32", image=image, label=label)
    synth(builders, checkpoint_dir, tmp_path / "bf16", image=image, label=label, amp=True)
    a = read_nifti(tmp_path / "fp32/images/slice_v0.nii.gz")[0].astype(np.float32)
    b = read_nifti(tmp_path / "bf16/images/slice_v0.nii.gz")[0].astype(np.float32)
    lung = read_nifti(label)[0] > 0
    # tolerance: bf16 keeps ~3 significant digits; 1500 HU window -> 30 HU max, 8 HU mean
    assert np.abs(a - b).max() <= 30 and np.abs(a - b)[lung].mean() <= 8
    np.testing.assert_array_equal(a[~lung], b[~lung])


@pytest.mark.integration
def test_compiled_path_matches_eager(tmp_path: Path, builders, checkpoint_dir: Path, nifti_2d, monkeypatch) -> None:
    """The compile path (batch padding, compiled call) with a fast backend; inductor is in the slow test."""
    monkeypatch.setattr(synthesis, "COMPILE_BACKEND", "aot_eager")
    image, label = nifti_2d
    synth(builders, checkpoint_dir, tmp_path / "eager", image=image, label=label, num_variants=2)
    synth(builders, checkpoint_dir, tmp_path / "comp", image=image, label=label, num_variants=2, compile=True, batch_size=4)
    for k in range(2):
        a = read_nifti(tmp_path / f"eager/images/slice_v{k}.nii.gz")[0].astype(np.float32)
        b = read_nifti(tmp_path / f"comp/images/slice_v{k}.nii.gz")[0].astype(np.float32)
        assert np.abs(a - b).max() <= 1  # rounding to int16 HU at most


@pytest.mark.slow
def test_inductor_compile_close_to_eager(tmp_path: Path, builders, checkpoint_dir: Path, nifti_2d) -> None:
    image, label = nifti_2d
    synth(builders, checkpoint_dir, tmp_path / "eager", image=image, label=label)
    synth(builders, checkpoint_dir, tmp_path / "comp", image=image, label=label, compile=True)
    a = read_nifti(tmp_path / "eager/images/slice_v0.nii.gz")[0].astype(np.float32)
    b = read_nifti(tmp_path / "comp/images/slice_v0.nii.gz")[0].astype(np.float32)
    assert np.abs(a - b).max() <= 1


# --------------------------------------------------------------------------- safety


def _bad_label_shape(tmp_path: Path, builders) -> tuple[dict, Path]:
    hu, _ = builders.tiny_slice()
    image = builders.save_nifti(hu, tmp_path / "in" / "img.nii.gz")
    label = builders.save_nifti(builders.tiny_slice(30, 30)[1], tmp_path / "in" / "lab.nii.gz")
    return {"image": image, "label": label}, label


def _bad_label_values(tmp_path: Path, builders) -> tuple[dict, Path]:
    hu, lab = builders.tiny_slice()
    lab[0, 0] = 7
    image = builders.save_nifti(hu, tmp_path / "in" / "img.nii.gz")
    return {"image": image, "label": builders.save_nifti(lab, tmp_path / "in" / "lab.nii.gz")}, tmp_path / "in" / "lab.nii.gz"


def _empty_lung(tmp_path: Path, builders) -> tuple[dict, Path]:
    hu, lab = builders.tiny_slice()
    image = builders.save_nifti(hu, tmp_path / "in" / "img.nii.gz")
    return {"image": image, "label": builders.save_nifti(lab * 0, tmp_path / "in" / "lab.nii.gz")}, tmp_path / "in" / "lab.nii.gz"


def _unreadable_image(tmp_path: Path, builders) -> tuple[dict, Path]:
    _, lab = builders.tiny_slice()
    image = tmp_path / "in" / "img.nii.gz"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"not a nifti file")
    return {"image": image, "label": builders.save_nifti(lab, tmp_path / "in" / "lab.nii.gz")}, image


def _missing_checkpoint(tmp_path: Path, builders) -> tuple[dict, Path]:
    kwargs, _ = _good(tmp_path, builders)
    return {**kwargs, "checkpoint": tmp_path / "nowhere" / "joint"}, tmp_path / "nowhere" / "joint"


def _foreign_checkpoint(tmp_path: Path, builders) -> tuple[dict, Path]:
    kwargs, _ = _good(tmp_path, builders)
    path = tmp_path / "other.pt"
    torch.save({"generator": GlobalLocalGenerator(4, 1, ngf=16, n_downsampling=1, n_blocks_global=1, n_blocks_local=1).state_dict()}, path)
    return {**kwargs, "checkpoint": path}, path


def _corrupt_checkpoint(tmp_path: Path, builders) -> tuple[dict, Path]:
    kwargs, _ = _good(tmp_path, builders)
    path = tmp_path / "broken.pt"
    path.write_bytes(b"\x00garbage")
    return {**kwargs, "checkpoint": path}, path


def _output_inside_input(tmp_path: Path, builders) -> tuple[dict, Path]:
    kwargs, _ = _good(tmp_path, builders)
    return {**kwargs, "output_dir": tmp_path / "in" / "synth"}, tmp_path / "in" / "synth"


def _good(tmp_path: Path, builders) -> tuple[dict, Path]:
    hu, lab = builders.tiny_slice()
    image = builders.save_nifti(hu, tmp_path / "in" / "img.nii.gz")
    return {"image": image, "label": builders.save_nifti(lab, tmp_path / "in" / "lab.nii.gz")}, image


BAD_INPUTS = {
    "label map shape differs": (_bad_label_shape, "differs from image shape"),
    "unknown label classes": (_bad_label_values, "unknown classes [7]"),
    "empty lung": (_empty_lung, "no lung"),
    "unreadable image": (_unreadable_image, "cannot read"),
    "missing checkpoint": (_missing_checkpoint, "not found"),
    "checkpoint of another configuration": (_foreign_checkpoint, "pass the same network settings"),
    "corrupt checkpoint": (_corrupt_checkpoint, "cannot read checkpoint"),
    "output inside the input folder": (_output_inside_input, "inside the input folder"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_cleanly_with_nothing_written(tmp_path: Path, builders, checkpoint_dir: Path, case: str) -> None:
    make, expected = BAD_INPUTS[case]
    kwargs, named = make(tmp_path, builders)
    kwargs.setdefault("output_dir", tmp_path / "out")
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(InputError) as err:
        synth(builders, checkpoint_dir, **kwargs)
    message = str(err.value)
    assert str(named) in message and expected in message and "\n" not in message
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written, no temporary left


def test_existing_output_needs_overwrite(tmp_path: Path, builders, checkpoint_dir: Path, nifti_2d) -> None:
    image, label = nifti_2d
    out = tmp_path / "out"
    synth(builders, checkpoint_dir, out, image=image, label=label)
    first = (out / "images/slice_v0.nii.gz").read_bytes()
    with pytest.raises(InputError, match="overwrite"):
        synth(builders, checkpoint_dir, out, image=image, label=label, num_variants=2)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["slice_v0.nii.gz"]
    synth(builders, checkpoint_dir, out, image=image, label=label, num_variants=2, overwrite=True)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["slice_v0.nii.gz", "slice_v1.nii.gz"]
    assert (out / "images/slice_v0.nii.gz").read_bytes() == first
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not a synthesis output"):  # never replaced, even with overwrite
        synth(builders, checkpoint_dir, other, image=image, label=label, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"


def test_python_synthesis_takes_the_data_settings_of_the_checkpoints_record(tmp_path: Path, builders, nifti_2d) -> None:
    """run_synthesis without the data settings reads them from the record training saved with the checkpoint."""
    generator = builders.make_generator()
    data = {"image_size": IMAGE_SIZE, "crop_size": 0, "condition": "map", "context_region": "lung",
            "context_dilation": 3, "keep_effusion": False, "window_level": -500, "window_width": 1400}
    stage = tmp_path / "run" / "joint"
    stage.mkdir(parents=True)
    torch.save({"generator": generator.state_dict(),
                "network_settings": network_record(data, {"generator": generator})}, stage / "checkpoint_epoch=1.pt")
    image, label = nifti_2d
    run_synthesis(generator, checkpoint=stage, output_dir=tmp_path / "out", image=image, label=label, batch_size=2)
    written = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert {k: written[k] for k in ("image_size", "window_level", "window_width", "condition")} == {
        "image_size": IMAGE_SIZE, "window_level": -500, "window_width": 1400, "condition": "map"}  # not 128, -600, 1500


@pytest.mark.integration
def test_bundle_run(tmp_path: Path, builders, checkpoint_dir: Path, nifti_2d, repo_root: Path) -> None:
    """``monai.bundle run run`` with inference.yaml: a good input works, a bad one exits 2 with one ERROR line."""
    image, label = nifti_2d
    base = [sys.executable, "-m", "monai.bundle", "run", "run", "--config_file", "bundle/configs/inference.yaml",
            "--checkpoint_dir", str(checkpoint_dir), "--legacy_settings", str({**NET_SETTINGS, "image_size": IMAGE_SIZE}),
            "--amp", "False",
            "--image", str(image), "--label", str(label)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    good = subprocess.run(base + ["--output_dir", str(tmp_path / "out"), "--num_variants", "2"],
                          cwd=repo_root, capture_output=True, text=True, env=env, timeout=300)
    assert good.returncode == 0, good.stderr[-2000:]
    assert len(rows_of(tmp_path / "out")) == 2
    hu, lab = builders.tiny_slice()
    lab[:] = 0
    empty = builders.save_nifti(lab, tmp_path / "in" / "empty.nii.gz")
    bad = subprocess.run(base[:-1] + [str(empty), "--output_dir", str(tmp_path / "out_bad")],
                         cwd=repo_root, capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2, bad.stderr[-2000:]
    errors = [line for line in bad.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and str(empty) in errors[0] and "no lung" in errors[0]
    assert "Traceback" not in bad.stderr and not (tmp_path / "out_bad").exists()


@pytest.mark.integration
def test_bundle_run_overrides_a_postprocessing_setting_and_a_handler(
    tmp_path: Path, checkpoint_dir: Path, nifti_2d, repo_root: Path
) -> None:
    """``--inference#postprocessing#...`` and ``--inference#handlers#...`` reach the wired workflow."""
    image, label = nifti_2d
    command = [sys.executable, "-m", "monai.bundle", "run", "run", "--config_file", "bundle/configs/inference.yaml",
               "--checkpoint_dir", str(checkpoint_dir), "--legacy_settings", str({**NET_SETTINGS, "image_size": IMAGE_SIZE}),
               "--amp", "False",
               "--image", str(image), "--label", str(label), "--output_dir", str(tmp_path / "out"), "--num_variants", "2",
               "--inference#postprocessing#transforms#2#min_size", "400", "--inference#handlers#1#iteration_log", "True"]
    done = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    preview = Image.open(tmp_path / "out" / "previews" / "slice_v0.png")
    assert preview.size == (3 * 400 + 4, 360)  # the 40 x 36 slice enlarged 10 times (default 192: 5 times)
    logged = done.stdout + done.stderr
    assert "Iter: 1/2 -- slices: 1" in logged and "Iter: 2/2 -- slices: 1" in logged  # StatsHandler per iteration


def test_a_preprocessing_chain_without_the_lesion_map_is_refused(tmp_path: Path, builders, checkpoint_dir: Path,
                                                                 nifti_2d) -> None:
    """The evaluator needs the chain's three parts; without one it names it before reading anything."""
    from monai.transforms import Compose

    from covid_ct_cgan.inference import LoadSynthesisInputd, build_evaluator

    image, label = nifti_2d
    evaluator = build_evaluator(builders.make_generator(), checkpoint_dir / "joint", tmp_path / "out", image=image,
                                label=label, image_size=IMAGE_SIZE)
    evaluator.preprocessing = Compose([LoadSynthesisInputd()])
    with pytest.raises(InputError, match="needs a LesionMapd"):
        evaluator.run()
    assert not (tmp_path / "out").exists()


def test_lesion_inpainting_of_an_augmented_map_redraws_the_own_lesions_too(tmp_path: Path, builders, nifti_2d) -> None:
    """A moved or rotated lesion map must not leave the real lesion in place, unlabelled, in the composite."""
    image, label = nifti_2d
    lesion_inpainting_synthesis(tmp_path, builders, image, label, num_variants=2, seed=3)
    real, lab = read_nifti(image)[0], read_nifti(label)[0]
    fake = read_nifti(tmp_path / "out/images/slice_v1.nii.gz")[0]
    used = read_nifti(tmp_path / "out/labels/slice_v1.nii.gz")[0]
    own, new = lab >= 2, used >= 2
    assert np.count_nonzero(own & ~new) > 0  # the augmentation moved some lesion pixels away
    changed = fake != real
    assert np.all(lab[changed] > 0)  # still only lung pixels change
    # every lesion pixel of the input (and of the new map) is redrawn, not kept from the real slice
    assert np.count_nonzero(changed & own) > 0.9 * np.count_nonzero(own)
    assert np.count_nonzero(changed & new) > 0.9 * np.count_nonzero(new)


def test_compile_given_a_word_is_told_the_spelling_that_works() -> None:
    from covid_ct_cgan.errors import InputError
    from covid_ct_cgan.inference.synthesis import check_settings

    with pytest.raises(InputError) as err:
        check_settings(1, 1, 32, "map", "lung", torch.nn.Identity(), compile="false")
    assert str(err.value) == "compile must be True, False or 'auto', got 'false' (write --compile False)"
