"""The settings a user types, checked before any work: unknown keys, bad values, changed network keys.

A bundle run is described by a :class:`BundleCommand`: the config files, the
``--key value`` overrides and the ``--tracking`` setting, as
``python -m monai.bundle run`` received them. MONAI does not hand that
description to the expressions it evaluates, so it is taken from one of two
explicit places (:func:`current_command`):

* the command line of the process, when it is ``python -m monai.bundle run ...``
  (also under ``torchrun -m monai.bundle``), parsed with Fire exactly as MONAI's
  own entry point parses it;
* :func:`run_bundle`, the Python form of that command (``monai.bundle.run`` with
  the command recorded), and the runners that re-read a config once per stage
  or per experiment (:func:`using_command`).

Run ids that re-read their config (``training``, ``train_*`` of ``train.yaml``,
``run`` of ``segmentation.yaml``) are handed the command in their expression,
and every config's ``initialize`` calls :func:`check_command`: an override that
is not a key of the given config files is refused with the closest key
suggested, and ``train.yaml`` also checks its values (:func:`check_training`).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import inspect
import math
import pydoc
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .errors import InputError, exit_on_input_error
from .fileio import check_writable
from .losses import D_TARGETS, GAN_MODES
from .networks.diffaugment import parse_policy
from .networks.discriminator import D_NORMS, DFM_MODES
from .networks.blocks import UPSAMPLINGS
from .networks.generator import DESUM_MODES, GENERATOR_MODES
from .transforms import CONDITIONS, CONTEXT_REGIONS

__all__ = [
    "BundleCommand",
    "check_command",
    "check_overrides",
    "check_training",
    "command_line",
    "current_command",
    "load_config",
    "run_bundle",
    "using_command",
]

_SEP = "#"
_SPECIAL_COMPONENT_KEYS = ("_target_", "_disabled_", "_mode_", "_requires_", "_desc_")
_COMMAND: ContextVar[BundleCommand | None] = ContextVar("covid_ct_cgan_bundle_command", default=None)


# --------------------------------------------------------------------------- the command of a bundle run


def _named_parameters() -> frozenset[str]:
    """Arguments of ``monai.bundle run`` that configure the workflow itself (every other one is an override)."""
    from monai.bundle import ConfigWorkflow
    from monai.bundle.scripts import create_workflow, run

    names: set[str] = set()
    for func in (run, create_workflow, ConfigWorkflow.__init__):
        params = inspect.signature(func).parameters.values()
        names.update(p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self")
    return frozenset(names)


@dataclass(frozen=True)
class BundleCommand:
    """What one bundle run was given: config files (or a config), overrides, tracking.

    Args:
        run_id: the run id being executed.
        config_files: the config files, merged in order (MONAI's ``--config_file``).
        overrides: ``id -> value`` pairs applied after the files (MONAI's ``--key value``).
        tracking: MONAI's ``--tracking`` (``"mlflow"``, a settings file or a dict), or ``None``.
        meta_file: MONAI's ``--meta_file``; default ``metadata.json`` beside the first config file.
        base: a raw config to start from instead of ``config_files`` (a runner's own config).
    """

    run_id: str = "run"
    config_files: tuple[str, ...] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)
    tracking: str | dict | None = None
    meta_file: str | Sequence[str] | None = None
    base: Mapping[str, Any] | None = None

    @classmethod
    def from_arguments(cls, config_file: Any = None, args_file: str | None = None, **kwargs: Any) -> BundleCommand:
        """The command for the arguments of ``monai.bundle.run`` (``args_file`` merged as MONAI merges it).

        Raises:
            InputError: no config file given.
        """
        from monai.bundle.scripts import update_kwargs

        args = update_kwargs(args=args_file, config_file=config_file, **kwargs)
        files = args.pop("config_file", None)
        if files is None:
            raise InputError("no config_file given")
        if isinstance(files, str) and not Path(files).is_file() and "," in files:
            files = files.split(",")  # MONAI's comma-separated form
        named = _named_parameters()
        workflow = {k: args.pop(k) for k in list(args) if k in named}
        return cls(
            run_id=str(workflow.get("run_id") or "run"),
            config_files=tuple(str(f) for f in ([files] if isinstance(files, (str, Path)) else files)),
            overrides=args,
            tracking=workflow.get("tracking"),
            meta_file=workflow.get("meta_file"),
        )

    def with_overrides(self, **extra: Any) -> BundleCommand:
        """The same command with more overrides (a runner's ``stage``, ``run_dir`` ...)."""
        return replace(self, overrides={**self.overrides, **extra})

    def load(self, overrides: bool = True, tracking: bool = True) -> dict:
        """The raw config as ``ConfigWorkflow`` builds it: files merged, ``_meta_``, overrides, tracking.

        Args:
            overrides: apply the overrides (``False``: the config files alone).
            tracking: patch the ``--tracking`` handlers and keys in (as MONAI does; this also writes
                the executed config when the tracking settings ask for it).

        Raises:
            InputError: a config file is missing.
        """
        from monai.bundle import ConfigParser, ConfigWorkflow
        from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

        if self.base is not None:
            parser = ConfigParser(copy.deepcopy(dict(self.base)))
        else:
            for path in self.config_files:
                if not Path(path).is_file():
                    raise InputError("config file not found", path)
            parser = ConfigParser()
            parser.read_config(f=list(self.config_files))
            meta = self.meta_file or str(Path(self.config_files[0]).parent / "metadata.json")
            if not isinstance(meta, str) or Path(meta).is_file():
                parser.read_meta(f=meta)
        if overrides:
            parser.update(copy.deepcopy(dict(self.overrides)))
        if tracking and self.tracking is not None:
            settings = (
                DEFAULT_EXP_MGMT_SETTINGS[self.tracking]
                if isinstance(self.tracking, str) and self.tracking in DEFAULT_EXP_MGMT_SETTINGS
                else ConfigParser.load_config_files(self.tracking)
            )
            ConfigWorkflow.patch_bundle_tracking(parser=parser, settings=copy.deepcopy(settings))
        return parser.get()


def load_config(config: BundleCommand | Mapping[str, Any] | None, **extra: Any) -> dict:
    """A private raw config from a command (files, overrides, tracking) or a raw config, with ``extra`` set by id.

    Raises:
        InputError: ``config`` is ``None`` (the run was not started from a command that can be re-read).
    """
    if config is None:
        raise InputError(
            "this run id re-reads its configuration, but the run was not started as a command: use "
            "python -m monai.bundle run <id> --config_file ... , or covid_ct_cgan.settings.run_bundle(...) from Python"
        )
    if isinstance(config, BundleCommand):
        return config.with_overrides(**extra).load()
    from monai.bundle import ConfigParser

    parser = ConfigParser(copy.deepcopy(dict(config)))
    parser.update(extra)
    return parser.get()


def command_line(argv: Sequence[str] | None = None, main_spec: str | None = None) -> BundleCommand | None:
    """The command of this process when it is ``python -m monai.bundle run|run_workflow ...``.

    Args:
        argv: the command line (default ``sys.argv``).
        main_spec: the module run as ``__main__`` (default: this process's).

    Returns:
        The command, or ``None`` when the process is something else (a Python program, a server, pytest).
    """
    if main_spec is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        main_spec = getattr(spec, "name", None)
    if main_spec != "monai.bundle.__main__":
        return None
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in ("run", "run_workflow"):
        return None
    import fire

    captured: dict[str, Any] = {}

    def run(run_id: str | None = None, init_id: str | None = None, final_id: str | None = None,  # noqa: ARG001
            meta_file: Any = None, config_file: Any = None, logging_file: str | None = None,  # noqa: ARG001
            tracking: Any = None, args_file: str | None = None, **override: Any) -> None:
        captured.update(run_id=run_id, meta_file=meta_file, config_file=config_file, tracking=tracking,
                        args_file=args_file, **override)

    def run_workflow(workflow_name: Any = None, args_file: str | None = None, **kwargs: Any) -> None:  # noqa: ARG001
        captured.update(args_file=args_file, **kwargs)

    try:
        fire.Fire({"run": run, "run_workflow": run_workflow}, command=argv[1:], name="monai.bundle")
    except (SystemExit, fire.core.FireExit):  # help or a usage error: MONAI has already reported it
        return None
    if not (captured.get("config_file") or captured.get("args_file")):
        return None
    return BundleCommand.from_arguments(**captured)


def current_command() -> BundleCommand | None:
    """The command of the bundle run being executed: the one recorded by :func:`run_bundle` or
    :func:`using_command`, else this process's ``python -m monai.bundle`` command line, else ``None``."""
    recorded = _COMMAND.get()
    return recorded if recorded is not None else command_line()


@contextlib.contextmanager
def using_command(command: BundleCommand | None) -> Iterator[BundleCommand | None]:
    """Make ``command`` the current command while the block runs (a runner re-reading its config)."""
    token = _COMMAND.set(command)
    try:
        yield command
    finally:
        _COMMAND.reset(token)


def run_bundle(run_id: str = "run", config_file: str | Sequence[str] | None = None, **kwargs: Any) -> None:
    """``monai.bundle.run`` with the command recorded, for Python callers of run ids that re-read their config.

    Takes the arguments of ``monai.bundle.run`` (``config_file``, ``tracking``, ``meta_file``,
    ``args_file``, overrides as keywords).

    Raises:
        SystemExit: status 2 and one ``ERROR:`` line for an unknown key or a bad setting (overrides are
            checked before MONAI applies them as well as in the config's ``initialize``).
    """
    import monai.bundle

    command = BundleCommand.from_arguments(config_file=config_file, run_id=run_id, **kwargs)
    # before MONAI applies the overrides: it fails with a traceback on a #-path below a computed value,
    # before the config's own check (check_command, in ``initialize``) runs
    exit_on_input_error(_check_given_overrides)(command)
    with using_command(command):
        monai.bundle.run(run_id=run_id, config_file=config_file, **kwargs)


# --------------------------------------------------------------------------- unknown keys


def _tracking_keys(tracking: str | dict | None) -> set[str]:
    """Top-level keys that ``--tracking`` adds (and that may be overridden with it)."""
    if tracking is None:
        return set()
    from monai.bundle import ConfigParser
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    settings: Any
    if isinstance(tracking, str) and tracking in DEFAULT_EXP_MGMT_SETTINGS:
        settings = DEFAULT_EXP_MGMT_SETTINGS[tracking]
    else:
        try:
            settings = ConfigParser.load_config_files(tracking)
        except Exception:  # noqa: BLE001 - MONAI reports an unreadable tracking file itself
            return set()
    handlers = set(settings.get("handlers_id", {}))
    return {k for k in settings.get("configs", {}) if k not in handlers}


def _suggestion(word: str, candidates: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def _target_parameters(component: Mapping[str, Any]) -> tuple[set[str], bool] | None:
    """Keyword names a component's ``_target_`` accepts, and whether it takes any (``**kwargs`` all the way).

    Follows ``**kwargs`` up the classes' ``__init__`` chain; ``None`` when the target cannot be located.
    """
    from monai.bundle import ComponentLocator, ConfigComponent

    target = component.get("_target_")
    if not isinstance(target, str) or target.startswith(("$", "@", "%")):
        return None
    try:
        name = ConfigComponent(config=dict(component), locator=ComponentLocator()).resolve_module_name()
        obj = pydoc.locate(str(name))
    except Exception:  # noqa: BLE001 - an unknown target is MONAI's to report
        return None
    if obj is None:
        return None
    functions: list[Any] = [vars(k)["__init__"] for k in inspect.getmro(obj) if "__init__" in vars(k)] if inspect.isclass(obj) else [obj]
    names: set[str] = set()
    for func in functions:
        try:
            params = inspect.signature(func).parameters.values()
        except (TypeError, ValueError):
            return None
        names.update(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names, False
    return names, True


_SHOWN_EXPRESSION = 100  # characters of a computed value quoted in a message


def _computed_value_problem(config: Mapping[str, Any], parts: list[str], depth: int, value: str) -> str:
    """Why a ``#``-path cannot go below ``value``, the ``$`` expression or ``@`` reference at ``parts[:depth]``."""
    key, parent = _SEP.join(parts), _SEP.join(parts[:depth])
    rest = _SEP.join(parts[depth:])
    if _REFERENCE.fullmatch(value):
        target = value[1:].replace("::", _SEP)
        found, referred, _ = _raw_at(config, target.split(_SEP))
        instead = f"--{target}{_SEP}{rest}" if found and isinstance(referred, (dict, list)) else f"--{target}"
        return f"{key}: {parent} refers to {value} and has no entries of its own to set; set {instead} instead"
    shown = value if len(value) <= _SHOWN_EXPRESSION else value[: _SHOWN_EXPRESSION - 3] + "..."
    sources = list(dict.fromkeys(ref.replace("::", _SEP) for ref in _REFERENCE.findall(value)))
    problem = f"{key}: {parent} is computed by the config ({shown}) and has no entries to set; set the keys it is computed from instead"
    if sources:
        problem += f" ({', '.join(sources)})"
    if depth == len(parts) - 1 and rest in config and rest not in (parent, *sources):
        problem += f"; {rest} is also a key of its own: --{rest}"
    return problem


def _unknown_path(config: Mapping[str, Any], parts: list[str], replaced: Sequence[str] = ()) -> str | None:
    """Problem with a ``#``-path into ``config`` (whose first part exists), or ``None`` when it is accepted.

    ``replaced``: the other overrides' ``#``-paths; one of them may give a computed value (``$``, ``@``)
    the structure that this path goes into.
    """
    node: Any = config[parts[0]]
    for depth, part in enumerate(parts[1:], start=1):
        prefix = _SEP.join(parts[:depth]) + _SEP
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return None  # MONAI itself refuses a missing list index
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            if (
                isinstance(node, str) and node.startswith(("$", "@"))
                and not any(_SEP.join(parts[:d]) in replaced for d in range(1, depth + 1))
            ):
                return _computed_value_problem(config, parts, depth, node)
            return None  # a literal, or a value another override replaces by a structure: MONAI's to judge
        if part in node:
            node = node[part]
            continue
        if depth < len(parts) - 1:
            return None  # MONAI itself refuses a missing intermediate key
        if "_target_" in node:
            if part in _SPECIAL_COMPONENT_KEYS:
                return None
            accepted = _target_parameters(node)
            if accepted is None or accepted[1] or part in accepted[0]:
                return None
            candidates = sorted(set(node) | accepted[0])
        elif not node or all(isinstance(v, dict) for v in node.values()):
            return None  # an open mapping (empty, or named entries such as `models`)
        else:
            candidates = sorted(node)
        return f"unknown key '{_SEP.join(parts)}'{_suggestion(part, candidates, prefix)}"
    return None


_REFERENCE = re.compile(r"@([\w#:]+)")  # a MONAI reference inside an expression
_BOOLEAN_WORDS = {"true": "True", "false": "False", "yes": "True", "no": "False", "on": "True", "off": "False",
                  "1": "True", "0": "False"}


def _raw_at(config: Mapping[str, Any], parts: Sequence[str]) -> tuple[bool, Any, Any]:
    """``(found, value, parent)`` of a ``#``-path in a raw config (``parent`` the node that holds or would hold it)."""
    node: Any = config
    parent: Any = None
    for part in parts:
        parent = node
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return False, None, parent if part is parts[-1] else None
    return True, node, parent


def _dotted_name(node: Any) -> str | None:
    """``a.b.c`` of an ``ast.Name`` / ``ast.Attribute`` chain, else None."""
    import ast

    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(names)])


def _returns_bool(dotted: str) -> bool:
    """Whether the function ``dotted`` (located without calling it) is annotated to return ``bool``."""
    if dotted in ("bool", "isinstance", "issubclass", "callable", "all", "any"):
        return True
    try:
        func = pydoc.locate(dotted)
        annotation = inspect.signature(func).return_annotation if callable(func) else None
    except (TypeError, ValueError, ImportError):
        return False
    return annotation in (bool, "bool")


def _is_boolean_value(config: Mapping[str, Any], raw: Any, seen: frozenset[str]) -> bool:
    """Whether a raw config value is a boolean: ``true``/``false``, a reference to one, or an expression that
    yields one (a comparison, ``not``, ``and``/``or`` of booleans, a call annotated ``-> bool``). Decided from
    the text alone: nothing is evaluated, so an expression with side effects (a run step) never runs here."""
    import ast

    if isinstance(raw, bool):
        return True
    if not isinstance(raw, str):
        return False
    if raw.startswith("@") and _REFERENCE.fullmatch(raw):
        return _is_boolean_key(config, raw[1:], seen)
    if not raw.startswith("$"):
        return False
    refs: dict[str, str] = {}

    def placeholder(match: re.Match) -> str:
        name = f"__ref{len(refs)}__"
        refs[name] = match.group(1)
        return name

    try:
        tree = ast.parse(_REFERENCE.sub(placeholder, raw[1:]).strip(), mode="eval")
    except SyntaxError:
        return False

    def boolean(node: Any) -> bool:
        if isinstance(node, ast.Constant):
            return isinstance(node.value, bool)
        if isinstance(node, ast.Compare) or (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)):
            return True
        if isinstance(node, ast.BoolOp):
            return all(boolean(v) for v in node.values)
        if isinstance(node, ast.IfExp):
            return boolean(node.body) and boolean(node.orelse)
        if isinstance(node, ast.Name) and node.id in refs:
            return _is_boolean_key(config, refs[node.id], seen)
        if isinstance(node, ast.Call):
            dotted = _dotted_name(node.func)
            return dotted is not None and _returns_bool(dotted)
        return False

    return boolean(tree.body)


def _is_boolean_key(config: Mapping[str, Any], key: str, seen: frozenset[str] = frozenset()) -> bool:
    """Whether the setting ``key`` (a ``#``-path) of a raw config takes a boolean: its value in the config
    files is one (see :func:`_is_boolean_value`), or, absent there, the component's ``_target_`` has a
    ``True``/``False`` default for it (e.g. ``StatsHandler``'s ``iteration_log``)."""
    key = key.replace("::", _SEP)
    if key in seen:
        return False
    parts = key.split(_SEP)
    found, raw, parent = _raw_at(config, parts)
    if found:
        return _is_boolean_value(config, raw, seen | {key})
    if not (isinstance(parent, Mapping) and "_target_" in parent):
        return False
    from monai.bundle import ComponentLocator, ConfigComponent

    try:
        name = ConfigComponent(config=dict(parent), locator=ComponentLocator()).resolve_module_name()
        obj = pydoc.locate(str(name))
        functions: list[Any] = [vars(k)["__init__"] for k in inspect.getmro(obj) if "__init__" in vars(k)] if inspect.isclass(obj) else [obj]
        for func in functions:
            param = inspect.signature(func).parameters.get(parts[-1])
            if param is not None:
                return isinstance(param.default, bool)
    except Exception:  # noqa: BLE001 - a target that cannot be located is MONAI's to report
        return False
    return False


def _boolean_problem(key: str, given: Any) -> str:
    """The refusal of a non-boolean ``given`` for the boolean setting ``key``, with the spelling that works."""
    word = _BOOLEAN_WORDS.get(str(given).strip().lower()) if isinstance(given, (str, int)) else None
    spelling = f" (write --{key} {word})" if word else ""
    return f"must be True or False, got {given!r}{spelling}"


def check_overrides(
    config: Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any], extra_keys: Sequence[str] = ()
) -> None:
    """Refuse overrides that are not keys of ``config`` (the config files without the overrides).

    A top-level key must exist (or be one of ``extra_keys``, keys MONAI adds); a ``#``-path may add
    a keyword that a component's ``_target_`` accepts, or a name to an open mapping, but may not go
    below a value the config computes (a ``$`` expression or an ``@`` reference). Given the
    overrides' values too, a boolean setting must be given a boolean, wherever it is: a top-level key
    or a ``#``-path, whose default is ``true``/``false``, an expression that yields one (``amp``,
    ``augment``), or a component's boolean keyword. The command line reads ``--overwrite true`` as the
    word ``'true'`` (and ``1`` as a number), which Python takes as true whatever it says (``'false'``
    too), so anything but ``True``/``False`` is refused with the spelling that works.

    Raises:
        InputError: ``unknown key 'epoch'; did you mean 'epochs'?``, a ``#``-path below a computed value
            (``network_settings#ngf: network_settings is computed by the config ...``), or a boolean
            setting given a word.
    """
    known = set(config) | set(extra_keys) | {"_meta_"}
    values = overrides if isinstance(overrides, Mapping) else {}
    paths = [str(key).replace("::", _SEP) for key in overrides]
    for key in overrides:
        parts = str(key).replace("::", _SEP).split(_SEP)
        if parts[0] not in known:
            raise InputError(f"unknown key '{key}'{_suggestion(parts[0], sorted(known - {'_meta_'}))}")
        if len(parts) > 1 and parts[0] in config:
            problem = _unknown_path(config, parts, paths)
            if problem:
                raise InputError(problem)
        if key in values and not isinstance(values[key], bool) and _is_boolean_key(config, str(key)):
            raise InputError(_boolean_problem(str(key), values[key]), key)


# --------------------------------------------------------------------------- training settings


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# key -> smallest allowed whole number
_WHOLE_NUMBERS: dict[str, int] = {
    "image_size": 1, "epochs": 1, "joint_epochs": 1, "stage_epochs": 1, "batch_size": 1, "constant_lr_epochs": 0, "keep_checkpoints": 1,
    "checkpoint_every": 1, "validate_every": 1, "sample_count": 0, "num_workers": 0, "context_dilation": 0, "ngf": 1,
    "n_downsampling": 0, "n_blocks_global": 0, "n_blocks_local": 0, "ndf": 1, "n_layers_d": 1, "num_d": 1,
    "dfm_feature_index": 0, "freeze_global_epochs": 0, "phantom_patients": 1, "phantom_slices": 1, "phantom_size": 16,
    "local_crop": 1, "crop_size": 0,
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "condition": CONDITIONS, "context_region": CONTEXT_REGIONS, "desum": DESUM_MODES, "dfm": DFM_MODES,
    "stage": GENERATOR_MODES, "gan_mode": GAN_MODES, "upsampling": UPSAMPLINGS, "d_norm": D_NORMS,
    "local_d_norm": D_NORMS, "d_target": D_TARGETS,
}
PREPARE_RUN_IDS = ("prepare", "prepare_if_needed")  # train.yaml's run ids that write data_dir alone
_FLAGS = ("resume", "overwrite", "keep_effusion", "include_healthy", "fused_adam", "channels_last", "local_d")


def _value(parser: Any, key: str) -> Any:
    try:
        return parser.get_parsed_content(key)
    except Exception as err:  # noqa: BLE001 - any failure of a typed value is reported on its key
        cause = err.__cause__ or err  # MONAI wraps an expression's own error
        detail = " ".join(str(cause).split())[:200]
        raise InputError(f"cannot be evaluated ({type(cause).__name__}: {detail})", key) from None


def _check_values(parser: Any, keys: set[str]) -> dict[str, Any]:
    """Types and ranges of the plain training settings; returns the values read."""
    values: dict[str, Any] = {}
    for key, low in _WHOLE_NUMBERS.items():
        if key in keys:
            value = values[key] = _value(parser, key)
            if not _is_int(value):
                raise InputError(f"must be a whole number, got {value!r}", key)
            if value < low:
                raise InputError(f"must be at least {low}, got {value}", key)
    for key, choices in _CHOICES.items():
        if key in keys:
            value = values[key] = _value(parser, key)
            if value not in choices:
                raise InputError(f"must be one of {', '.join(choices)}; got {value!r}", key)
    for key in _FLAGS:
        if key in keys and not isinstance(_value(parser, key), bool):
            raise InputError(f"must be True or False, got {_value(parser, key)!r}", key)
    if "stages" in keys:
        stages = values["stages"] = _value(parser, "stages")
        if not isinstance(stages, list) or not stages or any(s not in GENERATOR_MODES for s in stages):
            raise InputError(f"must be a non-empty list of {', '.join(GENERATOR_MODES)}; got {stages!r}", "stages")
    if "learning_rate" in keys:
        lr = _value(parser, "learning_rate")
        if not _is_number(lr) or not math.isfinite(lr) or lr <= 0:
            raise InputError(f"must be a positive number, got {lr!r}", "learning_rate")
    if "betas" in keys:
        betas = _value(parser, "betas")
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas)):
            raise InputError(f"must be two numbers in [0, 1), got {betas!r}", "betas")
    for key in ("lambda_fm", "lambda_l1", "lambda_local", "lambda_texture"):
        if key in keys:
            weight = _value(parser, key)
            if not _is_number(weight) or weight < 0:  # NaN passes: the non-finite guard stops such a run
                raise InputError(f"must be a number of at least 0, got {weight!r}", key)
    if "d_augment" in keys:
        try:
            parse_policy(_value(parser, "d_augment"))
        except (TypeError, ValueError) as err:
            raise InputError(str(err).removeprefix("d_augment: "), "d_augment") from None
    if "augment_prob" in keys:
        prob = _value(parser, "augment_prob")
        if not _is_number(prob) or not 0 <= prob <= 1:
            raise InputError(f"must be a number in [0, 1], got {prob!r}", "augment_prob")
    if "window_width" in keys:
        width = _value(parser, "window_width")
        if not _is_number(width) or width <= 0:
            raise InputError(f"must be a positive number, got {width!r}", "window_width")
    epochs_key = "stage_epochs" if "stage_epochs" in values else "epochs"  # the stage's own (joint_epochs in the joint stage)
    if {"constant_lr_epochs", epochs_key} <= set(values) and values["constant_lr_epochs"] > values[epochs_key]:
        raise InputError(f"must be at most the stage's epochs ({values[epochs_key]}), got {values['constant_lr_epochs']}",
                         "constant_lr_epochs")
    if "ngf" in values and values["ngf"] % 2:
        raise InputError(f"must be even (the local generator uses ngf // 2), got {values['ngf']}", "ngf")
    if {"local_crop", "image_size"} <= set(values) and values["local_crop"] > values["image_size"]:
        raise InputError(f"must be at most image_size ({values['image_size']}), got {values['local_crop']}", "local_crop")
    if {"num_d"} <= set(values) and values["num_d"] > 3:
        raise InputError(f"must be 1, 2 or 3, got {values['num_d']}", "num_d")
    if {"dfm_feature_index", "n_layers_d"} <= set(values) and values["dfm_feature_index"] > values["n_layers_d"]:
        raise InputError(f"must be at most n_layers_d ({values['n_layers_d']}), got {values['dfm_feature_index']}",
                         "dfm_feature_index")
    return values


def _build(parser: Any, key: str, raw: Mapping[str, Any]) -> Any:
    """Build ``key`` on the meta device (no memory, no weights); a constructor's complaint names its setting."""
    try:
        with torch.device("meta"):
            return parser.get_parsed_content(key)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - a constructor's ValueError is the user's setting
        cause = err.__cause__ or err
        message = " ".join(str(cause).split())[:300]
        named = re.match(r"(\w+) (must .*)", message)
        if named and named.group(1) in raw:
            raise InputError(named.group(2), named.group(1)) from None
        raise InputError(f"cannot be built ({type(cause).__name__}: {message})", key) from None


def _size_factor(network: torch.nn.Module, stage: str) -> int:
    """Divisor of the input size: the global generator's alone in the global stage, else the whole generator's."""
    net: Any = network.global_net if stage == "global" and hasattr(network, "global_net") else network
    return int(getattr(net, "full_size_factor", getattr(net, "size_factor", 1)))


def check_training(raw: Mapping[str, Any]) -> None:
    """Check the settings of a ``train.yaml`` config before any work (values, network sizes, each stage).

    Every plain setting is read on its own (a value that cannot be evaluated is named), then the
    generator, discriminator and DFM net of each of ``stages`` are built on the meta device: the
    stage's image size must be divisible by the generator's total down-sampling.

    Raises:
        InputError: ``<key>: <problem>``, e.g. ``image_size: must be a multiple of 8 ..., got 100``.
    """
    from monai.bundle import ConfigParser

    def parsed(**extra: Any) -> Any:
        parser = ConfigParser(copy.deepcopy(dict(raw)))
        parser.update(extra)
        parser.parse(reset=True)
        return parser

    parser = parsed()
    values = _check_values(parser, set(raw))
    command = current_command()
    if "output_dir" in raw and command is not None and command.run_id not in PREPARE_RUN_IDS:
        # before anything is prepared or built (a stage's TensorBoard handler creates its folder when built)
        check_writable(_value(parser, "output_dir"))
    stages = values.get("stages") or [values.get("stage", "joint")]
    for stage in stages:
        stage_parser = parsed(stage=stage)
        network = _build(stage_parser, "network_def", raw)
        for key in ("discriminator_def", "dfm_def", "local_discriminator_def"):
            if key in raw:
                _build(stage_parser, key, raw)
        if "image_size" not in values or "stage_image_size" not in raw:
            continue
        size, full = _value(stage_parser, "stage_image_size"), values["image_size"]
        factor = _size_factor(network, stage)
        scale = max(1, round(full / max(int(size), 1)))
        if full % (factor * scale) or full < factor * scale:
            raise InputError(
                f"must be a multiple of {factor * scale} for this generator (the {stage} stage works at "
                f"{size} px and its generator needs a multiple of {factor}), got {full}",
                "image_size",
            )
        crop = int(values.get("crop_size") or 0)
        if crop and (crop % (factor * scale) or crop > full):
            raise InputError(
                f"must be 0 (whole slices) or a multiple of {factor * scale} no larger than image_size ({full}) for "
                f"this generator, got {crop}", "crop_size",
            )


# --------------------------------------------------------------------------- the check each config runs


def _check_given_overrides(command: BundleCommand) -> None:
    """:func:`check_overrides` on a command's overrides, against its config files (without the overrides)."""
    files = command.load(overrides=False, tracking=False)
    check_overrides(files, dict(command.overrides), sorted(_tracking_keys(command.tracking)))


def check_command(validate: Callable[[Mapping[str, Any]], None] | None = None) -> None:
    """Check the current bundle command (``initialize`` of every config): unknown keys and booleans given words,
    then ``validate``.

    Nothing is checked when the run was not started as a command (``monai.bundle.run`` called from
    Python without :func:`run_bundle`: the caller passes its own overrides).

    Args:
        validate: checks the values of the resulting raw config (``train.yaml``: :func:`check_training`).

    Raises:
        InputError: an unknown key, a boolean given as a word, a network built otherwise than its record
            says, or what ``validate`` refuses (the configs call this through
            :func:`covid_ct_cgan.errors.entry_point`: one ``ERROR:`` line, exit status 2).
    """
    command = current_command()
    if command is None:
        return
    if command.base is None:
        _check_given_overrides(command)
    if validate is not None:
        validate(command.load(tracking=False))
