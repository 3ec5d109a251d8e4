"""How the generator runs during synthesis: precision, autocast, compilation, CPU slicing.

``inference.yaml``'s ``inference#runtime`` builds a :class:`GeneratorRuntime` and hands it to the
:class:`~.workflow.SynthesisEvaluator`, which asks it for the run's :class:`~.synthesis.GeneratorRunner` once the
generator's weights are loaded: PyTorch (with ``compile`` and ``cpu_pixels_per_call`` resolved by :mod:`.tuning`
when ``auto``), int8 through the inductor (``precision: int8``) or ONNX Runtime (``int8_onnxruntime``), both
calibrated on training label maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .synthesis import CPU_PIXELS_PER_CALL, GeneratorRunner, SynthesisSettings, check_settings, make_runner


@dataclass(frozen=True)
class GeneratorRuntime:
    """The runtime of a synthesis run (``inference#runtime``).

    Args:
        amp: bf16 autocast on CPU, fp16 AMP on CUDA (float precision only).
        compile: ``torch.compile`` the generator: ``True``, ``False`` or ``"auto"``.
        cpu_pixels_per_call: eager CPU slicing in pixels, ``None`` or ``"auto"``.
        precision: ``"float"``, ``"int8"`` (PT2E, inductor) or ``"int8_onnxruntime"``.
        calibration_input: int8: a prepared ``datalist.json`` with training label maps.
        calibration_key: int8: the list of ``calibration_input``.
        keep_effusion: the calibration label maps may hold class 4 (the checkpoint's record says).
    """

    amp: bool = False
    compile: bool | str = False
    cpu_pixels_per_call: int | str | None = CPU_PIXELS_PER_CALL
    precision: str = "float"
    calibration_input: str | Path | None = None
    calibration_key: str = "training"
    keep_effusion: bool = False

    def check(self, num_variants: int, batch_size: int, settings: SynthesisSettings, network: torch.nn.Module) -> None:
        """Refuse a bad run setting before any work (:func:`~.synthesis.check_settings`).

        Raises:
            InputError: one line naming the setting.
        """
        check_settings(num_variants, batch_size, settings.grid.image_size, settings.condition, settings.context_region,
                       network, self.precision, self.compile, self.cpu_pixels_per_call)

    def runner(self, network: torch.nn.Module, device: torch.device, batch_size: int, slices: int,
               settings: SynthesisSettings) -> GeneratorRunner:
        """The run's runner for ``network`` (its weights loaded), ``slices`` slices in batches of ``batch_size``.

        Raises:
            InputError: int8 off the CPU, for a crop-trained generator or without calibration input.
        """
        return make_runner(network, device, bool(self.amp), self.compile, batch_size, self.cpu_pixels_per_call,
                           self.precision, slices, settings, self.calibration_input, self.calibration_key,
                           bool(self.keep_effusion))

    def record(self, runner: GeneratorRunner) -> dict[str, Any]:
        """What the run's ``settings.json`` says about how the generator ran."""
        return {"amp": bool(self.amp) and self.precision == "float", "compile": self.compile,
                "compiled": runner.compiled is not None, "precision": self.precision,
                "cpu_pixels_per_call": runner.cpu_pixels_per_call if runner.engine is None else None}
