"""int8 synthesis in PyTorch: PT2E post-training quantization compiled by inductor (oneDNN int8 on the CPU).

The generator is captured with ``torch.export``, annotated by torchao's
``X86InductorQuantizer`` (int8 weights per output channel, uint8 activations:
the u8s8 form that AMX and AVX512-VNNI run natively), calibrated on label-map
conditions (min/max observers over training maps, never test slices), converted,
and compiled by inductor with weight freezing: convolutions run as fused oneDNN
int8 kernels, instance norms and the other element-wise steps are fused around
them. On a CPU with native bf16 the steps between the int8 convolutions (instance
norm, padding, the transposed convolutions of the upsampling path, which the
quantizer leaves in float) run in bf16 ("int8-mixed-bf16"): 1.6x faster than
int8 with float in between on the AMX Xeon, and several times faster than ONNX
Runtime's static int8 (:mod:`.export`), which keeps every instance norm and
quantize/dequantize step in float; ``benchmarks/README.md`` gives the figures.

``torchao`` is optional at import time (``requirements.txt`` installs it); a
function that needs it and does not find it raises :class:`InputError`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import InputError
from ..precision import native_bf16_cpu

logger = logging.getLogger(__name__)


def _torchao_pt2e() -> tuple[Any, Any, Any]:
    """torchao's ``prepare_pt2e``, ``convert_pt2e`` and the x86 inductor quantizer module (quietly imported)."""
    quiet = logging.getLogger("torchao")  # warns about its CUDA-only extensions on a CPU install
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
    except ImportError:
        raise InputError(
            "the Python package 'torchao' is needed for precision int8 (PyTorch inductor); install it with: "
            "pip install -r requirements.txt, or use precision int8_onnxruntime"
        ) from None
    finally:
        quiet.setLevel(level)
    return prepare_pt2e, convert_pt2e, x86_inductor_quantizer


def _batches(conditions: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """``conditions`` cut into batches of exactly ``batch_size`` (the last padded with copies of its first sample)."""
    out = []
    for part in conditions.split(batch_size):
        if part.shape[0] < batch_size:
            part = torch.cat([part, part[:1].expand(batch_size - part.shape[0], *part.shape[1:])])
        out.append(part.contiguous())
    return out


class InductorInt8Generator:
    """The generator quantized to int8 (PT2E, x86 inductor quantizer) and compiled; called like the PyTorch one.

    The graph is exported and compiled for one batch size; other batches are
    cut into (padded) batches of that size, which changes nothing per sample
    (instance norm works per sample). Compilation happens here, with one warm-up
    call, so a failing compiler is reported before synthesis starts.

    Args:
        network: the fp32 generator (not changed; a copy is quantized).
        image_size: the model grid's side.
        conditions: ``(C, S, S)`` calibration inputs (see :func:`.export.calibration_conditions`).
        batch_size: the batch it is compiled for.
        bf16: run the steps between int8 convolutions in bf16 (int8-mixed-bf16); default: where the CPU
            computes bf16 natively (AVX512-BF16, AMX).

    Raises:
        InputError: no calibration input, ``torchao`` missing, or export / compilation failed.
    """

    def __init__(self, network: torch.nn.Module, image_size: int, conditions: Sequence[torch.Tensor],
                 batch_size: int = 1, bf16: bool | None = None) -> None:
        if len(conditions) == 0:
            raise InputError("int8 quantization needs at least one calibration label map")
        prepare_pt2e, convert_pt2e, x86 = _torchao_pt2e()
        from .tuning import use_inductor_cache

        self.batch_size = max(1, int(batch_size))
        self.bf16 = native_bf16_cpu() if bf16 is None else bool(bf16)
        calibration = torch.stack([c.float() for c in conditions])
        if calibration.shape[-1] != int(image_size) or calibration.shape[-2] != int(image_size):
            raise InputError(f"calibration inputs are {tuple(calibration.shape[-2:])}, the model grid is {image_size} px")
        network = network.cpu().eval().float()
        example = _batches(calibration[:1], self.batch_size)[0]
        quantizer = x86.X86InductorQuantizer()
        quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # the generator keeps its last DESUM weight as a plain attribute (for logging), not a buffer
                warnings.filterwarnings("ignore", message=".*last_desum_weight was assigned during export.*")
                warnings.filterwarnings("ignore", message=".*To copy construct from a tensor.*")
                captured = torch.export.export(network, (example,), strict=False).module()
                prepared = prepare_pt2e(captured, quantizer)
                for batch in _batches(calibration, self.batch_size):
                    prepared(batch)
                self.quantized = convert_pt2e(prepared)
                use_inductor_cache()
                # freezing set globally while compiling: as a per-call option it leaves the weight prepacking
                # to run on fake tensors, which oneDNN's qconv_prepack cannot (UnsupportedOperatorException)
                with torch._inductor.config.patch(freezing=True), self._autocast():  # noqa: SLF001 - torch's compiler settings live only there
                    self.compiled = torch.compile(self.quantized, dynamic=False)
                    self.compiled(example)
        except InputError:
            raise
        except Exception as err:  # noqa: BLE001 - export, quantizer and inductor raise many types
            raise InputError(
                f"int8 quantization with PyTorch inductor failed ({type(err).__name__}: {str(err)[:300]}); "
                "use precision int8_onnxruntime instead"
            ) from None
        logger.info(f"int8 (PyTorch inductor{', mixed with bf16' if self.bf16 else ''}): calibrated on "
                    f"{calibration.shape[0]} slices, compiled for batch {self.batch_size}")

    def _autocast(self) -> Any:
        return torch.autocast("cpu", torch.bfloat16, enabled=self.bf16)

    def __call__(self, conditions: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` conditions -> ``(B, 1, S, S)`` float32 images on the CPU."""
        n = conditions.shape[0]
        x = conditions.detach().to("cpu", torch.float32)
        with torch.no_grad(), self._autocast(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*To copy construct from a tensor.*")
            out = torch.cat([self.compiled(batch) for batch in _batches(x, self.batch_size)])
        return out[:n].float()
