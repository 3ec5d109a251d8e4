"""Lung masks derived by threshold and largest components."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from covid_ct_cgan.data.lung_mask import AIR_THRESHOLD_HU, air_threshold, derive_lung_mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a != 0, b != 0
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def test_hu_slice_finds_both_lungs_not_outside_air(builders):
    hu, lung, codes = builders.synthetic_slice(64, seed=1)
    mask = derive_lung_mask(hu, "hu", codes)
    assert mask.dtype == np.uint8 and mask.shape == hu.shape
    assert dice(mask, lung) > 0.95
    assert not mask[0, 0] and not mask[32, 32]  # outside air, mediastinum
    assert np.all(mask[codes > 0] == 1)  # lesions (consolidation at +30 HU too) are lung


def test_8bit_slice_uses_otsu(builders):
    hu, lung, codes = builders.synthetic_slice(64, seed=2)
    image = builders.to_8bit(hu)
    threshold = air_threshold(image, "8bit")
    assert image[lung == 1].mean() < threshold < image[(lung == 0) & (hu > 0)].mean()
    assert dice(derive_lung_mask(image, "8bit", codes), lung) > 0.95
    assert air_threshold(hu, "hu") == AIR_THRESHOLD_HU


def test_lung_cut_by_tight_crop_is_kept(builders):
    hu, lung, _ = builders.synthetic_slice(64, lesion=False, seed=3)
    crop = (slice(12, 64), slice(20, 44))  # cuts through both lungs along y
    mask = derive_lung_mask(hu[crop], "hu")
    assert dice(mask, lung[crop]) > 0.9


def test_vessel_holes_filled_and_small_air_dropped(builders):
    hu, lung, _ = builders.synthetic_slice(64, lesion=False, seed=4)
    hu = hu.copy()
    hu[18:21, 30:33] = 40  # a vessel inside the left lung
    hu[31:33, 20:22] = -1000  # a small airway in the mediastinum
    mask = derive_lung_mask(hu, "hu")
    assert mask[19, 31] == 1 and mask[31:33, 20:22].sum() == 0
    assert dice(mask, lung) > 0.95


def test_no_air_gives_lesions_only():
    image = np.full((16, 16), 40.0)
    lesion = np.zeros((16, 16), np.uint8)
    lesion[4:6, 4:6] = 1
    np.testing.assert_array_equal(derive_lung_mask(image, "hu", lesion), lesion)


def test_bad_arguments():
    with pytest.raises(ValueError, match="2D"):
        derive_lung_mask(np.zeros((4, 4, 2)), "hu")
    with pytest.raises(ValueError, match="shape"):
        derive_lung_mask(np.zeros((4, 4)), "hu", np.zeros((5, 4)))
    with pytest.raises(ValueError, match="scale"):
        air_threshold(np.zeros((4, 4)), "ct")


def test_real_medseg_slices_masks_are_plausible(medseg_slices_dir):
    """Cropped real 8-bit slices: the mask is dark, holds the lesions, and covers a lung-like area."""
    images = sorted((medseg_slices_dir / "train" / "images").glob("*.jpg"))[:12]
    for path in images:
        image = np.asarray(Image.open(path).convert("L")).T.astype(np.float32)
        lesion = np.asarray(Image.open(medseg_slices_dir / "train" / "labels" / f"{path.stem}.png")).T
        mask = derive_lung_mask(image, "8bit", lesion).astype(bool)
        fraction = mask.mean()
        assert 0.15 < fraction < 0.8, (path.name, fraction)
        assert np.all(mask[lesion > 0])
        healthy = mask & (lesion == 0)
        assert image[healthy].mean() < image[~mask].mean() - 60, path.name  # aerated lung is dark


def test_phantom_lung_masks_match():
    phantom = pytest.importorskip("covid_ct_cgan.data.phantom")
    import tempfile
    from pathlib import Path

    import nibabel as nib

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ph"
        phantom.generate_phantom_dataset(out_dir=out, num_patients=1, size=128, num_slices=3, seed=0, overwrite=False)
        image = nib.load(str(sorted((out / "rp_im").glob("*.nii.gz"))[0])).get_fdata()
        lung = nib.load(str(sorted((out / "rp_lung_msk").glob("*.nii.gz"))[0])).get_fdata()
        lesion = nib.load(str(sorted((out / "rp_msk").glob("*.nii.gz"))[0])).get_fdata()
    z = image.shape[2] // 2
    mask = derive_lung_mask(image[:, :, z], "hu", lesion[:, :, z])
    assert dice(mask, (lung[:, :, z] > 0) | (lesion[:, :, z] > 0)) > 0.85
