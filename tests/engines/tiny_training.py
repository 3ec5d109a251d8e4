"""Settings of tiny train.yaml runs (a 3-patient 64-px phantom, 32-px images, 8-channel networks) and trainer helpers."""

from __future__ import annotations

from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser


REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_YAML = str(REPO_ROOT / "bundle" / "configs" / "train.yaml")

# the smallest settings at which every stage still has its real structure
TINY = {
    "image_size": 32,
    "epochs": 2,
    "batch_size": 2,
    "ngf": 8,
    "n_downsampling": 1,
    "n_blocks_global": 1,
    "n_blocks_local": 1,
    "ndf": 8,
    "n_layers_d": 2,
    "sample_count": 2,
    "phantom_patients": 3,
    "phantom_slices": 4,
    "phantom_size": 64,
    "amp": False,
}


def tiny_cli(work_dir: Path, **extra: object) -> list[str]:
    """``--key value`` arguments of a tiny run in ``work_dir``."""
    args = {**TINY, "work_dir": str(work_dir), **extra}
    out: list[str] = []
    for key, value in args.items():
        out += [f"--{key}", str(value)]
    return out


def tiny_parser(work_dir: Path, stage: str, **overrides: object) -> ConfigParser:
    """train.yaml parsed for ``stage`` with the tiny settings, ``work_dir`` and ``overrides`` (values or objects)."""
    parser = ConfigParser()
    parser.read_config(TRAIN_YAML)
    parser.update({**TINY, "work_dir": str(work_dir), "stage": stage})
    for key, value in overrides.items():
        parser[key] = value
    parser.parse(reset=True)
    return parser


class OracleGenerator(torch.nn.Module):
    """A "generator" that returns the real slice of the current batch exactly (fake == real).

    :meth:`attach` makes it read each batch's ``image`` when the iteration starts. One
    parameter (multiplied by 0) gives the optimizer something to hold.
    """

    def __init__(self) -> None:
        super().__init__()
        self.zero = torch.nn.Parameter(torch.zeros(()))
        self.real: torch.Tensor | None = None

    def attach(self, engine: Engine) -> None:
        """Read the real slice of each batch at ``ITERATION_STARTED``."""
        engine.add_event_handler(Events.ITERATION_STARTED, lambda e: setattr(self, "real", e.state.batch["image"]))

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        if self.real is None or self.real.shape[-2:] != condition.shape[-2:]:
            raise RuntimeError("OracleGenerator: attach it to the trainer (it returns the batch's real slice)")
        return self.real.as_subclass(torch.Tensor).to(condition.device).float() + 0.0 * self.zero


class PoisonImage:
    """Replace the real slices of the batch at ``iteration`` with NaN (a non-finite discriminator loss)."""

    def __init__(self, iteration: int) -> None:
        self.iteration = int(iteration)

    def attach(self, engine: Engine) -> None:
        """Act at ``ITERATION_STARTED`` of the chosen iteration."""
        engine.add_event_handler(Events.ITERATION_STARTED(once=self.iteration), self)

    def __call__(self, engine: Engine) -> None:
        batch = engine.state.batch
        engine.state.batch = {**batch, "image": torch.full_like(batch["image"], float("nan"))}
