"""A trained generator to evaluate, rebuilt from the training config that made it.

Evaluation never restates network settings: a model is named by the config
files it was trained with (``train.yaml`` plus an overlay such as
``pix2pixhd.yaml`` or ``ablation/one_d.yaml``) and the same overrides
(``work_dir``, ``image_size``, ``epochs`` ...). The generator, its input
settings (image size, conditioning, window) and its checkpoint folder (the
training ``output_dir``'s last stage) are read from that config, and the record
saved with the checkpoint (:mod:`covid_ct_cgan.checkpoint_settings`) takes
precedence over the config: the generator is rebuilt from its recorded class and
constructor arguments, and the data settings are the recorded ones, so an evaluated
network is always the trained one; an override that contradicts the record is
refused, naming both values. Synthesis goes through the one
synthesis code path, :func:`covid_ct_cgan.inference.run_synthesis`, in the model's ``precision``: ``float`` (fp32, or
bf16/fp16 autocast with ``amp``), ``int8`` (PT2E int8 compiled by inductor) or ``int8_onnxruntime`` (ONNX Runtime
static int8), both on the CPU and calibrated on training label maps.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint_settings import GENERATOR, LEGACY_ARGUMENTS, NETWORKS, is_legacy, legacy_view, saved_network_settings
from ..errors import InputError
from ..inference import run_synthesis
from ..inference.synthesis import INT8_PRECISIONS, PRECISIONS
from ..networks import build_recorded
from ..networks.recording import TARGET
from .provenance import stage_epochs

DATA_SETTINGS = "data_settings"  # train.yaml's settings of the data its networks are trained on (recorded with them)
CLASS_KEYS = tuple(key for key, (_, argument) in LEGACY_ARGUMENTS.items() if argument == TARGET)  # generator, discriminator


def check_precision(name: str, precision: Any) -> str:
    """The ``precision`` of model ``name``, checked.

    Args:
        name: the model's name (named in the error).
        precision: ``"float"``, ``"int8"`` or ``"int8_onnxruntime"``.

    Returns:
        ``precision`` as a string.

    Raises:
        InputError: any other value.
    """
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise InputError(f"model {name!r}: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


@dataclass
class TrainedModel:
    """A generator with the settings it was trained with.

    Attributes:
        name: the model's name in tables (``ours``, ``pix2pixhd``, an ablation ...).
        network: the generator, built by the training config (final stage's mode).
        checkpoint: checkpoint file or stage folder to load.
        settings: the training run's ``data_settings`` (``image_size``: its last stage's, ``crop_size``,
            ``condition``, ``context_region``, ``context_dilation``, ``keep_effusion``, ``window_level``,
            ``window_width``), as recorded with the checkpoint.
        epochs: epochs trained per stage, e.g. ``"global 4, local 4, joint 4"``.
        seed: the training seed.
        configs: the training config files.
        precision: ``float`` (fp32, or autocast with the evaluation's ``amp``), ``int8`` (PT2E int8 compiled
            by inductor) or ``int8_onnxruntime`` (ONNX Runtime static int8); int8 runs on the CPU, calibrated
            on the evaluation's training label maps.
    """

    name: str
    network: torch.nn.Module
    checkpoint: Path
    settings: dict[str, Any]
    epochs: str = "?"
    seed: int = 0
    configs: list[str] = field(default_factory=list)
    precision: str = "float"
    overrides: dict[str, Any] = field(default_factory=dict)

    def training_command(self) -> str:
        """The command that trains this model: its config files and the training overrides (``work_dir`` ...)."""
        from ..errors import _quote

        args = ["python", "-m", "monai.bundle", "run", "training", "--config_file", str(list(self.configs))]
        for key, value in self.overrides.items():
            if value is not None:
                args += [f"--{key}", str(value)]
        return " ".join(_quote(a) for a in args)

    def check_trained(self) -> None:
        """Refuse a model whose checkpoint is missing, with the command that trains it.

        Raises:
            InputError: naming the checkpoint folder or file.
        """
        if not Path(self.checkpoint).exists():
            raise InputError(
                f"no checkpoint for model {self.name!r}; train it first ({self.training_command()}) "
                "or drop it from model_names",
                self.checkpoint,
            )

    def precision_label(self, amp: bool) -> str:
        """What the generator computes in when synthesised with ``amp``: ``int8``, ``int8_onnxruntime``,
        ``bf16`` (CPU autocast), ``fp16`` (CUDA autocast) or ``fp32``."""
        if self.precision in INT8_PRECISIONS:
            return self.precision
        if not amp:
            return "fp32"
        return "fp16" if next(self.network.parameters()).device.type == "cuda" else "bf16"


def load_training_config(config_files: Sequence[str | Path], overrides: Mapping[str, Any] | None = None) -> dict:
    """Read training config files as ``monai.bundle run`` does (later files override earlier ones).

    Unlike a plain override, the ``imports`` of all files are kept (an overlay that adds an
    import does not drop the base config's), then ``overrides`` are applied by id.

    Raises:
        InputError: a config file is missing.
    """
    from monai.bundle import ConfigParser

    imports: list[str] = []
    parser = ConfigParser({})
    for path in config_files:
        if not Path(path).is_file():
            raise InputError("training config file not found", path)
        content = ConfigParser.load_config_file(path)
        for item in content.pop("imports", []) or []:
            if item not in imports:
                imports.append(item)
        for key, value in content.items():
            parser[key] = value
    parser["imports"] = imports
    for key, value in (overrides or {}).items():
        parser[key] = copy.deepcopy(value)
    return parser.get()


def _with_checkpoint_settings(raw: dict, checkpoint: Path, overrides: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """Set the settings recorded with ``checkpoint`` in the training config ``raw`` (in place), in its keys.

    A record of the networks' arguments is read in ``train.yaml``'s keys (:func:`legacy_view`: ``ngf`` is the
    generator's ``ngf`` ...), as a flat (older) record is.

    Returns:
        The record (``None`` without one): the caller parses ``raw`` again.

    Raises:
        InputError: the checkpoint's generator is another class than the config's, or an override
            contradicts a recorded setting (both values named).
    """
    saved = saved_network_settings(checkpoint)
    if saved is None:
        return None
    path, record = saved
    recorded = legacy_view(record)
    target = raw.get("network_def", {}).get("_target_") if isinstance(raw.get("network_def"), Mapping) else None
    if "generator" in recorded and target is not None and str(recorded["generator"]) != str(target):
        raise InputError(
            f"the checkpoint {path} was trained with generator {recorded['generator']}, but the configs of model "
            f"{name!r} build {target}; give the model the configs it was trained with"
        )
    plain = lambda v: json.loads(json.dumps(v, default=str))  # noqa: E731 - tuples vs lists
    for key, value in recorded.items():
        if key in CLASS_KEYS or key not in raw:
            continue
        if key in overrides and plain(overrides[key]) != plain(value):
            raise InputError(
                f"the checkpoint {path} was trained with {value!r}, the training overrides of model {name!r} give "
                f"{overrides[key]!r}; leave {key} out to use the checkpoint's",
                key,
            )
        raw[key] = value
    return record


def trained_model(
    name: str,
    config_files: Sequence[str | Path],
    overrides: Mapping[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    precision: str = "float",
) -> TrainedModel:
    """Build the generator of a training run from its config.

    Args:
        name: the model's name in tables.
        config_files: the config files of the training run (base first, overlays after).
        overrides: the training run's command-line overrides (``work_dir``, ``image_size`` ...).
        checkpoint: file or stage folder; default the training ``output_dir``'s last stage. The network
            record saved with it replaces the config's settings, and its generator is rebuilt from the record
            (see :func:`_with_checkpoint_settings`).
        device: where the generator runs (int8: always the CPU).
        precision: ``float``, ``int8`` or ``int8_onnxruntime`` (see :class:`TrainedModel`).

    Returns:
        The :class:`TrainedModel` (weights not loaded yet: synthesis loads them strictly).

    Raises:
        InputError: a config file is missing, the config cannot build its generator, an override
            contradicts the checkpoint's settings, or ``precision`` is not one of :data:`PRECISIONS`.
    """
    from monai.bundle import ConfigParser

    precision = check_precision(name, precision)
    if precision in INT8_PRECISIONS:
        device = "cpu"  # the int8 copy runs on the CPU; it is quantized from the CPU net
    raw = load_training_config(config_files, overrides)

    def parsed() -> Any:
        parser = ConfigParser(copy.deepcopy(raw))
        parser["stage"] = stages[-1]
        parser["device"] = f"$torch.device('{torch.device(device)}')"
        parser.parse(reset=True)
        return parser

    try:
        stages = list(ConfigParser(copy.deepcopy(raw)).get_parsed_content("stages"))
        parser = parsed()
        output_dir = Path(parser.get_parsed_content("output_dir"))
        seed = int(parser.get_parsed_content("seed"))
    except Exception as err:  # noqa: BLE001 - any config failure becomes one clear line
        raise InputError(f"cannot read the training config of model {name!r} {list(map(str, config_files))}: {err}") from None
    folder = Path(checkpoint) if checkpoint else output_dir / stages[-1]
    record = _with_checkpoint_settings(raw, folder, overrides or {}, name)  # the settings the checkpoint was trained with
    if record is not None:
        parser = parsed()
    try:
        if record is not None and not is_legacy(record):  # the generator as training built it
            network = build_recorded(record[NETWORKS][GENERATOR])
        else:  # an older checkpoint: the config's generator, with the flat record's settings
            network = parser.get_parsed_content("network_def")
        settings = dict(parser.get_parsed_content(DATA_SETTINGS))
        settings["image_size"] = int(parser.get_parsed_content("stage_image_size"))
    except Exception as err:  # noqa: BLE001 - any config failure becomes one clear line
        raise InputError(f"cannot build the generator of model {name!r} from {list(map(str, config_files))}: {err}") from None
    runs_dir = folder.parent if folder.is_dir() and folder.name == stages[-1] else output_dir  # where the stages are
    return TrainedModel(
        name=name, network=network.to(device), checkpoint=folder, settings=settings,
        epochs=stage_epochs(runs_dir, stages), seed=seed, configs=[str(c) for c in config_files], precision=precision,
        overrides=dict(overrides or {}),
    )


def synthesise(
    model: TrainedModel,
    input: str | Path,
    output_dir: str | Path,
    datalist_key: str = "test_synthesis",
    num_variants: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    amp: bool = False,
    overwrite: bool = False,
    calibration_input: str | Path | None = None,
    calibration_key: str = "training",
) -> list[dict[str, Any]]:
    """Generate composited slices with ``model`` for a datalist, through :func:`run_synthesis`.

    Variant 0 uses each input's own label map; variants 1.. use augmented lesion maps.

    Args:
        model: the generator and its settings; synthesised in ``model.precision``.
        input: the ``datalist.json`` (or folder) to synthesise.
        output_dir: the synthesis folder.
        datalist_key: the list of ``input``.
        num_variants: outputs per input.
        seed: synthesis seed.
        batch_size: slices per generator call.
        amp: autocast for a ``float`` model (ignored for int8).
        overwrite: replace an existing ``output_dir``.
        calibration_input: ``int8``: the ``datalist.json`` whose ``calibration_key`` list (training label
            maps, never test slices) calibrates the int8 copy.
        calibration_key: ``int8``: that list.

    Returns:
        The synthesis manifest rows (``output_dir/manifest.csv``, ``output_dir/datalist.json``).

    Raises:
        InputError: a missing or mismatched checkpoint, bad inputs, or an ``int8`` model without
            ``calibration_input``.
    """
    model.check_trained()
    if model.precision in INT8_PRECISIONS and not calibration_input:
        raise InputError(f"model {model.name!r} runs in {model.precision} and needs calibration_input: a datalist.json with "
                         f"training label maps")
    device = next(model.network.parameters()).device
    return run_synthesis(
        network=model.network, checkpoint=model.checkpoint, output_dir=output_dir, input=input,
        datalist_key=datalist_key, num_variants=num_variants, seed=seed, augment=num_variants > 1,
        keep_original=True, overwrite=overwrite, batch_size=batch_size, amp=amp and model.precision == "float",
        device=device, precision=model.precision, calibration_input=calibration_input, calibration_key=calibration_key,
        **model.settings,
    )
