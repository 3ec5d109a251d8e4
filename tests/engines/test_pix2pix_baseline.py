"""The pix2pix baseline overlay as published: the networks it builds, its loss settings and a tiny run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from covid_ct_cgan.evaluation.models import load_training_config
from covid_ct_cgan.networks import MultiResolutionDiscriminator, UNetGenerator, count_parameters
from covid_ct_cgan.settings import run_bundle

from tiny_training import REPO_ROOT, TINY, TRAIN_YAML

PIX2PIX_YAML = str(REPO_ROOT / "bundle" / "configs" / "pix2pix.yaml")


def _parser(**overrides: object) -> ConfigParser:
    """train.yaml + pix2pix.yaml as ``monai.bundle run`` reads them, on the CPU."""
    parser = ConfigParser(ConfigParser.load_config_files([TRAIN_YAML, PIX2PIX_YAML]))
    parser["device"] = "$torch.device('cpu')"
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _conv_biases(module: torch.nn.Module) -> list[bool]:
    return [m.bias is not None for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]


def test_pix2pix_overlay_builds_the_published_networks_and_loss() -> None:
    parser = _parser(image_size=256)
    g = parser.get_parsed_content("network_def")
    d = parser.get_parsed_content("discriminator_def")
    assert isinstance(g, UNetGenerator) and g.size_factor == 256  # unet_256: 8 levels
    assert [m.p for m in g.modules() if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5, 0.5]
    g_norms = [m for m in g.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d))]
    assert g_norms and all(type(m) is torch.nn.BatchNorm2d for m in g_norms)
    assert _conv_biases(g) == [False] * 15 + [True]  # only the output convolution has a bias
    assert isinstance(d, MultiResolutionDiscriminator) and d.num_d == 1  # one scale, no down-sampled copy
    patch_gan = d.discriminators[0]
    assert patch_gan.receptive_field == 70
    assert patch_gan.padding == 1 and _conv_biases(patch_gan) == [True, False, False, False, True]
    d_norms = [m for m in d.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d))]
    assert len(d_norms) == 3 and all(type(m) is torch.nn.BatchNorm2d for m in d_norms)
    assert patch_gan(torch.zeros(1, 5, 256, 256))[-1].shape[-2:] == (30, 30)
    assert parser.get_parsed_content("gan_mode") == "vanilla"
    assert parser.get_parsed_content("lambda_l1") == 100.0 and parser.get_parsed_content("lambda_fm") == 0.0
    assert parser.get_parsed_content("learning_rate") == 2e-4
    assert list(parser.get_parsed_content("betas")) == [0.5, 0.999]
    assert parser.get_parsed_content("stages") == ["joint"] and parser.get_parsed_content("handover") is None
    # widths follow the config's ngf / ndf (demo 16); at pix2pix's 64 the published architecture
    wide = _parser(image_size=256, ngf=64, ndf=64)
    assert count_parameters(wide.get_parsed_content("network_def")) == 54_410_881  # 4 map channels in, 1 out
    assert count_parameters(wide.get_parsed_content("discriminator_def")) == 2_767_681  # 5 channels in
    # weights drawn from N(0, 0.02) as pix2pix's init_weights
    with torch.no_grad():
        weights = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(float(weights.std()) - 0.02) < 1e-3


def test_evaluation_reads_the_overlay_as_training_does() -> None:
    """The evaluation rebuilds a model from its config files: the same batch-norm networks."""
    raw = load_training_config([TRAIN_YAML, PIX2PIX_YAML], {"image_size": 64})
    parser = ConfigParser(raw)
    parser["device"] = "$torch.device('cpu')"
    d = parser.get_parsed_content("discriminator_def")
    assert [type(m) for m in d.modules() if isinstance(m, torch.nn.BatchNorm2d)] == [torch.nn.BatchNorm2d] * 3
    assert parser.get_parsed_content("network_def").size_factor == 64


@pytest.mark.integration
def test_pix2pix_overlay_trains_one_epoch_with_the_cross_entropy_loss(work_dir: Path) -> None:
    parser = _parser()
    assert parser.get_parsed_content("train#trainer#gan_mode") == "vanilla"  # train.yaml passes gan_mode on
    tiny = {**TINY, "work_dir": str(work_dir), "epochs": 1, "n_layers_d": 3}  # the 70x70 PatchGAN at 32 px
    run_bundle("training", config_file=[TRAIN_YAML, PIX2PIX_YAML], **tiny)
    stage = work_dir / "output_pix2pix" / "joint"
    ckpt = torch.load(stage / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    d_keys, g_keys = set(ckpt["discriminator"]), set(ckpt["generator"])
    assert {f"discriminators.0.layers.{i}.1.running_mean" for i in (1, 2, 3)} <= d_keys  # batch norm
    assert not {f"discriminators.0.layers.{i}.0.bias" for i in (1, 2, 3)} & d_keys  # no bias before it
    assert not any(k.startswith("discriminators.1") for k in d_keys)
    assert any(k.endswith("running_mean") for k in g_keys) and not any(k.startswith("global_net") for k in g_keys)
    assert int(ckpt["discriminator"]["discriminators.0.layers.1.1.num_batches_tracked"]) > 0
    rows = (stage / "validation.csv").read_text().strip().splitlines()
    assert len(rows) == 2 and all(v != "nan" for v in rows[1].split(",")[1:])
    assert (stage / "best_generator.pt").is_file()
