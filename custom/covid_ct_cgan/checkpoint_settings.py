"""The network settings a checkpoint was trained with: saved with it, read back by inference and evaluation.

Training saves ``train.yaml``'s ``network_settings`` (generator class, ``image_size``,
``condition``, ``ngf``, ``n_downsampling`` ...) in three places: in every checkpoint
the savers write and in ``best_generator.pt`` (entry ``network_settings``, a
:class:`NetworkSettings`), and in the stage folder's ``settings.json``
(:func:`covid_ct_cgan.engines.stages.record_stage_settings`; read back by
:func:`covid_ct_cgan.checkpoints.read_stage_settings`).

Inference and evaluation read them back (:func:`saved_network_settings`), so a
checkpoint (or ``--checkpoint_dir``) is enough to rebuild its generator:
:func:`resolve_network_settings` takes each setting from the checkpoint unless one
is given, refuses a given value that contradicts the checkpoint (naming both), and
falls back to the given value or the config's default for checkpoints saved
without settings (older runs).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checkpoints import SETTINGS_FILE, CheckpointError, load_latest_checkpoint, read_checkpoint, read_stage_settings
from .errors import InputError, exit_on_input_error

__all__ = [
    "NETWORK_SETTINGS_KEY",
    "NetworkSettings",
    "checkpoint_network_settings",
    "resolve_network_settings",
    "saved_network_settings",
]

logger = logging.getLogger(__name__)

NETWORK_SETTINGS_KEY = "network_settings"  # the entry of a checkpoint that holds them
BEST_GENERATOR = "best_generator.pt"
CLASS_KEYS = ("generator", "discriminator")  # settings that name a class (``_target_``), not a config key
_STAGE_CHECKPOINT = re.compile(r"^(checkpoint_(epoch|iteration)=\d+|best_generator)\.pt$")


def _plain(value: Any) -> Any:
    """JSON-normalised value (tuples as lists, objects by name): what a checkpoint can hold and compare."""
    return json.loads(json.dumps(value, default=str))


class NetworkSettings:
    """The network settings of a training run, as an object Ignite's savers can put in a checkpoint.

    ``state_dict()`` is a plain ``dict`` of strings, numbers and booleans, so the
    checkpoint still loads with ``torch.load(..., weights_only=True)``.

    Args:
        settings: ``key -> value`` (``train.yaml``'s ``network_settings``).
    """

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings: dict[str, Any] = _plain(dict(settings or {}))

    def state_dict(self) -> dict[str, Any]:
        """The settings, as saved in a checkpoint."""
        return dict(self.settings)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Take the settings of a checkpoint."""
        self.settings = _plain(dict(state_dict))


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


def _given_by(key: str) -> str:
    """``the command`` when ``key`` was given on the command line, else ``the config``."""
    from .settings import current_command

    command = current_command()
    if command is not None:
        return "the command" if key in command.overrides else "the config"
    return "the command" if f"--{key}" in sys.argv else "the config"  # ckpt_export and other MONAI commands


def _check_type(key: str, value: Any, default: Any) -> None:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            spelling = f" (write --{key} {str(value).strip().capitalize()})" if str(value).strip().lower() in ("true", "false") else ""
            raise InputError(f"must be True or False, got {value!r}{spelling}", key)
    elif isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
        raise InputError(f"must be a whole number, got {value!r}", key)
    elif isinstance(default, str) and not isinstance(value, str):
        raise InputError(f"must be a word such as {default!r}, got {value!r}", key)


def resolve_network_settings(
    checkpoint: str | Path,
    given: Mapping[str, Any],
    defaults: Mapping[str, Any],
    builds: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The network settings to build a checkpoint's generator with.

    Each key of ``defaults`` takes the value saved with the checkpoint; a value in ``given``
    (not ``None``) must agree with it. For a checkpoint saved without settings, a given value
    is used, else the default.

    Args:
        checkpoint: a checkpoint file or stage folder (see :func:`saved_network_settings`).
        given: values set in the config or on the command line; ``None``: take the checkpoint's.
        defaults: every setting to resolve, with the value for checkpoints saved without settings.
        builds: classes the config builds (``{"generator": "covid_ct_cgan.networks.GlobalLocalGenerator"}``),
            compared with the checkpoint's.

    Returns:
        ``key -> value`` for every key of ``defaults``.

    Raises:
        InputError: ``ngf: the checkpoint <file> was trained with 32, the command gives 16``; a class
            the checkpoint was not trained with; a given value of the wrong type.
    """
    for key, value in given.items():
        if value is not None and key in defaults:
            _check_type(key, value, defaults[key])
    saved = saved_network_settings(checkpoint)
    path, recorded = saved if saved is not None else (None, {})
    for key, built in (builds or {}).items():
        if key in recorded and str(recorded[key]) != str(built):
            raise InputError(
                f"the checkpoint {path} was trained with {key} {recorded[key]}, but this config builds {built}; "
                "use the config it was trained with"
            )
    resolved: dict[str, Any] = {}
    for key, default in defaults.items():
        value = given.get(key)
        if key in recorded:
            if value is not None and _plain(value) != _plain(recorded[key]):
                raise InputError(
                    f"the checkpoint {path} was trained with {recorded[key]!r}, {_given_by(key)} gives {value!r}; "
                    f"leave {key} out to use the checkpoint's",
                    key,
                )
            resolved[key] = recorded[key]
        else:
            resolved[key] = default if value is None else value
    if path is not None:
        logger.info(f"network settings from {path}: " + ", ".join(f"{k}={resolved[k]}" for k in defaults if k in recorded))
    return resolved


# inference.yaml's `trained` component: resolve_network_settings as an entry point (one ERROR line, status 2).
# Evaluated when the config builds network_def, also by `monai.bundle ckpt_export` / `onnx_export`, which run
# no config expression of ours around it; Python callers use resolve_network_settings, which raises.
checkpoint_network_settings = exit_on_input_error(resolve_network_settings)
