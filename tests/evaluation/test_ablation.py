"""Ablation overlays: each builds the intended network variant from train.yaml; the runner checks its input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from covid_ct_cgan.errors import entry_point
from covid_ct_cgan.evaluation.ablation import ABLATIONS, AblationStudy
from covid_ct_cgan.evaluation.models import load_training_config, trained_model

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundle" / "configs"

# overlay -> (DESUM mode, DFM mode in its last stage, discriminators, stages)
EXPECTED = {
    "ours": ("dynamic", "dynamic", 2, ["global", "local", "joint"]),
    "desum_sum": ("sum", "dynamic", 2, ["global", "local", "joint"]),
    "desum_from_global": ("dynamic_from_global", "dynamic", 2, ["global", "local", "joint"]),
    "desum_fixed": ("fixed", "dynamic", 2, ["global", "local", "joint"]),
    "dfm_equal": ("dynamic", "equal", 2, ["global", "local", "joint"]),
    "dfm_from_half": ("dynamic", "dynamic_from_half", 2, ["global", "local", "joint"]),
    "dfm_fixed": ("dynamic", "fixed", 2, ["global", "local", "joint"]),
    "one_d": ("dynamic", "equal", 1, ["global", "local", "joint"]),
    "one_g": ("dynamic", "dynamic", 2, ["global"]),
}


def test_every_ablation_has_an_overlay_with_its_own_output_dir(tmp_path: Path) -> None:
    assert set(EXPECTED) == set(ABLATIONS) == {p.stem for p in (CONFIGS / "ablation").glob("*.yaml")}
    outputs = set()
    for name in ABLATIONS:
        raw = load_training_config([CONFIGS / "train.yaml", CONFIGS / "ablation" / f"{name}.yaml"],
                                   {"work_dir": str(tmp_path), "image_size": 32})
        parser = ConfigParser(raw)
        stages = parser.get_parsed_content("stages")
        parser["stage"] = stages[-1]
        parser.parse(reset=True)
        desum, dfm, num_d, expected_stages = EXPECTED[name]
        assert stages == expected_stages
        assert parser.get_parsed_content("desum") == desum
        assert parser.get_parsed_content("dfm_def").mode == dfm
        assert parser.get_parsed_content("discriminator_def").num_d == num_d
        if name == "dfm_fixed":  # the learned b's upper bound; not 0.5, the equal average of dfm_equal
            dfm_def = parser.get_parsed_content("dfm_def")
            assert dfm_def.fixed_weight == 0.9 == dfm_def.high
            features = [[torch.zeros(3, 1, 4, 4)] * 2] * 2
            assert dfm_def(features).tolist() == pytest.approx([0.9] * 3)
        outputs.add(parser.get_parsed_content("output_dir"))
    assert len(outputs) == len(ABLATIONS)


def test_one_generator_is_g1_alone_at_full_resolution(tmp_path: Path) -> None:
    model = trained_model("one_g", [CONFIGS / "train.yaml", CONFIGS / "ablation" / "one_g.yaml"],
                          {"work_dir": str(tmp_path), "image_size": 32})
    assert model.network.mode == "global" and model.settings["image_size"] == 32
    assert model.checkpoint == tmp_path / "ablation" / "one_g" / "global"


def test_unknown_ablation_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    study = AblationStudy(tmp_path / "evaluation", tmp_path / "datalist.json", ablations=["nope"], config_dir=CONFIGS)
    with pytest.raises(SystemExit) as err:  # as evaluate.yaml's ablation run id calls it
        entry_point(study.run)
    assert err.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"ERROR: no ablation overlay for ['nope'] (expected {CONFIGS / 'ablation'}/<name>.yaml)"]
    assert list(AblationStudy("out", "d.json").ablations) == list(ABLATIONS)  # every overlay by default
