"""Running the training stages: resume, stage hand-over, skipping finished stages.

``train.yaml`` builds everything for one stage, chosen by its top-level
``stage`` key (``global``, ``local`` or ``joint``). Its run ids call into here:

* ``run`` -> :func:`run_stage` on the config's own ``train#trainer``;
* ``train_global`` / ``train_local`` / ``train_joint`` / ``training`` ->
  :func:`run_stages`, which re-reads the *same* config (the files and
  command-line overrides of the running ``monai.bundle run``, including what
  ``--tracking mlflow`` added) once per stage with ``stage`` set, so every
  stage is wired by the config and nothing is duplicated in Python.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.handlers import Checkpoint

from ..errors import InputError, exit_on_input_error
from ..fileio import check_writable
from ..locking import output_lock
from ..networks.handover import load_generator_part

logger = logging.getLogger(__name__)

STAGES = ("global", "local", "joint")
_CKPT_PATTERN = re.compile(r"checkpoint_(epoch|iteration)=(\d+)\.pt$")


def checkpoint_candidates(checkpoint_dir: str | Path) -> list[Path]:
    """Resumable checkpoints of a stage, newest first (by modification time, then name)."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("*.pt") if _CKPT_PATTERN.search(p.name)]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def load_latest_checkpoint(checkpoint_dir: str | Path, required: Sequence[str] = ()) -> tuple[Path, dict] | None:
    """Load the newest readable checkpoint of a stage.

    A truncated or unreadable file is reported and skipped, and the previous
    good one is used.

    Args:
        checkpoint_dir: folder of the stage's checkpoints.
        required: keys the checkpoint must hold.

    Returns:
        ``(path, checkpoint)`` or ``None`` when there is no readable checkpoint.
    """
    for path in checkpoint_candidates(checkpoint_dir):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped with a message
            logger.warning(f"{path}: unreadable checkpoint ({type(err).__name__}: {err}); trying the previous one")
            continue
        missing = [k for k in required if k not in ckpt]
        if missing:
            logger.warning(f"{path}: checkpoint lacks {missing}; trying the previous one")
            continue
        return path, ckpt
    return None


def _refuse_foreign_checkpoints(checkpoint_dir: str | Path, keys: Sequence[str]) -> None:
    """Readable checkpoints that lack keys of this configuration would be overwritten by a fresh start: refuse."""
    for path in checkpoint_candidates(checkpoint_dir):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - unreadable files were reported by load_latest_checkpoint
            continue
        missing = [k for k in keys if k not in ckpt]
        raise InputError(
            f"checkpoint {path.name} was written by another configuration (it lacks {', '.join(missing)}); "
            "train with the settings it was written with, or start over in another output_dir (or with resume=false)",
            Path(checkpoint_dir),
        )


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


def hand_over(generator: torch.nn.Module, sources: Mapping[str, str | Path], discriminator: torch.nn.Module | None = None, discriminator_source: str | Path | None = None) -> None:
    """Start a stage from earlier stages' weights (strict; a mismatch names the keys).

    Args:
        generator: the stage's generator.
        sources: generator part (``global_net``, ``local_net``) -> checkpoint folder of the stage that trained it.
        discriminator: the stage's discriminator, optionally warm-started.
        discriminator_source: checkpoint folder whose ``discriminator`` is loaded into it.

    Raises:
        InputError: a source stage has no readable checkpoint, or its keys do not match.
    """
    for part, folder in sources.items():
        found = load_latest_checkpoint(folder, required=["generator"])
        if found is None:
            raise InputError(f"no checkpoint to start '{part}' from; train that stage first", folder)
        load_generator_part(generator, found[0], part)
        logger.info(f"{part} initialised from {found[0]}")
    if discriminator is not None and discriminator_source:
        found = load_latest_checkpoint(discriminator_source, required=["discriminator"])
        if found is not None:
            try:
                discriminator.load_state_dict(found[1]["discriminator"], strict=True)
            except RuntimeError as err:
                raise InputError(f"discriminator does not match this configuration: {err}", found[0]) from None
            logger.info(f"discriminator initialised from {found[0]}")


def _checkpoint_space(save_dict: Mapping[str, Any], files: int = 5) -> int:
    """Bytes a stage needs for its checkpoints: weights and optimizer moments, ``files`` times over."""
    total = 0
    for obj in save_dict.values():
        if isinstance(obj, torch.nn.Module):
            total += 3 * sum(t.numel() * t.element_size() for t in obj.state_dict().values())  # + Adam's two moments
    return files * total


@exit_on_input_error
def run_stage(
    trainer: Any,
    save_dict: Mapping[str, Any],
    checkpoint_dir: str | Path,
    resume_training: bool = True,
    handover: Mapping[str, str | Path] | None = None,
    handover_discriminator: str | Path | None = None,
) -> None:
    """Run one stage: resume or hand over, train, stop cleanly on a non-finite loss.

    A stage whose newest checkpoint is at its last epoch is complete and is
    skipped (Ignite would otherwise restart it from scratch).

    Raises:
        SystemExit: status 1 and one ``ERROR:`` line when training hit a non-finite loss;
            status 2 and one ``ERROR: <file>: <problem>`` line for bad input (a missing or
            mismatched checkpoint to start from).
    """
    checkpoint_dir = Path(checkpoint_dir)
    rank0 = not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0
    with output_lock(checkpoint_dir) if rank0 else contextlib.nullcontext():
        if rank0:
            check_writable(checkpoint_dir, min_free_bytes=_checkpoint_space(save_dict))
        loaded = resume(trainer, save_dict, checkpoint_dir) if resume_training else None
        if loaded is not None and trainer.state.epoch >= trainer.state.max_epochs:
            logger.info(f"stage in {checkpoint_dir} is complete ({trainer.state.epoch} epochs); skipping")
            return
        if loaded is None and handover:
            hand_over(trainer.generator, handover, getattr(trainer, "discriminator", None), handover_discriminator)
        trainer.run()
    reason = getattr(trainer.state, "stop_reason", None)
    if reason:
        import sys

        print(f"ERROR: {reason}; checkpoints in {checkpoint_dir}", file=sys.stderr, flush=True)
        raise SystemExit(1)


def running_workflow() -> Any:
    """The MONAI ``ConfigWorkflow`` whose expression is being evaluated (found on the call stack)."""
    from monai.bundle.workflows import ConfigWorkflow

    for frame_info in inspect.stack():
        candidate = frame_info.frame.f_locals.get("self")
        if isinstance(candidate, ConfigWorkflow):
            return candidate
    raise RuntimeError(
        "run_stages must be called from a bundle run (python -m monai.bundle run <id> --config_file ...), "
        "or be given the config explicitly"
    )


def running_config(config: Mapping[str, Any] | None = None) -> dict:
    """A private copy of ``config``, or of the running ``monai.bundle run``'s raw config (with its overrides)."""
    return copy.deepcopy(dict(config) if config is not None else running_workflow().parser.config)


def run_ids(parser: Any, keys: Sequence[str]) -> None:
    """Evaluate the ids ``keys`` of a parsed config in order (each item of a list, or the expression); absent ones are skipped."""
    for key in keys:
        if key in parser:
            value = parser[key]
            for item in [f"{key}#{i}" for i in range(len(value))] if isinstance(value, list) else [key]:
                parser.get_parsed_content(item)


@exit_on_input_error
def run_stages(stages: Sequence[str], config: Mapping[str, Any] | None = None) -> None:
    """Run stages in order, each from the same config with ``stage`` set.

    Args:
        stages: any of ``global``, ``local``, ``joint`` (a baseline config may name its own).
        config: the raw config (as read by ``ConfigParser``); default: the config of
            the running ``monai.bundle run``, with its command-line overrides.
    """
    from monai.bundle import ConfigParser

    raw = running_config(config)
    for stage in stages:
        logger.info(f"==== stage '{stage}' ====")
        parser = ConfigParser(copy.deepcopy(raw))
        parser["stage"] = stage
        parser.parse(reset=True)
        run_ids(parser, ("initialize", "run", "finalize"))
