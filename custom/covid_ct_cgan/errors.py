"""User-facing errors: one clear line naming the file and the problem.

Library code raises :class:`InputError` (bad data or arguments given by the
user) with a message that names the file. Entry points that the bundle
configs call are wrapped in :func:`exit_on_input_error`, which turns the
error into a single ``ERROR: ...`` line on stderr and exit status 2, instead
of a traceback from deep inside a library.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class InputError(ValueError):
    """Bad input from the user: a file, a folder, a value. The message says which and why."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


def exit_on_input_error(func: F) -> F:
    """Decorate an entry point so an :class:`InputError` exits with one line and status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except InputError as err:
            print(f"ERROR: {err}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
