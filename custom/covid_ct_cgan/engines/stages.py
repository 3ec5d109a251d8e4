"""Running the training stages: resume, stage hand-over, skipping finished stages.

``train.yaml`` builds everything for one stage, chosen by its top-level
``stage`` key (``global``, ``local`` or ``joint``). Its run ids call into here
(through :func:`covid_ct_cgan.errors.entry_point`, which reports errors with one line):

* ``run`` -> :func:`run_stage` on the config's own ``train#trainer``;
* ``train_global`` / ``train_local`` / ``train_joint`` / ``training`` ->
  :func:`run_stages`, which is handed the configuration of the run (the
  :class:`~covid_ct_cgan.settings.BundleCommand`: config files, command-line
  overrides, ``--tracking``) and re-reads it once per stage with ``stage`` set,
  so every stage is wired by the config and nothing is duplicated in Python.

Each stage folder keeps the network settings it was trained with
(``settings.json``); resuming it, or starting the joint stage from it, with
other values is refused with the differing keys named.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.handlers import Checkpoint

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
from ..settings import BundleCommand, load_config, setting_differences, using_command
from .cleanup import removing_empty_outputs

logger = logging.getLogger(__name__)

STAGES = ("global", "local", "joint")
__all__ = [  # checkpoint discovery lives in covid_ct_cgan.checkpoints (shared with inference); named here too
    "SETTINGS_FILE", "STAGES", "check_stage_settings", "checkpoint_candidates", "hand_over", "load_latest_checkpoint",
    "read_stage_settings", "record_stage_settings", "resume", "run_ids", "run_stage", "run_stages",
]


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
        if found is not None:
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


def check_stage_settings(stage_dir: str | Path, settings: Mapping[str, Any], action: str = "resume") -> None:
    """Refuse to ``action`` a stage whose recorded network settings differ from ``settings``.

    Raises:
        InputError: names every differing key with the recorded and the current value.
    """
    recorded = read_stage_settings(stage_dir)
    if recorded is None:
        return
    differences = setting_differences(recorded, settings)
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
        settings: the network settings the stage's weights depend on (``network_settings``):
            compared with the stage folder's ``settings.json`` (and the hand-over sources')
            before anything is loaded, then recorded there.

    Raises:
        StoppedError: training hit a non-finite loss (the message names it and the stage folder).
        InputError: bad input, naming the file: a missing or mismatched checkpoint to start from,
            a folder that cannot be written.
    """
    checkpoint_dir = Path(checkpoint_dir)
    rank0 = not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0
    with output_lock(checkpoint_dir) if rank0 else contextlib.nullcontext():
        if rank0:
            check_writable(checkpoint_dir, min_free_bytes=_checkpoint_space(save_dict))
            remove_stale_temporaries(checkpoint_dir)  # of a run killed (or failed) while writing; the lock is held
        if settings is not None:
            if resume_training and checkpoint_candidates(checkpoint_dir):
                check_stage_settings(checkpoint_dir, settings, "resume")
            else:
                for source in {*(handover or {}).values(), *([handover_discriminator] if handover_discriminator else [])}:
                    check_stage_settings(source, settings, "start from")
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


def run_stages(stages: Sequence[str], config: BundleCommand | Mapping[str, Any] | None) -> None:
    """Run stages in order, each from the same configuration with ``stage`` set.

    Args:
        stages: any of ``global``, ``local``, ``joint`` (a baseline config may name its own).
        config: the run's command (``covid_ct_cgan.settings.current_command()`` in ``train.yaml``:
            config files, overrides and ``--tracking``, re-read per stage), or a raw config
            (as read by ``ConfigParser``).

    Raises:
        InputError: there is no configuration to re-read, or a stage refuses its input.
        StoppedError: a stage's training hit a non-finite loss.
    """
    from monai.bundle import ConfigParser

    for stage in stages:
        logger.info(f"==== stage '{stage}' ====")
        raw = load_config(config, stage=stage)
        command = config.with_overrides(stage=stage) if isinstance(config, BundleCommand) else BundleCommand(base=raw)
        with using_command(command):  # the stage's own checks (its `initialize`) see this stage's config
            parser = ConfigParser(raw)
            parser.parse(reset=True)
            stage_dir = parser.get_parsed_content("stage_dir") if "stage_dir" in parser else None
            with removing_empty_outputs(stage_dir):  # a failed stage leaves no empty folders (tensorboard/ ...)
                run_ids(parser, ("initialize", "run", "finalize"))
