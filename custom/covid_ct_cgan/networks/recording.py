"""What a network was built with: its class and constructor arguments, kept on the built object.

A class decorated with :func:`records_arguments` binds the arguments of every
construction to its signature (defaults filled in) and keeps them on the instance,
so the settings saved with a checkpoint are read from the networks training
actually built (:func:`recorded_arguments`), never restated beside them, and a
network is rebuilt from that record with :func:`build_recorded`.

The record is plain data: ``{"_target_": "covid_ct_cgan.networks.GlobalLocalGenerator", "in_channels": 4,
"ngf": 16, ...}``, as a bundle config would write the component. :func:`build_recorded` builds only
classes decorated here, so a record read from a file never names arbitrary code to run.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from collections.abc import Mapping
from typing import Any, TypeVar

import torch

from .wrapping import unwrap

__all__ = ["TARGET", "build_recorded", "default_arguments", "recorded_arguments", "records_arguments"]

TARGET = "_target_"  # the key of the class in a record, as in a bundle config's component
_ATTRIBUTE = "recorded_arguments"
_RECORDED: dict[str, type] = {}  # the decorated classes by their ``_target_``

ModuleClass = TypeVar("ModuleClass", bound=type)


def _target(cls: type) -> str:
    """The class's name as the configs write it: ``covid_ct_cgan.networks.<Name>`` when the package exports it."""
    package = cls.__module__.rsplit(".", 1)[0]
    try:
        exported = getattr(importlib.import_module(package), cls.__name__, None) is cls
    except ImportError:  # the package is being imported: its own module path
        exported = False
    return f"{package}.{cls.__name__}" if exported else f"{cls.__module__}.{cls.__qualname__}"


def _plain(value: Any) -> Any:
    """JSON-normalised value (tuples as lists): what a checkpoint and ``settings.json`` hold."""
    return json.loads(json.dumps(value, default=str))


def records_arguments(cls: ModuleClass) -> ModuleClass:
    """Class decorator: every instance keeps the arguments it was constructed with (see :func:`recorded_arguments`).

    A subclass decorated too records its own arguments (its ``__init__`` runs last).

    Args:
        cls: an ``nn.Module`` subclass whose constructor arguments are plain values (numbers, strings,
            booleans, ``None``, tuples or lists of them).

    Returns:
        ``cls``, its ``__init__`` wrapped.
    """
    init = cls.__init__  # type: ignore[misc]  # the class's own constructor, wrapped below
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init(self, *args, **kwargs)
        arguments = {k: v for k, v in list(bound.arguments.items())[1:]}  # without self
        self.__dict__[_ATTRIBUTE] = {TARGET: _target(cls), **_plain(arguments)}

    cls.__init__ = __init__  # type: ignore[misc]
    _RECORDED[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def recorded_arguments(network: torch.nn.Module) -> dict[str, Any]:
    """The class and constructor arguments ``network`` was built with.

    Args:
        network: a network of a class decorated with :func:`records_arguments`, or one wrapped for
            training (``DistributedDataParallel``).

    Returns:
        ``{"_target_": <class>, <argument>: <value>, ...}`` (a copy).

    Raises:
        TypeError: the network's class does not record its arguments.
    """
    recorded = unwrap(network).__dict__.get(_ATTRIBUTE)
    if recorded is None:
        raise TypeError(f"{type(unwrap(network)).__name__} does not record its constructor arguments "
                        "(decorate it with covid_ct_cgan.networks.recording.records_arguments)")
    return dict(recorded)


def _recorded_class(target: Any) -> type:
    """The decorated class a record's ``_target_`` names (looked up among them: nothing is imported).

    Raises:
        ValueError: the name is not one of them.
    """
    for path, cls in _RECORDED.items():
        if target in (path, _target(cls)):
            return cls
    raise ValueError(f"{TARGET} must name a network of covid_ct_cgan.networks, got {target!r}")


def default_arguments(target: str) -> dict[str, Any]:
    """The constructor defaults of the class a record names: the values of arguments a record lacks.

    A record saved before an argument existed was built without it, which is what its default
    reproduces (an argument added to a network keeps the earlier behaviour as its default).

    Raises:
        ValueError: ``target`` is not a network of this package.
    """
    parameters = list(inspect.signature(_recorded_class(target)).parameters.values())  # the constructor's, no self
    return {p.name: _plain(p.default) for p in parameters if p.default is not p.empty}


def build_recorded(record: Mapping[str, Any], **changes: Any) -> torch.nn.Module:
    """Build the network a record describes (see :func:`recorded_arguments`).

    Args:
        record: ``{"_target_": ..., <argument>: <value>, ...}``.
        changes: arguments to build with instead of the recorded ones (``mode="joint"``).

    Returns:
        The network (fresh weights).

    Raises:
        ValueError: the record names a class that is not a network of this package, or has arguments
            its constructor does not take.
    """
    cls = _recorded_class(record.get(TARGET))
    arguments = {k: v for k, v in record.items() if k != TARGET}
    arguments.update(changes)
    accepted = set(inspect.signature(cls).parameters)  # the constructor's, no self
    unknown = sorted(set(arguments) - accepted)
    if unknown:
        raise ValueError(f"{record.get(TARGET)} takes no argument {', '.join(unknown)}")
    network: torch.nn.Module = cls(**arguments)
    return network

