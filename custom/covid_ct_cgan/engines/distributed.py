"""Multi-process runs (``torchrun``): work that one process does while the others wait.

Preparing the data (and generating the phantom) writes one shared folder;
under ``torchrun`` every rank evaluates the same run id, so without care all
of them would write it at once and all but one would be refused by its lock.
:func:`run_on_rank0` lets rank 0 do it while the other ranks wait at a
collective, and shares the outcome: when rank 0 fails, every rank stops with
the same exit status instead of waiting for a collective that never comes.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist

from ..errors import exit_status

T = TypeVar("T")


def distributed_rank() -> int | None:
    """This process's rank in the initialised default process group, or ``None`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return None


def run_on_rank0(func: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Call ``func(*args, **kwargs)`` on rank 0 only; the other ranks wait until it is done.

    Outside a process group (a plain ``monai.bundle run``) this is just the call.

    Args:
        func: the work, e.g. ``covid_ct_cgan.data.prepare.prepare_if_needed``.
        args: its positional arguments.
        kwargs: its keyword arguments.

    Returns:
        ``func``'s result on rank 0 (and outside a process group); ``None`` on the other ranks.

    Raises:
        SystemExit: on ranks > 0 when rank 0 failed: the status rank 0 ends with
            (:func:`covid_ct_cgan.errors.exit_status`: 2 for an ``InputError``, 130 for Ctrl-C, 1 for another
            error), with one line saying so; rank 0 itself re-raises its own error once the others know
            (its entry point reports it).
    """
    rank = distributed_rank()
    if rank is None:
        return func(*args, **kwargs)
    result: T | None = None
    failure: BaseException | None = None
    if rank == 0:
        try:
            result = func(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - shared with the other ranks, then re-raised
            failure = err
    outcome = [None if failure is None else exit_status(failure)]
    dist.broadcast_object_list(outcome, src=0)  # the other ranks wait here while rank 0 works
    if outcome[0] is not None:
        # every rank stops: leave the process group, and end the process with its status once Python has
        # finished, before C++ teardown: torch's threads could otherwise abort it at exit ("terminate called
        # without an active exception", SIGABRT) and torchrun would report that instead of the status
        _leave_process_group()
        _exit_with_status_at_teardown(int(outcome[0]))
    if failure is not None:
        raise failure
    status = outcome[0]
    if status is not None:
        if status != 0:
            print(f"rank {rank}: stopped, rank 0 failed in {getattr(func, '__name__', func)} "
                  f"(exit status {status}, see its output)", file=sys.stderr, flush=True)
        raise SystemExit(status)
    return result


def _exit_with_status_at_teardown(status: int) -> None:
    """At interpreter exit (the last ``atexit`` step), flush the output and end the process with ``status``."""

    def leave() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream: nothing left to flush
                pass
        os._exit(status)

    atexit.register(leave)  # registered last, so it runs first: after the program, before C++ teardown


def _leave_process_group() -> None:
    """Destroy the default process group (where one exists); a failure to do so is not worth another error."""
    try:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - stopping anyway
        pass
