"""Running the training stages: resume, stage hand-over, skipping finished stages.

``train.yaml`` builds everything for one stage, chosen by its top-level
``stage`` key (``global``, ``local`` or ``joint``). Its run ids call into here
(through :func:`covid_ct_cgan.errors.entry_point`, which reports errors with one line):

* ``run`` -> :func:`run_stage` on the config's own ``train#trainer``;
* ``train_global`` / ``train_local`` / ``train_joint`` / ``training`` ->
  :func:`run_stages`, which is handed the configuration of the run (the
  :class:`~covid_ct_cgan.settings.BundleCommand`: config files, command-line
  overrides, ``--tracking``), reads it once and builds each stage from it with
  ``stage`` set and the stage's own section applied (:func:`stage_config`), so
  every stage is wired by the config and nothing is duplicated in Python.

A stage's section (``global``, ``local``, ``joint`` in ``train.yaml``) holds
arguments of that stage's trainer, evaluator and handlers
(:data:`STAGE_SECTION_IDS`), e.g. ``--joint#trainer#max_epochs 30`` or
``--local#handlers#4#csv_path work/local.csv``.

Each stage folder keeps the record of the networks it trained and the data they
were trained on (``settings.json``, :mod:`covid_ct_cgan.checkpoint_settings`);
resuming it, or starting the joint stage from it, with other values is refused
with the differing keys named.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.handlers import Checkpoint

from ..checkpoint_settings import record_differences
from ..checkpoints import (
    SETTINGS_FILE,
    UNREADABLE,
    CheckpointError,
    checkpoint_candidates,
    load_latest_checkpoint,
    read_checkpoint,
    read_stage_settings,
)
from ..errors import InputError, StoppedError, interrupt_note, resume_command
from ..fileio import as_write_error, check_writable, is_write_error, remove_stale_temporaries, write_json
from ..locking import output_lock
from ..networks.handover import load_generator_part
from ..networks.wrapping import unwrap
from ..settings import BundleCommand, check_overrides, check_training, load_config, using_command
from .cleanup import removing_empty_outputs

logger = logging.getLogger(__name__)

STAGES = ("global", "local", "joint")
__all__ = [  # checkpoint discovery lives in covid_ct_cgan.checkpoints (shared with inference); named here too
    "SETTINGS_FILE", "STAGES", "STAGE_SECTION_IDS", "check_stage", "check_stage_settings", "check_stages",
    "checkpoint_candidates", "hand_over", "load_latest_checkpoint", "read_stage_settings", "record_stage_settings",
    "resume", "run_ids", "run_stage", "run_stages", "stage_config", "stage_overrides",
]
# the entries of a stage's section in train.yaml and the ids they change for that stage alone: a mapping of
# arguments (trainer, evaluator) or a list with one mapping of arguments per handler, in the handlers' order
STAGE_SECTION_IDS = {
    "trainer": "train#trainer",
    "handlers": "train#handlers",
    "evaluator": "validate#evaluator",
    "val_handlers": "validate#handlers",
}


def _refuse_foreign_checkpoints(checkpoint_dir: str | Path, keys: Sequence[str]) -> None:
    """Readable checkpoints that lack keys of this configuration would be overwritten by a fresh start: refuse."""
    for path in checkpoint_candidates(checkpoint_dir):
        try:
            read_checkpoint(path, keys)
        except CheckpointError as err:
            if err.problem == UNREADABLE:  # unreadable files were reported by load_latest_checkpoint
                continue
            missing = err.missing or list(keys)
            raise InputError(
                f"checkpoint {path.name} was written by another configuration (it lacks {', '.join(missing)}); "
                "train with the settings it was written with, or start over in another output_dir (or with resume=false)",
                Path(checkpoint_dir),
            ) from None


def resume(trainer: Any, save_dict: Mapping[str, Any], checkpoint_dir: str | Path) -> Path | None:
    """Load the newest checkpoint of a stage into ``save_dict``'s objects and the trainer (strictly).

    Restores weights, optimizers, LR schedulers and the engine state (epoch and
    iteration), so ``trainer.run()`` continues at the saved iteration.

    Returns:
        The loaded file, or ``None`` when there was none.
    """
    to_load = {**save_dict, "trainer": trainer}
    found = load_latest_checkpoint(checkpoint_dir, required=list(to_load))
    if found is None:
        _refuse_foreign_checkpoints(checkpoint_dir, list(to_load))
        return None
    path, ckpt = found
    configured_epochs = trainer.state.max_epochs
    try:
        Checkpoint.load_objects(to_load=to_load, checkpoint=ckpt, strict=True)
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        detail = " ".join(str(err).split())[:300]
        raise InputError(
            f"checkpoint does not match this configuration ({detail}); train with the settings it was written "
            "with, or start over in another output_dir (or with resume=false)",
            path,
        ) from None
    trainer.state.max_epochs = configured_epochs  # the config's epochs, not the saved run's (allows extending)
    logger.info(f"resumed from {path} at epoch {trainer.state.epoch}, iteration {trainer.state.iteration}")
    return path


def hand_over(generator: torch.nn.Module, sources: Mapping[str, str | Path], discriminator: torch.nn.Module | None = None, discriminator_source: str | Path | None = None, local_discriminator: torch.nn.Module | None = None) -> None:
    """Start a stage from earlier stages' weights (strict; a mismatch names the keys).

    Args:
        generator: the stage's generator.
        sources: generator part (``global_net``, ``local_net``) -> checkpoint folder of the stage that trained it.
        discriminator: the stage's discriminator, optionally warm-started.
        discriminator_source: checkpoint folder whose ``discriminator`` is loaded into it.
        local_discriminator: the stage's local discriminator (lesion inpainting), warm-started from the
            same folder's ``local_discriminator`` when it has one.

    Raises:
        InputError: a source stage has no readable checkpoint, or its keys do not match.
    """
    for part, folder in sources.items():
        found = load_latest_checkpoint(folder, required=["generator"])
        if found is None:
            raise InputError(f"no checkpoint to start '{part}' from; train that stage first", folder)
        load_generator_part(generator, found[0], part)
        logger.info(f"{part} initialised from {found[0]}")
    for key, module in (("discriminator", discriminator), ("local_discriminator", local_discriminator)):
        found = load_latest_checkpoint(discriminator_source, required=[key]) if module is not None and discriminator_source else None
        if found is not None and module is not None:
            try:
                unwrap(module).load_state_dict(found[1][key], strict=True)
            except RuntimeError as err:
                raise InputError(f"{key} does not match this configuration: {err}", found[0]) from None
            logger.info(f"{key} initialised from {found[0]}")


def _checkpoint_space(save_dict: Mapping[str, Any], files: int = 5) -> int:
    """Bytes a stage needs for its checkpoints: weights and optimizer moments, ``files`` times over."""
    total = 0
    for obj in save_dict.values():
        if isinstance(obj, torch.nn.Module):
            total += 3 * sum(t.numel() * t.element_size() for t in obj.state_dict().values())  # + Adam's two moments
    return files * total


# what a stage differs in from the stages it starts from by design: the generator's mode (the stage itself) and the
# DFM net (not handed over: hand_over takes the generator's parts and the discriminators)
NOT_HANDED_OVER = ("generator.mode", "dfm")


def check_stage_settings(stage_dir: str | Path, settings: Mapping[str, Any], action: str = "resume") -> None:
    """Refuse to ``action`` a stage whose record differs from this run's (``settings``).

    Args:
        stage_dir: the stage folder (its ``settings.json``; none: nothing to compare).
        settings: this run's record (``train.yaml``'s ``network_settings``).
        action: ``"resume"`` (everything compared) or ``"start from"`` (all but :data:`NOT_HANDED_OVER`).

    Raises:
        InputError: names every differing key with the recorded and the current value.
    """
    recorded = read_stage_settings(stage_dir)
    if recorded is None:
        return
    differences = record_differences(recorded, settings, NOT_HANDED_OVER if action == "start from" else ())
    if differences:
        raise InputError(
            f"cannot {action} this stage: it was trained with other network settings ({'; '.join(differences)}); "
            "use the settings it was trained with, or start over in another output_dir (or with resume=false)",
            Path(stage_dir) / SETTINGS_FILE,
        )


def record_stage_settings(stage_dir: str | Path, settings: Mapping[str, Any]) -> Path:
    """Write ``settings`` to the stage folder's ``settings.json`` (atomically, replacing an older record)."""
    plain = json.loads(json.dumps(dict(settings), default=str))  # tuples as lists, objects by name
    return write_json(plain, Path(stage_dir) / SETTINGS_FILE, overwrite=True)


def _stopped_at(trainer: Any, checkpoint_dir: Path) -> str:
    """Where an interrupted stage stopped, and the checkpoint it resumes from (for the Ctrl-C line)."""
    newest = next(iter(checkpoint_candidates(checkpoint_dir)), None)
    start = f"resumes from {newest}" if newest else f"no checkpoint yet in {checkpoint_dir}"
    return f"in stage '{checkpoint_dir.name}' at epoch {trainer.state.epoch}, iteration {trainer.state.iteration} ({start})"


@contextlib.contextmanager
def _write_errors_reported(trainer: Any, checkpoint_dir: Path) -> Any:
    """A file of the stage that cannot be written (disk full, read-only) stops training with one line: the file,
    what to do, and where the run resumes (the checkpoints already written are complete)."""
    try:
        yield
    except (OSError, InputError) as err:
        if not is_write_error(err):
            raise
        error = as_write_error(err, checkpoint_dir) if isinstance(err, OSError) else err
        newest = next(iter(checkpoint_candidates(checkpoint_dir)), None)
        resumes = f"it resumes from {newest.name}" if newest else "no checkpoint was written yet"
        raise InputError(f"{error}, then resume with: {resume_command()} (training stopped at epoch "
                         f"{trainer.state.epoch}, iteration {trainer.state.iteration}; {resumes})") from None


def _is_rank0() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0


def check_stage(
    checkpoint_dir: str | Path,
    save_dict: Mapping[str, Any],
    resume_training: bool = True,
    handover: Mapping[str, str | Path] | None = None,
    handover_discriminator: str | Path | None = None,
    settings: Mapping[str, Any] | None = None,
) -> None:
    """Check what a stage needs that files and settings tell, before its slices are cached and it trains.

    ``train.yaml``'s ``run`` calls it before ``stage_args`` builds the trainer (building ``train#dataset``
    caches every training slice: minutes on real data), and :func:`run_stage` again with the stage's lock
    held. Nothing is written but :func:`~covid_ct_cgan.fileio.check_writable`'s probe file.

    Args:
        checkpoint_dir, save_dict, resume_training, handover, handover_discriminator, settings: as
            :func:`run_stage`.

    Raises:
        InputError: the stage folder cannot be written or lacks the space for its checkpoints (rank 0);
            the stage would resume, or start from another stage, with other network settings; a stage it
            starts from has no checkpoint.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if _is_rank0():
        check_writable(checkpoint_dir, min_free_bytes=_checkpoint_space(save_dict))
    resuming = bool(resume_training and checkpoint_candidates(checkpoint_dir))
    if settings is not None:
        if resuming:
            check_stage_settings(checkpoint_dir, settings, "resume")
        else:
            for source in {*(handover or {}).values(), *([handover_discriminator] if handover_discriminator else [])}:
                check_stage_settings(source, settings, "start from")
    if not resuming:
        for part, folder in (handover or {}).items():
            if not checkpoint_candidates(folder):
                raise InputError(f"no checkpoint to start '{part}' from; train that stage first", folder)


def run_stage(
    trainer: Any,
    save_dict: Mapping[str, Any],
    checkpoint_dir: str | Path,
    resume_training: bool = True,
    handover: Mapping[str, str | Path] | None = None,
    handover_discriminator: str | Path | None = None,
    settings: Mapping[str, Any] | None = None,
) -> None:
    """Run one stage: resume or hand over, train, stop cleanly on a non-finite loss.

    A stage whose newest checkpoint is at its last epoch is complete and is
    skipped (Ignite would otherwise restart it from scratch).

    Args:
        trainer: the stage's trainer.
        save_dict: what a checkpoint holds (without the trainer).
        checkpoint_dir: the stage folder.
        resume_training: resume from the newest checkpoint (``False``: start over).
        handover: generator part -> folder of the stage it starts from (when not resuming).
        handover_discriminator: folder whose discriminator warm-starts this stage's.
        settings: the record of the stage's networks and data (``network_settings``):
            compared with the stage folder's ``settings.json`` (and the hand-over sources')
            before anything is loaded, then recorded there.

    Raises:
        StoppedError: training hit a non-finite loss (the message names it and the stage folder).
        InputError: bad input, naming the file: a missing or mismatched checkpoint to start from,
            a folder that cannot be written.
    """
    checkpoint_dir = Path(checkpoint_dir)
    rank0 = _is_rank0()
    with output_lock(checkpoint_dir) if rank0 else contextlib.nullcontext():
        check_stage(checkpoint_dir, save_dict, resume_training, handover, handover_discriminator, settings)
        if rank0:
            remove_stale_temporaries(checkpoint_dir)  # of a run killed (or failed) while writing; the lock is held
        loaded = resume(trainer, save_dict, checkpoint_dir) if resume_training else None
        if loaded is not None and trainer.state.epoch >= trainer.state.max_epochs:
            logger.info(f"stage in {checkpoint_dir} is complete ({trainer.state.epoch} epochs); skipping")
            return
        if loaded is None and handover:
            hand_over(trainer.generator, handover, getattr(trainer, "discriminator", None), handover_discriminator,
                      getattr(trainer, "local_discriminator", None))
        if settings is not None and rank0:
            record_stage_settings(checkpoint_dir, settings)
        with interrupt_note(lambda: _stopped_at(trainer, checkpoint_dir)), _write_errors_reported(trainer, checkpoint_dir):
            trainer.run()
    reason = getattr(trainer.state, "stop_reason", None)
    if reason:
        raise StoppedError(f"{reason}; checkpoints in {checkpoint_dir}")


def run_ids(parser: Any, keys: Sequence[str]) -> None:
    """Evaluate the ids ``keys`` of a parsed config in order (each item of a list, or the expression); absent ones are skipped."""
    for key in keys:
        if key in parser:
            value = parser[key]
            for item in [f"{key}#{i}" for i in range(len(value))] if isinstance(value, list) else [key]:
                parser.get_parsed_content(item)


def _section_entries(stage: str, name: str, value: Any, defined: Any) -> dict[str, Any]:
    """``{id of the argument in the section: value}`` for one entry of a stage's section; ``defined`` is what
    the entry changes (a component, or a list of handlers: the entry is then a list, one mapping per handler)."""
    where = f"{stage}#{name}"
    if not isinstance(defined, list):
        if not isinstance(value, Mapping):
            raise InputError(f"must be a mapping of arguments, got {value!r}", where)
        return {f"{where}#{key}": item for key, item in value.items()}
    if not isinstance(value, list) or not all(isinstance(arguments, Mapping) for arguments in value):
        raise InputError(f"must be a list with one mapping of arguments per handler, got {value!r}", where)
    if len(value) > len(defined):
        raise InputError(f"has {len(value)} entries for the {len(defined)} handlers of {STAGE_SECTION_IDS[name]}", where)
    return {f"{where}#{index}#{key}": item for index, arguments in enumerate(value) for key, item in arguments.items()}


def stage_overrides(config: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """The ids of ``config`` that ``stage``'s section changes, with their values (checked).

    ``train.yaml``'s section ``local: {handlers: [{}, {}, {}, {}, {csv_path: x}, ...]}`` gives
    ``{"train#handlers#4#csv_path": x}`` (:data:`STAGE_SECTION_IDS`); a config without a section for
    ``stage`` (a baseline's own stage name) gives ``{}``.

    Raises:
        InputError: an entry that is not one of :data:`STAGE_SECTION_IDS` or not shaped as what it changes,
            more handler entries than handlers, an argument the component does not take
            (``joint#trainer#max_epoch``: did you mean ``joint#trainer#max_epochs``?), or a boolean
            argument given a word.
    """
    section = config.get(stage)
    if not isinstance(section, Mapping):
        return {}
    # the section seen as the components it changes, so that a problem is named as the user wrote it
    view: dict[str, Any] = {}
    for name, target in STAGE_SECTION_IDS.items():
        node: Any = config
        for part in target.split("#"):
            node = node.get(part) if isinstance(node, Mapping) else None
        view[name] = node
    given: dict[str, Any] = {}
    for name, value in section.items():
        if name not in STAGE_SECTION_IDS:
            raise InputError(f"unknown entry; a stage's section holds {', '.join(STAGE_SECTION_IDS)}", f"{stage}#{name}")
        given.update(_section_entries(stage, name, value, view[name]))
    check_overrides({stage: view}, given)
    prefix = len(stage) + 1
    return {STAGE_SECTION_IDS[key[prefix:].split("#")[0]] + "#" + key[prefix:].split("#", 1)[1]: value
            for key, value in given.items()}


def stage_config(config: Mapping[str, Any], stage: str) -> dict:
    """A private raw config of ``stage``: ``config`` with ``stage`` set and the stage's section applied.

    Args:
        config: a raw config (files, overrides and tracking, as :meth:`BundleCommand.load` gives it).
        stage: the stage to build.

    Raises:
        InputError: a bad entry of the stage's section (:func:`stage_overrides`).
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser(copy.deepcopy(dict(config)))
    parser.update({"stage": stage, **stage_overrides(config, stage)})
    return parser.get()


def check_stages(raw: Mapping[str, Any]) -> None:
    """``train.yaml``'s settings (:func:`~covid_ct_cgan.settings.check_training`), then every stage's section
    (:func:`stage_overrides`): what ``train.yaml``'s ``initialize`` hands to ``check_command``, so that a bad
    section entry is refused before any work, as a bad setting is.

    Raises:
        InputError: ``<key>: <problem>`` for a setting, or the section entry and its problem.
    """
    check_training(raw)
    for stage in STAGES:
        stage_overrides(raw, stage)


def run_stages(stages: Sequence[str], config: BundleCommand | Mapping[str, Any] | None) -> None:
    """Run stages in order, each built from the same configuration by :func:`stage_config`.

    Args:
        stages: any of ``global``, ``local``, ``joint`` (a baseline config may name its own).
        config: the run's command (``covid_ct_cgan.settings.current_command()`` in ``train.yaml``:
            config files, overrides and ``--tracking``, read once), or a raw config (as read by
            ``ConfigParser``).

    Raises:
        InputError: there is no configuration to read, a stage's section has a bad entry (every stage's is
            checked before the first one trains) or a stage refuses its input.
        StoppedError: a stage's training hit a non-finite loss.
    """
    from monai.bundle import ConfigParser

    raw = load_config(config)
    configs = {stage: stage_config(raw, stage) for stage in stages}
    for stage in stages:
        logger.info(f"==== stage '{stage}' ====")
        with using_command(BundleCommand(base=configs[stage])):  # the stage's own checks (its `initialize`)
            parser = ConfigParser(configs[stage])
            parser.parse(reset=True)
            stage_dir = parser.get_parsed_content("stage_dir") if "stage_dir" in parser else None
            with removing_empty_outputs(stage_dir):  # a failed stage leaves no empty folders (tensorboard/ ...)
                run_ids(parser, ("initialize", "run", "finalize"))
