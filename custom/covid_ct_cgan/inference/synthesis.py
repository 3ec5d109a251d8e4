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
   with ``precision: int8``, an int8 ONNX Runtime copy calibrated on training
   label maps, :mod:`.export`; ``compile: auto`` and the CPU slicing by a cached
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
"""

from __future__ import annotations

import csv
import io
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Resize, SpatialPad
from monai.utils import convert_to_tensor

from .. import intensity
from ..checkpoints import load_latest_checkpoint, read_checkpoint, state_dict_of
from ..errors import InputError, exit_on_input_error
from ..fileio import staged_directory, write_json, write_text
from ..logs import progress as progress_bar
from ..labels import GGO, num_classes as count_classes
from ..precision import autocast_context
from ..transforms import CONDITIONS, CONTEXT_REGIONS, make_condition, synthesis_region
from . import tuning
from .inputs import LoadedInput, SynthesisInput, collect_inputs, load_input
from .lesion_augment import LesionAugmenter, LesionPattern, lesion_pattern
from .outputs import output_suffix, preview_picture, write_like, write_png

logger = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS: tuple[str, ...] = (
    "input", "input_label", "variant", "seed", "output", "label_map", "preview", "augmentation", "slices_synthesised",
)
BEST_GENERATOR = "best_generator.pt"
NETWORK_SETTINGS_HINT = (
    "pass the same network settings as in training "
    "(ngf, n_downsampling, n_blocks_global, n_blocks_local, desum, condition, keep_effusion)"
)
COMPILE_BACKEND = "inductor"  # torch.compile backend of ``compile: true`` (tests use a faster one)
CPU_PIXELS_PER_CALL = 2**17  # eager CPU slices: 2 samples at 256 px, 1 at 512 (fastest a slice on the development CPU)
PRECISIONS = ("float", "int8")  # float: fp32, or bf16/fp16 autocast with ``amp``; int8: ONNX Runtime static int8
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


# --------------------------------------------------------------------------- model grid


@dataclass(frozen=True)
class ModelGrid:
    """Maps a slice to the model's square grid and back, as ``train#deterministic`` does.

    Args:
        image_size: side of the model's square input.
    """

    image_size: int

    def resized_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Shape of a slice after the longest-side resize."""
        scale = self.image_size / max(shape)
        return tuple(int(round(s * scale)) for s in shape)  # type: ignore[return-value]

    def to_grid(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``[x, y]`` image in [-1, 1] and label map -> ``(1, S, S)`` tensors (area / nearest, padded -1 / 0)."""
        size = self.image_size
        img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        lab = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))[None]
        img = Resize(size, size_mode="longest", mode="area")(img)
        lab = Resize(size, size_mode="longest", mode="nearest")(lab)
        img = SpatialPad((size, size), value=-1.0)(img)
        lab = SpatialPad((size, size))(lab)
        return convert_to_tensor(img, track_meta=False), convert_to_tensor(lab, track_meta=False).round().long()

    def from_grid(self, generated: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
        """``(1, S, S)`` model output -> ``[x, y]`` slice of ``shape``: crop the padding, resize back (bilinear)."""
        rx, ry = self.resized_shape(shape)
        bx, by = (self.image_size - rx) // 2, (self.image_size - ry) // 2
        crop = generated[:, bx : bx + rx, by : by + ry].float()
        if (rx, ry) != tuple(shape):
            crop = F.interpolate(crop[None], size=tuple(shape), mode="bilinear", align_corners=False)[0]
        return crop[0].numpy()


# --------------------------------------------------------------------------- generator runner


def compile_generator(network: torch.nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` as synthesis uses it: static shapes, weights frozen on CPU; inductor's on-disk
    cache in :func:`~.tuning.use_inductor_cache`'s folder (unless ``TORCHINDUCTOR_CACHE_DIR`` is set)."""
    tuning.use_inductor_cache()
    options = {"freezing": True} if device.type == "cpu" and COMPILE_BACKEND == "inductor" else None
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
    """

    def __init__(
        self, network: torch.nn.Module, device: torch.device, amp: bool = False, compile: bool = False, batch_size: int = 8,
        cpu_pixels_per_call: int | None = CPU_PIXELS_PER_CALL,
        engine: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.network = network.to(device).eval()
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


@dataclass
class _Result:
    """One (input, variant) output while its slices come back from the generator."""

    loaded: LoadedInput
    variant: int
    seed: int
    label: np.ndarray
    composite: np.ndarray
    description: str
    regions: dict[int, np.ndarray] = field(default_factory=dict)
    remaining: int = 0


@dataclass
class _Settings:
    """What every slice of a run shares."""

    grid: ModelGrid
    num_classes: int
    condition: str
    context_region: str
    context_dilation: int
    window_level: float
    window_width: float


class _Synthesiser:
    """Queues slices of results, runs full batches through the generator, writes finished results into ``stage``."""

    def __init__(
        self, runner: GeneratorRunner, settings: _Settings, stage: Path, batch_size: int, progress: Any
    ) -> None:
        self.runner, self.settings, self.stage = runner, settings, stage
        self.batch_size, self.progress = batch_size, progress
        self.pending: list[tuple[_Result, int, torch.Tensor]] = []
        self.rows: list[dict[str, Any]] = []
        self.items: list[dict[str, Any]] = []

    def add(self, result: _Result) -> None:
        """Queue the slices of ``result`` that have a region to synthesise; write it once all are back."""
        s, loaded = self.settings, result.loaded
        region_mode = s.context_region if s.condition == "map+context" else "lung"
        # the lesion dilation is in model pixels; in the input's pixels it scales with the resize
        dilation = int(round(s.context_dilation * max(loaded.image.shape[:2]) / s.grid.image_size))
        for z in loaded.lung_slices():
            label = result.label[:, :, z]
            region = synthesis_region(torch.from_numpy(label.astype(np.int64))[None], region_mode, dilation)[0].numpy()
            if not region.any():
                self.progress.update(1)
                continue
            model_image = intensity.to_model(loaded.image[:, :, z], loaded.scale, s.window_level, s.window_width)
            image_t, label_t = s.grid.to_grid(model_image, label)
            cond, _ = make_condition(label_t, image_t, s.num_classes, s.condition, s.context_region, s.context_dilation)
            result.regions[z] = region
            result.remaining += 1
            self.pending.append((result, z, cond))
        if result.remaining == 0:
            self._write(result)
        while len(self.pending) >= self.batch_size:
            self._run_batch()

    def flush(self) -> None:
        """Run what is still queued."""
        while self.pending:
            self._run_batch()

    def _run_batch(self) -> None:
        s = self.settings
        batch, self.pending = self.pending[: self.batch_size], self.pending[self.batch_size :]
        generated = self.runner(torch.stack([cond for _, _, cond in batch]))
        for (result, z, _), out in zip(batch, generated):
            real = result.loaded.image[:, :, z]
            generated = s.grid.from_grid(out, real.shape)
            synthetic = intensity.from_model(generated, result.loaded.scale, s.window_level, s.window_width)
            result.composite[:, :, z] = np.where(result.regions[z], synthetic, real)  # outside the region: the input
            result.remaining -= 1
            if result.remaining == 0:
                self._write(result)
        self.progress.update(len(batch))

    def _write(self, result: _Result) -> None:
        loaded, s = result.loaded, self.settings
        name = f"{loaded.item.name}_v{result.variant}"
        suffix = output_suffix(loaded.geometry)
        image_rel, label_rel, preview_rel = f"images/{name}{suffix}", f"labels/{name}{suffix}", f"previews/{name}.png"
        write_like(result.composite, loaded.geometry, self.stage / image_rel)
        write_like(result.label, loaded.geometry, self.stage / label_rel, is_label=True)
        z = _preview_slice(result.label, loaded.lung_slices())
        picture = preview_picture(loaded.image[:, :, z], result.label[:, :, z], result.composite[:, :, z],
                                  loaded.scale, s.window_level, s.window_width)
        write_png(picture, self.stage / preview_rel)
        self.rows.append({
            "input": str(loaded.item.image), "input_label": str(loaded.item.label), "variant": result.variant,
            "seed": result.seed, "output": image_rel, "label_map": label_rel, "preview": preview_rel,
            "augmentation": result.description, "slices_synthesised": len(result.regions),
        })
        self.items.append({"image": image_rel, "label": label_rel, "source": str(loaded.item.image),
                           "variant": result.variant, "seed": result.seed, "scale": loaded.scale})


def _variant_label(
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


def _check_output_dir(output_dir: Path, folders: list[Path], inputs: list[SynthesisInput], overwrite: bool) -> None:
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
            raise InputError("output_dir already exists and is not empty; pass overwrite=true to replace it", output_dir)
        if not (out / MANIFEST).is_file():
            raise InputError(
                f"output_dir is not empty and is not a synthesis output (no {MANIFEST}); "
                "it is not replaced even with overwrite",
                output_dir,
            )


def _check_settings(
    num_variants: int, batch_size: int, image_size: int, condition: str, context_region: str, network: torch.nn.Module,
    precision: str = "float", compile: bool | str = False, cpu_pixels_per_call: int | str | None = None,
) -> None:
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
        raise InputError(f"compile must be true, false or {tuning.AUTO!r}, got {compile!r}")
    pixels = cpu_pixels_per_call
    if not (pixels is None or pixels == tuning.AUTO or (isinstance(pixels, int) and not isinstance(pixels, bool) and pixels > 0)):
        raise InputError(f"cpu_pixels_per_call must be a positive whole number, null or {tuning.AUTO!r}, got {pixels!r}")
    factor = int(getattr(network, "full_size_factor", getattr(network, "size_factor", 1)))
    if int(image_size) < factor or int(image_size) % factor:
        raise InputError(f"image_size must be a multiple of {factor} for this network, got {image_size}")


def _manifest_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _preview_slice(label: np.ndarray, slices: list[int]) -> int:
    return max(slices, key=lambda z: (np.count_nonzero(label[:, :, z] >= GGO), np.count_nonzero(label[:, :, z]), -z))


def _make_runner(
    network: torch.nn.Module, device: torch.device, amp: bool, compile: bool | str, batch_size: int,
    cpu_pixels_per_call: int | str | None, precision: str, slices: int, settings: _Settings,
    calibration_input: str | Path | None, calibration_key: str, keep_effusion: bool,
) -> GeneratorRunner:
    """The runner of a run: int8 in ONNX Runtime, or PyTorch with ``auto`` settings resolved by :mod:`.tuning`."""
    if precision == "int8":
        from .export import calibration_conditions, int8_generator

        if device.type != "cpu":
            raise InputError(f"precision int8 runs on the CPU (ONNX Runtime); got device {device}")
        if not calibration_input:
            raise InputError("precision int8 needs calibration_input: a prepared datalist.json with training label maps")
        if compile is True:
            logger.warning("precision int8: compile does not apply (ONNX Runtime runs the int8 model)")
        conditions = calibration_conditions(
            calibration_input, settings.grid.image_size, settings.condition, settings.context_region,
            settings.context_dilation, keep_effusion, calibration_key,
            window_level=settings.window_level, window_width=settings.window_width)
        logger.info(f"int8: calibrating on {len(conditions)} slices of '{calibration_key}' in {calibration_input}")
        engine = int8_generator(network, settings.grid.image_size, conditions)
        return GeneratorRunner(network, device, batch_size=batch_size, engine=engine)
    choice = tuning.choose(
        network, device, settings.grid.image_size, batch_size, amp, compile, cpu_pixels_per_call, slices,
        CPU_PIXELS_PER_CALL, lambda net: compile_generator(net, device))
    if tuning.AUTO in (compile, cpu_pixels_per_call):
        logger.info(f"synthesis settings: {choice.reason}")
    return GeneratorRunner(network, device, amp, choice.compile, batch_size, choice.cpu_pixels_per_call)


@exit_on_input_error
def run_synthesis(
    network: torch.nn.Module,
    checkpoint: str | Path,
    output_dir: str | Path,
    input: str | Path | None = None,
    image: str | Path | None = None,
    label: str | Path | None = None,
    datalist_key: str = "test_synthesis",
    num_variants: int = 1,
    seed: int = 0,
    augment: bool | None = None,
    keep_original: bool = True,
    augmenter: LesionAugmenter | None = None,
    overwrite: bool = False,
    image_size: int = 128,
    condition: str = "map",
    context_region: str = "lung",
    context_dilation: int = 3,
    keep_effusion: bool = False,
    window_level: float = intensity.DEFAULT_WINDOW_LEVEL,
    window_width: float = intensity.DEFAULT_WINDOW_WIDTH,
    batch_size: int = 8,
    amp: bool = False,
    compile: bool | str = False,
    device: str | torch.device | None = None,
    cpu_pixels_per_call: int | str | None = CPU_PIXELS_PER_CALL,
    precision: str = "float",
    calibration_input: str | Path | None = None,
    calibration_key: str = "training",
) -> list[dict[str, Any]]:
    """Synthesise composited CT slices from label maps (see the module docstring). Bundle run id ``run``.

    Args:
        network: the generator, built with the training run's network settings.
        checkpoint: checkpoint file or stage folder, see :func:`load_generator`.
        output_dir: where the results go (a new folder; see ``overwrite``).
        input: a ``datalist.json`` or a folder, see :func:`~.inputs.collect_inputs`.
        image: a single image file or DICOM series folder (with ``label``, instead of ``input``).
        label: the label map of ``image``.
        datalist_key: the datalist's list to use.
        num_variants: outputs per input.
        seed: seed of the lesion augmentation (a variant's seed is in the manifest).
        augment: augment the lesion maps; default: when ``num_variants > 1``.
        keep_original: variant 0 uses the input's own label map (the others are augmented).
        augmenter: the lesion augmentation; default :class:`LesionAugmenter` ()
        overwrite: replace an existing synthesis output folder.
        image_size: the model's square input size (as in training).
        condition: ``"map"`` or ``"map+context"`` (as in training).
        context_region: ``"lung"`` or ``"lesion"``: the region synthesised with ``map+context``.
        context_dilation: lesion dilation in model pixels for ``context_region: lesion``.
        keep_effusion: label maps may hold class 4 (as in training).
        window_level: HU window level (as in training).
        window_width: HU window width (as in training).
        batch_size: slices per generator call.
        amp: bf16 autocast on CPU, fp16 AMP on CUDA.
        compile: ``torch.compile`` the generator; ``"auto"``: when the run has more slices than the
            measured break-even (:mod:`.tuning`).
        device: where the generator runs; default: the network's device.
        cpu_pixels_per_call: eager CPU batches run in slices of this many pixels; ``None``: whole
            batches; ``"auto"``: the fastest slicing of a probe cached per machine (:mod:`.tuning`).
        precision: ``"float"`` (fp32, or autocast with ``amp``) or ``"int8"``: an ONNX Runtime static
            int8 copy of the generator (CPU; :mod:`.export`), calibrated on ``calibration_input``.
        calibration_input: a prepared ``datalist.json`` whose ``calibration_key`` list holds the label
            maps that calibrate int8 (the training label maps); needed with ``precision: int8``.
        calibration_key: the list of ``calibration_input`` to calibrate on.

    Returns:
        The manifest rows.

    Raises:
        InputError: bad input or settings (a bundle run exits with one ``ERROR:`` line and status 2);
            nothing is written then.
    """
    _check_settings(num_variants, batch_size, image_size, condition, context_region, network, precision, compile,
                    cpu_pixels_per_call)
    intensity.window_bounds(window_level, window_width)
    augment = int(num_variants) > 1 if augment is None else bool(augment)
    if int(num_variants) > 1 and not augment:
        logger.warning("num_variants > 1 without augment: the variants are identical")
    augmenter = augmenter or LesionAugmenter()
    augmented = [augment and not (keep_original and k == 0) for k in range(int(num_variants))]
    device = torch.device(device) if device is not None else next(network.parameters()).device
    output_dir = Path(output_dir).expanduser()
    inputs, folders = collect_inputs(input, image, label, datalist_key)
    _check_output_dir(output_dir, folders, inputs, overwrite)
    checkpoint_path = load_generator(network, checkpoint)

    # pass 1: read and check every input before any work; collect the donor lesion patterns
    donors: list[LesionPattern] = []
    total = 0
    for item in progress_bar(inputs, desc="checking inputs", unit="input", leave=False):
        loaded = load_input(item, keep_effusion)
        if min(ModelGrid(int(image_size)).resized_shape(loaded.image.shape[:2])) < 1:
            nx, ny = loaded.image.shape[:2]
            raise InputError(f"a slice of {nx} x {ny} pixels is too narrow for the model's {image_size}-pixel grid", item.image)
        total += len(loaded.lung_slices())
        if any(augmented) and augmenter.move_prob > 0:
            patterns = (lesion_pattern(loaded.label[:, :, z], loaded.slice_name(z)) for z in loaded.lung_slices())
            donors += [p for p in patterns if p is not None]

    # pass 2: synthesise into a staged folder that replaces output_dir only when complete
    settings = _Settings(ModelGrid(int(image_size)), count_classes(keep_effusion), condition, context_region,
                         int(context_dilation), float(window_level), float(window_width))
    runner = _make_runner(network, device, amp, compile, batch_size, cpu_pixels_per_call, precision,
                          total * int(num_variants), settings, calibration_input, calibration_key,
                          bool(keep_effusion))
    with staged_directory(output_dir, overwrite=overwrite) as stage:
        for sub in ("images", "labels", "previews"):
            (stage / sub).mkdir()
        with progress_bar(total=total * int(num_variants), desc="synthesis", unit="slice") as progress:
            synthesiser = _Synthesiser(runner, settings, stage, int(batch_size), progress)
            for item in inputs:
                loaded = load_input(item, keep_effusion)
                for k in range(int(num_variants)):
                    seed_k = variant_seed(seed, item.name, k)
                    used, description = _variant_label(
                        loaded, augmenter if augmented[k] else None, np.random.default_rng(seed_k), donors
                    )
                    synthesiser.add(_Result(loaded, k, seed_k, used, loaded.image.copy(), description))
            synthesiser.flush()
        rows = synthesiser.rows
        write_text(_manifest_text(rows), stage / MANIFEST)
        write_json({"synthetic": synthesiser.items}, stage / "datalist.json")
        write_json({
            "checkpoint": str(checkpoint_path), "num_variants": int(num_variants), "seed": int(seed), "augment": augment,
            "keep_original": bool(keep_original), "image_size": int(image_size), "condition": condition,
            "context_region": context_region, "context_dilation": int(context_dilation), "keep_effusion": bool(keep_effusion),
            "window_level": float(window_level), "window_width": float(window_width),
            "amp": bool(amp) and precision == "float",
            "compile": compile, "compiled": runner.compiled is not None, "precision": precision,
            "cpu_pixels_per_call": runner.cpu_pixels_per_call if runner.engine is None else None,
            "inputs": len(inputs), "outputs": len(rows),
        }, stage / "settings.json")
    print(f"synthesis: {len(rows)} outputs from {len(inputs)} inputs in {output_dir} (checkpoint {checkpoint_path})", flush=True)
    return rows
