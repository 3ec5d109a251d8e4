"""Which handlers are attached to an engine, through Ignite's public ``add_event_handler``.

Ignite keeps an engine's handlers in a private table. A handler that needs another
handler of the same run (``TrackingExtras`` logs through the ``MLFlowHandler`` that
MONAI's ``--tracking mlflow`` attaches, and reads ``EpochMeans``' keys) finds it here:
an engine with :class:`RecordsAttachedHandlers` among its bases records the owner of
every handler as it is attached (the object whose bound method it is, or the callable).
"""

from __future__ import annotations

from typing import Any, TypeVar

from ignite.engine import Engine
from ignite.engine.events import RemovableEventHandle

T = TypeVar("T")


class RecordsAttachedHandlers(Engine):
    """An Ignite engine that remembers what was attached to it (``attached_owners``)."""

    def add_event_handler(self, event_name: Any, handler: Any, *args: Any, **kwargs: Any) -> RemovableEventHandle:
        """Attach as Ignite does, and record the handler's owner."""
        handle = super().add_event_handler(event_name, handler, *args, **kwargs)
        owners: list[Any] = self.__dict__.setdefault("attached_owners", [])
        owner = getattr(handler, "__self__", handler)
        if not any(owner is known for known in owners):
            owners.append(owner)
        return handle


def check_records_handlers(engine: Engine) -> None:
    """Refuse an engine that does not record its handlers (a handler that will look others up checks on attach).

    Raises:
        TypeError: ``engine`` is not a :class:`RecordsAttachedHandlers`.
    """
    if not isinstance(engine, RecordsAttachedHandlers):
        raise TypeError(f"{type(engine).__name__} is not an engine that records its handlers (give it RecordsAttachedHandlers as a base)")


def attached(engine: Engine, kind: type[T]) -> list[T]:
    """The handlers of class ``kind`` attached to ``engine``, in the order they were attached.

    Raises:
        TypeError: ``engine`` does not record its handlers (:func:`check_records_handlers`).
    """
    check_records_handlers(engine)
    return [owner for owner in engine.__dict__.get("attached_owners", []) if isinstance(owner, kind)]
