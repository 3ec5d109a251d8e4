"""Layout detection and case reading for every raw layout of bundle/docs/data.md ("Sources read by prepare")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from covid_ct_cgan.data.readers import Case, detect_layout, find_cases, load_case, load_image
from covid_ct_cgan.errors import InputError


def iter_cases(
    dataset_dir: str | Path, layout: str | None = None, patient_regex: str | None = None, require_lesion: bool = True
) -> Iterator[Case]:
    """Read a raw dataset's cases one by one: :func:`find_cases`, then :func:`load_case` on each."""
    for files in find_cases(dataset_dir, layout, patient_regex, require_lesion):
        yield load_case(files)


def test_radiopaedia_volume_keeps_phantom_geometry(tmp_path, builders):
    root = builders.write_radiopaedia(tmp_path / "rp", n_patients=2, nz=3, size=32)
    assert detect_layout(root) == "radiopaedia"
    cases = list(iter_cases(root))
    assert [c.patient for c in cases] == ["1", "2"]
    hu, lung, codes = builders.synthetic_volume(3, 32, seed=10)
    case = cases[0]
    assert isinstance(case, Case) and case.scale == "hu"
    np.testing.assert_array_equal(case.image, hu)  # diag(-sx, -sy, sz) is LPS already: unchanged
    np.testing.assert_array_equal(case.lesion, codes)
    np.testing.assert_array_equal(case.lung != 0, lung != 0)
    np.testing.assert_allclose(case.affine, np.diag([-0.7, -0.7, 2.5, 1.0]))
    assert case.slice_numbers == (0, 1, 2) and case.patient_of(2) == "1"
    np.testing.assert_allclose(case.slice_affine(2)[:3, 3], [0.0, 0.0, 5.0])
    assert case.sources["lesion"].endswith("rp_msk/1.nii.gz")


def test_ras_volume_is_reoriented_to_lps(tmp_path, builders):
    ras = np.diag([0.7, 0.7, 2.5, 1.0])
    root = builders.write_radiopaedia(tmp_path / "rp", n_patients=1, nz=2, size=32, affine=ras)
    case = next(iter_cases(root))
    hu, _, codes = builders.synthetic_volume(2, 32, seed=10)
    np.testing.assert_array_equal(case.image, hu[::-1, ::-1, :])
    np.testing.assert_array_equal(case.lesion, codes[::-1, ::-1, :])
    np.testing.assert_allclose(np.diag(case.affine)[:3], [-0.7, -0.7, 2.5])
    np.testing.assert_allclose(case.affine[:3, 3], [31 * 0.7, 31 * 0.7, 0.0])


def test_radiopaedia_without_lung_masks(tmp_path, builders):
    root = builders.write_radiopaedia(tmp_path / "rp", n_patients=1, nz=2, size=32, lungs=False)
    case = next(iter_cases(root))
    assert case.lung is None and "lung" not in case.sources


def test_medseg_volume_one_patient_per_slice(tmp_path, builders):
    root = builders.write_medseg(tmp_path / "ms", nz=4, size=32)
    assert detect_layout(root) == "medseg"
    (case,) = list(iter_cases(root))
    assert case.image.shape == (32, 32, 4) and case.scale == "hu"
    assert [case.patient_of(z) for z in range(4)] == ["medseg_0", "medseg_1", "medseg_2", "medseg_3"]


def test_slice_folders_png_with_lungs(tmp_path, builders):
    root = builders.write_slices(tmp_path / "sl", ["a_1", "a_2", "b_1"], lungs=True)
    assert detect_layout(root) == "slices"
    cases = list(iter_cases(root, patient_regex=r"(.+)_\d+"))
    assert [(c.patient, c.slice_numbers) for c in cases] == [("a", (0,)), ("a", (1,)), ("b", (0,))]
    hu, lung, codes = builders.synthetic_slice(40, seed=0)
    case = cases[0]
    assert case.scale == "8bit" and case.image.shape == (40, 40, 1)
    np.testing.assert_array_equal(case.image[:, :, 0], builders.to_8bit(hu))  # [x, y] like MONAI, not rows
    np.testing.assert_array_equal(case.lesion[:, :, 0], codes)
    np.testing.assert_array_equal(case.lung[:, :, 0] != 0, lung != 0)
    np.testing.assert_allclose(case.affine, np.diag([-1.0, -1.0, 1.0, 1.0]))


def test_slice_folders_nested_jpeg_masks_folder_rgb(tmp_path, builders):
    root = tmp_path / "nested"
    builders.write_slices(root / "train", ["1", "2"], ext=".jpg", label_folder="masks")
    builders.write_slices(root / "test", ["3"], ext=".jpg")
    from PIL import Image

    grey = Image.open(root / "test" / "images" / "3.jpg")
    Image.merge("RGB", [grey, grey, grey]).save(root / "test" / "images" / "3.jpg")
    assert detect_layout(root) == "slices"
    cases = list(iter_cases(root))
    assert sorted(c.patient for c in cases) == ["1", "2", "3"]
    assert all(c.lung is None and c.scale == "8bit" and c.image.ndim == 3 for c in cases)
    assert set(np.unique(cases[0].lesion).tolist()) <= {0, 1, 2}


def test_slice_folders_nifti_images_are_hu(tmp_path, builders):
    root = builders.write_slices(tmp_path / "sl", ["p1"], ext=".nii.gz")
    (case,) = list(iter_cases(root))
    assert case.scale == "hu" and case.image.min() < -900


def test_dicom_series_through_itk(tmp_path, builders):
    root = builders.write_dicom_dataset(tmp_path / "dcm", names=("s1", "s2"), nz=3, size=24)
    assert detect_layout(root) == "dicom"
    cases = list(iter_cases(root))
    assert [c.patient for c in cases] == ["s1", "s2"]
    hu, _, codes = builders.synthetic_volume(3, 24, seed=100)
    np.testing.assert_array_equal(cases[0].image, hu)  # RescaleIntercept applied: HU
    np.testing.assert_array_equal(cases[0].lesion, codes)
    np.testing.assert_allclose(np.diag(cases[0].affine)[:3], [-0.7, -0.8, 2.5])
    np.testing.assert_allclose(cases[0].affine[:3, 3], [100.0, 120.0, 50.0])  # LPS origin in RAS world
    assert cases[0].scale == "hu"


def test_dicom_without_lesion_mask(tmp_path, builders):
    hu, _, _ = builders.synthetic_volume(2, 16)
    builders.write_dicom_series(tmp_path / "dcm" / "scan", hu)
    with pytest.raises(InputError, match="scan_lesion.nii.gz"):
        find_cases(tmp_path / "dcm")
    (case,) = list(iter_cases(tmp_path / "dcm", require_lesion=False))
    assert case.lesion is None and case.image.shape == (16, 16, 2)
    image, affine, scale = load_image(tmp_path / "dcm" / "scan")
    np.testing.assert_array_equal(image, hu)
    assert scale == "hu" and affine.shape == (4, 4)


def test_unknown_layout_lists_layouts(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hello")
    with pytest.raises(InputError) as err:
        detect_layout(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and all(name in message for name in ("radiopaedia", "medseg", "slices", "dicom"))


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_bad_dataset_dir(tmp_path, make):
    path = tmp_path / "raw"
    if make == "empty":
        path.mkdir()
    elif make == "file":
        path.write_text("x")
    with pytest.raises(InputError, match=str(path)):
        detect_layout(path)


def test_missing_lesion_mask_named(tmp_path, builders):
    root = builders.write_radiopaedia(tmp_path / "rp", n_patients=2, nz=2, size=16)
    (root / "rp_msk" / "2.nii.gz").unlink()
    with pytest.raises(InputError, match=r"rp_im/2.nii.gz.*rp_msk/2.nii.gz"):
        find_cases(root)


def test_patient_regex_errors(tmp_path, builders):
    root = builders.write_slices(tmp_path / "sl", ["a_1", "zz"], size=16)
    with pytest.raises(InputError, match="exactly one group"):
        find_cases(root, patient_regex=r"(.+)_(\d+)")
    with pytest.raises(InputError, match=r"zz.png.*does not match patient_regex"):
        find_cases(root, patient_regex=r"(.+)_\d+")


def test_ambiguous_stems_and_missing_mask(tmp_path, builders):
    root = builders.write_slices(tmp_path / "sl", ["1", "2"], size=16)
    builders.save_picture(np.zeros((16, 16), np.uint8), root / "images" / "1.jpg")
    with pytest.raises(InputError, match="several files share the name stem '1'"):
        find_cases(root)
    (root / "images" / "1.jpg").unlink()
    (root / "labels" / "2.png").unlink()
    with pytest.raises(InputError, match=r"images/2.png: no lesion mask"):
        find_cases(root)


def test_colour_mask_and_16bit_picture_refused(tmp_path, builders):
    root = builders.write_slices(tmp_path / "sl", ["1"], size=16)
    from PIL import Image

    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[2:5, 2:5] = [255, 0, 0]
    Image.fromarray(rgb).save(root / "labels" / "1.png")
    with pytest.raises(InputError, match=r"labels/1.png: mask is a colour picture"):
        list(iter_cases(root))
    Image.fromarray(np.full((16, 16), 3000, np.uint16)).save(root / "images" / "1.png")
    with pytest.raises(InputError, match=r"images/1.png: picture values span"):
        load_image(root / "images" / "1.png")
