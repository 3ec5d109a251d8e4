"""Building blocks shared by the generators and discriminators (pix2pixHD style)."""

from __future__ import annotations

from typing import TypeVar

from torch import Tensor, nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)

NORMS: tuple[str, ...] = ("instance", "batch", "none")
UPSAMPLINGS: tuple[str, ...] = ("transposed", "resize")


def norm_layer(norm: str, channels: int) -> nn.Module:
    """Build a 2D normalisation layer by name.

    Args:
        norm: ``"instance"`` (``InstanceNorm2d(affine=False)``, as pix2pixHD),
            ``"batch"`` (``BatchNorm2d``) or ``"none"`` (identity).
        channels: number of feature channels.

    Returns:
        the layer.

    Raises:
        ValueError: unknown ``norm``.
    """
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def init_normal_(module: ModuleT, gain: float = 0.02) -> ModuleT:
    """pix2pix's (and pix2pixHD's) weight initialisation, in place.

    Convolution, transposed-convolution and linear weights are drawn from
    ``N(0, gain)``, batch-norm scales from ``N(1, gain)``; their biases are set to 0.
    Other modules keep PyTorch's default initialisation.

    Args:
        module: network to initialise (every submodule is visited).
        gain: standard deviation of the normal distributions (pix2pix ``init_gain``: 0.02).

    Returns:
        ``module`` itself.

    Raises:
        ValueError: ``gain`` not positive.
    """
    if not gain > 0:
        raise ValueError(f"init gain must be positive, got {gain}")
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module


class ResnetBlock(nn.Module):
    """pix2pixHD residual block: ``x + (pad, 3x3 conv, norm, ReLU, pad, 3x3 conv, norm)(x)``.

    Args:
        channels: input and output channels.
        norm: normalisation name, see :func:`norm_layer`.
    """

    def __init__(self, channels: int, norm: str = "instance") -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3),
            norm_layer(norm, channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3),
            norm_layer(norm, channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


def upsample_layers(in_channels: int, out_channels: int, upsampling: str = "transposed") -> list[nn.Module]:
    """A stride-2 upsampling convolution by name.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        upsampling: ``"transposed"`` (pix2pixHD: ``ConvTranspose2d(3, stride 2)``; its kernel overlaps every other
            output pixel twice, which draws a checkerboard) or ``"resize"`` (nearest-neighbour doubling, then a
            reflection-padded 3x3 convolution: every output pixel sees the same taps, no checkerboard;
            Odena et al. 2016, "Deconvolution and checkerboard artifacts").

    Returns:
        the layers, to be followed by a normalisation and an activation.

    Raises:
        ValueError: unknown ``upsampling``.
    """
    if upsampling == "transposed":
        return [nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)]
    if upsampling == "resize":
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1), nn.Conv2d(in_channels, out_channels, 3)]
    raise ValueError(f"upsampling must be one of {UPSAMPLINGS}, got {upsampling!r}")


def downsample(x: Tensor) -> Tensor:
    """Halve an image the way pix2pixHD does: ``avg_pool2d(3, stride 2, padding 1, count_include_pad=False)``.

    Args:
        x: ``(B, C, H, W)`` tensor.

    Returns:
        ``(B, C, ceil(H / 2), ceil(W / 2))`` tensor.
    """
    return nn.functional.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
