"""The named helpers of the configs, and what ``train.yaml``'s entries built with them resolve to."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from monai.bundle import ConfigParser

from covid_ct_cgan.engines.config_helpers import data_parallel, without_none

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"
BASE = ["generator", "discriminator", "dfm", "g_optimizer", "d_optimizer", "g_lr_scheduler", "d_lr_scheduler"]
DFM_LEARNS = ["dfm_optimizer", "dfm_lr_scheduler"]
# the keys of a checkpoint before save_dict became a mapping: resuming older checkpoints needs exactly these
SAVE_DICT_KEYS = {
    ("", "global"): BASE, ("", "local"): BASE, ("", "joint"): BASE + DFM_LEARNS,
    ("paper.yaml", "joint"): BASE + DFM_LEARNS,
    ("pix2pix.yaml", "joint"): BASE,
    ("pix2pixhd.yaml", "global"): BASE, ("pix2pixhd.yaml", "local"): BASE, ("pix2pixhd.yaml", "joint"): BASE,
    ("lesion_inpainting.yaml", "global"): BASE + ["local_discriminator"],
    ("lesion_inpainting.yaml", "joint"): BASE + DFM_LEARNS + ["local_discriminator"],
}
TRACKING_KEYS = [
    "stage", "image_size", "epochs", "batch_size", "learning_rate", "betas", "lambda_fm", "lambda_l1", "gan_mode",
    "freeze_global_epochs", "local_d", "local_crop", "lambda_local", "lambda_texture", "d_target", "d_augment", "d_learning_rate", "condition", "context_region", "ngf",
    "n_downsampling", "n_blocks_global", "n_blocks_local", "desum", "upsampling", "crop_size", "ndf", "n_layers_d", "num_d", "d_norm", "local_d_norm", "dfm", "amp", "seed",
    "data_dir",
]


def _parser(overlay: str, stage: str, tmp_path: Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.yaml")] + ([str(CONFIGS / overlay)] if overlay else []))
    parser.update({"stage": stage, "work_dir": str(tmp_path), "image_size": 32, "ngf": 4, "ndf": 4, "local_crop": 8,
                   "device": "$torch.device('cpu')"})
    return parser


def test_without_none_keeps_order_and_drops_only_none() -> None:
    entries = {"a": 1, "b": None, "c": 0, "d": [], "e": None, "f": "x"}
    assert list(without_none(entries).items()) == [("a", 1), ("c", 0), ("d", []), ("f", "x")]
    assert without_none({}) == {}
    with pytest.raises(TypeError, match="expected a mapping of names to objects, got list"):
        without_none([("a", 1)])  # type: ignore[arg-type]


@pytest.mark.parametrize(("overlay", "stage"), sorted(SAVE_DICT_KEYS))
def test_save_dict_keys_are_the_checkpoint_keys(overlay: str, stage: str, tmp_path: Path) -> None:
    parser = _parser(overlay, stage, tmp_path)
    save_dict = parser.get_parsed_content("save_dict")
    assert list(save_dict) == SAVE_DICT_KEYS[(overlay, stage)]
    assert all(hasattr(obj, "state_dict") for obj in save_dict.values())
    learns = "dfm_optimizer" in save_dict
    assert (parser.get_parsed_content("dfm_optimizer") is not None) == learns
    assert (parser.get_parsed_content("dfm_lr_scheduler") is not None) == learns
    if learns:  # the DFM optimizer as the others: the run's learning rate, betas and fused flag
        assert save_dict["dfm_optimizer"].defaults["lr"] == parser.get_parsed_content("learning_rate")
        assert save_dict["dfm_optimizer"].defaults["fused"] is True
        assert save_dict["dfm_lr_scheduler"].optimizer is save_dict["dfm_optimizer"]


def test_tracking_params_is_a_plain_dict_of_the_run_settings(tmp_path: Path) -> None:
    params = _parser("", "global", tmp_path).get_parsed_content("tracking_params")
    assert type(params) is dict and list(params) == TRACKING_KEYS
    assert params["stage"] == "global" and params["image_size"] == 16 and params["dfm"] == "equal"
    assert params["betas"] == [0.5, 0.999] and params["data_dir"] == f"{tmp_path}/data"


def test_data_parallel_wraps_on_the_cpu(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        net = torch.nn.Linear(3, 2)
        wrapped = data_parallel(net, "cpu")
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
        assert wrapped.module is net and wrapped.device_ids is None and not wrapped.find_unused_parameters
        other = data_parallel(torch.nn.Linear(3, 2), torch.device("cpu"), find_unused_parameters=True)
        assert other.find_unused_parameters
    finally:
        dist.destroy_process_group()


def test_discriminators_learn_at_d_learning_rate(tmp_path: Path) -> None:
    """Two time-scale updates: the discriminators' rate is its own key (default: the generator's)."""
    parser = _parser("lesion_inpainting.yaml", "local", tmp_path)
    parser.parse(reset=True)
    assert parser.get_parsed_content("d_optimizer").defaults["lr"] == parser.get_parsed_content("learning_rate") == 0.0002
    parser = _parser("lesion_inpainting.yaml", "local", tmp_path)
    parser["d_learning_rate"] = 0.0008
    d_opt, g_opt = parser.get_parsed_content("d_optimizer"), parser.get_parsed_content("g_optimizer")
    assert d_opt.defaults["lr"] == 0.0008 and g_opt.defaults["lr"] == 0.0002
    held = {id(p) for group in d_opt.param_groups for p in group["params"]}  # both discriminators
    assert {id(p) for p in parser.get_parsed_content("local_discriminator").parameters()} <= held
