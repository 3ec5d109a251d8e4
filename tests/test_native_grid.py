"""Slices at their own pixel size: FitLongestSided, ModelGrid(upscale=False) and the synthesis region's dilation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covid_ct_cgan.inference import ModelGrid
from covid_ct_cgan.transforms import FitLongestSided, slice_region


def _item(height: int, width: int) -> dict[str, torch.Tensor]:
    image = torch.linspace(-1, 1, height * width).reshape(1, height, width)
    label = torch.zeros(1, height, width)
    label[:, height // 4 : height // 2, width // 4 : width // 2] = 1
    return {"image": image, "label": label}


@pytest.mark.parametrize("shape", [(40, 30), (64, 48)])
def test_a_slice_that_fits_keeps_its_own_pixels_without_upscaling(shape: tuple[int, int]) -> None:
    item = _item(*shape)
    out = FitLongestSided(["image", "label"], 64, mode=["area", "nearest"], upscale=False)(item)
    assert tuple(out["image"].shape[1:]) == shape
    assert torch.equal(torch.as_tensor(out["image"]), item["image"])
    resized = FitLongestSided(["image", "label"], 64, mode=["area", "nearest"])(item)
    assert max(resized["image"].shape[1:]) == 64  # the paper's way: every slice to the grid


def test_a_longer_slice_is_shrunk_to_fit_either_way() -> None:
    out = FitLongestSided(["image", "label"], 32, mode=["area", "nearest"], upscale=False)(_item(64, 48))
    assert tuple(out["image"].shape[1:]) == (32, 24)
    assert set(torch.unique(torch.as_tensor(out["label"])).tolist()) == {0.0, 1.0}  # nearest for the label map


def test_native_grid_pads_without_resampling_and_comes_back_exactly() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (45, 37)).astype(np.float32)
    label = (rng.uniform(size=(45, 37)) > 0.5).astype(np.int64)
    grid = ModelGrid(64, upscale=False)
    assert grid.resized_shape((45, 37)) == (45, 37)
    img, lab = grid.to_grid(image, label)
    assert img.shape == (1, 64, 64) and lab.shape == (1, 64, 64)
    assert float(img.min()) == pytest.approx(-1.0, abs=1e-6)  # padded with air
    back = grid.from_grid(img, image.shape)
    np.testing.assert_array_equal(back, image)  # no resampling on the way in or out
    assert ModelGrid(64).resized_shape((45, 37)) == (64, 53)  # the resizing grid scales it up
    assert ModelGrid(32, upscale=False).resized_shape((64, 48)) == (32, 24)


def test_region_dilation_is_in_the_slices_own_pixels_when_not_resized() -> None:
    label = np.zeros((100, 100), dtype=np.int64)
    label[20:80, 20:80] = 1
    label[50, 50] = 2  # one lesion pixel
    native = slice_region(label, "map+context", "lesion", 3, image_size=200, upscale=False)
    resized = slice_region(label, "map+context", "lesion", 4, image_size=200)  # 4 model px = 2 slice px
    assert native.sum() > resized.sum()
    assert native[50, 47] and not native[50, 46]  # 3 pixels, not 3 x 100 / 200


def test_windows_of_a_pointwise_generator_equal_the_whole_grid() -> None:
    from covid_ct_cgan.inference import GeneratorRunner

    pointwise = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 1), torch.nn.Tanh())
    conditions = torch.randn(2, 3, 64, 64)
    whole = GeneratorRunner(pointwise, torch.device("cpu"), batch_size=2)(conditions)
    windows = GeneratorRunner(pointwise, torch.device("cpu"), batch_size=2, window=32)(conditions)
    assert windows.shape == whole.shape == (2, 1, 64, 64)
    torch.testing.assert_close(windows, whole, atol=1e-5, rtol=0)


def test_windows_change_what_an_instance_norm_generator_draws() -> None:
    from covid_ct_cgan.inference import GeneratorRunner

    torch.manual_seed(0)
    normed = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.InstanceNorm2d(4),
                                 torch.nn.Conv2d(4, 1, 1))
    conditions = torch.cat([torch.full((1, 1, 64, 32), -1.0), torch.randn(1, 1, 64, 32)], dim=-1)  # air | texture
    whole = GeneratorRunner(normed, torch.device("cpu"), batch_size=1)(conditions)
    windows = GeneratorRunner(normed, torch.device("cpu"), batch_size=1, window=32)(conditions)
    assert float((windows - whole).abs().mean()) > 0.05  # statistics over a window are not the whole slice's


def test_int8_of_a_crop_trained_generator_is_refused_with_the_fix() -> None:
    from covid_ct_cgan.errors import InputError
    from covid_ct_cgan.inference import SynthesisSettings
    from covid_ct_cgan.inference.synthesis import make_runner

    settings = SynthesisSettings(ModelGrid(64, upscale=False, window=32), 4, "map", "lung", 3, -600.0, 1500.0)
    with pytest.raises(InputError, match="trained on crops.*precision float"):
        make_runner(torch.nn.Conv2d(4, 1, 1), torch.device("cpu"), False, False, 1, None, "int8", 1, settings,
                    "datalist.json", "training", False)
