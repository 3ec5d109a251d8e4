"""What the app reads from ``monailabel start_server --conf key value``: paths and bundle overrides.

Paths (all optional):

- ``checkpoint_dir``: the GAN training's ``output_dir``; synthesis reads ``<checkpoint_dir>/joint``
  and the train task writes (and resumes) its stages there. Default ``<repo>/work/output``, the
  bundle's own default, so a bundle trained from the command line is served as it is.
- ``segmentation_checkpoint``: the lesion-segmentation UNet's weights (a ``.pt`` file); default
  the ``real_only`` run of the segmentation experiments, ``<repo>/work/segmentation/results/runs/real_only/seed_0/unet.pt``.
- ``work_dir``: the app's scratch space (the 2D slices a training run is built from).
  Default ``<repo>/work/monailabel``.

Every other ``--conf`` key that is a top-level key of the bundle's ``inference.yaml`` or
``train.yaml`` (``image_size``, ``ngf``, ``condition``, ``epochs``, ``batch_size`` ...) overrides it
there, so the server runs the network the checkpoint was trained with. Values are read as YAML
(``--conf image_size 64`` is the integer 64). ``segmentation.yaml`` keys take the prefix
``segmentation_`` (``--conf segmentation_image_size 64``): the UNet and the generator have their
own ``image_size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[4]  # bundle/monailabel/app/lib/settings.py -> repository root
BUNDLE_DIR = REPO_ROOT / "bundle"
INFERENCE_CONFIG = BUNDLE_DIR / "configs" / "inference.yaml"
TRAIN_CONFIG = BUNDLE_DIR / "configs" / "train.yaml"
SEGMENTATION_CONFIG = BUNDLE_DIR / "configs" / "segmentation.yaml"

# keys the app sets per request or per run: not taken from --conf
MANAGED_KEYS = frozenset({"image", "label", "input", "output_dir", "overwrite", "checkpoint", "datalist", "stage"})
PATH_KEYS = ("checkpoint_dir", "segmentation_checkpoint", "work_dir")


def _top_level_keys(config_file: Path) -> set[str]:
    with open(config_file, encoding="utf-8") as f:
        return set(yaml.safe_load(f) or {})


def _parse(value: Any) -> Any:
    return yaml.safe_load(value) if isinstance(value, str) else value


@dataclass
class AppSettings:
    """Paths and bundle overrides of one server.

    Attributes:
        checkpoint_dir: GAN training output folder (stage folders ``global``, ``local``, ``joint``).
        segmentation_checkpoint: UNet weights file.
        work_dir: the app's scratch folder.
        inference_overrides: ``inference.yaml`` keys set by ``--conf``.
        train_overrides: ``train.yaml`` keys set by ``--conf``.
        segmentation_overrides: ``segmentation.yaml`` keys set by ``--conf segmentation_<key>``.
    """

    checkpoint_dir: Path
    segmentation_checkpoint: Path
    work_dir: Path
    inference_overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)
    segmentation_overrides: dict[str, Any] = field(default_factory=dict)


def app_settings(conf: dict[str, str] | None) -> AppSettings:
    """Read the server's ``--conf`` pairs.

    Args:
        conf: the pairs given to ``monailabel start_server --conf key value``.

    Returns:
        The :class:`AppSettings`; relative paths are taken from the repository root.
    """
    conf = dict(conf or {})

    def path(key: str, default: Path) -> Path:
        value = Path(conf[key]).expanduser() if conf.get(key) else default
        return value if value.is_absolute() else REPO_ROOT / value

    work_dir = path("work_dir", REPO_ROOT / "work" / "monailabel")
    checkpoint_dir = path("checkpoint_dir", REPO_ROOT / "work" / "output")
    segmentation = path("segmentation_checkpoint",
                        REPO_ROOT / "work" / "segmentation" / "results" / "runs" / "real_only" / "seed_0" / "unet.pt")
    inference_keys, train_keys = _top_level_keys(INFERENCE_CONFIG), _top_level_keys(TRAIN_CONFIG)
    segmentation_keys = _top_level_keys(SEGMENTATION_CONFIG)
    bundle_conf = {k: _parse(v) for k, v in conf.items() if k not in MANAGED_KEYS and k not in PATH_KEYS}
    prefix = "segmentation_"
    segmentation_conf = {k[len(prefix):]: v for k, v in bundle_conf.items() if k.startswith(prefix)}
    return AppSettings(
        checkpoint_dir=checkpoint_dir,
        segmentation_checkpoint=segmentation,
        work_dir=work_dir,
        inference_overrides={k: v for k, v in bundle_conf.items() if k in inference_keys},
        train_overrides={k: v for k, v in bundle_conf.items() if k in train_keys},
        segmentation_overrides={k: v for k, v in segmentation_conf.items() if k in segmentation_keys},
    )
