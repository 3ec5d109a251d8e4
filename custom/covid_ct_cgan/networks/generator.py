"""Generators: global G1, local G2, the global-local generator with DESUM, and the pix2pix U-Net.

The global-local generator follows pix2pixHD's ``LocalEnhancer`` but keeps G1
and G2 as separate submodules (``global_net``, ``local_net``) so that each
training stage can train one of them alone, and replaces pix2pixHD's plain sum
``F1 + F2`` by the paper's dynamic element-wise sum (DESUM)
``a * F1 + (1 - a) * F2`` with one weight ``a`` per sample.
"""


import torch
from torch import Tensor, nn

from .blocks import ResnetBlock, downsample, init_normal_, norm_layer, upsample_layers
from .recording import records_arguments

GENERATOR_MODES: tuple[str, ...] = ("global", "local", "joint")
DESUM_MODES: tuple[str, ...] = ("dynamic", "dynamic_from_global", "fixed", "sum")


def _check_divisible(x: Tensor, factor: int, name: str) -> None:
    if torch.jit.is_tracing():  # shapes are fixed in a trace; the check would only warn
        return
    if x.shape[-2] % factor != 0 or x.shape[-1] % factor != 0:
        raise ValueError(f"{name}: spatial size must be divisible by {factor}, got {list(x.shape[-2:])}")


class GlobalGenerator(nn.Module):
    """G1, pix2pixHD's global generator: 7x7 conv, stride-2 convs, residual blocks, transposed convs, 7x7 conv, tanh.

    Args:
        in_channels: input channels (one-hot classes, plus one with ``map+context`` conditioning).
        out_channels: output image channels.
        ngf: width of the first and last feature maps.
        n_downsampling: number of stride-2 convolutions (each doubles the width).
        n_blocks: residual blocks at the bottleneck.
        norm: normalisation, see :func:`~covid_ct_cgan.networks.blocks.norm_layer`.
        upsampling: ``"transposed"`` (pix2pixHD) or ``"resize"``, see :func:`~covid_ct_cgan.networks.blocks.upsample_layers`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        ngf: int = 64,
        n_downsampling: int = 3,
        n_blocks: int = 9,
        norm: str = "instance",
        upsampling: str = "transposed",
    ) -> None:
        super().__init__()
        self.size_factor = 2**n_downsampling
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, kernel_size=7),
            norm_layer(norm, ngf),
            nn.ReLU(inplace=True),
        ]
        for i in range(n_downsampling):
            ch = ngf * 2**i
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), norm_layer(norm, ch * 2), nn.ReLU(inplace=True)]
        layers += [ResnetBlock(ngf * 2**n_downsampling, norm) for _ in range(n_blocks)]
        for i in range(n_downsampling, 0, -1):
            ch = ngf * 2**i
            layers += [*upsample_layers(ch, ch // 2, upsampling), norm_layer(norm, ch // 2), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, kernel_size=7), nn.Tanh())

    @torch.jit.export
    def features(self, x: Tensor) -> Tensor:
        """G1's last feature map before the output head (F1).

        Args:
            x: ``(B, in_channels, H, W)`` map, ``H`` and ``W`` divisible by ``2 ** n_downsampling``.

        Returns:
            ``(B, ngf, H, W)`` features.
        """
        _check_divisible(x, self.size_factor, "GlobalGenerator")
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class LocalEnhancer(nn.Module):
    """G2, pix2pixHD's local enhancer: ``down`` (7x7 conv, stride-2 conv), residual ``blocks``, ``up``, ``head``.

    With ``ngf`` half of G1's, ``down``'s output (F2) has the shape of G1's features
    on the half-resolution map, so the two can be fused.

    Args:
        in_channels: input channels.
        out_channels: output image channels.
        ngf: width of the full-resolution feature maps (``down`` outputs ``2 * ngf``).
        n_blocks: residual blocks at half resolution.
        norm: normalisation name.
        upsampling: ``"transposed"`` (pix2pixHD) or ``"resize"``, see :func:`~covid_ct_cgan.networks.blocks.upsample_layers`.
    """

    def __init__(
        self, in_channels: int, out_channels: int = 1, ngf: int = 32, n_blocks: int = 3, norm: str = "instance",
        upsampling: str = "transposed",
    ) -> None:
        super().__init__()
        self.down = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, kernel_size=7),
            norm_layer(norm, ngf),
            nn.ReLU(inplace=True),
            nn.Conv2d(ngf, ngf * 2, 3, stride=2, padding=1),
            norm_layer(norm, ngf * 2),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.Sequential(*[ResnetBlock(ngf * 2, norm) for _ in range(n_blocks)])
        self.up = nn.Sequential(*upsample_layers(ngf * 2, ngf, upsampling), norm_layer(norm, ngf), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, kernel_size=7), nn.Tanh())

    def forward(self, x: Tensor, fused: Tensor | None = None) -> Tensor:
        """Run G2.

        Args:
            x: ``(B, in_channels, H, W)`` full-resolution map, ``H``, ``W`` even.
            fused: features to feed the residual blocks instead of G2's own ``down(x)``
                (the DESUM output in the joint stage); ``x`` is then not used.

        Returns:
            ``(B, out_channels, H, W)`` image in ``[-1, 1]``.
        """
        if fused is None:
            _check_divisible(x, 2, "LocalEnhancer")
            h = self.down(x)
        else:
            h = fused
        return self.head(self.up(self.blocks(h)))


class DesumWeight(nn.Module):
    """DESUM weighting net: three 3x3 stride-2 convs (LeakyReLU 0.2), global average pool, two linear layers, sigmoid.

    No normalisation, so that the weight can differ between samples.

    Args:
        in_channels: channels of the feature map it looks at.
        hidden: width of its convolutions and hidden linear layer.

    Returns (forward):
        ``(B,)`` weights in ``(0, 1)``.
    """

    def __init__(self, in_channels: int, hidden: int = 32) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.fc = nn.Sequential(nn.Linear(hidden, hidden), nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden, 1))

    def forward(self, features: Tensor) -> Tensor:
        pooled = self.convs(features).mean(dim=(2, 3))
        return torch.sigmoid(self.fc(pooled)).squeeze(1)


@records_arguments
class GlobalLocalGenerator(nn.Module):
    """The paper's global-local generator: G1 (``global_net``), G2 (``local_net``) and the DESUM net (``desum``).

    All three submodules exist in every mode, so the state dicts of all stages
    have the same keys and a stage checkpoint can hand one part over to the
    next stage (see :func:`~covid_ct_cgan.networks.handover.load_generator_part`).

    Modes (``mode``, change with :meth:`set_mode`):

    - ``"global"`` (stage 1): ``global_net(x)``, ``x`` is the half-resolution map.
    - ``"local"`` (stage 2): ``local_net(x)``, G2 alone on the full-resolution map.
    - ``"joint"`` (stage 3 and inference): ``x`` full resolution;
      ``F1 = global_net.features(downsample(x))``, ``F2 = local_net.down(x)``,
      the residual blocks of G2 take the DESUM output.

    DESUM (``desum``): ``fused = a * F1 + (1 - a) * F2`` with ``a`` from the
    weighting net on F2 (``"dynamic"``), on F1 (``"dynamic_from_global"``), a
    constant (``"fixed"``), or ``fused = F1 + F2`` exactly (``"sum"``, pix2pixHD).

    After each forward ``last_desum_weight`` holds the detached ``(B,)`` weight
    ``a`` (joint mode with a weighted DESUM), else ``None``.

    Args:
        in_channels: input channels of the map.
        out_channels: output image channels.
        ngf: G1's width; G2 uses ``ngf // 2``.
        n_downsampling: G1's stride-2 convolutions.
        n_blocks_global: G1's residual blocks.
        n_blocks_local: G2's residual blocks.
        norm: normalisation name.
        mode: ``"global"``, ``"local"`` or ``"joint"``.
        desum: DESUM mode, see above.
        desum_fixed_weight: ``a`` for ``desum="fixed"``, in ``[0, 1]``.
        desum_hidden: width of the DESUM weighting net.
        upsampling: the upsampling convolutions of G1 and G2: ``"transposed"`` (pix2pixHD, the paper) or
            ``"resize"`` (nearest doubling + 3x3 convolution, no checkerboard).

    Raises:
        ValueError: unknown ``mode``, ``desum`` or ``upsampling``, odd ``ngf``, ``desum_fixed_weight`` outside ``[0, 1]``.
    """

    last_desum_weight: Tensor | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        ngf: int = 64,
        n_downsampling: int = 3,
        n_blocks_global: int = 9,
        n_blocks_local: int = 3,
        norm: str = "instance",
        mode: str = "joint",
        desum: str = "dynamic",
        desum_fixed_weight: float = 0.5,
        desum_hidden: int = 32,
        upsampling: str = "transposed",
    ) -> None:
        super().__init__()
        if desum not in DESUM_MODES:
            raise ValueError(f"desum must be one of {DESUM_MODES}, got {desum!r}")
        if ngf % 2:
            raise ValueError(f"ngf must be even (G2 uses ngf // 2), got {ngf}")
        if not 0.0 <= desum_fixed_weight <= 1.0:
            raise ValueError(f"desum_fixed_weight must be in [0, 1], got {desum_fixed_weight}")
        self.global_net = GlobalGenerator(in_channels, out_channels, ngf, n_downsampling, n_blocks_global, norm, upsampling)
        self.local_net = LocalEnhancer(in_channels, out_channels, ngf // 2, n_blocks_local, norm, upsampling)
        self.desum = DesumWeight(ngf, desum_hidden)
        self.desum_mode = desum
        self.desum_fixed_weight = float(desum_fixed_weight)
        self.full_size_factor = 2 ** (n_downsampling + 1)
        self.mode = "joint"
        self.set_mode(mode)
        self.last_desum_weight = None

    @torch.jit.unused
    def set_mode(self, mode: str) -> None:
        """Switch between ``"global"``, ``"local"`` and ``"joint"`` (the trainer calls this per stage).

        Raises:
            ValueError: unknown ``mode``.
        """
        if mode not in GENERATOR_MODES:
            raise ValueError(f"mode must be one of {GENERATOR_MODES}, got {mode!r}")
        self.mode = mode

    def desum_weight(self, f1: Tensor, f2: Tensor) -> Tensor:
        """The DESUM weight ``a``, one per sample (not defined for ``desum="sum"``).

        Args:
            f1: G1's features on the half-resolution map.
            f2: G2's down-sampled features on the full map.

        Returns:
            ``(B,)`` tensor.
        """
        if self.desum_mode == "dynamic":
            return self.desum(f2)
        if self.desum_mode == "dynamic_from_global":
            return self.desum(f1)
        return torch.full((f2.shape[0],), self.desum_fixed_weight, dtype=f2.dtype, device=f2.device)

    def fuse(self, f1: Tensor, f2: Tensor) -> Tensor:
        """DESUM: ``a * F1 + (1 - a) * F2``, or ``F1 + F2`` for ``desum="sum"``; sets ``last_desum_weight``."""
        if self.desum_mode == "sum":
            self.last_desum_weight = None
            return f1 + f2
        a = self.desum_weight(f1, f2)
        self.last_desum_weight = a.detach()
        a = a.view(-1, 1, 1, 1)
        return a * f1 + (1.0 - a) * f2

    def forward(self, x: Tensor) -> Tensor:
        """Synthesise an image from a map.

        Args:
            x: ``(B, in_channels, H, W)``: half-resolution map in ``"global"`` mode,
                full-resolution map otherwise (joint: ``H``, ``W`` divisible by ``2 ** (n_downsampling + 1)``).

        Returns:
            ``(B, out_channels, H, W)`` image in ``[-1, 1]``.
        """
        if self.mode == "global":
            self.last_desum_weight = None
            return self.global_net(x)
        if self.mode == "local":
            self.last_desum_weight = None
            return self.local_net(x)
        _check_divisible(x, self.full_size_factor, "GlobalLocalGenerator")
        f1 = self.global_net.features(downsample(x))
        f2 = self.local_net.down(x)
        return self.local_net(x, self.fuse(f1, f2))


@records_arguments
class UNetGenerator(nn.Module):
    """pix2pix's U-Net generator (baseline), written with plain convolutions as in pix2pix's ``unet_256``.

    ``depth`` stride-2 4x4 convolutions (LeakyReLU 0.2, norm; widths ``ngf * min(2**i, 8)``;
    the outermost and innermost without norm), mirrored by transposed convolutions
    (ReLU, norm) with skip connections, tanh at the end; dropout after the decoder
    levels 4 .. ``depth - 2`` (the ``8 * ngf`` levels below the innermost: three at
    depth 8), as pix2pix's ``use_dropout``.

    Batch norm (the default, as pix2pix) makes a training-mode output depend on the
    other samples of the batch; in eval mode (``model.eval()``, what validation, the
    sample grids and synthesis use) it uses the running statistics and dropout is off,
    so every sample's output depends on that sample alone (pix2pix's ``--eval``).

    Args:
        in_channels: input channels of the map.
        out_channels: output image channels.
        ngf: width of the outermost level.
        depth: number of down-sampling levels (pix2pix: 8 for 256 px); the input
            size must be divisible by ``2 ** depth``.
        norm: normalisation name (pix2pix default ``"batch"``).
        dropout: dropout probability in the ``8 * ngf`` decoder levels (pix2pix: 0.5; 0 for none).
        use_bias: bias of every convolution but the output one (pix2pix: ``False`` with
            batch norm, whose shift makes it redundant).
        init_gain: ``None`` keeps PyTorch's initialisation; a number draws the weights as
            pix2pix does, see :func:`~covid_ct_cgan.networks.blocks.init_normal_`.

    Raises:
        ValueError: ``depth`` below 1 or ``dropout`` outside ``[0, 1)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        ngf: int = 64,
        depth: int = 8,
        norm: str = "batch",
        dropout: float = 0.5,
        use_bias: bool = True,
        init_gain: float | None = None,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.size_factor = 2**depth
        ch = [ngf * min(2**i, 8) for i in range(depth)]
        encoders: list[nn.Module] = []
        decoders: list[nn.Module] = []
        for i in range(depth):
            innermost = i == depth - 1
            if i == 0:
                enc: list[nn.Module] = [nn.Conv2d(in_channels, ch[0], 4, stride=2, padding=1, bias=use_bias)]
            else:
                enc = [nn.LeakyReLU(0.2), nn.Conv2d(ch[i - 1], ch[i], 4, stride=2, padding=1, bias=use_bias)]
                if not innermost:
                    enc.append(norm_layer(norm, ch[i]))
            encoders.append(nn.Sequential(*enc))
            dec_in = ch[i] if innermost else 2 * ch[i]
            if i == 0:
                dec: list[nn.Module] = [nn.ReLU(), nn.ConvTranspose2d(dec_in, out_channels, 4, 2, 1), nn.Tanh()]
            else:
                dec = [
                    nn.ReLU(),
                    nn.ConvTranspose2d(dec_in, ch[i - 1], 4, 2, 1, bias=use_bias),
                    norm_layer(norm, ch[i - 1]),
                ]
                if 4 <= i < depth - 1 and dropout > 0:
                    dec.append(nn.Dropout(dropout))
            decoders.append(nn.Sequential(*dec))
        self.encoders = nn.ModuleList(encoders)
        self.decoders = nn.ModuleList(decoders[::-1])  # innermost first
        if init_gain is not None:
            init_normal_(self, init_gain)

    def forward(self, x: Tensor) -> Tensor:
        """Synthesise an image; ``x`` is ``(B, in_channels, H, W)`` with ``H``, ``W`` divisible by ``2 ** depth``."""
        _check_divisible(x, self.size_factor, "UNetGenerator")
        skips: list[Tensor] = []
        h = x
        for enc in self.encoders:
            h = enc(h)
            skips.append(h)
        n = len(skips)
        for i, dec in enumerate(self.decoders):
            if i > 0:
                h = torch.cat([skips[n - 1 - i], h], dim=1)
            h = dec(h)
        return h
