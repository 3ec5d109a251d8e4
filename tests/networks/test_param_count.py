"""The docs' parameter-count table is the one the code builds: it cannot drift."""

from __future__ import annotations

import re

import pytest
from torch import nn

from covid_ct_cgan.networks import GlobalLocalGenerator, count_parameters
from covid_ct_cgan.networks.param_count import TABLE_HEADER, parameter_row, parameter_table


def docs_block(text: str) -> str:
    """The "Parameter counts" paragraph of the docs: its first line up to the end of the table after it."""
    start = text.index("Parameter counts (")
    lines = text[start:].splitlines()
    end = next(i for i in range(2, len(lines)) if lines[i - 1].startswith("|") and not lines[i].startswith("|"))
    return "\n".join(lines[:end]) + "\n"


def test_count_parameters_trainable_only():
    layer = nn.Linear(3, 2)  # 6 weights + 2 biases
    assert count_parameters(layer) == 8
    layer.bias.requires_grad_(False)
    assert count_parameters(layer, trainable_only=True) == 6 and count_parameters(layer) == 8


def test_docs_table_matches_the_code(repo_root):
    docs = (repo_root / "bundle" / "docs" / "design.md").read_text(encoding="utf-8")
    assert docs.count("Parameter counts (") == 1
    built = parameter_table(repo_root / "bundle" / "configs")
    assert docs_block(docs) == built, (
        "bundle/docs/design.md's parameter table differs from the networks; paste this in its place:\n" + built
    )
    assert built.splitlines()[2:4] == list(TABLE_HEADER) and len(built.splitlines()) == 4 + 4


def test_rows_count_the_modules_the_config_builds(repo_root):
    row = parameter_row([repo_root / "bundle" / "configs" / "train.yaml"], {"ngf": 8, "n_blocks_global": 1})
    direct = GlobalLocalGenerator(4, 1, ngf=8, n_downsampling=2, n_blocks_global=1, n_blocks_local=2, mode="joint")
    parts = [count_parameters(getattr(direct, n)) for n in ("global_net", "local_net", "desum")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0].startswith("`train.yaml` `--ngf 8` `--n_blocks_global 1`: ngf 8, `n_downsampling` 2, 1 + 2 blocks")
    assert cells[1] == f"{count_parameters(direct):,} (" + " / ".join(f"{p:,}" for p in parts) + ")"
    assert sum(parts) == count_parameters(direct)
    assert re.fullmatch(r"[\d,]+", cells[2]) and re.fullmatch(r"[\d,]+", cells[3])


@pytest.mark.parametrize("overlay", ["pix2pix.yaml"])
def test_a_dfm_net_that_does_not_learn_is_not_counted(repo_root, overlay):
    configs = repo_root / "bundle" / "configs"
    row = parameter_row([configs / "train.yaml", configs / overlay], {"image_size": 64})
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "–" and "U-Net depth 6" in cells[0]
