"""intensity.py: HU window / 8 bit to [-1, 1] and back, exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covid_ct_cgan import intensity


def test_lung_window_bounds() -> None:
    assert intensity.window_bounds() == (-1350.0, 150.0)
    with pytest.raises(ValueError):
        intensity.window_bounds(0, 0)


def test_hu_round_trip_inside_window_and_clipping_outside() -> None:
    hu = np.array([-2000, -1350, -850, -600, 0, 150, 3000], dtype=np.int16)
    x = intensity.to_model(hu)
    assert x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert x[3] == pytest.approx(0.0)  # window level maps to the middle
    back = intensity.to_storage(intensity.from_model(x), "hu")
    assert back.dtype == np.int16
    assert back.tolist() == [-1350, -1350, -850, -600, 0, 150, 150]  # outside: the window's edge


def test_8bit_round_trip_is_exact() -> None:
    values = np.arange(256, dtype=np.uint8)
    x = intensity.to_model(values, "8bit")
    assert x[0] == -1.0 and x[-1] == 1.0
    assert np.array_equal(intensity.to_storage(intensity.from_model(x, "8bit"), "8bit"), values)


def test_torch_and_numpy_agree() -> None:
    hu = np.linspace(-1500, 400, 50).astype(np.float32)
    np.testing.assert_allclose(intensity.to_model(torch.from_numpy(hu)).numpy(), intensity.to_model(hu), atol=1e-6)
    np.testing.assert_allclose(
        intensity.from_model(torch.linspace(-1, 1, 9)).numpy(), intensity.from_model(np.linspace(-1, 1, 9)), atol=1e-3
    )


def test_unknown_scale() -> None:
    with pytest.raises(ValueError, match="unknown intensity scale"):
        intensity.to_model(np.zeros(2), "16bit")  # type: ignore[arg-type]
