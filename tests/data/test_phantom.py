"""Tests of the procedural chest CT phantom: determinism, geometry, HU values, masks, layout, montage."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from covid_ct_cgan.data import phantom
from covid_ct_cgan.data.phantom import (
    PHANTOM_MARKER,
    PhantomCase,
    generate_phantom_case,
    generate_phantom_dataset,
    read_phantom_marker,
    save_montage,
)
from covid_ct_cgan.errors import InputError


@pytest.fixture(scope="module")
def full_res_cases() -> list[PhantomCase]:
    """Full-resolution (512 px) cases with two slices: HU values are stated at the scanner's resolution."""
    return [generate_phantom_case(size=512, num_slices=2, seed=seed) for seed in range(4)]


@pytest.fixture(scope="module")
def small_cases() -> list[PhantomCase]:
    return [generate_phantom_case(size=64, num_slices=8, seed=seed) for seed in range(8)]


# --------------------------------------------------------------------------- determinism and variety


def test_same_seed_gives_identical_arrays() -> None:
    a = generate_phantom_case(size=64, num_slices=4, seed=7)
    b = generate_phantom_case(size=64, num_slices=4, seed=7)
    for name in ("image", "lesion", "lung", "affine"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name


def test_patients_differ(small_cases: list[PhantomCase]) -> None:
    spacings = {case.spacing for case in small_cases}
    assert len(spacings) == len(small_cases)  # pixel spacing and slice thickness are drawn per patient
    lung_areas = [int((case.lung > 0).sum()) for case in small_cases]
    lesion_areas = [int((case.lesion > 0).sum()) for case in small_cases]
    assert len(set(lung_areas)) == len(small_cases)
    assert len(set(lesion_areas)) == len(small_cases)
    origins = {round(float(case.affine[2, 3]), 3) for case in small_cases}
    assert len(origins) == len(small_cases)  # the stack sits at a different height


def test_same_anatomy_at_any_matrix_size() -> None:
    small = generate_phantom_case(size=64, num_slices=3, seed=5)
    large = generate_phantom_case(size=128, num_slices=3, seed=5)
    assert small.spacing[0] == pytest.approx(2 * large.spacing[0])
    assert small.spacing[2] == large.spacing[2]
    # the lung field of the large case, halved, matches the small one
    down = large.lung[::2, ::2] > 0  # nearest-ish: both grids are centred, so pixel 2i sits near pixel i
    shrunk = ndimage.zoom((large.lung > 0).astype(np.float32), (0.5, 0.5, 1), order=1) > 0.5
    for candidate in (down, shrunk):
        inter = np.logical_and(candidate, small.lung > 0).sum()
        union = np.logical_or(candidate, small.lung > 0).sum()
        assert inter / union > 0.85


def test_explicit_spacing_and_thickness_are_used() -> None:
    case = generate_phantom_case(size=48, num_slices=3, seed=1, pixel_spacing=5.0, slice_thickness=2.5)
    assert case.spacing == pytest.approx((5.0, 5.0, 2.5))


@pytest.mark.parametrize("kwargs", [{"size": 0}, {"size": 8}, {"num_slices": 0}, {"pixel_spacing": -1.0},
                                    {"slice_thickness": float("nan")}, {"size": 64.5}])
def test_bad_arguments_are_refused(kwargs: dict) -> None:
    with pytest.raises(InputError):
        generate_phantom_case(**{"size": 32, "num_slices": 1, **kwargs})


# --------------------------------------------------------------------------- geometry


def test_geometry_of_a_full_size_case(full_res_cases: list[PhantomCase]) -> None:
    for case in full_res_cases:
        sx, sy, sz = case.spacing
        assert case.image.shape == case.lesion.shape == case.lung.shape == (512, 512, 2)
        assert 0.6 <= sx <= 0.8 and sx == sy
        assert 1.0 <= sz <= 5.0
        assert np.allclose(case.affine[:3, :3], np.diag([-sx, -sy, sz]))
        # the first voxel is at the patient's right-anterior corner of the field of view (RAS +x, +y)
        assert case.affine[0, 3] == pytest.approx(255.5 * sx)
        assert case.affine[1, 3] > 0


def test_radiological_orientation(full_res_cases: list[PhantomCase]) -> None:
    for case in full_res_cases:
        img = case.image[:, :, 0].astype(float)
        n = img.shape[0]
        midline = img[n // 2 - 10:n // 2 + 10]
        bone_rows = np.nonzero((midline > 300).any(axis=0))[0]
        assert np.median(bone_rows) > n / 2  # the spine is posterior: large y
        xs = np.arange(n)[:, None, None]
        right_x = xs[..., 0][(case.lung == 1).any(axis=(1, 2))].mean()
        left_x = xs[..., 0][(case.lung == 2).any(axis=(1, 2))].mean()
        assert right_x < left_x  # the patient's right lung has the small x
    right = sum(int((case.lung == 1).sum()) for case in full_res_cases)
    left = sum(int((case.lung == 2).sum()) for case in full_res_cases)
    assert right > left  # the heart sits on the left: the right lung is the larger


# --------------------------------------------------------------------------- HU values of each tissue


def test_hu_of_each_tissue(full_res_cases: list[PhantomCase]) -> None:
    seen = {"ggo": 0, "consolidation": 0, "effusion": 0}
    for case in full_res_cases:
        img = case.image.astype(np.float64)
        lung, les = case.lung > 0, case.lesion
        assert case.image.dtype == np.int16 and case.lesion.dtype == np.uint8 and case.lung.dtype == np.uint8
        assert -900 <= np.median(img[lung & (les == 0)]) <= -750
        if (les == 1).any():
            seen["ggo"] += 1
            assert -700 <= np.median(img[les == 1]) <= -350
        if (les == 2).any():
            seen["consolidation"] += 1
            assert -100 <= np.median(img[les == 2]) <= 60
        core = ndimage.binary_erosion(les == 3, structure=np.ones((3, 3, 1)))
        if core.sum() > 50:
            seen["effusion"] += 1
            assert 0 <= np.median(img[core]) <= 20
        assert img.max() > 700  # cortical bone
        border = np.ones(img.shape, bool)
        border[12:-12, 12:-12] = False  # the body never reaches the edge of the field of view
        assert np.percentile(img[border], 99) < -950
        assert abs(np.median(img[border]) + 1000) < 10
        body = img > -500
        fat = ((img > -130) & (img < -70) & body).mean() / body.mean()
        soft = ((img > 20) & (img < 70) & body).mean() / body.mean()
        assert fat > 0.03 and soft > 0.03  # subcutaneous fat and muscle/mediastinum both present
    assert seen["ggo"] == len(full_res_cases)
    assert seen["consolidation"] >= 2 and seen["effusion"] >= 1


def test_noise_level_is_scanner_like(full_res_cases: list[PhantomCase]) -> None:
    for case in full_res_cases:
        air = case.image[:40, :40, 0].astype(float)
        assert 5 <= air[air > -1024].std() <= 25


# --------------------------------------------------------------------------- masks


def test_lesions_lie_inside_the_lung_mask(small_cases: list[PhantomCase]) -> None:
    for case in small_cases:
        assert not ((case.lesion > 0) & (case.lung == 0)).any()
        assert set(np.unique(case.lesion).tolist()) <= {0, 1, 2, 3}
        assert set(np.unique(case.lung).tolist()) == {0, 1, 2}
        with_lesion = (case.lesion > 0).any(axis=(0, 1)).mean()
        assert with_lesion >= 0.7  # lesions on most slices
        assert 0.01 < (case.lesion > 0).sum() / (case.lung > 0).sum() < 0.7


def test_lesion_mask_matches_the_drawn_lesions() -> None:
    case = generate_phantom_case(size=256, num_slices=2, seed=2)
    img = case.image.astype(float)
    parenchyma = img[(case.lung > 0) & (case.lesion == 0)]
    ggo = img[case.lesion == 1]
    # nearly every GGO pixel is denser than typical aerated lung, and the mask is not a blob around nothing
    assert np.mean(ggo > np.median(parenchyma) + 60) > 0.8
    lung_only = (case.lung > 0) & (case.lesion == 0)
    ring = ndimage.binary_dilation(case.lesion == 1, structure=np.ones((5, 5, 1))) & lung_only
    assert np.median(img[ring]) < np.median(ggo) - 100  # the outline sits where the density changes


def test_lesions_prefer_the_posterior_periphery() -> None:
    offsets = []
    for seed in range(10, 14):
        case = generate_phantom_case(size=64, num_slices=6, seed=seed)
        ys = np.broadcast_to(np.arange(64)[None, :, None], case.lung.shape)
        offsets.append(ys[(case.lesion == 1) | (case.lesion == 2)].mean() - ys[case.lung > 0].mean())
    assert np.mean(offsets) > 0.5  # GGO and consolidation sit behind the lungs' centre on average


# --------------------------------------------------------------------------- dataset layout


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine, tuple(float(v) for v in img.header.get_zooms())


def test_dataset_layout_and_geometry(tmp_path: Path) -> None:
    out = generate_phantom_dataset(tmp_path / "rp", num_patients=2, size=48, num_slices=3, seed=11)
    assert out == tmp_path / "rp"
    for n in (1, 2):
        im, im_aff, zooms = _read(out / "rp_im" / f"{n}.nii.gz")
        msk, msk_aff, _ = _read(out / "rp_msk" / f"{n}.nii.gz")
        lung, lung_aff, _ = _read(out / "rp_lung_msk" / f"{n}.nii.gz")
        assert im.shape == msk.shape == lung.shape == (48, 48, 3)
        assert im.dtype == np.int16 and msk.dtype == np.uint8 and lung.dtype == np.uint8
        assert np.allclose(im_aff, msk_aff) and np.allclose(im_aff, lung_aff)
        sx, sy, sz = zooms
        assert np.allclose(np.diag(im_aff)[:3], [-sx, -sy, sz])
        assert 0.6 * 512 <= sx * 48 <= 0.8 * 512  # the field of view of a 512-pixel scan
        assert 1.0 <= sz <= 5.0
        assert not ((msk > 0) & (lung == 0)).any()
    assert sorted(p.name for p in out.iterdir()) == [".phantom.json", "rp_im", "rp_lung_msk", "rp_msk"]
    assert read_phantom_marker(out) == {"num_patients": 2, "size": 48, "num_slices": 3, "seed": 11}


def test_patient_does_not_depend_on_the_number_of_patients(tmp_path: Path) -> None:
    one = generate_phantom_dataset(tmp_path / "one", num_patients=1, size=32, num_slices=2, seed=4)
    two = generate_phantom_dataset(tmp_path / "two", num_patients=2, size=32, num_slices=2, seed=4)
    a, _, _ = _read(one / "rp_im" / "1.nii.gz")
    b, _, _ = _read(two / "rp_im" / "1.nii.gz")
    c, _, _ = _read(two / "rp_im" / "2.nii.gz")
    assert np.array_equal(a, b) and not np.array_equal(b, c)


def test_refuses_a_non_empty_folder_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "rp"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(InputError, match="not empty"):
        generate_phantom_dataset(out, num_patients=1, size=32, num_slices=1)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    generate_phantom_dataset(out, num_patients=1, size=32, num_slices=1, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [PHANTOM_MARKER, "rp_im", "rp_lung_msk", "rp_msk"]


def test_leaves_nothing_behind_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_write(*args: object, **kwargs: object) -> None:
        calls.append(args)
        if len(calls) == 4:
            raise OSError("disk full")
        return real_write(*args, **kwargs)

    real_write = phantom.write_nifti
    monkeypatch.setattr(phantom, "write_nifti", failing_write)
    with pytest.raises(OSError, match="disk full"):
        generate_phantom_dataset(tmp_path / "rp", num_patients=2, size=32, num_slices=1)
    assert list(tmp_path.iterdir()) == []  # the marker was staged with the volumes: no phantom without one


def test_marker_of_other_folders(tmp_path: Path) -> None:
    assert read_phantom_marker(tmp_path / "missing") is None
    (tmp_path / PHANTOM_MARKER).write_text("not json")
    assert read_phantom_marker(tmp_path) is None
    (tmp_path / PHANTOM_MARKER).write_text("[1, 2]")
    assert read_phantom_marker(tmp_path) is None
    with pytest.raises(InputError, match=r"^size must be an integer >= 16, got 8$"):
        generate_phantom_dataset(tmp_path / "rp", num_patients=1, size=8, num_slices=1)
    assert not (tmp_path / "rp").exists()


# --------------------------------------------------------------------------- montage


def test_montage_from_cases_and_from_a_folder(tmp_path: Path) -> None:
    cases = [generate_phantom_case(size=64, num_slices=4, seed=s) for s in (0, 1)]
    png = save_montage(cases, tmp_path / "m.png", tile_size=96)
    pic = np.asarray(Image.open(png).convert("RGB"))
    assert pic.shape == (192, 96 * 6, 3)  # 3 slices from each of 2 cases, image row and outline row
    bottom = pic[96:]
    yellow = (bottom[..., 0] > 200) & (bottom[..., 1] > 180) & (bottom[..., 2] < 60)
    assert yellow.any()  # GGO outlines are drawn
    with pytest.raises(InputError, match="already exists"):
        save_montage(cases, png)
    folder = generate_phantom_dataset(tmp_path / "rp", num_patients=2, size=48, num_slices=2, seed=3)
    png2 = save_montage(folder, tmp_path / "m2.png", tile_size=64, max_tiles=3)
    assert Image.open(png2).size == (64 * 2, 128)  # one slice from each of the 2 patients (3 tiles shared by 2)
    assert not list(tmp_path.glob(".*tmp*"))


def test_montage_of_an_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="rp_im"):
        save_montage(tmp_path, tmp_path / "m.png")
