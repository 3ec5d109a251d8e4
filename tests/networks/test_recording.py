"""The networks keep their class and constructor arguments; a network is rebuilt from that record alone."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from covid_ct_cgan.networks import (
    DfmWeight,
    GlobalLocalGenerator,
    MultiResolutionDiscriminator,
    UNetGenerator,
    build_recorded,
    recorded_arguments,
)
from covid_ct_cgan.networks.discriminator import LocalDiscriminator
from covid_ct_cgan.networks.recording import default_arguments

TINY = dict(ngf=8, n_downsampling=1, n_blocks_global=1, n_blocks_local=1)


def test_arguments_are_recorded_with_their_defaults() -> None:
    generator = GlobalLocalGenerator(4, 1, upsampling="resize", **TINY)
    assert recorded_arguments(generator) == {
        "_target_": "covid_ct_cgan.networks.GlobalLocalGenerator", "in_channels": 4, "out_channels": 1, "ngf": 8,
        "n_downsampling": 1, "n_blocks_global": 1, "n_blocks_local": 1, "norm": "instance", "mode": "joint",
        "desum": "dynamic", "desum_fixed_weight": 0.5, "desum_hidden": 32, "upsampling": "resize",
    }
    assert recorded_arguments(DfmWeight(16, bounds=(0.2, 0.8)))["bounds"] == [0.2, 0.8]  # as JSON holds it
    assert recorded_arguments(copy.deepcopy(generator)) == recorded_arguments(generator)
    # a subclass records its own arguments, not those it hands to its parent
    local = recorded_arguments(LocalDiscriminator(5, 8, 2, norm="none"))
    assert local["_target_"] == "covid_ct_cgan.networks.discriminator.LocalDiscriminator" and "num_d" not in local
    with pytest.raises(TypeError, match="Linear does not record its constructor arguments"):
        recorded_arguments(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("network", [
    GlobalLocalGenerator(4, 1, mode="global", desum="sum", **TINY),
    UNetGenerator(4, 1, ngf=8, depth=3, init_gain=0.02),
    MultiResolutionDiscriminator(5, 8, 2, num_d=1, norm="spectral"),
    DfmWeight(16, mode="fixed", fixed_weight=0.9),
], ids=["global_local", "unet", "multi_resolution", "dfm"])
def test_a_network_is_rebuilt_from_its_record(network: torch.nn.Module) -> None:
    rebuilt = build_recorded(recorded_arguments(network))
    assert type(rebuilt) is type(network) and recorded_arguments(rebuilt) == recorded_arguments(network)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in network.state_dict().items()}


def test_rebuilding_changes_only_what_is_asked_and_refuses_other_classes() -> None:
    record = recorded_arguments(GlobalLocalGenerator(4, 1, mode="global", **TINY))
    assert build_recorded(record, mode="joint").mode == "joint"
    with pytest.raises(ValueError, match=r"GlobalLocalGenerator takes no argument depth"):
        build_recorded({**record, "depth": 3})
    sys.modules.pop("smtplib", None)
    with pytest.raises(ValueError, match=r"_target_ must name a network of covid_ct_cgan.networks, got 'smtplib.SMTP'"):
        build_recorded({"_target_": "smtplib.SMTP", "host": "localhost"})
    assert "smtplib" not in sys.modules  # looked up among the networks: a record never imports a module


def test_default_arguments_are_what_a_record_without_them_was_built_with() -> None:
    defaults = default_arguments("covid_ct_cgan.networks.GlobalLocalGenerator")
    assert defaults["upsampling"] == "transposed" and defaults["ngf"] == 64 and "in_channels" not in defaults
    assert default_arguments("covid_ct_cgan.networks.generator.GlobalLocalGenerator") == defaults  # its module path
