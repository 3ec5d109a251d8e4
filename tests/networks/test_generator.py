"""Generators at tiny sizes: shapes, ranges, DESUM arithmetic and gradients, TorchScript."""

from __future__ import annotations

import pytest
import torch

from covid_ct_cgan.networks import (
    DesumWeight,
    GlobalGenerator,
    GlobalLocalGenerator,
    LocalEnhancer,
    ResnetBlock,
    UNetGenerator,
    count_parameters,
    downsample,
    norm_layer,
)
from covid_ct_cgan.networks.blocks import UPSAMPLINGS, upsample_layers

TINY = dict(ngf=8, n_downsampling=2, n_blocks_global=2, n_blocks_local=1)
DESUM_MODES = ("dynamic", "dynamic_from_global", "fixed", "sum")


def tiny_generator(desum: str = "dynamic", mode: str = "joint", in_channels: int = 4, **kwargs) -> GlobalLocalGenerator:
    torch.manual_seed(0)
    return GlobalLocalGenerator(in_channels, mode=mode, desum=desum, **TINY, **kwargs)


def test_norm_layer_and_resnet_block():
    assert isinstance(norm_layer("instance", 4), torch.nn.InstanceNorm2d)
    assert not norm_layer("instance", 4).affine
    assert isinstance(norm_layer("batch", 4), torch.nn.BatchNorm2d)
    assert isinstance(norm_layer("none", 4), torch.nn.Identity)
    with pytest.raises(ValueError, match="norm must be one of"):
        norm_layer("group", 4)
    block = ResnetBlock(6, "none")
    x = torch.randn(2, 6, 9, 9)
    torch.testing.assert_close(block(x), x + block.conv_block(x), rtol=0, atol=0)


def test_downsample_is_pix2pixhd_average_pool():
    x = torch.arange(25.0).view(1, 1, 5, 5)
    y = downsample(x)
    assert y.shape == (1, 1, 3, 3)
    assert y[0, 0, 0, 0] == pytest.approx((0 + 1 + 5 + 6) / 4)  # padding not counted
    assert y[0, 0, 1, 1] == pytest.approx(x[0, 0, 1:4, 1:4].mean())


def test_global_generator_shapes(maps):
    torch.manual_seed(0)
    g1 = GlobalGenerator(4, ngf=8, n_downsampling=2, n_blocks=2)
    x = maps(2, 16)
    assert g1.features(x).shape == (2, 8, 16, 16)
    y = g1(x)
    assert y.shape == (2, 1, 16, 16)
    assert y.abs().max() <= 1
    torch.testing.assert_close(y, g1.head(g1.features(x)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="divisible by 4"):
        g1(maps(1, 18))


def test_local_enhancer_features_fit_global_features(maps):
    torch.manual_seed(0)
    g1 = GlobalGenerator(4, ngf=8, n_downsampling=2, n_blocks=2)
    g2 = LocalEnhancer(4, ngf=4, n_blocks=1)
    x = maps(2, 32)
    assert g2.down(x).shape == g1.features(downsample(x)).shape == (2, 8, 16, 16)
    y = g2(x)
    assert y.shape == (2, 1, 32, 32)
    assert y.abs().max() <= 1
    fused = torch.randn(2, 8, 16, 16)
    # with fused features the map is not used
    torch.testing.assert_close(g2(x, fused), g2(torch.zeros_like(x), fused), rtol=0, atol=0)


@pytest.mark.parametrize("desum", DESUM_MODES)
@pytest.mark.parametrize("mode", ["global", "local", "joint"])
def test_every_mode_shape_and_range(maps, mode, desum):
    g = tiny_generator(desum, mode, in_channels=5)  # 4 classes + 1 context channel
    size = 16 if mode == "global" else 32  # the trainer feeds half-resolution maps in the global stage
    x = torch.cat([maps(2, size), torch.rand(2, 1, size, size) * 2 - 1], dim=1)
    y = g(x)
    assert y.shape == (2, 1, size, size)
    assert y.min() >= -1 and y.max() <= 1
    if mode == "joint" and desum != "sum":
        assert g.last_desum_weight is not None and g.last_desum_weight.shape == (2,)
        assert not g.last_desum_weight.requires_grad
    else:
        assert g.last_desum_weight is None


def test_set_mode_switches_and_validates(maps):
    g = tiny_generator()
    x = maps(1, 32)
    g.set_mode("local")
    torch.testing.assert_close(g(x), g.local_net(x), rtol=0, atol=0)
    g.set_mode("global")
    torch.testing.assert_close(g(x), g.global_net(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        g.set_mode("both")
    with pytest.raises(ValueError, match="desum must be one of"):
        tiny_generator("average")
    with pytest.raises(ValueError, match="desum_fixed_weight"):
        tiny_generator("fixed", desum_fixed_weight=1.5)
    g.set_mode("joint")
    with pytest.raises(ValueError, match="divisible by 8"):
        g(maps(1, 36))


def test_state_dict_keys_are_the_same_in_every_mode():
    keys = {tuple(tiny_generator(d, m).state_dict()) for d in DESUM_MODES for m in ("global", "local", "joint")}
    assert len(keys) == 1
    assert {k.split(".")[0] for k in next(iter(keys))} == {"global_net", "local_net", "desum"}


@torch.no_grad()
def test_sum_mode_is_pix2pixhd_plain_sum(maps):
    g = tiny_generator("sum")
    x = maps(2, 32)
    f1 = g.global_net.features(downsample(x))
    f2 = g.local_net.down(x)
    expected = g.local_net.head(g.local_net.up(g.local_net.blocks(f1 + f2)))
    assert torch.equal(g(x), expected)


@torch.no_grad()
@pytest.mark.parametrize("desum", ["dynamic", "dynamic_from_global", "fixed"])
def test_weighted_desum_arithmetic(maps, desum):
    g = tiny_generator(desum, desum_fixed_weight=0.3)
    x = maps(3, 32)
    f1 = g.global_net.features(downsample(x))
    f2 = g.local_net.down(x)
    a = {"dynamic": g.desum(f2), "dynamic_from_global": g.desum(f1), "fixed": torch.full((3,), 0.3)}[desum]
    fused = a.view(-1, 1, 1, 1) * f1 + (1 - a.view(-1, 1, 1, 1)) * f2
    expected = g.local_net(x, fused)
    torch.testing.assert_close(g(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(g.last_desum_weight, a, rtol=0, atol=0)


@torch.no_grad()
@pytest.mark.parametrize("desum", ["dynamic", "dynamic_from_global"])
def test_dynamic_weight_in_bounds_and_varies_with_input(maps, desum):
    g = tiny_generator(desum)
    g(maps(4, 32))
    a = g.last_desum_weight
    assert ((a > 0) & (a < 1)).all()
    assert a.max() - a.min() > 1e-6, a  # different maps, different weights
    weight_net = DesumWeight(8, hidden=4)
    out = weight_net(torch.randn(5, 8, 6, 6) * 100)  # extreme inputs stay in (0, 1)
    assert out.shape == (5,) and ((out >= 0) & (out <= 1)).all()


@pytest.mark.parametrize("desum", DESUM_MODES)
def test_generator_backward_reaches_desum_net_only_when_dynamic(maps, desum):
    g = tiny_generator(desum)
    g(maps(2, 32)).mean().backward()
    desum_grads = [p.grad for p in g.desum.parameters()]
    if desum.startswith("dynamic"):
        assert all(grad is not None and grad.abs().sum() > 0 for grad in desum_grads)
    else:
        assert all(grad is None for grad in desum_grads)
    for part in (g.global_net.body, g.local_net):
        assert all(p.grad is not None for p in part.parameters())
    assert all(p.grad is None for p in g.global_net.head.parameters())  # G1's own head is not used in joint mode


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torchscript_script_and_trace_match_eager(maps):
    g = tiny_generator("dynamic").eval()
    x = maps(2, 32)
    with torch.no_grad():
        scripted = torch.jit.script(g)  # what `monai.bundle ckpt_export` does by default
        for desum in DESUM_MODES:  # the mode is a plain attribute, also on the scripted module
            g.desum_mode = scripted.desum_mode = desum
            eager = g(x)
            torch.testing.assert_close(scripted(x), eager, rtol=0, atol=1e-5)
            if g.last_desum_weight is None:
                assert desum == "sum" and scripted.last_desum_weight is None
            else:
                torch.testing.assert_close(scripted.last_desum_weight, g.last_desum_weight, rtol=0, atol=1e-6)
        g.desum_mode = "dynamic"
        traced = torch.jit.trace(g, x)
        torch.testing.assert_close(traced(x), g(x), rtol=0, atol=1e-5)


def test_unet_generator(maps):
    torch.manual_seed(0)
    u = UNetGenerator(4, ngf=4, depth=6, norm="instance")
    x = maps(2, 64)
    y = u(x)
    assert y.shape == (2, 1, 64, 64)
    assert y.min() >= -1 and y.max() <= 1
    assert any(isinstance(m, torch.nn.Dropout) for m in u.modules())  # pix2pix's dropout at the 8*ngf level
    y.mean().backward()
    assert all(p.grad is not None for p in u.parameters())
    u.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(u)(x), u(x), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 64"):
        u(maps(1, 96))
    # pix2pix widths: ngf, 2, 4, 8, 8 ... times ngf
    assert [enc[-1].out_channels if i == 0 else enc[1].out_channels for i, enc in enumerate(u.encoders)] == [
        4,
        8,
        16,
        32,
        32,
        32,
    ]


def _dropouts(u: UNetGenerator) -> list[float]:
    return [m.p for m in u.modules() if isinstance(m, torch.nn.Dropout)]


def test_unet_norm_dropout_and_bias_options():
    """pix2pix's ``--norm``, ``use_bias`` and ``use_dropout`` (0.5 after the 8*ngf levels below the innermost)."""
    assert _dropouts(UNetGenerator(4, ngf=4, depth=8)) == [0.5, 0.5, 0.5]  # unet_256: three
    assert _dropouts(UNetGenerator(4, ngf=4, depth=7)) == [0.5, 0.5]  # unet_128: two
    assert _dropouts(UNetGenerator(4, ngf=4, depth=5)) == []
    assert _dropouts(UNetGenerator(4, ngf=4, depth=8, dropout=0.0)) == []
    assert _dropouts(UNetGenerator(4, ngf=4, depth=8, dropout=0.3)) == [0.3, 0.3, 0.3]
    for norm, kind in (("batch", torch.nn.BatchNorm2d), ("instance", torch.nn.InstanceNorm2d)):
        u = UNetGenerator(4, ngf=4, depth=6, norm=norm)
        norms = [m for m in u.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d))]
        assert len(norms) == 4 + 5 and all(type(m) is kind for m in norms)  # encoders 1..4, decoders 1..5
    no_bias = UNetGenerator(4, ngf=4, depth=6, use_bias=False)
    convs = [m for m in no_bias.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    output_conv = no_bias.decoders[-1][1]
    assert [c is output_conv for c in convs if c.bias is not None] == [True]  # only the output convolution
    with pytest.raises(ValueError, match="dropout must be in"):
        UNetGenerator(4, dropout=1.0)


def test_unet_default_state_dict_keys_unchanged():
    """Checkpoints saved before the pix2pix options still load: the default (batch norm, biases) keys are pinned."""
    u = UNetGenerator(4, ngf=4, depth=3)
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    expected = (
        ["encoders.0.0.weight", "encoders.0.0.bias", "encoders.1.1.weight", "encoders.1.1.bias"]
        + [f"encoders.1.2.{k}" for k in bn]
        + ["encoders.2.1.weight", "encoders.2.1.bias"]
        + ["decoders.0.1.weight", "decoders.0.1.bias"] + [f"decoders.0.2.{k}" for k in bn]
        + ["decoders.1.1.weight", "decoders.1.1.bias"] + [f"decoders.1.2.{k}" for k in bn]
        + ["decoders.2.1.weight", "decoders.2.1.bias"]
    )
    assert list(u.state_dict()) == expected


def test_unet_as_published_has_pix2pix_parameter_count():
    """``--netG unet_256 --norm batch`` on 3 -> 3 channels: "54.414 M" parameters in pix2pix's log."""
    u = UNetGenerator(3, 3, ngf=64, depth=8, norm="batch", use_bias=False)
    assert count_parameters(u) == 54_413_955
    widths = [64, 128, 256, 512, 512, 512, 512, 512]
    with_bias = count_parameters(UNetGenerator(3, 3, ngf=64, depth=8))  # one bias per encoder and inner decoder conv
    assert with_bias == 54_413_955 + sum(widths) + sum(widths[:-1])


@torch.no_grad()
def test_unet_init_gain():
    torch.manual_seed(0)
    u = UNetGenerator(4, ngf=16, depth=6, init_gain=0.02)
    convs = [m for m in u.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    weights = torch.cat([c.weight.flatten() for c in convs])
    assert abs(float(weights.std()) - 0.02) < 1e-3
    assert all(bool((c.bias == 0).all()) for c in convs)


@torch.no_grad()
def test_batch_norm_unet_eval_mode_is_per_sample_and_deterministic(maps):
    """Validation, sample grids and synthesis run ``model.eval()``: running statistics, no dropout, so a sample's
    output does not depend on its batch (what the synthesis runner's padding and slicing rely on)."""
    torch.manual_seed(0)
    u = UNetGenerator(4, ngf=4, depth=5, dropout=0.5)
    x = maps(3, 32)
    for _ in range(3):  # some running statistics
        u(x)
    train_batch, train_alone = u(x)[:1], u(x[:1])
    assert not torch.allclose(train_batch, train_alone, atol=1e-3)  # train mode: batch statistics
    u.eval()
    y = u(x)
    torch.testing.assert_close(u(x), y, rtol=0, atol=0)
    torch.testing.assert_close(u(x[:1]), y[:1], rtol=0, atol=1e-6)
    torch.testing.assert_close(u(torch.cat([x[2:], x[:1]])), torch.cat([y[2:], y[:1]]), rtol=0, atol=1e-6)
    from covid_ct_cgan.inference.synthesis import GeneratorRunner

    runner = GeneratorRunner(u.train(), torch.device("cpu"), cpu_pixels_per_call=32 * 32)  # one sample a call
    assert not u.training
    torch.testing.assert_close(runner(x), y, rtol=0, atol=1e-6)


@pytest.mark.parametrize("upsampling", UPSAMPLINGS)
def test_upsampling_choices_build_the_same_shapes(upsampling: str) -> None:
    net = GlobalLocalGenerator(in_channels=4, ngf=8, n_downsampling=1, n_blocks_global=1, n_blocks_local=1,
                               upsampling=upsampling)
    out = net(torch.randn(1, 4, 32, 32))
    assert out.shape == (1, 1, 32, 32)
    transposed = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert (len(transposed) == 0) == (upsampling == "resize")


def test_resize_upsampling_draws_no_checkerboard() -> None:
    """On a constant feature map with all-equal weights, a stride-2 transposed 3x3 convolution alternates between
    pixels that receive 1, 2 or 4 taps (the checkerboard); nearest doubling + a 3x3 convolution is flat inside."""
    x = torch.ones(1, 2, 8, 8)
    for upsampling, flat in (("transposed", False), ("resize", True)):
        layers = torch.nn.Sequential(*upsample_layers(2, 1, upsampling))
        conv = layers[-1]
        torch.nn.init.constant_(conv.weight, 1.0)
        torch.nn.init.zeros_(conv.bias)
        inner = layers(x)[0, 0, 2:-2, 2:-2]
        assert inner.shape == (12, 12)
        assert bool((inner == inner[0, 0]).all()) == flat
    with pytest.raises(ValueError, match="upsampling must be one of"):
        upsample_layers(2, 1, "bilinear")
