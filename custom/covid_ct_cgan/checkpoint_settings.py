"""The record of what a checkpoint's networks were built with and trained on: saved with it, read back.

Training records (:func:`network_record`, ``train.yaml``'s ``network_settings``) the settings of the data its
networks were trained on (``train.yaml``'s ``data_settings``: ``image_size``, ``crop_size``, ``condition``,
``keep_effusion``, the intensity window ...) and, under ``networks``, the class and constructor arguments of
every network it built, read from the built objects themselves
(:func:`covid_ct_cgan.networks.recorded_arguments`)::

    {"image_size": 128, "crop_size": 0, "condition": "map", ..., "window_width": 1500,
     "networks": {"generator": {"_target_": "covid_ct_cgan.networks.GlobalLocalGenerator", "in_channels": 4,
                                "ngf": 16, ...},
                  "discriminator": {...}, "dfm": {...}}}

The record is saved in three places: in every checkpoint the savers write and in ``best_generator.pt``
(entry ``network_settings``, a :class:`NetworkSettings`), and in the stage folder's ``settings.json``
(:func:`covid_ct_cgan.engines.stages.record_stage_settings`; read back by
:func:`covid_ct_cgan.checkpoints.read_stage_settings`). Inference and evaluation read it back
(:func:`saved_network_settings`) and rebuild the generator from it
(:func:`covid_ct_cgan.networks.build_recorded`), so a checkpoint (or ``--checkpoint_dir``) is enough.

Records saved before the networks' arguments were recorded are flat mappings of ``train.yaml``'s keys
(``{"generator": "<class>", "ngf": 16, "d_norm": ..., "image_size": 128, ...}``, :data:`LEGACY_ARGUMENTS`),
and still older checkpoints hold none: both still load (:func:`resolve_network_settings`), keys added
later counting as the value runs had before them (:data:`LATER_SETTINGS`), and a stage recorded either way
is compared with a run's record in the old keys (:func:`record_differences`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .checkpoints import (
    SETTINGS_FILE,
    CheckpointError,
    load_latest_checkpoint,
    read_checkpoint,
    read_stage_settings,
)
from .errors import InputError, exit_on_input_error
from .labels import num_classes
from .networks.recording import TARGET, default_arguments, recorded_arguments
from .networks.wrapping import unwrap
from .transforms import condition_channels

__all__ = [
    "LATER_SETTINGS",
    "LEGACY_ARGUMENTS",
    "LEGACY_DEFAULTS",
    "NETWORKS",
    "NETWORK_SETTINGS_KEY",
    "NetworkSettings",
    "checkpoint_network_settings",
    "flat_record",
    "is_legacy",
    "legacy_view",
    "network_record",
    "record_differences",
    "resolve_network_settings",
    "saved_network_settings",
    "setting_differences",
]

logger = logging.getLogger(__name__)

NETWORK_SETTINGS_KEY = "network_settings"  # the entry of a checkpoint that holds the record
NETWORKS = "networks"  # the record's mapping of network name -> class and constructor arguments
GENERATOR = "generator"  # the network inference and evaluation rebuild
BEST_GENERATOR = "best_generator.pt"
_STAGE_CHECKPOINT = re.compile(r"^(checkpoint_(epoch|iteration)=\d+|best_generator)\.pt$")


def _plain(value: Any) -> Any:
    """JSON-normalised value (tuples as lists, objects by name): what a checkpoint can hold and compare."""
    return json.loads(json.dumps(value, default=str))


class NetworkSettings:
    """The record of a training run, as an object Ignite's savers can put in a checkpoint.

    ``state_dict()`` is a plain ``dict`` of strings, numbers, booleans, lists and dicts, so the
    checkpoint still loads with ``torch.load(..., weights_only=True)``.

    Args:
        settings: the record (:func:`network_record`; ``train.yaml``'s ``network_settings``).
    """

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings: dict[str, Any] = _plain(dict(settings or {}))

    def state_dict(self) -> dict[str, Any]:
        """The settings, as saved in a checkpoint."""
        return dict(self.settings)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Take the settings of a checkpoint."""
        self.settings = _plain(dict(state_dict))


# --------------------------------------------------------------------------- the record of a run


def network_record(data: Mapping[str, Any], objects: Mapping[str, Any]) -> dict[str, Any]:
    """The record of a training run: ``data`` and the class and constructor arguments of each network in ``objects``.

    Args:
        data: the settings of the data the networks are trained on (``train.yaml``'s ``data_settings``).
        objects: what a checkpoint holds (``train.yaml``'s ``save_dict``): its networks are recorded under
            their names there (wrapped ones, ``DistributedDataParallel``, by the network inside); optimizers
            and schedulers are not networks and are left out. A network whose class does not record its
            arguments (one swapped in from elsewhere) is recorded by its class alone.

    Returns:
        ``{**data, "networks": {name: {"_target_": ..., <argument>: <value>, ...}}}``, JSON-normalised.
    """
    networks: dict[str, Any] = {}
    for name, obj in objects.items():
        if not isinstance(obj, torch.nn.Module):
            continue
        try:
            networks[name] = recorded_arguments(obj)
        except TypeError:  # not one of covid_ct_cgan.networks: inference cannot rebuild it and says so
            network = type(unwrap(obj))
            networks[name] = {TARGET: f"{network.__module__}.{network.__qualname__}"}
    return _plain({**dict(data), NETWORKS: networks})


def is_legacy(record: Mapping[str, Any]) -> bool:
    """Whether ``record`` is a flat record of ``train.yaml``'s keys (saved before the networks' arguments were)."""
    return not isinstance(record.get(NETWORKS), Mapping)


def flat_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as one level of keys: the data settings, then ``<network>.<argument>`` (MLflow parameters).

    A flat (older) record is returned as it is.
    """
    flat = {k: v for k, v in record.items() if k != NETWORKS}
    if not is_legacy(record):
        for name, arguments in record[NETWORKS].items():
            flat.update({f"{name}.{key}": value for key, value in arguments.items()})
    return flat


def _d_norm_before_it_was_a_setting(settings: Mapping[str, Any]) -> str:
    """The discriminator norm of a record from before ``d_norm``: instance (pix2pixHD), batch for pix2pix's U-Net
    runs (pix2pix.yaml set the discriminator's norm directly then)."""
    return "batch" if str(settings.get("generator", "")).endswith(".UNetGenerator") else "instance"


# settings added after runs were recorded without them: a record without one was trained with this value (or
# with what the function gives for that record's other settings). Constructor arguments a record lacks take the
# constructor's default instead (covid_ct_cgan.networks.recording.default_arguments).
LATER_SETTINGS: dict[str, Any] = {
    "upsampling": "transposed",
    "d_norm": _d_norm_before_it_was_a_setting,
    "local_d_norm": "instance",
    "crop_size": 0,
    "local_d": False,
    "window_level": -600,
    "window_width": 1500,
}

# the keys of a flat record (saved before the networks' arguments were recorded) that set a network's argument,
# with the network and argument each one set; every other key of such a record is a data setting, as now
# (except `dfm`, the joint stage's DFM mode, and `local_d`, whether a local discriminator was built)
LEGACY_ARGUMENTS: dict[str, tuple[str, str]] = {
    "generator": (GENERATOR, TARGET),
    "ngf": (GENERATOR, "ngf"),
    "n_downsampling": (GENERATOR, "n_downsampling"),
    "n_blocks_global": (GENERATOR, "n_blocks_global"),
    "n_blocks_local": (GENERATOR, "n_blocks_local"),
    "desum": (GENERATOR, "desum"),
    "upsampling": (GENERATOR, "upsampling"),
    "discriminator": ("discriminator", TARGET),
    "ndf": ("discriminator", "ndf"),
    "n_layers_d": ("discriminator", "n_layers"),
    "num_d": ("discriminator", "num_d"),
    "d_norm": ("discriminator", "norm"),
    "local_d_norm": ("local_discriminator", "norm"),
    "dfm_feature_index": ("dfm", "feature_index"),
}


def legacy_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record in the keys of a flat (older) record (:data:`LEGACY_ARGUMENTS`), to compare with one.

    Keys of networks the record does not hold are left out; ``dfm`` is given for a joint-mode generator only
    (the other stages train with the DFM net's ``equal`` mode whatever ``dfm`` said).
    """
    if is_legacy(record):
        return dict(record)
    networks = record[NETWORKS]
    view = {k: v for k, v in record.items() if k != NETWORKS}
    for key, (name, argument) in LEGACY_ARGUMENTS.items():
        if argument in networks.get(name, {}):
            view[key] = networks[name][argument]
    if networks.get(GENERATOR, {}).get("mode") == "joint" and "mode" in networks.get("dfm", {}):
        view["dfm"] = networks["dfm"]["mode"]
    view["local_d"] = "local_discriminator" in networks
    return view


def _with_later_settings(settings: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """``settings`` with the value of each :data:`LATER_SETTINGS` key of ``keys`` it lacks."""
    later = {k: v(settings) if callable(v) else v for k, v in LATER_SETTINGS.items() if k in keys and k not in settings}
    return {**later, **settings}


def _difference(key: str, old: Any, new: Any) -> str:
    return f"{key}: {old!r} -> {new!r}"


def setting_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: recorded -> current`` for each setting of two flat records that differs (JSON-normalised; keys of either
    side; a key of :data:`LATER_SETTINGS` missing from a side counts as its value there)."""
    recorded, current = _with_later_settings(recorded, current), _with_later_settings(current, recorded)
    return [
        _difference(key, recorded.get(key, "(not set)"), current.get(key, "(not set)"))
        for key in sorted(set(recorded) | set(current))
        if _plain(recorded.get(key)) != _plain(current.get(key))
    ]


def _legacy_differences(legacy: Mapping[str, Any], view: Mapping[str, Any], legacy_first: bool) -> list[str]:
    """Differences between a flat record and a record's :func:`legacy_view`, on the keys of the view (a key the flat
    record lacks: its :data:`LATER_SETTINGS` value, else not compared)."""
    legacy = _with_later_settings(legacy, view)
    lines = []
    for key in sorted(view):
        if key in legacy and _plain(legacy[key]) != _plain(view[key]):
            pair = (legacy[key], view[key]) if legacy_first else (view[key], legacy[key])
            lines.append(_difference(key, *pair))
    return lines


def _with_defaults(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A network's recorded arguments with its constructor's defaults for those it lacks (recorded before they existed)."""
    try:
        defaults = default_arguments(str(arguments.get(TARGET)))
    except ValueError:  # a class of elsewhere: compared as recorded
        defaults = {}
    return {**defaults, **arguments}


def record_differences(recorded: Mapping[str, Any], current: Mapping[str, Any], ignore: Sequence[str] = ()) -> list[str]:
    """``key: recorded -> current`` for each setting in which two records differ.

    Records of networks' arguments are compared argument by argument (``generator.ngf: 8 -> 16``; an argument a
    record lacks counts as its constructor's default, a data setting as its :data:`LATER_SETTINGS` value); a
    network built on one side only is one line (``local_discriminator: '(not built)' -> '...LocalDiscriminator'``).
    A flat (older) record is compared in its own keys (:func:`legacy_view`).

    Args:
        recorded: the record of a stage (its ``settings.json``).
        current: this run's record.
        ignore: keys not compared: ``<network>.<argument>``, a network's name, or a data setting.

    Returns:
        The differing keys, sorted, or ``[]``.
    """
    skipped = lambda key: key in ignore or key.split(".", 1)[0] in ignore  # noqa: E731 - a network's name skips it all
    if is_legacy(recorded) and is_legacy(current):
        lines = setting_differences(recorded, current)
    elif is_legacy(recorded) or is_legacy(current):
        legacy_first = is_legacy(recorded)
        legacy, view = (recorded, legacy_view(current)) if legacy_first else (current, legacy_view(recorded))
        lines = _legacy_differences(legacy, view, legacy_first)
    else:
        data_old = {k: v for k, v in recorded.items() if k != NETWORKS}
        data_new = {k: v for k, v in current.items() if k != NETWORKS}
        lines = setting_differences(data_old, data_new)
        old_nets, new_nets = recorded[NETWORKS], current[NETWORKS]
        for name in sorted(set(old_nets) | set(new_nets)):
            if name not in old_nets or name not in new_nets:
                lines.append(_difference(name, old_nets.get(name, {}).get(TARGET, "(not built)"),
                                         new_nets.get(name, {}).get(TARGET, "(not built)")))
                continue
            old, new = _with_defaults(old_nets[name]), _with_defaults(new_nets[name])
            lines += [_difference(f"{name}.{key}", old.get(key, "(not set)"), new.get(key, "(not set)"))
                      for key in sorted(set(old) | set(new)) if _plain(old.get(key)) != _plain(new.get(key))]
    return sorted(line for line in lines if not skipped(line.split(":", 1)[0]))


# --------------------------------------------------------------------------- reading it back


def _embedded(ckpt: Any) -> dict[str, Any] | None:
    settings = ckpt.get(NETWORK_SETTINGS_KEY) if isinstance(ckpt, Mapping) else None
    return dict(settings) if isinstance(settings, Mapping) and settings else None


def _load(path: Path) -> Any:
    try:
        return read_checkpoint(path)
    except CheckpointError:  # an unreadable checkpoint is reported when the weights are loaded
        return None


def _folder_settings(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    recorded = read_stage_settings(folder)
    return (folder / SETTINGS_FILE, recorded) if recorded else None


def saved_network_settings(checkpoint: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The network settings saved with a checkpoint file or stage folder, and the file they were read from.

    A stage folder: those of its newest readable checkpoint (the one synthesis loads), else its
    ``settings.json``, else those of its ``best_generator.pt``. A file: those saved in it, else the
    ``settings.json`` of the stage folder it lies in (a ``checkpoint_*.pt`` or ``best_generator.pt``).

    Args:
        checkpoint: a checkpoint file or a stage folder.

    Returns:
        ``(file, settings)``, or ``None`` when there are none (a checkpoint from before settings were
        saved, a bare state dict, or nothing readable: loading the weights reports that).

    Raises:
        InputError: the stage folder's ``settings.json`` exists but cannot be read.
    """
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        found = load_latest_checkpoint(path, required=["generator"])
        if found is not None and _embedded(found[1]):
            return found[0], _embedded(found[1])  # type: ignore[return-value]
        recorded = _folder_settings(path)
        if recorded is not None:
            return recorded
        best = path / BEST_GENERATOR
        settings = _embedded(_load(best)) if found is None and best.is_file() else None
        return (best, settings) if settings else None
    if not path.is_file():
        return None
    settings = _embedded(_load(path))
    if settings:
        return path, settings
    return _folder_settings(path.parent) if _STAGE_CHECKPOINT.match(path.name) else None


LEGACY_KEY = "legacy_settings"  # inference.yaml's key for the settings of a checkpoint saved without a record
# what inference builds a checkpoint saved without any record with (train.yaml's defaults then), where
# legacy_settings does not say otherwise
LEGACY_DEFAULTS: dict[str, Any] = {
    "image_size": 128, "crop_size": 0, "condition": "map", "context_region": "lung", "context_dilation": 3,
    "keep_effusion": False, "window_level": -600, "window_width": 1500, "ngf": 16, "n_downsampling": 2,
    "n_blocks_global": 3, "n_blocks_local": 2, "desum": "dynamic", "upsampling": "transposed",
}
LEGACY_GENERATOR = "covid_ct_cgan.networks.GlobalLocalGenerator"  # the one generator inference built before records


def _given_by(key: str) -> str:
    """``the command`` when ``legacy_settings`` (or its ``key``) was given on the command line, else ``the config``."""
    from .settings import current_command

    names = (LEGACY_KEY, f"{LEGACY_KEY}#{key}")
    command = current_command()
    if command is not None:
        return "the command" if any(name in command.overrides for name in names) else "the config"
    return "the command" if any(f"--{name}" in sys.argv for name in names) else "the config"  # ckpt_export ...


def _check_type(key: str, value: Any, default: Any) -> None:
    name = f"{LEGACY_KEY}#{key}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            word = str(value).strip().capitalize()
            spelling = f" (write --{name} {word})" if word in ("True", "False") else ""
            raise InputError(f"must be True or False, got {value!r}{spelling}", name)
    elif isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
        raise InputError(f"must be a whole number, got {value!r}", name)
    elif isinstance(default, str) and not isinstance(value, str):
        raise InputError(f"must be a word such as {default!r}, got {value!r}", name)


def _legacy_record(flat: Mapping[str, Any], path: Path | None) -> dict[str, Any]:
    """A flat record (or the settings given for a checkpoint without one) as a record of the generator: the
    global-local generator in joint mode, as inference built every such checkpoint.

    Raises:
        InputError: the flat record names another generator (a pix2pix run: evaluate it with its training config).
    """
    target = flat.get("generator", LEGACY_GENERATOR)
    if target != LEGACY_GENERATOR:
        raise InputError(f"the checkpoint {path} was trained with generator {target}, recorded without its constructor "
                         f"arguments: only {LEGACY_GENERATOR} is rebuilt from such a record; evaluate it with the "
                         "config it was trained with (evaluate.yaml)")
    arguments = {argument: flat[key] for key, (name, argument) in LEGACY_ARGUMENTS.items()
                 if name == GENERATOR and argument != TARGET and key in flat}
    in_channels = condition_channels(num_classes(bool(flat["keep_effusion"])), str(flat["condition"]))
    generator = {TARGET: target, "in_channels": in_channels, "out_channels": 1, **arguments, "mode": "joint"}
    data = {k: v for k, v in flat.items() if k not in LEGACY_ARGUMENTS and k not in ("dfm", "local_d")}
    return {**data, NETWORKS: {GENERATOR: generator}}


def resolve_network_settings(checkpoint: str | Path, legacy_settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record to build a checkpoint's generator and read its data settings with.

    The record saved with the checkpoint (see :func:`saved_network_settings`). A flat (older) record is read as
    the record of its generator (the global-local generator, joint mode; keys it lacks: their
    :data:`LATER_SETTINGS` value); a checkpoint saved without any record is described by ``legacy_settings``
    (train.yaml's keys: ``image_size``, ``ngf`` ...; those not given: :data:`LEGACY_DEFAULTS`).

    Args:
        checkpoint: a checkpoint file or stage folder.
        legacy_settings: for a checkpoint saved without the record of its networks' arguments, the settings it
            was trained with; a value that contradicts a flat record is refused, and so is any value for a
            checkpoint whose record holds its networks' arguments.

    Returns:
        The record: the data settings and ``networks`` (``generator``: its class and constructor arguments).

    Raises:
        InputError: ``legacy_settings#ngf: the checkpoint <file> was trained with 32, the command gives 16 ...``;
            a key or a value of the wrong type in ``legacy_settings``; a flat record of another generator.
    """
    given = dict(legacy_settings or {})
    for key, value in given.items():
        if key not in LEGACY_DEFAULTS:
            raise InputError(f"unknown key {key!r}; one of {', '.join(LEGACY_DEFAULTS)}", LEGACY_KEY)
        _check_type(key, value, LEGACY_DEFAULTS[key])
    saved = saved_network_settings(checkpoint)
    path, recorded = saved if saved is not None else (None, {})
    if recorded and not is_legacy(recorded):
        if given:
            raise InputError(f"the checkpoint {path} records the networks it was trained with; leave {LEGACY_KEY} out "
                             "(it describes checkpoints saved without that record)", LEGACY_KEY)
        data_later = [k for k in LATER_SETTINGS if k not in LEGACY_ARGUMENTS and k != "local_d"]
        record = {**_with_later_settings({k: v for k, v in recorded.items() if k != NETWORKS}, data_later),
                  NETWORKS: recorded[NETWORKS]}
        if GENERATOR not in record[NETWORKS]:
            raise InputError(f"the checkpoint {path} records no {GENERATOR}; found {', '.join(record[NETWORKS]) or 'none'}")
        logger.info(f"network settings from {path}: {GENERATOR} " + ", ".join(
            f"{k}={v}" for k, v in record[NETWORKS][GENERATOR].items()))
        return record
    flat = {**LEGACY_DEFAULTS, **given}
    if recorded:
        full = _with_later_settings(recorded, LEGACY_DEFAULTS)
        for key, value in given.items():
            if key in full and _plain(value) != _plain(full[key]):
                raise InputError(f"the checkpoint {path} was trained with {full[key]!r}, {_given_by(key)} gives {value!r}; "
                                 f"leave {key} out to use the checkpoint's", f"{LEGACY_KEY}#{key}")
        flat.update({k: v for k, v in full.items() if k in LEGACY_DEFAULTS or k == "generator"})
        logger.info(f"network settings from {path}: " + ", ".join(f"{k}={full[k]}" for k in LEGACY_DEFAULTS if k in full))
    return _legacy_record(flat, path)


# inference.yaml's `trained` component: resolve_network_settings as an entry point (one ERROR line, status 2).
# Evaluated when the config builds network_def, also by `monai.bundle ckpt_export` / `onnx_export`, which run
# no config expression of ours around it; Python callers use resolve_network_settings, which raises.
checkpoint_network_settings = exit_on_input_error(resolve_network_settings)
