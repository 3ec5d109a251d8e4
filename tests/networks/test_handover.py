"""Stage hand-over: strict loading of G1 / G2 into the joint generator, clear errors on mismatch."""

from __future__ import annotations

import pytest
import torch

from covid_ct_cgan.errors import InputError
from covid_ct_cgan.networks import GlobalLocalGenerator, load_generator_part

TINY = dict(ngf=8, n_downsampling=2, n_blocks_global=1, n_blocks_local=1)


def generator(seed: int, mode: str = "joint", **overrides) -> GlobalLocalGenerator:
    torch.manual_seed(seed)
    return GlobalLocalGenerator(4, mode=mode, **{**TINY, **overrides})


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_joint_model_loads_both_stages(tmp_path):
    stage1, stage2, joint = generator(1, "global"), generator(2, "local"), generator(3)
    desum_before = {k: v.clone() for k, v in joint.desum.state_dict().items()}
    path1 = tmp_path / "global.pt"  # a CheckpointSaver-style dict
    torch.save({"generator": stage1.state_dict(), "discriminator": {"w": torch.zeros(1)}, "epoch": 3}, path1)
    load_generator_part(joint, path1, "global_net")
    load_generator_part(joint, stage2.state_dict(), "local_net")  # a bare state dict
    assert same(joint.global_net, stage1.global_net)
    assert same(joint.local_net, stage2.local_net)
    assert all(torch.equal(v, desum_before[k]) for k, v in joint.desum.state_dict().items())  # DESUM stays fresh


def test_custom_checkpoint_key(tmp_path):
    stage1, joint = generator(1, "global"), generator(3)
    path = tmp_path / "ckpt.pt"
    torch.save({"netG": stage1.state_dict()}, path)
    load_generator_part(joint, path, "global_net", key="netG")
    assert same(joint.global_net, stage1.global_net)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = generator(1, "global").state_dict()
    del state["global_net.head.1.bias"]
    state["global_net.extra.weight"] = torch.zeros(2)
    path = tmp_path / "bad.pt"
    torch.save({"generator": state}, path)
    joint = generator(3)
    before = {k: v.clone() for k, v in joint.state_dict().items()}
    with pytest.raises(InputError) as err:
        load_generator_part(joint, path, "global_net")
    message = str(err.value)
    assert str(path) in message
    assert "missing keys: global_net.head.1.bias" in message
    assert "unexpected keys: global_net.extra.weight" in message
    assert all(torch.equal(v, before[k]) for k, v in joint.state_dict().items())  # nothing half-loaded


def test_shape_mismatch_is_an_error(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save({"generator": generator(1, "local", ngf=16).state_dict()}, path)
    with pytest.raises(InputError, match="shape mismatch.*local_net.down.1.weight"):
        load_generator_part(generator(3), path, "local_net")


def test_bad_files_and_arguments(tmp_path):
    joint = generator(3)
    with pytest.raises(InputError, match="checkpoint file not found"):
        load_generator_part(joint, tmp_path / "none.pt", "global_net")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(InputError, match="cannot read checkpoint"):
        load_generator_part(joint, junk, "global_net")
    other = tmp_path / "other.pt"
    torch.save({"network": {"w": torch.zeros(1)}, "epoch": 1}, other)
    with pytest.raises(InputError, match="not a generator checkpoint.*network"):
        load_generator_part(joint, other, "global_net")
    with pytest.raises(InputError, match="missing keys: global_net"):
        load_generator_part(joint, {"conv.weight": torch.zeros(1)}, "global_net")
    with pytest.raises(ValueError, match="part must be one of"):
        load_generator_part(joint, generator(1).state_dict(), "desum_net")
