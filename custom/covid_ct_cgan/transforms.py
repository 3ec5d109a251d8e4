"""Dictionary transforms that the bundle configs chain with MONAI's own.

The configs (``bundle/configs/train.yaml``) compose the whole chain:
``LoadImaged`` -> :class:`ScaleIntensityToModeld` (HU window or 8 bit to
[-1, 1]) -> resize/pad to ``image_size`` -> Table I augmentations
(``RandZoomd``, ``RandAffined``, ``Rand2DElasticd``, ``RandGaussianNoised``)
-> :class:`MakeConditiond` (one-hot label map, optional context channel, the
region the generator must fill). Only what MONAI lacks lives here.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Resized

from . import intensity
from .labels import GGO, num_classes as default_num_classes

CONDITIONS = ("map", "map+context")
CONTEXT_REGIONS = ("lung", "lesion")


class ScaleIntensityToModeld(MapTransform):
    """Map CT intensities to the model's [-1, 1].

    The intensity scale of each item comes from its ``scale`` entry in the
    datalist (``"hu"``: clip to the lung window, ``"8bit"``: 0..255); items
    without one use ``default_scale``.

    Args:
        keys: image keys to scale.
        scale_key: the item's key naming its intensity scale.
        default_scale: scale for items that do not name one.
        window_level: HU window level (default -600).
        window_width: HU window width (default 1500).
    """

    def __init__(
        self,
        keys: KeysCollection,
        scale_key: str = "scale",
        default_scale: str = "hu",
        window_level: float = intensity.DEFAULT_WINDOW_LEVEL,
        window_width: float = intensity.DEFAULT_WINDOW_WIDTH,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        intensity.window_bounds(window_level, window_width)  # validates the width
        if default_scale not in intensity.SCALES:
            raise ValueError(f"default_scale must be one of {intensity.SCALES}, got {default_scale!r}")
        self.scale_key = scale_key
        self.default_scale = default_scale
        self.window_level = float(window_level)
        self.window_width = float(window_width)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        scale = d.get(self.scale_key, self.default_scale)
        for key in self.key_iterator(d):
            d[key] = intensity.to_model(d[key], scale, self.window_level, self.window_width)
        return d


def condition_channels(num_classes: int, condition: str = "map") -> int:
    """Number of generator input channels for a conditioning mode."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    return num_classes + (1 if condition == "map+context" else 0)


def synthesis_region(label: torch.Tensor, context_region: str = "lung", dilation: int = 3) -> torch.Tensor:
    """Boolean region the generator fills: the lung, or the lesions dilated by ``dilation`` pixels.

    Args:
        label: integer label map, shape (1, H, W) or (B, 1, H, W).
        context_region: ``"lung"`` (lung and lesions) or ``"lesion"`` (lesions only, dilated).
        dilation: dilation radius in pixels for ``"lesion"``.

    Returns:
        Boolean tensor of the same shape.
    """
    if context_region == "lung":
        return label > 0
    if context_region != "lesion":
        raise ValueError(f"context_region must be one of {CONTEXT_REGIONS}, got {context_region!r}")
    lesion = (label >= GGO).float()
    if dilation > 0:
        squeeze = lesion.ndim == 3
        x = lesion.unsqueeze(0) if squeeze else lesion
        x = F.max_pool2d(x, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
        lesion = x.squeeze(0) if squeeze else x
    return (lesion > 0) & (label > 0)


def slice_region(
    label: np.ndarray, condition: str = "map", context_region: str = "lung", context_dilation: int = 0, image_size: int = 1,
    upscale: bool = True,
) -> np.ndarray:
    """The region synthesis fills in one label-map slice at the slice's own resolution.

    The lung, or with ``map+context`` and ``context_region: lesion`` the lesions dilated by
    ``context_dilation`` model pixels, scaled to the slice (``x max(H, W) / image_size``; a slice the model
    sees at its own pixel size, ``upscale=False`` and no longer than ``image_size``, is not scaled).
    Synthesis and the evaluation of what it drew use this one rule.

    Args:
        label: integer label map ``(H, W)``.
        condition: the model's conditioning mode.
        context_region: ``"lung"`` or ``"lesion"`` (with ``map+context``).
        context_dilation: lesion dilation in model pixels.
        image_size: the model grid's side.
        upscale: whether the model grid resizes slices shorter than ``image_size`` up
            (:class:`~covid_ct_cgan.inference.ModelGrid`).

    Returns:
        Boolean ``(H, W)`` mask.
    """
    mode = context_region if condition == "map+context" else "lung"
    scale = max(label.shape[:2]) / int(image_size)
    dilation = int(round(int(context_dilation) * (scale if upscale or scale > 1 else 1.0)))
    return synthesis_region(torch.from_numpy(np.asarray(label, dtype=np.int64))[None], mode, dilation)[0].numpy()


def make_condition(
    label: torch.Tensor,
    image: torch.Tensor | None,
    num_classes: int,
    condition: str = "map",
    context_region: str = "lung",
    dilation: int = 3,
    blank_value: float = 0.0,
    region: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the generator input and the synthesis region from a label map.

    Args:
        label: integer label map (1, H, W) or (B, 1, H, W).
        image: the real slice in [-1, 1], same shape; needed for ``map+context``.
        num_classes: one-hot channels.
        condition: ``"map"`` (one-hot map alone, the paper) or ``"map+context"``
            (one more channel: the real slice with the region blanked).
        context_region: region blanked and synthesised, ``"lung"`` or ``"lesion"``.
        dilation: lesion dilation in pixels for ``"lesion"``.
        blank_value: value written into the blanked region of the context channel.
        region: the region to blank and synthesise, same shape as ``label``; default: the one
            ``label`` defines (synthesis of a lesion-augmented map passes the union of the original
            and the new lesions' regions, so that no real lesion stays unlabelled in the composite).

    Returns:
        ``(condition, region)``: float (C, H, W) / (B, C, H, W) and float 0/1 region mask.

    Raises:
        ValueError: unknown mode, labels outside ``0..num_classes-1``, or no image for context.
    """
    channel_dim = 0 if label.ndim == 3 else 1
    lab = label.long().squeeze(channel_dim)
    if lab.numel() and (lab.min() < 0 or lab.max() >= num_classes):
        raise ValueError(f"label map values must be in 0..{num_classes - 1}, found {int(lab.min())}..{int(lab.max())}")
    onehot = F.one_hot(lab, num_classes).movedim(-1, channel_dim).float()
    if region is None:
        region = synthesis_region(label, context_region if condition == "map+context" else "lung", dilation)
    region = region.float()
    if condition == "map":
        return onehot, region
    if condition != "map+context":
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    if image is None:
        raise ValueError("condition 'map+context' needs the real image")
    context = torch.where(region > 0, torch.full_like(image, blank_value), image.float())
    return torch.cat([onehot, context], dim=channel_dim), region


class FitLongestSided(MapTransform):
    """Resize so the longest side is ``size`` (MONAI's ``Resized`` with ``size_mode="longest"``), or, with
    ``upscale=False``, only shrink slices longer than ``size`` and keep the others at their own pixel size.

    ``upscale=False`` is native-resolution training (``crop_size`` in ``train.yaml``): a slice is never
    interpolated up, so the lesion texture the critics and the realism measures look at is the scanner's.

    Args:
        keys: keys to resize (image and label map, same geometry).
        size: the longest side after resizing.
        mode: interpolation per key (``"area"`` for images, ``"nearest"`` for label maps).
        upscale: resize slices shorter than ``size`` up too.
    """

    def __init__(self, keys: KeysCollection, size: int, mode: Any = "area", upscale: bool = True) -> None:
        super().__init__(keys)
        self.resize = Resized(keys, size, size_mode="longest", mode=mode)
        self.size = int(size)
        self.upscale = bool(upscale)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        longest = max(int(s) for s in torch.as_tensor(d[self.first_key(d)]).shape[1:])
        if self.upscale or longest > self.size:
            d = dict(self.resize(d))
        return d


class MakeConditiond(MapTransform):
    """Add the generator input (``condition_key``) and the synthesis region (``region_key``).

    Runs after augmentation so the one-hot map is computed once per sample in
    the data loader, not in the training loop. See :func:`make_condition`.
    """

    def __init__(
        self,
        label_key: str = "label",
        image_key: str = "image",
        num_classes: int = default_num_classes(),
        condition: str = "map",
        context_region: str = "lung",
        dilation: int = 3,
        condition_key: str = "condition",
        region_key: str = "region",
    ) -> None:
        super().__init__([label_key])
        condition_channels(num_classes, condition)  # validates the mode
        if context_region not in CONTEXT_REGIONS:
            raise ValueError(f"context_region must be one of {CONTEXT_REGIONS}, got {context_region!r}")
        self.label_key, self.image_key = label_key, image_key
        self.num_classes, self.condition = num_classes, condition
        self.context_region, self.dilation = context_region, dilation
        self.condition_key, self.region_key = condition_key, region_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        label = torch.as_tensor(d[self.label_key])
        image = torch.as_tensor(d[self.image_key]) if self.image_key in d else None
        cond, region = make_condition(
            label, image, self.num_classes, self.condition, self.context_region, self.dilation
        )
        d[self.condition_key] = cond
        d[self.region_key] = region
        return d

