"""Quiet, readable logs: noise filtered, final paths shown, progress as lines when not on a terminal.

Installed when an entry point starts (:func:`install_log_filters`, called by
:func:`covid_ct_cgan.errors.exit_on_input_error`: every config's ``initialize`` and run ids, ``python -m``
scripts), never on import:

* :class:`DropRecords` drops MONAI's ``nvImageCodec is not available`` warning,
  which MONAI logs once per DICOM reader it builds (once per file read);
* :class:`DropInterruptRecords` drops the tracebacks libraries log about a
  Ctrl-C (the entry point prints one line instead);
* :class:`FinalPaths` writes a staging name (``.<name>.<random>.tmp``, see
  :mod:`covid_ct_cgan.fileio`) as the final name it is renamed to, so a log
  never points at a temporary path that is gone after the run.

The two handler filters (:class:`DropInterruptRecords`, :class:`FinalPaths`) are put on the log
handlers that exist when an entry point starts and again before training runs
(:func:`tidy_log_handlers`); nothing replaces the interpreter's log-record factory.

Progress: :func:`progress_handler` (an Ignite handler for the configs' handler
lists) and :func:`progress` (for loops) show a tqdm bar on a terminal and,
when stderr is not a terminal (a log file, a pipe), one log line at most
every ``every_s`` seconds and one at the end, never carriage-return runs.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ignite.engine import Engine

logger = logging.getLogger("covid_ct_cgan.progress")

# (logger name, start of the message) of records that carry no information for this project's users
QUIET_RECORDS: tuple[tuple[str, str], ...] = (
    ("monai.data.nvimgcodec_pydicom_plugin", "nvImageCodec is not available"),
)
# the matching warnings.warn messages (regular expressions matched at the start)
QUIET_WARNINGS: tuple[str, ...] = (r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register",)

# a staging name of covid_ct_cgan.fileio: ".<final name>.<8 random characters>.tmp[<suffixes>]", starting a path part
_STAGING = re.compile(r"(?:(?<=[/\\\s'\"`(=])|^)\.(?P<name>[^/\\\s]+?)\.[a-z0-9_]{8}\.tmp(?:\.[A-Za-z0-9]+)*")
PROGRESS_EVERY_S = 30.0


class DropRecords(logging.Filter):
    """Drop the records of one logger whose message starts with one of ``prefixes``.

    Args:
        prefixes: message starts to drop (after ``%`` formatting).
    """

    def __init__(self, prefixes: Iterable[str]) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def _reported_by_the_entry_point(err: BaseException | None) -> bool:
    """A Ctrl-C, an error the entry point reports (:func:`covid_ct_cgan.errors.reported_error`: an ``InputError``,
    a stopped run), or a write refused by the disk (full, read-only): the entry point reports each with one line
    (:func:`covid_ct_cgan.errors.exit_on_input_error`)."""
    from .errors import reported_error
    from .fileio import is_write_error

    if err is None:
        return False
    return isinstance(err, KeyboardInterrupt) or reported_error(err) is not None or is_write_error(err)


class DropInterruptRecords(logging.Filter):
    """Drop the error records and tracebacks that libraries log about a Ctrl-C (``KeyboardInterrupt``),
    an ``InputError``, a stopped run or a full / read-only disk.

    Ignite and MONAI's ``StatsHandler`` log the exception with its traceback before
    passing it on; the entry point prints one ``INTERRUPTED:`` or ``ERROR:`` line instead
    (:func:`covid_ct_cgan.errors.exit_on_input_error`).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _reported_by_the_entry_point(record.exc_info[1]):
            return False
        return not (record.levelno >= logging.ERROR and _reported_by_the_entry_point(sys.exc_info()[1]))


class FinalPaths(logging.Filter):
    """Write every staging name of :mod:`covid_ct_cgan.fileio` in a record's message as its final name.

    A filter on log handlers: the record passes, its message rewritten (see :func:`final_paths`).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the logging module's to report
            return True
        shown = final_paths(message)
        if shown != message:
            record.msg, record.args = shown, ()
        return True


def tidy_log_handlers() -> None:
    """Put :class:`DropInterruptRecords` and :class:`FinalPaths` on the handlers of every logger there is now.

    Idempotent. Called when an entry point starts (:func:`covid_ct_cgan.errors.exit_on_input_error`) and
    again before training runs (:class:`covid_ct_cgan.errors.interrupt_note`), when the handlers that
    MONAI's handlers add to their own loggers exist too.
    """
    loggers = [logging.getLogger()] + [
        lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in list(lg.handlers):
            for kind in (DropInterruptRecords, FinalPaths):
                if not any(isinstance(f, kind) for f in handler.filters):
                    handler.addFilter(kind())


def final_paths(text: str) -> str:
    """``text`` with every staging name of :mod:`covid_ct_cgan.fileio` written as its final name.

    ``/w/.data.k3j2h1x0.tmp/images/a.nii.gz`` -> ``/w/data/images/a.nii.gz``;
    ``/w/.checkpoint.pt.ab12cd34.tmp.pt`` -> ``/w/checkpoint.pt``.
    """
    return _STAGING.sub(lambda m: m.group("name"), text) if ".tmp" in text else text


def install_log_filters() -> None:
    """Drop the records and warnings that carry no information, and tidy the log handlers (:func:`tidy_log_handlers`).

    Idempotent. Called when an entry point starts (:func:`covid_ct_cgan.errors.exit_on_input_error`); a
    program that uses the package from Python may call it too.
    """
    for name, prefix in QUIET_RECORDS:
        target = logging.getLogger(name)
        if not any(isinstance(f, DropRecords) and prefix in f.prefixes for f in target.filters):
            target.addFilter(DropRecords([prefix]))
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    tidy_log_handlers()


def on_terminal() -> bool:
    """Whether stderr (where progress goes) is an interactive terminal."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LineProgress:
    """Progress as log lines: at most one every ``every_s`` seconds, and one when done.

    A small stand-in for ``tqdm`` where stderr is not a terminal: iterate over
    it, or call :meth:`update`; use it as a context manager or :meth:`close` it.

    Args:
        iterable: what to iterate over (optional with :meth:`update`).
        desc: what is progressing (``"phantom"``, ``"synthesis"``).
        total: number of steps (default: ``len(iterable)`` when it has one).
        unit: name of a step.
        every_s: least seconds between two lines (0: a line for every step).
    """

    def __init__(self, iterable: Iterable | None = None, desc: str = "", total: int | None = None,
                 unit: str = "it", every_s: float = PROGRESS_EVERY_S) -> None:
        self.iterable = iterable
        self.desc, self.unit, self.every_s = desc or "progress", unit, float(every_s)
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)  # type: ignore[arg-type]
        self.n = 0
        self.start = self.last = time.monotonic()
        self.closed = False

    def _line(self, final: bool) -> str:
        elapsed = time.monotonic() - self.start
        count = f"{self.n}/{self.total}" if self.total else str(self.n)
        unit = self.unit + ("s" if (self.total or self.n) != 1 and not self.unit.endswith("s") else "")
        if final:
            return f"{self.desc}: {count} {unit} done in {_duration(elapsed)}"
        text = f"{self.desc}: {count} {unit}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        if self.n and elapsed > 0:
            text += f", {self.n / elapsed:.2f} {self.unit}/s"
            if self.total:
                text += f", {_duration(elapsed / self.n * (self.total - self.n))} left"
        return text

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps; log a line when ``every_s`` seconds have passed since the last one."""
        self.n += int(n)
        now = time.monotonic()
        if now - self.last >= self.every_s and not (self.total and self.n >= self.total):
            self.last = now
            logger.info(self._line(final=False))

    def close(self) -> None:
        """Log the final line (once)."""
        if not self.closed:
            self.closed = True
            logger.info(self._line(final=True))

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LineProgress: nothing to iterate over (give an iterable, or call update())")
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()


def progress(iterable: Iterable | None = None, desc: str = "", total: int | None = None, unit: str = "it",
             every_s: float = PROGRESS_EVERY_S, **tqdm_kwargs: Any) -> Any:
    """A ``tqdm`` bar on a terminal, a :class:`LineProgress` otherwise (same use: iterate, or ``update``).

    Args:
        iterable: what to iterate over (optional with ``update``).
        desc: what is progressing.
        total: number of steps.
        unit: name of a step.
        every_s: least seconds between two lines when not on a terminal.
        tqdm_kwargs: further ``tqdm`` arguments (terminal only), e.g. ``leave=False``.

    Returns:
        The progress object.
    """
    if on_terminal():
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, **tqdm_kwargs)
    return LineProgress(iterable, desc=desc, total=total, unit=unit, every_s=every_s)


class ProgressLogger:
    """Ignite handler: one log line at most every ``every_s`` seconds with the engine's epoch and iteration.

    What :class:`ignite.handlers.ProgressBar` shows, as lines for a log file
    (the epoch's end is reported by the configs' ``StatsHandler``).

    Args:
        every_s: least seconds between two lines.
        output_transform: engine output -> loss (a number) to show; default: none.
        desc: what is running (default: the engine's class name).
    """

    def __init__(self, every_s: float = PROGRESS_EVERY_S, output_transform: Callable[[Any], Any] | None = None,
                 desc: str | None = None) -> None:
        self.every_s = float(every_s)
        self.desc = desc
        self.output_transform = output_transform
        self._last = self._epoch_start = 0.0
        self._seen = 0

    def attach(self, engine: Engine) -> None:
        """Attach to ``engine`` (what MONAI's handler lists call)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)

    def _epoch_started(self, engine: Engine) -> None:
        self._epoch_start = self._last = time.monotonic()
        self._seen = 0

    def _iteration_completed(self, engine: Engine) -> None:
        self._seen += 1
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        state = engine.state
        length = state.epoch_length or 0
        done = (state.iteration - 1) % length + 1 if length else state.iteration
        text = f"{self.desc or type(engine).__name__}: epoch {state.epoch}/{state.max_epochs}, iteration {done}/{length or '?'}"
        elapsed = now - self._epoch_start
        if elapsed > 0:
            text += f", {self._seen / elapsed:.2f} it/s"
            if length:
                text += f", epoch {_duration(elapsed / self._seen * (length - done))} left"
        if self.output_transform is not None:
            value = self.output_transform(state.output)
            try:
                text += f", loss {float(value):.4f}"
            except (TypeError, ValueError):
                pass
        logger.info(text)


def progress_handler(persist: bool = False, every_s: float = PROGRESS_EVERY_S,
                     output_transform: Callable[[Any], Any] | None = None, desc: str | None = None,
                     **bar_kwargs: Any) -> Any:
    """Ignite's ``ProgressBar`` on a terminal, a :class:`ProgressLogger` otherwise.

    Args:
        persist: keep the bar after each epoch (terminal only).
        every_s: least seconds between two lines when not on a terminal.
        output_transform: engine output -> loss shown in the lines (not on the bar).
        desc: what is running, shown on the bar or the lines.
        bar_kwargs: further ``ProgressBar`` arguments (terminal only).

    Returns:
        The handler (``attach(engine)``).
    """
    if on_terminal():
        from ignite.handlers import ProgressBar

        return ProgressBar(persist=persist, **({"desc": desc} if desc else {}), **bar_kwargs)
    return ProgressLogger(every_s=every_s, output_transform=output_transform, desc=desc)
