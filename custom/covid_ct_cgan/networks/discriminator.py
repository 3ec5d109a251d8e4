"""Discriminators: pix2pixHD's N-layer PatchGAN, the multi-resolution discriminator, the local discriminator on
crops around the synthesised region (with its crop geometry) and the DFM weighting net."""

from typing import Any, cast
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from .blocks import NORMS, downsample, init_normal_, norm_layer
from .recording import records_arguments

DFM_MODES: tuple[str, ...] = ("dynamic", "dynamic_from_half", "fixed", "equal")
# the discriminators' normalisations: the norm layers of :func:`~covid_ct_cgan.networks.blocks.norm_layer`, or
# "spectral" (spectral normalisation of every convolution's weight, Miyato et al. 2018, and no norm layer)
D_NORMS: tuple[str, ...] = (*NORMS, "spectral")
KERNEL = 4
PADDING = 2  # pix2pixHD: ceil((kernel - 1) / 2); pix2pix uses 1
MAX_CHANNELS = 512


def feature_channels(ndf: int, n_layers: int) -> list[int]:
    """Channels of every output of an :class:`NLayerDiscriminator`, the patch prediction (1) last.

    Args:
        ndf: width of the first layer.
        n_layers: number of stride-2 layers.

    Returns:
        ``n_layers + 2`` channel counts.
    """
    return [min(ndf * 2**i, MAX_CHANNELS) for i in range(n_layers + 1)] + [1]


def in_channels_for(ndf: int, n_layers: int, feature_index: int) -> int:
    """Channels of the intermediate discriminator feature that :class:`DfmWeight` looks at.

    Args:
        ndf: discriminator width.
        n_layers: discriminator stride-2 layers.
        feature_index: index into the discriminator's feature list, ``0 .. n_layers``
            (intermediate features only; the patch prediction is not one).

    Returns:
        number of channels.

    Raises:
        ValueError: ``feature_index`` out of range.
    """
    if not 0 <= feature_index <= n_layers:
        raise ValueError(f"feature_index must be in 0..{n_layers} (intermediate features), got {feature_index}")
    return feature_channels(ndf, n_layers)[feature_index]


def receptive_field(strides: list[int], kernel: int = KERNEL) -> int:
    """Receptive field (pixels per side) of one output of a stack of ``kernel`` x ``kernel`` convolutions.

    ``1 + sum_i (kernel - 1) * prod_{j < i} stride_j``; padding does not change it.

    Args:
        strides: the stride of every convolution, input side first.
        kernel: their kernel size.

    Returns:
        the receptive field in input pixels (pix2pix's 70 for ``n_layers`` 3).
    """
    field, jump = 1, 1
    for stride in strides:
        field += (kernel - 1) * jump
        jump *= stride
    return field


class NLayerDiscriminator(nn.Module):
    """pix2pixHD's N-layer PatchGAN returning all intermediate features (pix2pix's ``basic`` D with ``n_layers`` 3).

    4x4 convolutions: ``n_layers`` with stride 2 (the first without norm), one
    with stride 1, then a 1-channel stride-1 convolution without sigmoid (raw
    scores for the least-squares or the cross-entropy-with-logits GAN loss).
    LeakyReLU(0.2) after every hidden layer. With ``n_layers`` 3 every patch
    score sees 70x70 input pixels (:attr:`receptive_field`), whatever the padding.

    Args:
        in_channels: map channels plus image channels.
        ndf: width of the first layer (doubling, at most 512).
        n_layers: stride-2 layers.
        norm: normalisation, one of :data:`D_NORMS`: pix2pixHD ``"instance"``, pix2pix ``"batch"``,
            ``"none"``, or ``"spectral"`` (every convolution spectrally normalised with
            ``torch.nn.utils.parametrizations.spectral_norm``, no norm layer). Instance norm standardises
            each channel per image and so discards the texture energy that tells a flat or blurred region
            from real lung (``benchmarks/critic_test.py`` measures it).
        padding: zero padding of every convolution (pix2pixHD 2, pix2pix 1); at most 2.
        use_bias: bias of the convolutions followed by a norm layer (pix2pix: ``False``
            with batch norm, whose shift makes it redundant); the first and last convolutions
            always have one.
        init_gain: ``None`` keeps PyTorch's initialisation; a number draws the weights as
            pix2pix does, see :func:`~covid_ct_cgan.networks.blocks.init_normal_`.

    Returns (forward):
        list of ``n_layers + 2`` feature maps; the last is the patch prediction ``(B, 1, h, w)``.

    Raises:
        ValueError: ``padding`` outside 0..2, unknown ``norm``.
    """

    __jit_unused_properties__ = ["receptive_field"]

    def __init__(
        self,
        in_channels: int,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "instance",
        padding: int = PADDING,
        use_bias: bool = True,
        init_gain: float | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= padding <= KERNEL // 2:
            raise ValueError(f"padding must be in 0..{KERNEL // 2}, got {padding}")
        if norm not in D_NORMS:
            raise ValueError(f"norm must be one of {D_NORMS}, got {norm!r}")
        spectral = norm == "spectral"
        if spectral:
            norm = "none"
        ch = feature_channels(ndf, n_layers)
        layers = [nn.Sequential(nn.Conv2d(in_channels, ch[0], KERNEL, 2, padding), nn.LeakyReLU(0.2, inplace=True))]
        strides = [2]
        for i in range(1, n_layers + 1):
            stride = 2 if i < n_layers else 1
            layers.append(
                nn.Sequential(
                    nn.Conv2d(ch[i - 1], ch[i], KERNEL, stride, padding, bias=use_bias),
                    norm_layer(norm, ch[i]),
                    nn.LeakyReLU(0.2, inplace=True),
                )
            )
            strides.append(stride)
        layers.append(nn.Sequential(nn.Conv2d(ch[n_layers], 1, KERNEL, 1, padding)))
        strides.append(1)
        self.layers = nn.ModuleList(layers)
        self.strides = strides
        self.padding = padding
        if init_gain is not None:
            init_normal_(self, init_gain)
        if spectral:  # after the initialisation, which draws the (then original) weights
            for conv in [m for m in self.modules() if isinstance(m, nn.Conv2d)]:
                spectral_norm(conv)

    @property
    def receptive_field(self) -> int:
        """Input pixels (per side) that one patch score sees: 70 with ``n_layers`` 3."""
        return receptive_field(self.strides)

    def forward(self, x: Tensor) -> list[Tensor]:
        features: list[Tensor] = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features

    @torch.jit.unused
    def region_masks(self, mask: Tensor) -> list[Tensor]:
        """Which outputs of every layer see a region: 1 where the receptive field touches it.

        Max pooling with the convolutions' geometry (4x4, same strides and padding)
        marks an output as soon as one input in its window is marked, layer after
        layer, which is exactly "the receptive field touches the region".

        Args:
            mask: ``(B, 1, H, W)`` region in ``[0, 1]`` at this discriminator's input size.

        Returns:
            one ``(B, 1, h, w)`` mask per output, shaped like :meth:`forward`'s features.
        """
        masks = []
        for stride in self.strides:
            mask = nn.functional.max_pool2d(mask, KERNEL, stride, self.padding)
            masks.append(mask)
        return masks

    @torch.jit.unused
    def patch_centres(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Input coordinates (pixels, may lie just outside the image) of the centre of every patch score's view.

        Each convolution moves the centre of output ``i`` to ``i * stride - padding + (kernel - 1) / 2`` of its
        input; chained over the layers this is ``start + i * jump``.

        Args:
            height: input height.
            width: input width.

        Returns:
            ``(ys, xs)``: 1-D float tensors, one entry per row / column of the patch prediction.
        """
        start, jump, h, w = 0.0, 1, height, width
        for stride in self.strides:
            start += (-self.padding + (KERNEL - 1) / 2) * jump
            jump *= stride
            h, w = (h + 2 * self.padding - KERNEL) // stride + 1, (w + 2 * self.padding - KERNEL) // stride + 1
        return start + jump * torch.arange(h, dtype=torch.float32), start + jump * torch.arange(w, dtype=torch.float32)

    @torch.jit.unused
    def soft_region_mask(self, mask: Tensor) -> Tensor:
        """How much of a region each patch score sees: 1 when its view is centred on the region, 0 when it
        does not reach it (the soft mask of AOT-GAN's SM-PatchGAN, with this network's own geometry).

        The region is grey-dilated with a Gaussian of ``sigma = receptive_field / 6`` cut off at half the
        receptive field (:func:`gaussian_dilation`: ``exp(-d^2 / (2 sigma^2))`` at distance ``d`` from the
        nearest region pixel, so a region pixel at the edge of the view weighs ``exp(-4.5)``), then read at the
        centre of every patch's view (:meth:`patch_centres`, bilinear). AOT-GAN blurs its masks with a
        Gaussian of sigma 10 for its 70-pixel PatchGAN, about the same width; a dilation, unlike its blur,
        keeps a lesion much smaller than the view fully "synthesised" at its centre.

        Args:
            mask: ``(B, 1, H, W)`` region (values in ``[0, 1]``) at this discriminator's input size.

        Returns:
            ``(B, 1, h, w)`` values in ``[0, 1]``, shaped like the patch prediction.
        """
        field = self.receptive_field
        height, width = mask.shape[-2:]
        ys, xs = self.patch_centres(height, width)
        # the views of the border patches are centred past the image, on the convolutions' zero padding, which
        # is the same in the real and the fake pair: dilate on a canvas that holds every centre, the region's
        # border pixels repeated into it (a view centred there sees the image's nearest pixels, not padding)
        margin = int(np.ceil(max(-float(ys[0]), -float(xs[0]), float(ys[-1]) - height + 1, float(xs[-1]) - width + 1, 0))) + 1
        canvas = nn.functional.pad(mask.detach().float(), (margin, margin, margin, margin), mode="replicate")
        with torch.no_grad():
            soft = gaussian_dilation(canvas, field / 6.0, field // 2)
        ys, xs = ys + margin, xs + margin
        # grid_sample's normalised coordinates (align_corners: -1 and 1 are the centres of the corner pixels)
        gy = (2 * ys / (height + 2 * margin - 1) - 1).to(soft.device)
        gx = (2 * xs / (width + 2 * margin - 1) - 1).to(soft.device)
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)
        grid = grid.expand(mask.shape[0], *grid.shape)
        return nn.functional.grid_sample(soft, grid, mode="bilinear", padding_mode="border", align_corners=True)


def gaussian_dilation(mask: Tensor, sigma: float, radius: int) -> Tensor:
    """Grey dilation of a mask by a Gaussian: ``max over q of mask(q) * exp(-|p - q|^2 / (2 sigma^2))``.

    For a 0/1 mask this is ``exp(-d^2 / (2 sigma^2))`` with ``d`` the distance from ``p`` to the nearest
    mask pixel, 0 beyond ``radius`` pixels along either axis. The Gaussian is a product of one-dimensional
    ones, so the maximum is taken along the columns, then the rows.

    Args:
        mask: ``(B, C, H, W)`` values in ``[0, 1]``.
        sigma: width of the Gaussian in pixels (positive).
        radius: largest offset considered, in pixels (at least 0).

    Returns:
        tensor shaped like ``mask``.

    Raises:
        ValueError: ``sigma`` not positive or ``radius`` negative.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if radius < 0:
        raise ValueError(f"radius must be at least 0, got {radius}")
    weights = [float(np.exp(-(k**2) / (2 * sigma**2))) for k in range(-radius, radius + 1)]
    out = mask
    for dim, pad in ((-1, (radius, radius, 0, 0)), (-2, (0, 0, radius, radius))):
        padded = nn.functional.pad(out, pad)
        size = out.shape[dim]
        dilated = padded.narrow(dim, 0, size) * weights[0]
        for k in range(1, len(weights)):  # a running maximum: no stack of 2 * radius + 1 shifted copies
            dilated = torch.maximum(dilated, padded.narrow(dim, k, size) * weights[k])
        out = dilated
    return out


@records_arguments
class MultiResolutionDiscriminator(nn.Module):
    """D1 on the full-resolution input, D2 (and D3) on the input average-pooled once (twice), as pix2pixHD.

    Args:
        in_channels: map channels plus image channels.
        ndf: width of each PatchGAN.
        n_layers: stride-2 layers of each PatchGAN.
        num_d: number of resolutions (1 to 3; the paper uses 2, pix2pix 1).
        norm: normalisation, one of :data:`D_NORMS` (see :class:`NLayerDiscriminator`).
        padding: convolution padding of each PatchGAN (pix2pixHD 2, pix2pix 1).
        use_bias: bias of the convolutions followed by a norm layer, see :class:`NLayerDiscriminator`.
        init_gain: ``None`` (PyTorch's initialisation) or pix2pix's ``N(0, init_gain)`` initialisation.

    Returns (forward):
        list per scale (D1 = full resolution first) of the feature lists of :class:`NLayerDiscriminator`.

    Raises:
        ValueError: ``num_d`` outside 1..3.
    """

    def __init__(
        self,
        in_channels: int,
        ndf: int = 64,
        n_layers: int = 3,
        num_d: int = 2,
        norm: str = "instance",
        padding: int = PADDING,
        use_bias: bool = True,
        init_gain: float | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= num_d <= 3:
            raise ValueError(f"num_d must be 1, 2 or 3, got {num_d}")
        self.n_layers = n_layers
        self.num_d = num_d
        self.discriminators = nn.ModuleList(
            [NLayerDiscriminator(in_channels, ndf, n_layers, norm, padding, use_bias, init_gain) for _ in range(num_d)]
        )

    def forward(self, x: Tensor) -> list[list[Tensor]]:
        results: list[list[Tensor]] = []
        for i, disc in enumerate(self.discriminators):
            if i > 0:
                x = downsample(x)
            results.append(disc(x))
        return results

    @torch.jit.unused
    def region_masks(self, mask: Tensor) -> list[list[Tensor]]:
        """Per scale and layer, the outputs whose receptive field touches a region (``map+context`` mode).

        The mask is halved with max pooling (3x3, stride 2, padding 1: the
        footprint of the average pooling applied to the input), then followed
        through each PatchGAN with :meth:`NLayerDiscriminator.region_masks`.

        Args:
            mask: ``(B, 1, H, W)`` region to synthesise, values in ``[0, 1]``.

        Returns:
            nested list shaped like :meth:`forward`'s output, each ``(B, 1, h, w)``;
            pass it as ``weights`` to the losses in :mod:`covid_ct_cgan.losses`.
        """
        return self._at_each_scale(mask, lambda disc, scaled: disc.region_masks(scaled))

    @torch.jit.unused
    def soft_region_masks(self, mask: Tensor) -> list[Tensor]:
        """Per scale, how much of a region each patch score sees (:meth:`NLayerDiscriminator.soft_region_mask`).

        The mask is halved for each further scale as in :meth:`region_masks` (max pooling: a half-resolution
        pixel belongs to the region if one of the pixels averaged into it does).

        Args:
            mask: ``(B, 1, H, W)`` region, values in ``[0, 1]``.

        Returns:
            one ``(B, 1, h, w)`` map per scale, shaped like that scale's patch prediction, values in ``[0, 1]``.
        """
        return self._at_each_scale(mask, lambda disc, scaled: disc.soft_region_mask(scaled))

    @torch.jit.unused
    def _at_each_scale(self, mask: Tensor, read: Callable[[NLayerDiscriminator, Tensor], Any]) -> list[Any]:
        """``read(D_k, mask_k)`` for every scale, the mask halved by max pooling before each further scale."""
        out = []
        for i, disc in enumerate(self.discriminators):
            if i > 0:
                mask = nn.functional.max_pool2d(mask, 3, 2, 1)
            out.append(read(cast(NLayerDiscriminator, disc), mask))
        return out


@records_arguments
class LocalDiscriminator(MultiResolutionDiscriminator):
    """Local discriminator of the lesion-inpainting mode: one PatchGAN on fixed-size crops around the region.

    In ``map+context`` mode with ``context_region: lesion`` the composited fake
    differs from the real slice only in the dilated lesions, a few percent of the
    pixels, and the global discriminators settle at chance. As image-completion
    GANs do (Iizuka et al. 2017: a global and a local discriminator), this one
    sees only crops centred on a region component (:func:`region_crop_boxes`),
    taken identically from the real and the composited fake pair (label map and
    image, :func:`crop_patches`). It is the block of :class:`NLayerDiscriminator`
    (instance norm by default, ``norm`` as there) at one scale; its output is nested like
    :class:`MultiResolutionDiscriminator`'s, so the losses and
    :meth:`~MultiResolutionDiscriminator.region_masks` apply unchanged.

    Args:
        in_channels: map channels plus image channels.
        ndf: width of the first layer.
        n_layers: stride-2 layers.
        norm: normalisation, one of :data:`D_NORMS` (see :class:`NLayerDiscriminator`).
        padding: convolution padding.
        use_bias: bias of the convolutions followed by a norm layer.
        init_gain: ``None`` (PyTorch's initialisation) or pix2pix's ``N(0, init_gain)`` initialisation.

    Returns (forward):
        a one-element list holding the crop's feature list (patch prediction last).
    """

    def __init__(
        self,
        in_channels: int,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "instance",
        padding: int = PADDING,
        use_bias: bool = True,
        init_gain: float | None = None,
    ) -> None:
        super().__init__(in_channels, ndf, n_layers, 1, norm, padding, use_bias, init_gain)


def region_crop_boxes(
    region: Tensor, size: int, generator: torch.Generator | None = None
) -> tuple[list[tuple[int, int]], Tensor]:
    """Top-left corners of one ``size`` x ``size`` crop per sample, centred on a random component of its region.

    Per sample, one pixel of ``region > 0.5`` is drawn uniformly, which draws
    its connected component (8-connectivity) in proportion to the component's
    area (a dilated speck of a lesion is seldom worth a crop of its own). If the
    component's bounding box fits into the crop, the crop contains the whole
    component, centred on its box; a larger component gets a crop centred on
    the drawn pixel (a different part of it each time).
    Crops are shifted inside the image at its borders, so a component that fits
    stays inside the crop there too. A sample without region gets the centred
    crop and ``False`` in the returned flags: its local GAN and feature-matching
    terms are skipped (zero weight).

    Args:
        region: ``(B, 1, H, W)`` region masks (values in ``[0, 1]``), on any device.
        size: crop side in pixels, at most ``H`` and ``W``.
        generator: random source of the component and pixel draws (default: torch's global one).

    Returns:
        ``(boxes, has_region)``: ``B`` corners ``(top, left)`` as Python ints, and a ``(B,)`` bool tensor on
        ``region``'s device.

    Raises:
        ValueError: ``region`` is not ``(B, 1, H, W)``, or ``size`` is not in ``1..min(H, W)``.
    """
    if region.ndim != 4 or region.shape[1] != 1:
        raise ValueError(f"region must be (B, 1, H, W), got shape {tuple(region.shape)}")
    height, width = int(region.shape[-2]), int(region.shape[-1])
    if not 1 <= size <= min(height, width):
        raise ValueError(f"crop size must be in 1..{min(height, width)} for {height}x{width} images, got {size}")
    masks = (region.detach()[:, 0] > 0.5).cpu().numpy()
    structure = np.ones((3, 3), dtype=bool)
    boxes: list[tuple[int, int]] = []
    flags: list[bool] = []

    def draw(n: int) -> int:
        return int(torch.randint(n, (1,), generator=generator))

    for mask in masks:
        labels, count = ndimage.label(mask, structure=structure)
        if count == 0:
            boxes.append(((height - size) // 2, (width - size) // 2))
            flags.append(False)
            continue
        all_ys, all_xs = np.nonzero(labels)
        pick = draw(len(all_ys))  # a region pixel: components are drawn in proportion to their area
        ys, xs = np.nonzero(labels == labels[all_ys[pick], all_xs[pick]])
        top, left, y_span, x_span = int(ys.min()), int(xs.min()), int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1
        if y_span <= size and x_span <= size:  # the whole component, centred on its bounding box
            top, left = top - (size - y_span) // 2, left - (size - x_span) // 2
        else:  # larger than the crop: centred on the drawn pixel
            top, left = int(all_ys[pick]) - size // 2, int(all_xs[pick]) - size // 2
        boxes.append((min(max(top, 0), height - size), min(max(left, 0), width - size)))
        flags.append(True)
    return boxes, torch.tensor(flags, dtype=torch.bool, device=region.device)


def crop_patches(x: Tensor, boxes: Sequence[tuple[int, int]], size: int) -> Tensor:
    """Crop ``size`` x ``size`` patches at ``boxes`` (one per sample), differentiably.

    Args:
        x: ``(B, C, H, W)``; crops of the real pair and the fake pair taken with the same
            ``boxes`` are aligned pixel for pixel.
        boxes: ``B`` corners ``(top, left)`` from :func:`region_crop_boxes`.
        size: crop side.

    Returns:
        ``(B, C, size, size)``.

    Raises:
        ValueError: the number of boxes differs from the batch, or a crop leaves the image.
    """
    if len(boxes) != x.shape[0]:
        raise ValueError(f"{len(boxes)} crop boxes for a batch of {x.shape[0]}")
    height, width = x.shape[-2:]
    for top, left in boxes:
        if not (0 <= top <= height - size and 0 <= left <= width - size):
            raise ValueError(f"crop at ({top}, {left}) of size {size} leaves the {height}x{width} image")
    return torch.stack([x[i, :, top : top + size, left : left + size] for i, (top, left) in enumerate(boxes)])


@records_arguments
class DfmWeight(nn.Module):
    """DFM weighting net: the weight ``b`` of D1's feature-matching loss, in ``[low, high]``.

    A small CNN (two 3x3 stride-2 convs with LeakyReLU(0.2), global average
    pool, linear, sigmoid mapped to ``low + (high - low) * sigmoid``) on one
    intermediate feature of D1 (``"dynamic"``) or D2 (``"dynamic_from_half"``).
    Its input is detached, so the only gradients it passes are to its own
    parameters (trained in the discriminator step to maximise the DFM loss, see
    :func:`covid_ct_cgan.losses.dfm_weight_objective`). ``"fixed"`` returns
    ``fixed_weight``; ``"equal"`` returns ``1 / num_d``, which makes the DFM loss
    pix2pixHD's plain average over the scales. The CNN exists in every mode so
    the state dicts match.

    Args:
        in_channels: channels of the chosen feature, see :func:`in_channels_for`.
        mode: ``"dynamic"``, ``"dynamic_from_half"``, ``"fixed"`` or ``"equal"``.
        feature_index: index of the feature in the discriminator's feature list.
        fixed_weight: ``b`` for ``"fixed"``, in ``[0, 1]``.
        bounds: ``(low, high)`` range of the dynamic weight.
        num_d: number of discriminator scales.
        hidden: width of the CNN.

    Returns (forward):
        ``(B,)`` weights.

    Raises:
        ValueError: unknown mode, ``"dynamic_from_half"`` with one scale, bad bounds or fixed weight.
    """

    def __init__(
        self,
        in_channels: int,
        mode: str = "dynamic",
        feature_index: int = 1,
        fixed_weight: float = 0.5,
        bounds: tuple[float, float] = (0.1, 0.9),
        num_d: int = 2,
        hidden: int = 32,
    ) -> None:
        super().__init__()
        if mode not in DFM_MODES:
            raise ValueError(f"mode must be one of {DFM_MODES}, got {mode!r}")
        if mode == "dynamic_from_half" and num_d < 2:
            raise ValueError("mode 'dynamic_from_half' needs num_d >= 2")
        low, high = float(bounds[0]), float(bounds[1])
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"bounds must satisfy 0 <= low < high <= 1, got {bounds}")
        if not 0.0 <= fixed_weight <= 1.0:
            raise ValueError(f"fixed_weight must be in [0, 1], got {fixed_weight}")
        self.mode = mode
        self.feature_index = feature_index
        self.fixed_weight = float(fixed_weight)
        self.low = low
        self.high = high
        self.num_d = num_d
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.fc = nn.Linear(hidden, 1)

    @property
    def learnable(self) -> bool:
        """Whether the weight comes from the CNN (so the trainer should optimise it)."""
        return self.mode in ("dynamic", "dynamic_from_half")

    def forward(self, features: list[list[Tensor]]) -> Tensor:
        """Compute ``b`` from the discriminator's features (list per scale of feature lists)."""
        if self.mode == "dynamic" or self.mode == "dynamic_from_half":
            scale = 0 if self.mode == "dynamic" else 1
            h = self.net(features[scale][self.feature_index].detach()).mean(dim=(2, 3))
            return self.low + (self.high - self.low) * torch.sigmoid(self.fc(h)).squeeze(1)
        ref = features[0][0]
        value = self.fixed_weight if self.mode == "fixed" else 1.0 / self.num_d
        return torch.full((ref.shape[0],), value, dtype=ref.dtype, device=ref.device)
