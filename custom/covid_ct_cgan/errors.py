"""User-facing errors: one clear line naming the file and the problem.

Library code raises :class:`InputError` (bad data or arguments given by the
user) with a message that names the file, and :class:`StoppedError` when a run
stops itself for a reason the user must read (training hit a non-finite
loss); Python callers catch them like any exception. Only the entry points
turn them into a single ``ERROR: ...`` line on stderr and an exit status
(2, or 1 for a stopped run), instead of a traceback from deep inside a
library: the bundle configs call into Python through :func:`entry_point`
(``imports: ["$from covid_ct_cgan.errors import entry_point"]``,
``run: ["$entry_point(covid_ct_cgan.engines.stages.run_stage, **@stage_args)"]``),
and the ``main`` of a ``python -m`` script is wrapped in :func:`exit_on_input_error`.

The same wrapper turns Ctrl-C (``KeyboardInterrupt``) into one
``INTERRUPTED: ...`` line saying where the run stopped and the command that
resumes it, and exit status 130 (128 + SIGINT, as a shell reports it), and the command then ends
at once (:func:`end_command`). Code
that knows more about where it is (the training stage, its epoch) wraps the
interruptible work in :class:`interrupt_note`.
"""

from __future__ import annotations

import functools
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

INTERRUPTED_STATUS = 130
_WHERE = "_covid_ct_cgan_where"  # attribute of the KeyboardInterrupt: where the run stopped


class InputError(ValueError):
    """Bad input from the user: a file, a folder, a value. The message says which and why.

    An entry point reports it with one ``ERROR:`` line and exit status :attr:`exit_status`.
    """

    exit_status = 2

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class StoppedError(RuntimeError):
    """A run that stopped itself for a reason the user must read (training hit a non-finite loss).

    An entry point reports it with one ``ERROR:`` line and exit status :attr:`exit_status`.
    """

    exit_status = 1


REPORTED = (InputError, StoppedError)  # the errors an entry point reports with one ERROR line


def reported_error(err: BaseException) -> InputError | StoppedError | None:
    """The :data:`REPORTED` error ``err`` is or carries, else ``None``.

    MONAI's config parser re-raises an error of an expression or a component as a ``RuntimeError``
    ("Failed to evaluate ...", "Failed to instantiate ...") whose ``__cause__`` is the error; such
    wrappers are looked through.

    Args:
        err: the exception that reached the entry point.

    Returns:
        The error to report, or ``None`` for any other exception (it keeps its traceback).
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, REPORTED):
            return current
        seen.add(id(current))
        current = current.__cause__ if type(current) is RuntimeError else None
    return None


def exit_status(err: BaseException) -> int:
    """The exit status an entry point ends with for ``err`` (a ``SystemExit`` keeps its own).

    Args:
        err: the exception that ended the work.

    Returns:
        2 for bad input, 1 for a stopped run or any other error, 130 for Ctrl-C.
    """
    if isinstance(err, SystemExit):
        code = err.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    if isinstance(err, KeyboardInterrupt):
        return INTERRUPTED_STATUS
    reported = reported_error(err)
    return reported.exit_status if reported is not None else 1


class interrupt_note:  # noqa: N801 - used like contextlib's lower-case context managers
    """While active, a Ctrl-C reports ``describe()`` as where the run stopped (the innermost note wins).

    Args:
        describe: called when the interrupt passes through, e.g.
            ``lambda: f"in stage 'global' at epoch {trainer.state.epoch}"``.
    """

    def __init__(self, describe: Callable[[], str]) -> None:
        self.describe = describe

    def __enter__(self) -> interrupt_note:
        from .logs import tidy_log_handlers  # the loggers of the handlers built for this work exist by now

        tidy_log_handlers()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(exc, KeyboardInterrupt) and not hasattr(exc, _WHERE):
            try:
                setattr(exc, _WHERE, self.describe())
            except Exception:  # noqa: BLE001 - a failing description must not hide the interrupt
                pass


def _quote(arg: str) -> str:
    """Shell quoting that keeps a list argument readable: ``"['a.yaml','b.yaml']"``."""
    quoted = shlex.quote(arg)
    if quoted != arg and not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return quoted


def resume_command(argv: Sequence[str] | None = None) -> str:
    """The command line that runs this process again, with ``--resume True`` if it set ``resume``.

    ``python -m monai.bundle ...`` is written as such (``sys.argv[0]`` is then the
    module's ``__main__.py``), and under ``torchrun`` the ``torchrun`` command
    with the same number of processes is given.

    Args:
        argv: the arguments (default: ``sys.argv``).

    Returns:
        A shell-quoted command line.
    """
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]) if argv else Path("python")
    args = argv[1:]
    for i, arg in enumerate(args):
        if arg == "--resume" and i + 1 < len(args):
            args[i + 1] = "True"
        elif arg.startswith("--resume="):
            args[i] = "--resume=True"
    if program.name == "__main__.py":
        parts = program.parent.parts
        module = ".".join(parts[parts.index("site-packages") + 1:]) if "site-packages" in parts else program.parent.name
        head = ["-m", module]
    else:
        head = [str(program)]
    if os.environ.get("TORCHELASTIC_RUN_ID") and os.environ.get("LOCAL_WORLD_SIZE"):
        launcher = ["torchrun", f"--nproc_per_node={os.environ['LOCAL_WORLD_SIZE']}"]
        return " ".join(_quote(a) for a in launcher + head + args)
    return " ".join(_quote(a) for a in ["python"] + head + args)


def _is_secondary_rank() -> bool:
    rank = os.environ.get("RANK")
    return rank is not None and rank.isdigit() and int(rank) > 0


def _is_the_command() -> bool:
    """Whether this process is ``python -m monai.bundle ...`` (also under ``torchrun``), not a program that
    called the entry point (a test, a server)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "monai.bundle.__main__"


_EXIT_STATUS: list[int] = []  # the status the command ends with, once registered (end_command)


def end_command(status: int) -> None:
    """After the command's one line, let it end now and with ``status``; only for the command itself
    (``python -m monai.bundle ...``: a calling program goes on).

    Two things of Python's own exit are left out. Its last garbage collections walk every object of torch, MONAI
    and the run (3-4 s on a 2-core machine, far more when other jobs share it), work the operating system does at
    once for a process that ends: ``gc.freeze`` leaves them out. And its teardown stops daemon threads where they
    stand: a data loader's prefetch thread caught inside a torch operation then aborts the process (``terminate
    called without an active exception``, status -6 instead of 130 or 2; seen when a Ctrl-C landed while the loader
    prefetched on a busy machine). So the process ends from an exit handler, registered now and so run first,
    after the program has unwound (every ``finally`` of the run has run), before the teardown: it shuts the
    logging down (its own exit handler) and flushes the output first.
    """
    if not _is_the_command():
        return
    import atexit
    import gc
    import logging

    gc.freeze()
    if not _EXIT_STATUS:
        def leave() -> None:
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):  # a closed or broken stream: nothing left to flush
                    pass
            os._exit(_EXIT_STATUS[-1])

        atexit.register(leave)
    _EXIT_STATUS.append(status)


def exit_on_input_error(func: F) -> F:
    """Make ``func`` an entry point: an :class:`InputError` (or a :class:`StoppedError`) exits with one ``ERROR:``
    line and its status (2, or 1), Ctrl-C with one ``INTERRUPTED:`` line (where it stopped, how to resume) and
    status 130. For the ``main`` of a ``python -m`` script; the bundle configs call :func:`entry_point`.

    Args:
        func: the entry point's work.

    Returns:
        ``func``, wrapped.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .logs import install_log_filters  # the run's log handlers exist by now

        install_log_filters()
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt as err:
            if not _is_secondary_rank():  # under torchrun, one line from rank 0
                where = getattr(err, _WHERE, None) or f"in {getattr(func, '__name__', func)}"
                print(f"INTERRUPTED: stopped {where}; resume with: {resume_command()}", file=sys.stderr, flush=True)
            end_command(INTERRUPTED_STATUS)
            raise SystemExit(INTERRUPTED_STATUS) from None
        except Exception as err:
            reported = reported_error(err)
            if reported is None:
                raise
            print(f"ERROR: {reported}", file=sys.stderr, flush=True)
            end_command(reported.exit_status)
            raise SystemExit(reported.exit_status) from None

    return wrapper  # type: ignore[return-value]


def entry_point(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call ``func(*args, **kwargs)`` as an entry point (:func:`exit_on_input_error`): where a bundle config
    calls into Python, e.g. ``"$entry_point(covid_ct_cgan.settings.check_command)"`` (the configs import it).

    Arguments that are config references (``@evaluator``) are built before the call, outside it.

    Args:
        func: the library function (or bound method) the config runs.
        args: its positional arguments.
        kwargs: its keyword arguments.

    Returns:
        ``func``'s result.

    Raises:
        SystemExit: 2 (bad input) or 1 (a stopped run) after one ``ERROR:`` line, 130 after Ctrl-C.
    """
    return exit_on_input_error(func)(*args, **kwargs)
