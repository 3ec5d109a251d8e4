"""Synthesis (the paper's test process): label maps + real slices -> composited synthetic CT.

For every input pair (:mod:`.inputs`) and every variant ``k < num_variants``:

1. the label map: the input's own (variant 0 with ``keep_original``) or a
   lesion-augmented one (:class:`~.lesion_augment.LesionAugmenter`, seeded by
   ``seed``, the input's name and ``k``; volumes slice by slice);
2. each slice with lung goes to the model grid as in training
   (``train#deterministic``: intensity to [-1, 1], longest side resized to
   ``image_size`` with area / nearest interpolation, padded to a square), gets
   its condition (:func:`covid_ct_cgan.transforms.make_condition`) and runs
   through the generator in batches (``torch.inference_mode``, bf16 autocast on
   CPU / fp16 AMP on CUDA with ``amp``, ``torch.compile`` with ``compile``, or,
   with ``precision: int8``, a PT2E int8 copy compiled by inductor (:mod:`.int8`),
   or with ``int8_onnxruntime`` an ONNX Runtime static int8 copy (:mod:`.export`),
   both calibrated on training label maps; ``compile: auto`` and the CPU slicing by a cached
   probe, :mod:`.tuning`);
3. the generated slice is cropped and resized back (bilinear) to the slice's
   own size and composited at the original resolution,
   ``out = region * synthetic + (1 - region) * real``, region = the lung (or,
   with ``map+context`` and ``context_region: lesion``, the lesions dilated by
   ``context_dilation`` model pixels), so outside the region the output is the
   input, bit for bit;
4. written like the input (:mod:`.outputs`), with the label map used and a
   preview, into ``output_dir``::

       output_dir/
           images/<name>_v<k>.nii.gz|png     composited result
           labels/<name>_v<k>.nii.gz|png     the label map it was generated from
           previews/<name>_v<k>.png          real | label map | synthetic
           manifest.csv                      input, variant, seed, output, label map, ...
           datalist.json                     {"synthetic": [{"image", "label", ...}]}
           settings.json                     checkpoint and settings of the run

The folder is built under a temporary name and moved into place at the end
(:func:`covid_ct_cgan.fileio.staged_directory`): a failure leaves nothing.
It must not lie inside an input folder, and an existing one is replaced only
with ``overwrite`` and only if it is a synthesis output (has a ``manifest.csv``).

The run is :class:`~.workflow.SynthesisEvaluator` (wired in ``inference.yaml``, built from Python by
:func:`~.workflow.run_synthesis`); this module holds its pieces: the generator runner, checkpoint
loading, variant seeds and label maps, and the run's checks (the model grid is :mod:`.grid`'s).
"""

from __future__ import annotations

import csv
import io
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..checkpoints import load_latest_checkpoint, read_checkpoint, state_dict_of
from ..errors import InputError
from ..labels import GGO
from ..networks.windows import generate
from ..precision import autocast_context
from ..transforms import CONDITIONS, CONTEXT_REGIONS
from . import tuning
from .grid import ModelGrid
from .inputs import LoadedInput, SynthesisInput
from .lesion_augment import LesionAugmenter, LesionPattern

logger = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS: tuple[str, ...] = (
    "input", "input_label", "variant", "seed", "output", "label_map", "preview", "augmentation", "slices_synthesised",
)
BEST_GENERATOR = "best_generator.pt"
NETWORK_SETTINGS_HINT = (  # a checkpoint with a record is rebuilt from it: only older ones can mismatch
    "pass the same network settings as in training "
    "(inference.yaml: legacy_settings, e.g. ngf, n_downsampling, n_blocks_global, n_blocks_local, desum, condition, "
    "keep_effusion)"
)
COMPILE_BACKEND = "inductor"  # torch.compile backend of ``compile: true`` (tests use a faster one)
CPU_PIXELS_PER_CALL = 2**17  # eager CPU slices: 2 samples at 256 px, 1 at 512 (fastest a slice on the development CPU)
# float: fp32, or bf16/fp16 autocast with ``amp``; int8: PT2E int8 compiled by inductor (.int8);
# int8_onnxruntime: ONNX Runtime static int8 (.export). Both int8 kinds run on the CPU, calibrated on training maps.
PRECISIONS = ("float", "int8", "int8_onnxruntime")
INT8_PRECISIONS = ("int8", "int8_onnxruntime")
MAX_LISTED_KEYS = 6


# --------------------------------------------------------------------------- checkpoint


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    return shown + (f", ... ({len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else "")


def _read_checkpoint(checkpoint: str | Path) -> tuple[Path, Any]:
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        found = load_latest_checkpoint(path, required=["generator"])
        if found is None and (path / BEST_GENERATOR).is_file():
            path = path / BEST_GENERATOR
        elif found is None:
            raise InputError(
                "no readable generator checkpoint (checkpoint_epoch=N.pt, checkpoint_iteration=N.pt or best_generator.pt) "
                "in this folder; train first (python -m monai.bundle run training --config_file bundle/configs/train.yaml) "
                "or set checkpoint to a .pt file",
                path,
            )
        else:
            return found
    if not path.is_file():
        raise InputError("checkpoint not found; train first or set checkpoint_dir / checkpoint", path)
    return path, read_checkpoint(path)


def load_generator(network: torch.nn.Module, checkpoint: str | Path) -> Path:
    """Load trained generator weights into ``network``, strictly.

    Args:
        network: the generator built with the run's settings.
        checkpoint: a checkpoint file (a training checkpoint or ``best_generator.pt``,
            with key ``generator``, or a bare state dict), or a stage folder: its newest
            readable ``checkpoint_*.pt`` (else its ``best_generator.pt``).

    Returns:
        The file that was loaded.

    Raises:
        InputError: no checkpoint, an unreadable one, or one whose tensors do not match
            ``network`` (missing, unexpected and mis-shaped keys are listed).
    """
    path, ckpt = _read_checkpoint(checkpoint)
    state = state_dict_of(ckpt, ["generator"], path, "generator")
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        problems = [
            f"{what}: {_listing(keys)}"
            for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                               ("shape mismatch (checkpoint vs network)", mismatched))
            if keys
        ]
        raise InputError(
            f"checkpoint is from another network configuration ({'; '.join(problems)}); {NETWORK_SETTINGS_HINT}", path
        )
    network.load_state_dict(state, strict=True)
    logger.info(f"generator weights from {path}")
    return path


# --------------------------------------------------------------------------- generator runner


def compile_generator(network: torch.nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` as synthesis uses it: static shapes, weights frozen on CPU; inductor's on-disk
    cache in :func:`~.tuning.use_inductor_cache`'s folder (unless ``TORCHINDUCTOR_CACHE_DIR`` is set)."""
    tuning.use_inductor_cache()
    options: dict[str, Any] | None = {"freezing": True} if device.type == "cpu" and COMPILE_BACKEND == "inductor" else None
    return torch.compile(network, backend=COMPILE_BACKEND, options=options, dynamic=False)


class GeneratorRunner:
    """Runs the generator on batches of conditions: inference mode, optional AMP and ``torch.compile``.

    With ``compile`` a batch smaller than ``batch_size`` is padded (instance norm
    works per sample, so padding changes nothing) to avoid recompiling; if the
    compiled model fails on its first batch, the runner warns and stays eager.
    Eagerly on a CPU, a batch runs in slices of at most ``cpu_pixels_per_call``
    pixels (at least one sample): activations that stay in the CPU's caches make
    a 512-px batch of 8 about 1.3x faster a slice (``benchmarks/``); the output is
    the same up to float rounding, as every layer works per sample.

    Args:
        network: the generator (moved to ``device``, put in eval mode).
        device: where it runs.
        amp: bf16 autocast on CPU, fp16 autocast on CUDA.
        compile: run ``torch.compile(network)`` (inductor with weight freezing on CPU).
        batch_size: the batch size it will be called with.
        cpu_pixels_per_call: the eager CPU slice size in pixels; ``None`` runs whole batches.
        engine: runs whole batches instead of ``network`` (e.g. the int8
            :class:`~.export.OnnxGenerator`); ``amp``, ``compile`` and slicing do not apply then.
        window: run the generator on ``window`` x ``window`` windows (MONAI's ``SlidingWindowInferer``, overlap
            0.5, Gaussian blending) instead of the whole grid; ``0``: the whole grid.
    """

    def __init__(
        self, network: torch.nn.Module, device: torch.device, amp: bool = False, compile: bool = False, batch_size: int = 8,
        cpu_pixels_per_call: int | None = CPU_PIXELS_PER_CALL,
        engine: Callable[[torch.Tensor], torch.Tensor] | None = None, window: int = 0,
    ) -> None:
        self.network = network.to(device).eval()
        self.window = int(window)
        self.device = device
        self.amp = bool(amp)
        self.batch_size = int(batch_size)
        self.cpu_pixels_per_call = cpu_pixels_per_call if device.type == "cpu" else None
        self.engine = engine
        self.compiled = None
        self.compile_checked = False
        if compile and engine is None:
            self.compiled = compile_generator(self.network, device)

    def __call__(self, conditions: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` conditions -> ``(B, 1, S, S)`` float32 images in [-1, 1] on the CPU."""
        with torch.inference_mode():  # windows' outputs are inference tensors: blend them in that mode too
            return generate(self._whole, conditions.cpu(), self.window, self.batch_size).float()

    def _whole(self, conditions: torch.Tensor) -> torch.Tensor:
        if self.engine is not None:
            return self.engine(conditions.cpu()).float()
        n = conditions.shape[0]
        x = conditions.to(self.device, torch.float32)
        if self.compiled is not None and n < self.batch_size:
            x = torch.cat([x, x[:1].expand(self.batch_size - n, *x.shape[1:])])
        with torch.inference_mode(), autocast_context(self.device, self.amp):
            if self.compiled is not None:
                try:
                    out = self.compiled(x)
                    self.compile_checked = True
                except Exception as err:  # noqa: BLE001 - any compiler failure: fall back to eager
                    if self.compile_checked:
                        raise
                    logger.warning(f"torch.compile failed ({type(err).__name__}: {str(err)[:200]}); running eagerly")
                    self.compiled = None
                    out = self._eager(x)
            else:
                out = self._eager(x)
        return out[:n].float().cpu()

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpu_pixels_per_call is None:
            return self.network(x)
        per_call = max(1, self.cpu_pixels_per_call // (x.shape[-2] * x.shape[-1]))
        return torch.cat([self.network(part) for part in x.split(per_call)])


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class SynthesisSettings:
    """What every slice of a run shares: the model grid, the condition and the intensity window.

    Args:
        grid: the model's square grid (:class:`ModelGrid`).
        num_classes: label-map classes (:func:`covid_ct_cgan.labels.num_classes`).
        condition: ``"map"`` or ``"map+context"`` (as in training).
        context_region: ``"lung"`` or ``"lesion"``: the region synthesised with ``map+context``.
        context_dilation: lesion dilation in model pixels for ``context_region: lesion``.
        window_level: HU window level (as in training).
        window_width: HU window width (as in training).
    """

    grid: ModelGrid
    num_classes: int
    condition: str
    context_region: str
    context_dilation: int
    window_level: float
    window_width: float


def variant_label(
    loaded: LoadedInput, augmenter: LesionAugmenter | None, rng: np.random.Generator, donors: list[LesionPattern]
) -> tuple[np.ndarray, str]:
    """The label map of one variant: the input's own (no ``augmenter``), or augmented slice by slice."""
    if augmenter is None:
        return loaded.label.copy(), "original label map"
    used, texts = loaded.label.copy(), []
    volume = loaded.image.shape[2] > 1
    for z in loaded.lung_slices():
        name = loaded.slice_name(z)
        used[:, :, z], text = augmenter(loaded.label[:, :, z], rng, [d for d in donors if d.source != name])
        texts.append(f"slice {name.rsplit(':', 1)[1]}: {text}" if volume else text)
    return used, "; ".join(texts)


def variant_seed(seed: int, name: str, variant: int) -> int:
    """The seed of one variant: from the run's ``seed``, the input's name and the variant index.

    Independent of the other inputs, so adding inputs does not change a variant.
    """
    entropy = [int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode("utf-8")), int(variant)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def check_output_dir(output_dir: Path, folders: list[Path], inputs: list[SynthesisInput], overwrite: bool) -> None:
    """Refuse an ``output_dir`` inside (or holding) the inputs, or one that is not a synthesis output to replace.

    Raises:
        InputError: naming ``output_dir`` and the problem.
    """
    out = output_dir.expanduser().resolve()
    for folder in folders:
        folder = folder.expanduser().resolve()
        if out == folder or folder in out.parents:
            raise InputError(
                f"output_dir is inside the input folder {folder}; choose an output_dir outside the inputs", output_dir
            )
    for item in inputs:
        for path in (item.image, item.label):
            if out in path.expanduser().resolve().parents:
                raise InputError(f"output_dir contains the input {path}; choose another output_dir", output_dir)
    if out.exists() and not out.is_dir():
        raise InputError("output_dir exists and is not a folder", output_dir)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError("output_dir already exists and is not empty; pass --overwrite True to replace it", output_dir)
        if not (out / MANIFEST).is_file():
            raise InputError(
                f"output_dir is not empty and is not a synthesis output (no {MANIFEST}); "
                "it is not replaced even with overwrite",
                output_dir,
            )


def check_settings(
    num_variants: int, batch_size: int, image_size: int, condition: str, context_region: str, network: torch.nn.Module,
    precision: str = "float", compile: bool | str = False, cpu_pixels_per_call: int | str | None = None,
) -> None:
    """Refuse a bad run setting before any work (one line naming it).

    Raises:
        InputError: a count below 1, an unknown choice, an ``image_size`` the network cannot take.
    """
    if int(num_variants) < 1:
        raise InputError(f"num_variants must be at least 1, got {num_variants}")
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if condition not in CONDITIONS:
        raise InputError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    if context_region not in CONTEXT_REGIONS:
        raise InputError(f"context_region must be one of {CONTEXT_REGIONS}, got {context_region!r}")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not isinstance(compile, bool) and compile != tuning.AUTO:
        word = {"true": " (write --compile True)", "false": " (write --compile False)"}.get(str(compile).strip().lower(), "")
        raise InputError(f"compile must be True, False or {tuning.AUTO!r}, got {compile!r}{word}")
    pixels = cpu_pixels_per_call
    if not (pixels is None or pixels == tuning.AUTO or (isinstance(pixels, int) and not isinstance(pixels, bool) and pixels > 0)):
        raise InputError(f"cpu_pixels_per_call must be a positive whole number, null or {tuning.AUTO!r}, got {pixels!r}")
    factor = int(getattr(network, "full_size_factor", getattr(network, "size_factor", 1)))
    if int(image_size) < factor or int(image_size) % factor:
        raise InputError(f"image_size must be a multiple of {factor} for this network, got {image_size}")


def manifest_text(rows: list[dict[str, Any]]) -> str:
    """The ``manifest.csv`` text of ``rows`` (columns :data:`MANIFEST_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def preview_slice(label: np.ndarray, slices: list[int]) -> int:
    """The slice of ``slices`` shown in the preview: the most lesion, then the most lung, then the first."""
    return max(slices, key=lambda z: (np.count_nonzero(label[:, :, z] >= GGO), np.count_nonzero(label[:, :, z]), -z))


def make_runner(
    network: torch.nn.Module, device: torch.device, amp: bool, compile: bool | str, batch_size: int,
    cpu_pixels_per_call: int | str | None, precision: str, slices: int, settings: SynthesisSettings,
    calibration_input: str | Path | None, calibration_key: str, keep_effusion: bool,
) -> GeneratorRunner:
    """The runner of a run: int8 (inductor or ONNX Runtime), or PyTorch with ``auto`` settings resolved by :mod:`.tuning`."""
    if precision in INT8_PRECISIONS:
        from .export import calibration_conditions, int8_generator

        if device.type != "cpu":
            raise InputError(f"precision {precision} runs on the CPU; got device {device}")
        if settings.grid.window:
            raise InputError(f"precision {precision} is not available for a generator trained on crops (crop_size "
                             f"{settings.grid.window}); synthesise it with precision float")
        if not calibration_input:
            raise InputError(f"precision {precision} needs calibration_input: a prepared datalist.json with training label maps")
        if compile is True:
            logger.warning(f"precision {precision}: compile does not apply (the int8 model has its own compiler)")
        conditions = calibration_conditions(
            calibration_input, settings.grid.image_size, settings.condition, settings.context_region,
            settings.context_dilation, keep_effusion, calibration_key,
            window_level=settings.window_level, window_width=settings.window_width)
        logger.info(f"{precision}: calibrating on {len(conditions)} slices of '{calibration_key}' in {calibration_input}")
        if precision == "int8":
            from .int8 import InductorInt8Generator

            engine: Callable[[torch.Tensor], torch.Tensor] = InductorInt8Generator(
                network, settings.grid.image_size, conditions, batch_size)
        else:
            engine = int8_generator(network, settings.grid.image_size, conditions)
        return GeneratorRunner(network, device, batch_size=batch_size, engine=engine)
    choice = tuning.choose(
        network, device, settings.grid.image_size, batch_size, amp, compile, cpu_pixels_per_call, slices,
        CPU_PIXELS_PER_CALL, lambda net: compile_generator(net, device))
    if tuning.AUTO in (compile, cpu_pixels_per_call):
        logger.info(f"synthesis settings: {choice.reason}")
    return GeneratorRunner(network, device, amp, choice.compile, batch_size, choice.cpu_pixels_per_call,
                           window=settings.grid.window)
