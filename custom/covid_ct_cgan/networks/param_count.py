"""Parameter counts of the networks, and the bundle docs' table of them built from the configs.

:func:`parameter_table` builds every network of the docs' "Parameter counts"
table from the bundle's own config files (``train.yaml`` and its overlays),
on PyTorch's ``meta`` device (no memory, no weights), and writes the table
as Markdown; ``tests/networks/test_param_count.py`` compares it with the one
in ``bundle/docs/design.md``, so the docs cannot drift from the code. To
print the table after a change to a network::

    python -c "from covid_ct_cgan.networks.param_count import parameter_table; print(parameter_table('bundle/configs'))"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

# (configuration files in the configs folder, overrides): the rows of the docs' table, in order
TABLE_ROWS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("train.yaml", "paper.yaml"), {}),
    (("train.yaml", "paper.yaml"), {"n_downsampling": 4}),
    (("train.yaml", "pix2pix.yaml"), {"image_size": 256, "ngf": 64, "ndf": 64}),
    (("train.yaml",), {}),
)
TABLE_HEADER = (
    "| configuration | generator (G1 / G2 / DESUM) | discriminator | DFM net |",
    "|---|---|---|---|",
)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of a module.

    Args:
        module: any module.
        trainable_only: count only parameters with ``requires_grad``.

    Returns:
        the number of scalar parameters.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def build_networks(config_files: Sequence[str | Path], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build the joint stage's generator, discriminator and DFM net of a training config on the meta device.

    Args:
        config_files: ``train.yaml`` and overlays, as for ``monai.bundle run``.
        overrides: top-level keys to set (as ``--key value`` would).

    Returns:
        ``{"generator", "discriminator", "dfm", "config"}``: the three modules and
        the parsed values the table's labels use.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    for key, value in {**(overrides or {}), "stage": "joint"}.items():
        parser[key] = value
    parser.parse(reset=True)
    keys = ("in_channels", "num_classes", "ngf", "n_downsampling", "n_blocks_global", "n_blocks_local", "ndf",
            "n_layers_d", "num_d", "image_size")
    values = {key: parser.get_parsed_content(key) for key in keys}
    if "unet_depth" in parser:
        values["unet_depth"] = parser.get_parsed_content("unet_depth")
    with torch.device("meta"):
        networks = {name: parser.get_parsed_content(f"{name}_def") for name in ("network", "discriminator", "dfm")}
    return {"generator": networks["network"], "discriminator": networks["discriminator"], "dfm": networks["dfm"],
            "config": values}


def _label(names: Sequence[str | Path], overrides: Mapping[str, Any], values: Mapping[str, Any], unet: bool) -> str:
    files = " + ".join(f"`{Path(n).name}`" for n in names)
    changed = "".join(f" `--{k} {v}`" for k, v in overrides.items())
    where = f"{files}{changed}"
    scales = f"{values['num_d']} scale" + ("s" if values["num_d"] != 1 else "")
    if unet:
        return (f"{where}: U-Net depth {values['unet_depth']}, ngf {values['ngf']}; PatchGAN ndf {values['ndf']}, "
                f"{values['n_layers_d']} layers, {scales}")
    return (f"{where}: ngf {values['ngf']}, `n_downsampling` {values['n_downsampling']}, "
            f"{values['n_blocks_global']} + {values['n_blocks_local']} blocks, ndf {values['ndf']}, "
            f"{values['n_layers_d']} layers, {scales}")


def parameter_row(config_files: Sequence[str | Path], overrides: Mapping[str, Any] | None = None) -> str:
    """One Markdown row of the docs' table: label, generator (with its parts), discriminator, DFM net.

    Args:
        config_files: ``train.yaml`` and overlays.
        overrides: top-level keys to set.

    Returns:
        ``| label | total (G1 / G2 / DESUM) | D | DFM |``; a U-Net generator has no parts and a
        DFM net that does not learn (``equal``, ``fixed``) is shown as ``–``.
    """
    overrides = dict(overrides or {})
    built = build_networks(config_files, overrides)
    generator, values = built["generator"], built["config"]
    parts = [getattr(generator, name, None) for name in ("global_net", "local_net", "desum")]
    unet = any(part is None for part in parts)
    total = f"{count_parameters(generator):,}"
    if not unet:
        total += " (" + " / ".join(f"{count_parameters(part):,}" for part in parts if part is not None) + ")"
    dfm = f"{count_parameters(built['dfm']):,}" if getattr(built["dfm"], "learnable", False) else "–"
    label = _label(config_files, overrides, values, unet)
    return f"| {label} | {total} | {count_parameters(built['discriminator']):,} | {dfm} |"


def parameter_table(configs_dir: str | Path) -> str:
    """The docs' "Parameter counts" paragraph and table (:data:`TABLE_ROWS`), built from the configs.

    Args:
        configs_dir: the bundle's ``configs`` folder.

    Returns:
        Markdown: one line naming the networks' input channels, then the table.
    """
    configs_dir = Path(configs_dir)
    first = build_networks([configs_dir / n for n in TABLE_ROWS[-1][0]], TABLE_ROWS[-1][1])["config"]
    lines = [
        f"Parameter counts (joint stage, `condition: map`: generator input {first['in_channels']} channels, "
        f"discriminator {first['num_classes'] + 1}; built from the configs by `covid_ct_cgan.networks.param_count`):",
        "",
        *TABLE_HEADER,
    ]
    lines += [parameter_row([configs_dir / n for n in names], overrides) for names, overrides in TABLE_ROWS]
    return "\n".join(lines) + "\n"
