"""Lung masks derived by threshold and largest components, and their plausibility check."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from covid_ct_cgan.data.lung_mask import (
    AIR_THRESHOLD_HU,
    air_threshold,
    body_region,
    derive_lung_mask,
    lung_mask_problems,
    padding_mask,
)

LOGGER = "covid_ct_cgan.data.lung_mask"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a != 0, b != 0
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def scanner_slice(
    size: int = 128, padding: float = -2048.0, consolidated: bool = False, large: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    """A full-field axial slice ``[x, y]`` (x = patient's left, y = posterior) as a scanner writes it.

    Circular field of view with ``padding`` outside it, air around the patient, a table below the back with
    air between, subcutaneous fat, spine, trachea, vessels; with ``consolidated`` the right lung (small x) is
    solid (+30 HU) and only the left one is aerated. With ``large`` (a large patient, a field of view wider than
    the image, the case of the issue), the body and the table reach the left and right image edges and the
    padding is only in the corners, so the air around the patient is cut into a part above and one below.

    Returns:
        ``hu`` (float32), ``lung`` (both lungs), ``aerated`` (the lung visible as air), ``body``, ``trachea``,
        ``table``, ``outside`` (air around the patient inside the field of view), ``consolidation``.
    """
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    x, y = x / size, y / size

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0

    fov = ellipse(0.5, 0.5, 0.62, 0.62) if large else ellipse(0.5, 0.5, 0.5, 0.5)
    body = ellipse(0.5, 0.48, 0.54, 0.27) if large else ellipse(0.5, 0.48, 0.40, 0.27)
    inner = ellipse(0.5, 0.48, 0.51, 0.24) if large else ellipse(0.5, 0.48, 0.37, 0.24)
    right, left = ellipse(0.31, 0.47, 0.12, 0.17), ellipse(0.69, 0.47, 0.12, 0.17)
    trachea = ellipse(0.5, 0.36, 0.03, 0.03)
    table = (y >= 0.80) & (y <= 0.84) & ((x >= 0.15) & (x <= 0.85) | large)
    vessels = ellipse(0.28, 0.42, 0.012, 0.012) | ellipse(0.72, 0.52, 0.012, 0.012) | ellipse(0.66, 0.40, 0.01, 0.01)
    hu = np.full((size, size), -1000.0)
    hu[table] = 150.0
    hu[body] = -100.0  # subcutaneous fat
    hu[inner] = 40.0  # muscle, mediastinum
    hu[ellipse(0.5, 0.66, 0.05, 0.05)] = 700.0  # vertebra
    hu[right | left] = -850.0
    hu[(right | left) & vessels] = 40.0
    hu[trachea] = -1000.0
    if consolidated:
        hu[right] = 30.0
    hu += rng.normal(0.0, 15.0, hu.shape)
    hu[~fov] = padding
    lung = right | left
    return {
        "hu": hu.astype(np.float32),
        "lung": lung,
        "aerated": left if consolidated else lung,
        "body": body,
        "trachea": trachea,
        "table": table,
        "outside": fov & ~body & ~table,
        "consolidation": right if consolidated else np.zeros_like(right),
    }


def lung_window_8bit(hu: np.ndarray) -> np.ndarray:
    """Lung window (level -600, width 1500) to 0..255: padding and air below -1350 HU become 0."""
    return np.rint((np.clip(hu, -1350, 150) + 1350) / 1500 * 255).astype(np.uint8)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


@pytest.mark.parametrize("padding", [-2048.0, -3024.0, -1024.0])
def test_full_field_hu_slice_finds_both_lungs_inside_the_body(caplog, padding):
    """Circular field with padding, air around the patient, a table: only the two lungs, no warning."""
    s = scanner_slice(padding=padding)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        mask = derive_lung_mask(s["hu"], "hu", source="scan/IM0001.dcm slice 40").astype(bool)
    assert dice(mask, s["lung"]) > 0.95
    assert not np.any(mask & ~s["body"])  # no corner, padding, outside air or table
    assert not np.any(mask & s["trachea"])
    assert 0.10 < mask.mean() < 0.20  # about the 17 % of the slice a correct mask covers
    assert warnings_of(caplog) == []


def test_full_field_8bit_slice_with_zero_padding(caplog):
    s = scanner_slice(padding=-2048.0, seed=1)
    image = lung_window_8bit(s["hu"])
    assert image[0, 0] == 0 and image[s["outside"]].mean() > 40  # padding 0, air around the patient brighter
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        mask = derive_lung_mask(image, "8bit", source="slices/images/7.png").astype(bool)
    assert dice(mask, s["lung"]) > 0.95
    assert not np.any(mask & ~s["body"]) and not np.any(mask & s["trachea"])
    assert warnings_of(caplog) == []


@pytest.mark.parametrize("padding", [-2048.0, -1024.0])
@pytest.mark.parametrize("scale", ["hu", "8bit"])
def test_reported_failure_large_patient_wide_field(caplog, padding, scale):
    """Body and table reach the image edges, padding only in the corners: the air around the patient is cut in
    two parts, neither covering half the border. The old derivation kept that air (41 % of this slice) and lost
    both lungs; now only the lungs, with no warning."""
    s = scanner_slice(padding=padding, large=True, seed=2)
    image = s["hu"] if scale == "hu" else lung_window_8bit(s["hu"])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        mask = derive_lung_mask(image, scale, source="scan/IM0002.dcm slice 3").astype(bool)
    assert dice(mask, s["lung"]) > 0.95
    assert not np.any(mask & ~s["body"]) and not np.any(mask & s["trachea"])
    assert warnings_of(caplog) == []


def test_padding_mask_finds_the_corners_not_the_air():
    s = scanner_slice(padding=-2048.0, large=True)
    corners = s["hu"] < -1500
    np.testing.assert_array_equal(padding_mask(s["hu"], "hu"), corners)
    assert corners[0, 0] and corners.sum() > 0.01 * corners.size
    np.testing.assert_array_equal(padding_mask(lung_window_8bit(s["hu"]), "8bit"), corners)
    assert not padding_mask(scanner_slice(padding=-1024.0)["hu"], "hu").any()  # -1024 is air, found as air
    with pytest.raises(ValueError, match="scale"):
        padding_mask(s["hu"], "ct")


@pytest.mark.parametrize("scale", ["hu", "8bit"])
def test_consolidated_lung_warns_and_keeps_the_visible_lung(caplog, scale):
    s = scanner_slice(consolidated=True, seed=3)
    image = s["hu"] if scale == "hu" else lung_window_8bit(s["hu"])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        mask = derive_lung_mask(image, scale, source="scan/IM0007.dcm slice 12").astype(bool)
    assert dice(mask, s["aerated"]) > 0.95
    assert not np.any(mask & s["consolidation"]) and not np.any(mask & ~s["body"])
    messages = warnings_of(caplog)
    assert len(messages) == 1
    assert messages[0].startswith("scan/IM0007.dcm slice 12: derived lung mask is implausible: only one lung found")
    assert "supply lung masks instead: lungs/<stem>.png" in messages[0] and "<series>_lung.nii.gz" in messages[0]


def test_trachea_near_the_midline_is_not_taken_as_the_second_lung(caplog):
    """One lung consolidated and a wide trachea (over 8 % of the visible lung): the trachea is dropped."""
    s = scanner_slice(consolidated=True, seed=5)
    size = s["hu"].shape[0]
    x, y = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    trachea = (x / size - 0.5) ** 2 + (y / size - 0.36) ** 2 <= 0.045**2
    hu = s["hu"].copy()
    hu[trachea] = -1000.0
    assert 0.08 < trachea.sum() / s["aerated"].sum() < 1 / 3  # kept by size alone (min_fraction 0.08)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        mask = derive_lung_mask(hu, "hu", source="scan/IM0009.dcm slice 2").astype(bool)
    assert not np.any(mask & trachea) and dice(mask, s["aerated"]) > 0.95
    assert len(warnings_of(caplog)) == 1 and "only one lung found" in warnings_of(caplog)[0]


def test_consolidated_lung_marked_as_lesion_is_lung(caplog):
    """A lesion mask that covers the consolidated lung puts it back: two lungs, no warning."""
    s = scanner_slice(consolidated=True, seed=4)
    lesion = np.where(s["consolidation"], 2, 0).astype(np.uint8)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        mask = derive_lung_mask(s["hu"], "hu", lesion, source="rp_im/3.nii.gz slice 5")
    assert dice(mask, s["lung"]) > 0.95
    assert warnings_of(caplog) == []


def test_prepare_warns_naming_the_slice_file(tmp_path, caplog):
    """Preparing a slice folder: the slice with one aerated lung is named in the warning, the other is not."""
    from covid_ct_cgan.data.prepare import prepare_dataset

    raw = tmp_path / "raw"
    for stem, consolidated in (("a", False), ("b", True), ("c", False)):
        s = scanner_slice(consolidated=consolidated, seed=ord(stem))
        lesion = np.zeros(s["lung"].shape, np.uint8)
        lesion[85:92, 55:62] = 1  # GGO in the aerated left lung
        for folder, array in (("images", lung_window_8bit(s["hu"])), ("labels", lesion)):
            (raw / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(array.T)).save(raw / folder / f"{stem}.png")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        summary = prepare_dataset(str(raw), str(tmp_path / "data"), validation_fraction=0.0)
    assert summary["lung_masks_derived"] == 3
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "b.png: derived lung mask is implausible: only one lung found" in messages[0]
    assert "lungs/<stem>.png (or lung_masks/) beside images/" in messages[0]


@pytest.mark.parametrize("large", [False, True])
def test_body_region_leaves_out_table_and_outside_air(large):
    s = scanner_slice(large=large)
    body = body_region(s["hu"], "hu")
    assert dice(body, s["body"]) > 0.95
    assert not np.any(body & s["table"])
    assert np.count_nonzero(body & s["outside"]) < 0.02 * np.count_nonzero(s["outside"])


def test_lung_mask_problems_names_each_failure():
    s = scanner_slice()
    body, lung = s["body"], s["lung"]
    assert lung_mask_problems(lung, body) == []
    only_left = lung & (np.arange(lung.shape[0])[:, None] >= lung.shape[0] // 2)
    assert lung_mask_problems(only_left, body) == [
        "only one lung found (a lung collapsed or consolidated, or the derivation failed)"
    ]
    with_outside = lung | s["outside"]  # the reported failure: the air around the patient taken in
    problems = lung_mask_problems(with_outside, body)
    assert any(p.endswith("of the lung lies outside the body") for p in problems)
    assert any(p.startswith("lung covers") and p.endswith("expected 3%-80%") for p in problems)
    same_side = np.zeros_like(lung)
    same_side[70:80, 50:70] = same_side[95:105, 50:70] = True  # two blobs, both on the patient's left
    assert "the two largest lung components lie on the same side of the body's midline" in lung_mask_problems(
        same_side, body
    )
    tiny = np.zeros_like(lung)
    tiny[40:42, 60:62] = True
    assert lung_mask_problems(tiny, body)[0] == "lung covers 0.1% of the body, expected 3%-80%"
    assert lung_mask_problems(np.zeros_like(lung), body) == ["no lung found"]
    assert lung_mask_problems(lung, np.zeros_like(body))[0].startswith("no body found")
    with pytest.raises(ValueError, match="body mask shape"):
        lung_mask_problems(lung, body[:-1])


def test_lungs_joined_in_front_count_as_two():
    s = scanner_slice()
    joined = s["lung"].copy()
    joined[40:90, 50:56] = True  # a bridge across the midline: one component spanning both sides
    assert lung_mask_problems(joined, s["body"]) == []


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
    hu, lung, _ = builders.synthetic_slice(64, lesions=False, seed=3)
    crop = (slice(12, 64), slice(18, 46))  # cuts through both lungs along y
    mask = derive_lung_mask(hu[crop], "hu")
    assert dice(mask, lung[crop]) > 0.9


def test_vessel_holes_filled_and_small_air_dropped(builders):
    hu, lung, _ = builders.synthetic_slice(64, lesions=False, seed=4)
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


def test_real_medseg_slices_masks_are_plausible(medseg_slices_dir, caplog):
    """Cropped real 8-bit slices: plausible, inside the body, dark, holding the lesions, no warning."""
    paths = sorted((medseg_slices_dir / split / "images" / f"{k}.jpg" for split in ("train", "test")
                    for k in (0, 1, 2, 14, 19, 23, 30, 36, 60, 74, 78, 98)), key=str)
    paths = [p for p in paths if p.is_file()]
    assert len(paths) == 12
    for path in paths:
        image = np.asarray(Image.open(path).convert("L")).T.astype(np.float32)
        lesion = np.asarray(Image.open(path.parent.parent / "labels" / f"{path.stem}.png")).T
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            mask = derive_lung_mask(image, "8bit", lesion, source=str(path)).astype(bool)
        body = body_region(image, "8bit")
        fraction = mask.sum() / body.sum()
        assert 0.05 < fraction < 0.8, (path.name, fraction)
        assert np.count_nonzero(mask & ~body) <= 0.02 * mask.sum(), path.name
        assert lung_mask_problems(mask, body) == [], path.name
        assert np.all(mask[lesion > 0])
        healthy = mask & (lesion == 0)
        assert image[healthy].mean() < image[~mask].mean() - 60, path.name  # aerated lung is dark
    assert warnings_of(caplog) == []


def test_phantom_lung_masks_match():
    from covid_ct_cgan.data import phantom
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
