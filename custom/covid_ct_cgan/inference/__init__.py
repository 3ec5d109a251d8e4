"""Synthesis from label maps (bundle/docs/usage.md, "Synthesis"): lesion-map augmentation, the generator run, compositing.

- :mod:`.inputs`: find and read (real image, label map) pairs, keep their geometry;
- :mod:`.lesion_augment`: new lesion layouts inside the same lung;
- :mod:`.grid`: the model's square grid (:class:`ModelGrid`), slices in and out;
- :mod:`.synthesis`: the generator runner, checkpoint loading, the run's checks;
- :mod:`.runtime`: how the generator runs (:class:`GeneratorRuntime`: precision, autocast, compilation);
- :mod:`.workflow`: the bundle's ``run`` as a MONAI evaluator (:func:`run_evaluator`) and :func:`run_synthesis`;
- :mod:`.outputs`: results written exactly like their inputs, previews;
- :mod:`.export`: ONNX export, ONNX Runtime and int8 synthesis (``precision: int8``);
- :mod:`.tuning`: ``compile: auto`` and ``cpu_pixels_per_call: auto`` by probes cached per machine.
"""

from .grid import ModelGrid
from .inputs import Geometry, LoadedInput, SynthesisInput, collect_inputs, load_input
from .lesion_augment import LesionAugmenter, LesionPattern, lesion_pattern
from .outputs import preview_picture, write_like
from .runtime import GeneratorRuntime
from .synthesis import GeneratorRunner, SynthesisSettings, load_generator, variant_seed
from .workflow import (
    Compositd, LesionMapd, LoadSynthesisInputd, SliceQueueInferer, SynthesisDataset, SynthesisEvaluator, ToModelGridd,
    WritePreviewd, WriteSynthesisd, build_evaluator, run_evaluator, run_synthesis,
)

__all__ = [
    "Compositd",
    "LesionMapd",
    "LoadSynthesisInputd",
    "SliceQueueInferer",
    "SynthesisDataset",
    "SynthesisEvaluator",
    "SynthesisSettings",
    "ToModelGridd",
    "WritePreviewd",
    "WriteSynthesisd",
    "build_evaluator",
    "run_evaluator",
    "Geometry",
    "GeneratorRuntime",
    "GeneratorRunner",
    "LesionAugmenter",
    "LesionPattern",
    "LoadedInput",
    "ModelGrid",
    "SynthesisInput",
    "collect_inputs",
    "lesion_pattern",
    "load_generator",
    "load_input",
    "preview_picture",
    "run_synthesis",
    "variant_seed",
    "write_like",
]
