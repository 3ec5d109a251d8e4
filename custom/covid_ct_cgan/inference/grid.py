"""The model's square grid: a slice in, as ``train#deterministic`` shapes it, and the generated slice back out.

Synthesis (:mod:`.synthesis`, :mod:`.workflow`), the int8 calibration (:mod:`.export`) and the image
quality measures (:mod:`covid_ct_cgan.evaluation.image_quality`) all place slices on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Resize, SpatialPad
from monai.utils import convert_to_tensor


@dataclass(frozen=True)
class ModelGrid:
    """Maps a slice to the model's square grid and back, as ``train#deterministic`` does.

    Args:
        image_size: side of the model's square input.
        upscale: resize every slice so its longest side is ``image_size`` (a model trained on whole
            resized slices); ``False``: keep a slice that fits at its own pixel size and only pad it
            (a model trained on crops at the slices' own resolution, ``crop_size`` in ``train.yaml``;
            longer slices are still shrunk to fit).
        window: side of the windows the generator runs on (the training crop of a model trained on crops:
            its instance norms then standardise over the field size they were trained on); ``0``: the whole grid.
    """

    image_size: int
    upscale: bool = True
    window: int = 0

    def resized_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Shape of a slice after the longest-side resize (its own shape where it is kept)."""
        if not self.upscale and max(shape) <= self.image_size:
            return (int(shape[0]), int(shape[1]))
        scale = self.image_size / max(shape)
        return tuple(int(round(s * scale)) for s in shape)  # type: ignore[return-value]

    def to_grid(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``[x, y]`` image in [-1, 1] and label map -> ``(1, S, S)`` tensors (area / nearest, padded -1 / 0)."""
        size = self.image_size
        img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        lab = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))[None]
        if self.upscale or max(image.shape) > size:
            img = Resize(size, size_mode="longest", mode="area")(img)
            lab = Resize(size, size_mode="longest", mode="nearest")(lab)
        img = SpatialPad((size, size), value=-1.0)(img)
        lab = SpatialPad((size, size))(lab)
        return convert_to_tensor(img, track_meta=False), convert_to_tensor(lab, track_meta=False).round().long()

    def from_grid(self, generated: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
        """``(1, S, S)`` model output -> ``[x, y]`` slice of ``shape``: crop the padding, resize back (bilinear)."""
        rx, ry = self.resized_shape(shape)
        bx, by = (self.image_size - rx) // 2, (self.image_size - ry) // 2
        crop = generated[:, bx : bx + rx, by : by + ry].float()
        if (rx, ry) != tuple(shape):
            crop = F.interpolate(crop[None], size=tuple(shape), mode="bilinear", align_corners=False)[0]
        return crop[0].numpy()
