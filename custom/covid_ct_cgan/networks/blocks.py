"""Building blocks shared by the generators and discriminators (pix2pixHD style)."""

from __future__ import annotations

from torch import Tensor, nn

NORMS: tuple[str, ...] = ("instance", "batch", "none")


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


def downsample(x: Tensor) -> Tensor:
    """Halve an image the way pix2pixHD does: ``avg_pool2d(3, stride 2, padding 1, count_include_pad=False)``.

    Args:
        x: ``(B, C, H, W)`` tensor.

    Returns:
        ``(B, C, ceil(H / 2), ceil(W / 2))`` tensor.
    """
    return nn.functional.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
