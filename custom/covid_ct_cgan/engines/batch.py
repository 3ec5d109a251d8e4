"""How a batch enters the generator in MONAI evaluators: condition in, real slice as target."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer

from ..networks.windows import generate


def prepare_condition_batch(
    batchdata: dict[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor, tuple, dict[str, torch.Tensor]]:
    """``prepare_batch`` for ``SupervisedEvaluator``: (condition, real image, (), {region, real}).

    The region and the real slice reach :class:`CompositeInferer` as keyword
    arguments, so the evaluator scores the composited ("complemented") image.
    """
    cond = batchdata["condition"].to(device=device, non_blocking=non_blocking, **kwargs)
    real = batchdata["image"].to(device=device, non_blocking=non_blocking, **kwargs)
    region = batchdata["region"].to(device=device, non_blocking=non_blocking, **kwargs)
    return cond, real, (), {"region": region, "real": real}


class CompositeInferer(Inferer):
    """Run the generator and composite its output into the real slice: ``region * G + (1 - region) * real``.

    Args:
        composite: when false, return the raw generator output.
        window: run the generator on ``window`` x ``window`` windows (MONAI's ``SlidingWindowInferer``, overlap 0.5,
            Gaussian blending), as synthesis runs a generator trained on crops of that size; ``0``: the whole input.
    """

    def __init__(self, composite: bool = True, window: int = 0) -> None:
        super().__init__()
        self.composite = composite
        self.window = int(window)

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: torch.nn.Module,
        region: torch.Tensor | None = None,
        real: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        fake = generate(network, inputs.float(), self.window).float()
        if not self.composite or region is None or real is None:
            return fake
        region = region.float()
        return region * fake + (1.0 - region) * real.float()
