"""The named helpers of the configs, and what ``train.yaml``'s entries built with them resolve to."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from monai.bundle import ConfigParser

from covid_ct_cgan.engines.config_helpers import data_parallel, without_none
from covid_ct_cgan.networks import recorded_arguments

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
NETWORKS = {"generator", "discriminator", "dfm", "local_discriminator"}  # the networks of SAVE_DICT_KEYS
DATA_SETTINGS = ["image_size", "crop_size", "condition", "context_region", "context_dilation", "keep_effusion",
                 "window_level", "window_width"]
RUN_PARAMS = [
    "stage", "epochs", "batch_size", "learning_rate", "betas", "lambda_fm", "lambda_l1", "gan_mode",
    "freeze_global_epochs", "local_d", "local_crop", "lambda_local", "lambda_texture", "d_target", "d_augment",
    "d_learning_rate", "amp", "seed", "data_dir",
]
GENERATOR_ARGUMENTS = ["in_channels", "out_channels", "ngf", "n_downsampling", "n_blocks_global", "n_blocks_local", "norm",
                       "mode", "desum", "desum_fixed_weight", "desum_hidden", "upsampling"]
DISCRIMINATOR_ARGUMENTS = ["in_channels", "ndf", "n_layers", "num_d", "norm", "padding", "use_bias", "init_gain"]
DFM_ARGUMENTS = ["in_channels", "mode", "feature_index", "fixed_weight", "bounds", "num_d", "hidden"]
TRACKING_KEYS = (
    DATA_SETTINGS + [f"generator.{k}" for k in ["_target_", *GENERATOR_ARGUMENTS]]
    + [f"discriminator.{k}" for k in ["_target_", *DISCRIMINATOR_ARGUMENTS]]
    + [f"dfm.{k}" for k in ["_target_", *DFM_ARGUMENTS]] + RUN_PARAMS
)

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
    """The run's hyper-parameters and its record, flat: the same record the checkpoints hold."""
    params = _parser("", "global", tmp_path).get_parsed_content("tracking_params")
    assert type(params) is dict and list(params) == TRACKING_KEYS
    assert params["stage"] == "global" and params["image_size"] == 16 and params["dfm.mode"] == "equal"
    assert params["generator.ngf"] == 4 and params["generator.mode"] == "global" and params["discriminator.ndf"] == 4
    assert params["betas"] == [0.5, 0.999] and params["data_dir"] == f"{tmp_path}/data"


@pytest.mark.parametrize(("overlay", "stage"), sorted(SAVE_DICT_KEYS))
def test_record_holds_the_arguments_of_every_network_built(overlay: str, stage: str, tmp_path: Path) -> None:
    """network_settings is read from the networks of save_dict: their classes and constructor arguments."""
    parser = _parser(overlay, stage, tmp_path)
    record = parser.get_parsed_content("network_settings")
    save_dict = parser.get_parsed_content("save_dict")
    assert list(record["networks"]) == [k for k in SAVE_DICT_KEYS[(overlay, stage)] if k in NETWORKS]
    for name, arguments in record["networks"].items():
        assert arguments == recorded_arguments(save_dict[name])
        assert arguments["_target_"].rsplit(".", 1)[1] == type(save_dict[name]).__name__
    assert {k: v for k, v in record.items() if k != "networks"} == parser.get_parsed_content("data_settings")
    assert record["networks"]["generator"]["ngf"] == 4 and record["image_size"] == 32  # the full size, every stage


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
