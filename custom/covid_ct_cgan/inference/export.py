"""The generator outside PyTorch: ONNX export, ONNX Runtime (CPU) and int8 post-training quantization.

- :func:`export_onnx`: the generator as an ONNX graph with a dynamic batch axis
  (``torch.onnx.export``, the dynamo exporter of torch 2.13, which needs
  ``onnxscript``). The bundle's own ``python -m monai.bundle onnx_export`` writes
  the same graph with a fixed ``input_shape`` (see ``bundle/docs/README.md``).
- :class:`OnnxGenerator`: runs an ONNX file in ONNX Runtime's CPU execution
  provider like the PyTorch generator: ``(B, C, S, S)`` -> ``(B, 1, S, S)``.
- :func:`quantize_int8`: ONNX Runtime static int8 quantization (QDQ, int8 weights
  per output channel, uint8 activations, ranges calibrated on label-map conditions):
  ``precision: int8_onnxruntime``. ``precision: int8`` is PyTorch's own int8 path
  (:mod:`.int8`), several times faster on CPUs with AMX or VNNI.
- :func:`calibration_conditions`: generator inputs made from training label maps
  (a datalist's ``training`` list) as synthesis makes them.

``onnx``, ``onnxruntime`` and ``onnxscript`` are optional at import time (``requirements.txt``
installs them); a function that needs one and does not find it raises :class:`InputError`.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..fileio import atomic_path

logger = logging.getLogger(__name__)

INPUT_NAME = "condition"
OUTPUT_NAME = "image"
CALIBRATION_SLICES = 32  # label maps whose activation ranges set the int8 scales
CALIBRATION_KEY = "training"


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(
            f"the Python package '{module.split('.')[0]}' is needed for ONNX export, ONNX Runtime and int8 "
            "synthesis; install it with: pip install -r requirements.txt"
        ) from None


def export_onnx(network: torch.nn.Module, path: str | Path, image_size: int, batch_size: int = 1,
                opset_version: int | None = None) -> Path:
    """Write ``network`` (on the CPU, in eval mode, fp32) as an ONNX file with a dynamic batch axis.

    Args:
        network: the generator; its ``in_channels`` (first convolution) sets the input's channels.
        path: the ``.onnx`` file to write (atomically; replaced if it exists).
        image_size: the square input side it is exported for (the spatial size is fixed).
        batch_size: the batch of the example input (any batch runs afterwards).
        opset_version: ONNX opset; default: the exporter's.

    Returns:
        ``path``.

    Raises:
        InputError: ``onnx`` / ``onnxscript`` missing.
    """
    _require("onnx")
    _require("onnxscript")
    network = network.cpu().eval().float()
    channels = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    example = torch.zeros(int(batch_size), channels, int(image_size), int(image_size))
    example[:, 0] = 1.0  # a valid one-hot map (all background)
    batch = torch.export.Dim("batch", min=1, max=1024)
    path = Path(path)
    quiet = logging.getLogger("onnx_ir")  # one INFO line per shared constant otherwise
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))
    try:
        with atomic_path(path, overwrite=True) as tmp, torch.no_grad(), warnings.catch_warnings():
            # the generator keeps its last DESUM weight as a plain attribute (for logging), not a buffer
            warnings.filterwarnings("ignore", message=".*last_desum_weight was assigned during export.*")
            torch.onnx.export(network, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: batch},), opset_version=opset_version, dynamo=True,
                              external_data=False, verbose=False)
    finally:
        quiet.setLevel(level)
    return path


class OnnxGenerator:
    """An ONNX generator in ONNX Runtime's CPU execution provider, called like the PyTorch one.

    Args:
        path: the ``.onnx`` file (fp32 or quantized).
        threads: intra-op threads; default: ``torch.get_num_threads()`` (what PyTorch uses here).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ONNX Runtime raises its own types for unreadable models
            raise InputError(f"ONNX Runtime cannot load the model ({type(err).__name__}: {str(err)[:200]})", path) from None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, conditions: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` conditions -> ``(B, 1, S, S)`` float32 images on the CPU."""
        x = conditions.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])


def _calibration_reader(conditions: Sequence[torch.Tensor]) -> Any:
    quantization = _require("onnxruntime.quantization")
    reader_base: Any = quantization.CalibrationDataReader  # imported at run time: an optional dependency

    class _Reader(reader_base):
        """Feeds the calibration conditions one slice at a time."""

        def __init__(self) -> None:
            self.items = iter([{INPUT_NAME: c[None].float().numpy()} for c in conditions])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    return _Reader()


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, conditions: Sequence[torch.Tensor]) -> Path:
    """ONNX Runtime static int8 quantization of an fp32 ONNX generator.

    QDQ format; convolution weights int8 per output channel, activations uint8
    (the u8s8 form that AVX512-VNNI/AMX run natively); activation ranges from the
    min and max over ``conditions`` (calibration with a few training label maps).
    Instance norm, tanh and the resampling stay in float (ONNX Runtime has no int8
    kernels for them).

    Args:
        fp32_path: the fp32 model (:func:`export_onnx`).
        int8_path: the quantized model to write (atomically).
        conditions: ``(C, S, S)`` calibration inputs.

    Returns:
        ``int8_path``.

    Raises:
        InputError: no calibration input, or ``onnxruntime`` missing.
    """
    quantization = _require("onnxruntime.quantization")
    if len(conditions) == 0:
        raise InputError("int8 quantization needs at least one calibration label map")
    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory(prefix="covid_ct_cgan_int8_") as tmp_dir:
        prepared = Path(tmp_dir) / "prepared.onnx"
        quantization.shape_inference.quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        with atomic_path(int8_path, overwrite=True) as tmp:
            quantization.quantize_static(
                str(prepared), str(tmp), _calibration_reader(conditions),
                quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                op_types_to_quantize=["Conv", "ConvTranspose"],
                calibrate_method=quantization.CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
    return int8_path


def int8_generator(network: torch.nn.Module, image_size: int, conditions: Sequence[torch.Tensor],
                   folder: str | Path | None = None, threads: int | None = None) -> OnnxGenerator:
    """``network`` exported, quantized to int8 with ``conditions`` and loaded in ONNX Runtime.

    Args:
        network: the fp32 generator (its weights are not changed).
        image_size: the model grid's side.
        conditions: ``(C, S, S)`` calibration inputs (see :func:`calibration_conditions`).
        folder: where ``generator_fp32.onnx`` and ``generator_int8.onnx`` are written; default: a
            temporary folder removed once the session holds the model.
        threads: ONNX Runtime's intra-op threads.

    Returns:
        The int8 generator.
    """
    with tempfile.TemporaryDirectory(prefix="covid_ct_cgan_onnx_") as tmp_dir:
        where = Path(folder) if folder is not None else Path(tmp_dir)
        fp32 = export_onnx(network, where / "generator_fp32.onnx", image_size)
        int8 = quantize_int8(fp32, where / "generator_int8.onnx", conditions)
        return OnnxGenerator(int8, threads)


def calibration_conditions(datalist: str | Path, image_size: int, condition: str = "map", context_region: str = "lung",
                           context_dilation: int = 3, keep_effusion: bool = False, key: str = CALIBRATION_KEY,
                           max_slices: int = CALIBRATION_SLICES, window_level: float | None = None,
                           window_width: float | None = None) -> list[torch.Tensor]:
    """Generator inputs from the label maps (and images, for ``map+context``) of a datalist's list.

    Slices with lung, in the datalist's order, spread evenly over the list when it holds
    more than ``max_slices``; made exactly as synthesis makes its inputs.

    Args:
        datalist: a prepared ``datalist.json`` (or a folder, see :func:`~.inputs.collect_inputs`).
        image_size: the model grid's side.
        condition: ``map`` or ``map+context`` (as in training).
        context_region: ``lung`` or ``lesion``.
        context_dilation: lesion dilation in model pixels.
        keep_effusion: label maps may hold class 4.
        key: the datalist's list (default ``training``: the label maps the generator was trained on).
        max_slices: at most this many slices.
        window_level: HU window level (default: the bundle's).
        window_width: HU window width (default: the bundle's).

    Returns:
        ``(C, S, S)`` conditions.

    Raises:
        InputError: the datalist, its list or its files cannot be read, or no slice has lung.
    """
    from .. import intensity
    from ..labels import num_classes
    from ..transforms import make_condition
    from .grid import ModelGrid
    from .inputs import collect_inputs, load_input

    level = intensity.DEFAULT_WINDOW_LEVEL if window_level is None else window_level
    width = intensity.DEFAULT_WINDOW_WIDTH if window_width is None else window_width
    items, _ = collect_inputs(datalist, None, None, key)
    step = max(1, len(items) // max(1, int(max_slices)))
    grid = ModelGrid(int(image_size))
    out: list[torch.Tensor] = []
    for item in items[::step]:
        loaded = load_input(item, keep_effusion)
        for z in loaded.lung_slices():
            image = intensity.to_model(loaded.image[:, :, z], loaded.scale, level, width)
            image_t, label_t = grid.to_grid(image, loaded.label[:, :, z])
            out.append(make_condition(label_t, image_t, num_classes(keep_effusion), condition, context_region,
                                      int(context_dilation))[0])
            if len(out) >= int(max_slices):
                return out
    if not out:
        raise InputError(f"no slice with lung in the datalist's '{key}' list for int8 calibration", datalist)
    return out


def psnr(output: torch.Tensor, reference: torch.Tensor, data_range: float = 2.0) -> float:
    """PSNR (dB) of ``output`` against ``reference`` over ``data_range`` (the model's [-1, 1]); ``inf`` if equal."""
    mse = float(((output.float() - reference.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * float(np.log10(data_range**2 / mse))

