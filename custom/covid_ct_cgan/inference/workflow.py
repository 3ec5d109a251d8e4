"""Synthesis as a MONAI workflow: dataset, preprocessing, inferer, postprocessing, an evaluator with handlers.

``inference.yaml`` wires these parts the way model-zoo bundles wire theirs
(``inference#dataset``, ``inference#preprocessing``, ``inference#inferer``,
``inference#postprocessing``, ``inference#handlers``, ``evaluator``;
``run: $entry_point(covid_ct_cgan.inference.run_evaluator, @evaluator)``), and
:func:`run_synthesis` builds the same parts in Python for callers of the API
(the evaluation, the segmentation study, the MONAI Label app).

One iteration of the :class:`SynthesisEvaluator` is one (input, variant):

- :class:`SynthesisDataset` finds and checks the inputs (all of them, before any work);
- preprocessing: :class:`LoadSynthesisInputd` reads the pair, :class:`LesionMapd` draws the
  variant's label map (lesion-map augmentation), :class:`ToModelGridd` puts each slice with a
  region to synthesise on the model grid (the training run's deterministic chain) with its condition;
- :class:`SliceQueueInferer` queues the slices of every iteration and runs full batches of
  ``batch_size`` through the generator, so batches are the same whatever the inputs' sizes
  (a batch's make-up changes float rounding, so this keeps the outputs byte for byte);
  it returns the items whose slices are all back;
- postprocessing, on each finished item: :class:`Compositd` (inverse intensity, crop and
  resize back, composited into the real image), :class:`WriteSynthesisd` (the image and
  label map, written like the input) and :class:`WritePreviewd` (the preview picture).

The outputs are written into a staging folder that replaces ``output_dir`` only when the
run is complete (:func:`covid_ct_cgan.fileio.staged_directory`), with ``manifest.csv``,
``datalist.json`` and ``settings.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.engines import Evaluator
from monai.inferers import Inferer
from monai.transforms import Compose, Transform

from .. import intensity
from ..checkpoint_settings import resolve_network_settings
from ..errors import InputError
from ..fileio import check_writable, staged_directory, write_json, write_text
from ..labels import num_classes as count_classes
from ..logs import progress as progress_bar, progress_handler
from ..transforms import make_condition, slice_region, synthesis_region
from .grid import ModelGrid
from .inputs import LoadedInput, SynthesisInput, collect_inputs, load_input
from .lesion_augment import LesionAugmenter, LesionPattern, lesion_pattern
from .outputs import output_suffix, preview_picture, write_like, write_png
from .runtime import GeneratorRuntime
from .synthesis import (
    CPU_PIXELS_PER_CALL, MANIFEST, GeneratorRunner, SynthesisSettings, check_output_dir, load_generator, manifest_text,
    preview_slice, variant_label, variant_seed,
)

logger = logging.getLogger(__name__)

__all__ = [
    "Compositd", "LesionMapd", "LoadSynthesisInputd", "SliceQueueInferer", "SynthesisDataset", "SynthesisEvaluator",
    "ToModelGridd", "WritePreviewd", "WriteSynthesisd", "run_evaluator", "run_synthesis",
]


# --------------------------------------------------------------------------- dataset


class SynthesisDataset(torch.utils.data.Dataset):
    """The (input, variant) items of a run: ``{"input": SynthesisInput, "variant": k, "donors": [...]}``.

    Nothing is read when it is built (a config can build it before the run's checks);
    :meth:`prepare` finds the inputs, reads and checks every one, counts the slices with
    lung and collects the lesion patterns other slices may borrow.

    Args:
        input: a ``datalist.json`` or a folder, see :func:`~.inputs.collect_inputs`.
        image: one image file or DICOM series folder (with ``label``; instead of ``input``).
        label: the label map of ``image``.
        datalist_key: the datalist's list to use.
        num_variants: outputs per input.
        keep_effusion: label maps may hold class 4 (as in training).
        image_size: the model grid (a slice too narrow for it is refused).
    """

    def __init__(
        self, input: str | Path | None = None, image: str | Path | None = None, label: str | Path | None = None,
        datalist_key: str = "test_synthesis", num_variants: int = 1, keep_effusion: bool = False, image_size: int = 128,
    ) -> None:
        self.input, self.image, self.label, self.datalist_key = input, image, label, datalist_key
        self.num_variants, self.keep_effusion, self.image_size = int(num_variants), bool(keep_effusion), int(image_size)
        self.inputs: list[SynthesisInput] | None = None
        self.folders: list[Path] = []
        self.donors: list[LesionPattern] = []
        self.slices = 0

    def find(self) -> list[SynthesisInput]:
        """Find the input pairs (nothing read yet); returns them. Raises InputError (see ``collect_inputs``)."""
        if self.inputs is None:
            self.inputs, self.folders = collect_inputs(self.input, self.image, self.label, self.datalist_key)
        return self.inputs

    def prepare(self, collect_donors: bool) -> None:
        """Read and check every input before any work; count the slices, collect donor lesion patterns.

        Args:
            collect_donors: collect the lesion patterns of every slice (lesions moved between slices).

        Raises:
            InputError: an unreadable or inconsistent input, or a slice too narrow for the model grid.
        """
        self.donors, self.slices = [], 0
        grid = ModelGrid(self.image_size)
        for item in progress_bar(self.find(), desc="checking inputs", unit="input", leave=False):
            loaded = load_input(item, self.keep_effusion)
            if min(grid.resized_shape(loaded.image.shape[:2])) < 1:
                nx, ny = loaded.image.shape[:2]
                raise InputError(f"a slice of {nx} x {ny} pixels is too narrow for the model's {self.image_size}-pixel grid",
                                 item.image)
            self.slices += len(loaded.lung_slices())
            if collect_donors:
                patterns = (lesion_pattern(loaded.label[:, :, z], loaded.slice_name(z)) for z in loaded.lung_slices())
                self.donors += [p for p in patterns if p is not None]

    def __len__(self) -> int:
        return len(self.find()) * self.num_variants

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return {"input": self.find()[index // self.num_variants], "variant": index % self.num_variants,
                "donors": self.donors}


# --------------------------------------------------------------------------- preprocessing


class LoadSynthesisInputd(Transform):
    """``data["input"]`` (a :class:`~.inputs.SynthesisInput`) -> ``data["loaded"]`` (read and checked).

    Args:
        keep_effusion: label maps may hold class 4.
    """

    def __init__(self, keep_effusion: bool = False) -> None:
        self.keep_effusion = bool(keep_effusion)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "loaded": load_input(data["input"], self.keep_effusion)}


class LesionMapd(Transform):
    """The variant's label map: the input's own, or lesion-augmented (slice by slice), seeded per variant.

    Sets ``data["seed"]`` (:func:`~.synthesis.variant_seed` of ``seed``, the input's name and the
    variant), ``data["label"]`` and ``data["description"]``.

    Args:
        augmenter: the lesion augmentation (default :class:`~.lesion_augment.LesionAugmenter` ()).
        seed: the run's seed.
        augment: augment the lesion maps.
        keep_original: variant 0 keeps the input's own label map.
    """

    def __init__(self, augmenter: LesionAugmenter | None = None, seed: int = 0, augment: bool = False,
                 keep_original: bool = True) -> None:
        self.augmenter = augmenter or LesionAugmenter()
        self.seed, self.augment, self.keep_original = int(seed), bool(augment), bool(keep_original)

    def augmented(self, variant: int) -> bool:
        """Whether ``variant`` gets an augmented map."""
        return self.augment and not (self.keep_original and variant == 0)

    def needs_donors(self, num_variants: int) -> bool:
        """Whether a run of ``num_variants`` borrows lesions from other slices."""
        return any(self.augmented(k) for k in range(num_variants)) and self.augmenter.move_prob > 0

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        loaded: LoadedInput = data["loaded"]
        seed = variant_seed(self.seed, loaded.item.name, data["variant"])
        augmenter = self.augmenter if self.augmented(data["variant"]) else None
        label, description = variant_label(loaded, augmenter, np.random.default_rng(seed), data["donors"])
        return {**data, "seed": seed, "label": label, "description": description}


class ToModelGridd(Transform):
    """Each slice with a region to synthesise -> its condition on the model grid (``train#deterministic``).

    Sets ``data["regions"]`` (``{z: region mask at the slice's resolution}``), ``data["conditions"]``
    (``[(z, (C, S, S) condition)]``) and ``data["composite"]`` (a copy of the real image to fill).

    Args:
        settings: the run's :class:`~.synthesis.SynthesisSettings`.
    """

    def __init__(self, settings: SynthesisSettings) -> None:
        self.settings = settings

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        s, loaded = self.settings, data["loaded"]
        regions, conditions = {}, []
        for z in loaded.lung_slices():
            label, own = data["label"][:, :, z], loaded.label[:, :, z]
            # an augmented map redraws the input's own lesions' region too: a real lesion left in place
            # beside a moved one would be unlabelled in the composite (lesion inpainting)
            region = slice_region(label, s.condition, s.context_region, s.context_dilation, s.grid.image_size,
                                  s.grid.upscale)
            region |= slice_region(own, s.condition, s.context_region, s.context_dilation, s.grid.image_size,
                                   s.grid.upscale)
            if not region.any():
                continue
            model_image = intensity.to_model(loaded.image[:, :, z], loaded.scale, s.window_level, s.window_width)
            image_t, label_t = s.grid.to_grid(model_image, label)
            own_t = s.grid.to_grid(model_image, own)[1]
            mode = s.context_region if s.condition == "map+context" else "lung"
            region_t = synthesis_region(label_t, mode, s.context_dilation) | synthesis_region(own_t, mode, s.context_dilation)
            cond, _ = make_condition(label_t, image_t, s.num_classes, s.condition, s.context_region, s.context_dilation,
                                     region=region_t)
            regions[z] = region
            conditions.append((z, cond))
        return {**data, "regions": regions, "conditions": conditions, "composite": loaded.image.copy(),
                "skipped": len(loaded.lung_slices()) - len(regions)}


# --------------------------------------------------------------------------- inferer


class SliceQueueInferer(Inferer):
    """Runs the queued slices of all items through the generator in full batches of ``batch_size``.

    ``inferer(items, runner)`` queues the conditions of ``items``, runs every full batch, and
    returns the items whose slices are all back (``data["generated"]``: ``{z: (1, S, S)}``), in
    the order they finish; :meth:`flush` runs what is left. An item without slices finishes at once.

    Args:
        batch_size: slices per generator call.
    """

    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.batch_size = int(batch_size)
        self.pending: list[tuple[dict[str, Any], int, torch.Tensor]] = []
        self.slices_done = 0

    # takes the queued items, not one tensor as monai's Inferer does: only SynthesisEvaluator calls it
    def __call__(self, inputs: Sequence[dict[str, Any]],  # type: ignore[override]
                 network: Callable[[torch.Tensor], torch.Tensor], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        finished = []
        for data in inputs:
            data["generated"], data["remaining"] = {}, len(data["conditions"])
            self.slices_done += data["skipped"]
            if not data["conditions"]:
                finished.append(data)
            self.pending += [(data, z, cond) for z, cond in data["conditions"]]
        while len(self.pending) >= self.batch_size:
            finished += self._run_batch(network)
        return finished

    def flush(self, network: Callable[[torch.Tensor], torch.Tensor]) -> list[dict[str, Any]]:
        """Run what is still queued; returns the items that finish."""
        finished = []
        while self.pending:
            finished += self._run_batch(network)
        return finished

    def _run_batch(self, network: Callable[[torch.Tensor], torch.Tensor]) -> list[dict[str, Any]]:
        batch, self.pending = self.pending[: self.batch_size], self.pending[self.batch_size :]
        generated = network(torch.stack([cond for _, _, cond in batch]))
        finished = []
        for (data, z, _), out in zip(batch, generated):
            data["generated"][z] = out
            data["remaining"] -= 1
            if data["remaining"] == 0:
                finished.append(data)
        self.slices_done += len(batch)
        return finished


# --------------------------------------------------------------------------- postprocessing


class Compositd(Transform):
    """Generated slices back to the input: crop and resize (bilinear), inverse intensity, composite.

    ``out = region * synthetic + (1 - region) * real``: outside the region the input, bit for bit.

    Args:
        settings: the run's :class:`~.synthesis.SynthesisSettings`.
    """

    def __init__(self, settings: SynthesisSettings) -> None:
        self.settings = settings

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        s, loaded, composite = self.settings, data["loaded"], data["composite"]
        for z, out in data["generated"].items():
            real = loaded.image[:, :, z]
            synthetic = intensity.from_model(s.grid.from_grid(out, real.shape), loaded.scale, s.window_level, s.window_width)
            composite[:, :, z] = np.where(data["regions"][z], synthetic, real)
        return data


class WriteSynthesisd(Transform):
    """Write the composite and the label map used like the input into ``data["output_root"]``.

    Sets ``data["name"]`` (``<input>_v<k>``), ``data["image_path"]`` and ``data["label_path"]`` (relative).
    """

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        loaded, root = data["loaded"], Path(data["output_root"])
        name = f"{loaded.item.name}_v{data['variant']}"
        suffix = output_suffix(loaded.geometry)
        image_rel, label_rel = f"images/{name}{suffix}", f"labels/{name}{suffix}"
        write_like(data["composite"], loaded.geometry, root / image_rel)
        write_like(data["label"], loaded.geometry, root / label_rel, is_label=True)
        return {**data, "name": name, "image_path": image_rel, "label_path": label_rel}


class WritePreviewd(Transform):
    """Write ``previews/<name>.png``: real | label map | synthetic, on the slice with the most lesion.

    Args:
        settings: the run's :class:`~.synthesis.SynthesisSettings` (the display window).
        min_size: small slices are enlarged (nearest neighbour) to at least this many pixels.
    """

    def __init__(self, settings: SynthesisSettings, min_size: int = 192) -> None:
        self.settings, self.min_size = settings, int(min_size)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        s, loaded, label = self.settings, data["loaded"], data["label"]
        z = preview_slice(label, loaded.lung_slices())
        picture = preview_picture(loaded.image[:, :, z], label[:, :, z], data["composite"][:, :, z], loaded.scale,
                                  s.window_level, s.window_width, min_size=self.min_size)
        preview_rel = f"previews/{data['name']}.png"
        write_png(picture, Path(data["output_root"]) / preview_rel)
        return {**data, "preview_path": preview_rel}


# --------------------------------------------------------------------------- evaluator


class SynthesisEvaluator(Evaluator):
    """The synthesis run as a MONAI evaluator: one iteration per (input, variant).

    :meth:`run` checks the settings and the output folder, loads the generator's checkpoint,
    reads and checks every input (:meth:`SynthesisDataset.prepare`), chooses how the generator
    runs (its :class:`~.runtime.GeneratorRuntime`), then runs the iterations inside a staging folder that
    replaces ``output_dir`` when complete. ``rows`` holds the manifest rows afterwards.

    Args:
        device: where the generator runs.
        dataset: the run's :class:`SynthesisDataset`.
        network: the generator, built with the training run's settings.
        checkpoint: its checkpoint file or stage folder (:func:`~.synthesis.load_generator`).
        settings: the run's :class:`~.synthesis.SynthesisSettings`.
        output_dir: where the results go.
        preprocessing: the per-item chain (must hold a :class:`LesionMapd` and a :class:`ToModelGridd`).
        inferer: the :class:`SliceQueueInferer`.
        postprocessing: the chain applied to each finished item (composite, writers).
        val_handlers: Ignite handlers (progress, stats, ...).
        overwrite: replace an existing synthesis output folder.
        runtime: how the generator runs (:class:`~.runtime.GeneratorRuntime`: precision, autocast, compilation,
            CPU slicing; ``inference#runtime``); default: float, eager, no autocast.
    """

    def __init__(
        self, device: str | torch.device, dataset: SynthesisDataset, network: torch.nn.Module, checkpoint: str | Path,
        settings: SynthesisSettings, output_dir: str | Path, preprocessing: Callable | None = None,
        inferer: SliceQueueInferer | None = None, postprocessing: Callable | None = None,
        val_handlers: Sequence | None = None, overwrite: bool = False, runtime: GeneratorRuntime | None = None,
    ) -> None:
        # the inputs are found and read by run(), which then sets the data and the epoch length
        super().__init__(device=torch.device(device), val_data_loader=[], epoch_length=1, val_handlers=val_handlers,
                         decollate=False)
        self.dataset, self.network, self.checkpoint, self.settings = dataset, network, checkpoint, settings
        self.output_dir, self.overwrite = Path(output_dir).expanduser(), bool(overwrite)
        self.preprocessing = preprocessing or Compose([])
        self.inferer = inferer or SliceQueueInferer()
        self.postprocessing = postprocessing or Compose([])
        self.runtime = runtime or GeneratorRuntime()
        self.runner: GeneratorRunner | None = None
        self.checkpoint_path: Path | None = None
        self.stage: Path | None = None
        self.rows: list[dict[str, Any]] = []
        self.items: list[dict[str, Any]] = []
        self.add_event_handler(Events.EPOCH_COMPLETED, self._flush)

    def _lesion_map(self) -> LesionMapd:
        transforms = list(getattr(self.preprocessing, "transforms", ()))
        for needed in (LoadSynthesisInputd, LesionMapd, ToModelGridd):
            if not any(isinstance(t, needed) for t in transforms):
                raise InputError(f"inference#preprocessing needs a {needed.__name__} (a Compose holding it)")
        return next(t for t in transforms if isinstance(t, LesionMapd))

    def _iteration(self, engine: SynthesisEvaluator, batchdata: dict[str, Any]) -> dict[str, Any]:
        data = self.preprocessing({**batchdata, "output_root": self.stage})
        assert self.runner is not None, "the runner is made when the run starts"
        self._finish(self.inferer([data], self.runner))
        return {"item": data["input"].name, "variant": data["variant"], "slices": len(data["conditions"])}

    def _flush(self, engine: SynthesisEvaluator) -> None:
        assert self.runner is not None, "the runner is made when the run starts"
        self._finish(self.inferer.flush(self.runner))

    def _finish(self, finished: list[dict[str, Any]]) -> None:
        for data in finished:
            data = self.postprocessing(data)
            loaded = data["loaded"]
            self.rows.append({
                "input": str(loaded.item.image), "input_label": str(loaded.item.label), "variant": data["variant"],
                "seed": data["seed"], "output": data["image_path"], "label_map": data["label_path"],
                "preview": data.get("preview_path", ""), "augmentation": data["description"],
                "slices_synthesised": len(data["regions"]),
            })
            self.items.append({"image": data["image_path"], "label": data["label_path"], "source": str(loaded.item.image),
                               "variant": data["variant"], "seed": data["seed"], "scale": loaded.scale})

    def run(self, global_epoch: int = 1) -> None:  # type: ignore[override]
        """Check, load, prepare, synthesise into the staging folder, write the manifest; see the class docstring.

        Raises:
            InputError: bad input or settings; nothing is written then.
        """
        s, lesion_map = self.settings, self._lesion_map()
        num_variants = self.dataset.num_variants
        self.runtime.check(num_variants, self.inferer.batch_size, s, self.network)
        intensity.window_bounds(s.window_level, s.window_width)
        if num_variants > 1 and not lesion_map.augment:
            logger.warning("num_variants > 1 without augment: the variants are identical")
        inputs = self.dataset.find()
        check_output_dir(self.output_dir, self.dataset.folders, inputs, self.overwrite)
        check_writable(self.output_dir)  # before the inputs are read and the runner calibrated or compiled
        self.checkpoint_path = load_generator(self.network, self.checkpoint)
        self.dataset.prepare(lesion_map.needs_donors(num_variants))
        self.runner = self.runtime.runner(self.network, torch.device(self.state.device), self.inferer.batch_size,
                                          self.dataset.slices * num_variants, s)
        self.data_loader, self.state.epoch_length = self.dataset, len(self.dataset)
        self.rows, self.items = [], []
        with staged_directory(self.output_dir, overwrite=self.overwrite) as stage:
            self.stage = stage
            for sub in ("images", "labels", "previews"):
                (stage / sub).mkdir()
            super().run(global_epoch)
            if self.should_terminate or len(self.rows) != len(self.dataset):
                raise RuntimeError(f"synthesis stopped after {len(self.rows)} of {len(self.dataset)} outputs")
            write_text(manifest_text(self.rows), stage / MANIFEST)
            write_json({"synthetic": self.items}, stage / "datalist.json")
            write_json({
                "checkpoint": str(self.checkpoint_path), "num_variants": num_variants,
                "seed": lesion_map.seed, "augment": lesion_map.augment, "keep_original": lesion_map.keep_original,
                "image_size": s.grid.image_size, "resized_to_grid": s.grid.upscale, "window": s.grid.window,
                "condition": s.condition,
                "context_region": s.context_region,
                "context_dilation": s.context_dilation, "keep_effusion": self.dataset.keep_effusion,
                "window_level": s.window_level, "window_width": s.window_width, **self.runtime.record(self.runner),
                "inputs": len(inputs), "outputs": len(self.rows),
            }, stage / "settings.json")
        print(f"synthesis: {len(self.rows)} outputs from {len(inputs)} inputs in {self.output_dir} "
              f"(checkpoint {self.checkpoint_path})", flush=True)


def run_evaluator(evaluator: SynthesisEvaluator) -> list[dict[str, Any]]:
    """Run a :class:`SynthesisEvaluator` (bundle run id ``run``, through :func:`covid_ct_cgan.errors.entry_point`).

    Args:
        evaluator: the configured evaluator.

    Returns:
        The manifest rows.

    Raises:
        InputError: bad input or settings; nothing is written then.
    """
    evaluator.run()
    return evaluator.rows


# --------------------------------------------------------------------------- the Python API


def build_evaluator(
    network: torch.nn.Module, checkpoint: str | Path, output_dir: str | Path, input: str | Path | None = None,
    image: str | Path | None = None, label: str | Path | None = None, datalist_key: str = "test_synthesis",
    num_variants: int = 1, seed: int = 0, augment: bool | None = None, keep_original: bool = True,
    augmenter: LesionAugmenter | None = None, overwrite: bool = False, image_size: int | None = None,
    crop_size: int | None = None, condition: str | None = None, context_region: str | None = None,
    context_dilation: int | None = None, keep_effusion: bool | None = None, window_level: float | None = None,
    window_width: float | None = None, batch_size: int = 8, amp: bool = False, compile: bool | str = False,
    device: str | torch.device | None = None,
    cpu_pixels_per_call: int | str | None = CPU_PIXELS_PER_CALL, precision: str = "float",
    calibration_input: str | Path | None = None, calibration_key: str = "training", handlers: Sequence | None = None,
) -> SynthesisEvaluator:
    """The evaluator ``inference.yaml`` wires, built in Python; the arguments are :func:`run_synthesis`'s
    (``handlers``: the evaluator's handlers, default a progress handler).

    The data settings left ``None`` (``image_size`` ... ``window_width``) are those recorded with ``checkpoint``
    (:func:`~covid_ct_cgan.checkpoint_settings.resolve_network_settings`: a checkpoint saved without a record
    takes train.yaml's defaults then).
    """
    data: dict[str, Any] = {"image_size": image_size, "crop_size": crop_size, "condition": condition, "context_region": context_region,
            "context_dilation": context_dilation, "keep_effusion": keep_effusion, "window_level": window_level,
            "window_width": window_width}
    if any(value is None for value in data.values()):
        recorded = resolve_network_settings(checkpoint)
        data = {key: recorded[key] if value is None else value for key, value in data.items()}
    keep_effusion = bool(data["keep_effusion"])
    # a model trained on crops sees slices at their own size, through windows of its crop size
    grid = ModelGrid(int(data["image_size"]), upscale=not int(data["crop_size"]), window=int(data["crop_size"]))
    settings = SynthesisSettings(grid, count_classes(keep_effusion), str(data["condition"]), str(data["context_region"]),
                                 int(data["context_dilation"]), float(data["window_level"]), float(data["window_width"]))
    augment = int(num_variants) > 1 if augment is None else bool(augment)
    device = torch.device(device) if device is not None else next(network.parameters()).device
    return SynthesisEvaluator(
        device=device,
        dataset=SynthesisDataset(input, image, label, datalist_key, int(num_variants), keep_effusion, grid.image_size),
        network=network, checkpoint=checkpoint, settings=settings, output_dir=output_dir,
        preprocessing=Compose([LoadSynthesisInputd(keep_effusion), LesionMapd(augmenter, seed, augment, keep_original),
                               ToModelGridd(settings)]),
        inferer=SliceQueueInferer(batch_size),
        postprocessing=Compose([Compositd(settings), WriteSynthesisd(), WritePreviewd(settings)]),
        val_handlers=[progress_handler(desc="synthesis")] if handlers is None else handlers,
        overwrite=overwrite,
        runtime=GeneratorRuntime(amp=amp, compile=compile, cpu_pixels_per_call=cpu_pixels_per_call, precision=precision,
                                 calibration_input=calibration_input, calibration_key=calibration_key,
                                 keep_effusion=keep_effusion),
    )


def run_synthesis(network: torch.nn.Module, checkpoint: str | Path, output_dir: str | Path,
                  **kwargs: Any) -> list[dict[str, Any]]:
    """Synthesise composited CT slices from label maps (see :mod:`.synthesis`), from Python.

    Builds the evaluator ``inference.yaml`` wires (:func:`build_evaluator`) and runs it.

    Args:
        network: the generator, built with the training run's network settings.
        checkpoint: checkpoint file or stage folder, see :func:`~.synthesis.load_generator`.
        output_dir: where the results go (a new folder; see ``overwrite``).
        kwargs: the other settings of :func:`build_evaluator`: ``input`` (a ``datalist.json`` or a
            folder) or ``image`` + ``label``, ``datalist_key``, ``num_variants``, ``seed``, ``augment``
            (default: when ``num_variants > 1``), ``keep_original``, ``augmenter``, ``overwrite``, the
            training run's ``image_size``, ``crop_size``, ``condition``, ``context_region``, ``context_dilation``,
            ``keep_effusion``, ``window_level``, ``window_width`` (not given: the checkpoint's record), and
            ``batch_size``, ``amp``,
            ``compile`` (true, false, ``"auto"``), ``device``, ``cpu_pixels_per_call``,
            ``precision`` (``"float"``, ``"int8"``, ``"int8_onnxruntime"``), ``calibration_input``, ``calibration_key``.

    Returns:
        The manifest rows.

    Raises:
        InputError: bad input or settings; nothing is written then.
    """
    evaluator = build_evaluator(network, checkpoint, output_dir, **kwargs)
    evaluator.run()
    return evaluator.rows
