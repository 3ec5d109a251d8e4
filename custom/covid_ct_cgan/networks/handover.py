"""Stage hand-over: load G1 or G2 into the joint generator from a stage checkpoint, strictly.

Unlike pix2pixHD's ``load_network``, nothing is skipped silently: a missing,
unexpected or mis-shaped tensor is an :class:`~covid_ct_cgan.errors.InputError`
that lists the keys and names the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoints import read_checkpoint, state_dict_of
from ..errors import InputError
from .wrapping import unwrap

PARTS: tuple[str, ...] = ("global_net", "local_net")
MAX_LISTED = 20


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    return shown + (f", ... ({len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else "")


def load_generator_part(
    generator: nn.Module,
    state_dict_or_path: Mapping[str, Any] | str | Path,
    part: str,
    key: str = "generator",
) -> None:
    """Load one part of a :class:`~covid_ct_cgan.networks.GlobalLocalGenerator` from a stage checkpoint, strictly.

    Args:
        generator: the generator to load into (its other parts are untouched); a
            ``DistributedDataParallel`` wrapper is looked through.
        state_dict_or_path: a checkpoint file or an already loaded dict; either a
            MONAI ``CheckpointSaver`` dict holding the generator's state dict under
            ``key``, or the generator's state dict itself.
        part: ``"global_net"`` (G1, from the ``train_global`` stage) or
            ``"local_net"`` (G2, from the ``train_local`` stage).
        key: the generator's entry in a ``CheckpointSaver`` dict.

    Raises:
        ValueError: unknown ``part``.
        InputError: the file is missing or unreadable, holds no generator state,
            or the part's tensors do not match (missing, unexpected and
            mis-shaped keys are listed).
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    checkpoint: Mapping[str, Any]
    if isinstance(state_dict_or_path, (str, Path)):
        source = str(state_dict_or_path)
        if not Path(source).is_file():
            raise InputError("checkpoint file not found", source)
        checkpoint = read_checkpoint(source)
    else:
        source, checkpoint = "<state dict>", state_dict_or_path
    state = state_dict_of(checkpoint, [key], source, "generator")

    prefix = part + "."
    incoming = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    target = getattr(unwrap(generator), part)
    expected = target.state_dict()
    missing = sorted(set(expected) - set(incoming))
    unexpected = sorted(set(incoming) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(incoming[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(expected) & set(incoming)
        if incoming[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys: {_listing([prefix + k for k in missing])}")
        if unexpected:
            problems.append(f"unexpected keys: {_listing([prefix + k for k in unexpected])}")
        if mismatched:
            problems.append(f"shape mismatch (checkpoint vs model): {_listing([prefix + k for k in mismatched])}")
        raise InputError(f"{part} does not match the checkpoint ({'; '.join(problems)})", source)
    target.load_state_dict(incoming, strict=True)
