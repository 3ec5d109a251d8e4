"""Train task ``synthesis``: the bundle's three GAN stages on the datastore's labelled images.

MONAI Label drives a bundle through ``train.yaml``'s run id ``run`` with ``train#dataset#data``,
``validate#dataset#data``, ``device`` and ``train#trainer#max_epochs`` overridden
(:class:`monailabel.tasks.train.bundle.BundleTrainTask`). ``run`` trains the stage named by
``stage``, so this task runs it three times, ``stage`` = ``global``, ``local``, ``joint``; each
stage resumes from its newest checkpoint in ``checkpoint_dir`` (a finished stage is skipped:
raise ``max_epochs`` to train on), and the joint stage starts from the other two, exactly as
``training`` does from the command line. ``max_epochs`` is the bundle's ``epochs`` (its learning
rate schedule depends on it).

The datastore holds whole images (2D slices or volumes) with ``final`` label maps (0 outside
lung, 1 lung, 2 GGO, 3 consolidation); synthetic images (image info ``synthetic: true``) are left
out. Images are split into training and validation (``val_split``, at least one validation
image), then cut into the 2D slices with infection that the bundle trains on, written as NIfTI
under ``<work_dir>/train_data`` (rebuilt for every run).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import monai.bundle
import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.tasks.train.bundle import BundleTrainTask

from covid_ct_cgan.data.readers import load_image
from covid_ct_cgan.errors import InputError
from covid_ct_cgan.fileio import staged_directory, write_nifti
from covid_ct_cgan.intensity import to_storage
from covid_ct_cgan.labels import GGO, check_label_map

from ..settings import BUNDLE_DIR, AppSettings

logger = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("global", "local", "joint")


def slice_affine(affine: np.ndarray, z: int) -> np.ndarray:
    """4x4 affine of slice ``z`` of a volume: its in-plane axes, origin moved to the slice."""
    aff = np.array(affine, dtype=np.float64)
    aff[:3, 3] = aff[:3, 3] + aff[:3, 2] * z
    return aff


def training_slices(pairs: list[dict[str, str]], folder: Path, subfolder: str) -> list[dict[str, Any]]:
    """Cut image / label-map pairs into the 2D slices with infection, as the bundle's preparation does.

    Args:
        pairs: ``{"image", "label", "id"}`` items (files of the datastore).
        folder: where the slices go (``<subfolder>/images/``, ``<subfolder>/labels/``).
        subfolder: ``training`` or ``validation``.

    Returns:
        Datalist items ``{"image", "label", "scale", "patient", "slice"}``, paths relative to ``folder``.

    Raises:
        InputError: unreadable files, shapes that differ, unknown label values.
    """
    items = []
    for pair in pairs:
        image, affine, scale = load_image(pair["image"])
        label, _, _ = load_image(pair["label"], is_mask=True)
        if label.shape != image.shape:
            raise InputError(f"label map shape {label.shape} differs from image shape {image.shape}", pair["label"])
        try:
            check_label_map(label)
        except ValueError as err:
            raise InputError(str(err), pair["label"]) from None
        for z in range(image.shape[2]):
            if not np.any(label[:, :, z] >= GGO):
                continue
            name = f"{pair['id']}_{z:04d}.nii.gz"
            image_rel, label_rel = f"{subfolder}/images/{name}", f"{subfolder}/labels/{name}"
            write_nifti(to_storage(image[:, :, z], scale), slice_affine(affine, z), folder / image_rel)
            write_nifti(label[:, :, z].astype(np.uint8), slice_affine(affine, z), folder / label_rel)
            items.append({"image": image_rel, "label": label_rel, "scale": scale, "patient": pair["id"], "slice": z})
    return items


class SynthesisTraining(BundleTrainTask):
    """The bundle's GAN training, driven by MONAI Label.

    Args:
        settings: the server's settings (``checkpoint_dir``, ``work_dir``, ``train.yaml`` overrides).
    """

    def __init__(self, settings: AppSettings) -> None:
        super().__init__(str(BUNDLE_DIR), {})
        self.settings = settings
        self.description = (
            "Conditional GAN (global, local, joint stages of train.yaml) on the datastore's images with final "
            "label maps; checkpoints in " + str(settings.checkpoint_dir)
        )

    def config(self) -> dict[str, Any]:
        """Options shown to clients: the bundle's epochs, a validation split, the device."""
        options = super().config()
        options.update({
            "max_epochs": int(self.settings.train_overrides.get("epochs", self.bundle_config.get("epochs", 4))),
            "val_split": 0.2,
            "multi_gpu": False,
        })
        for key in ("pretrained", "gpus", "tracking", "tracking_uri", "tracking_experiment_name", "run_id", "model_filename"):
            options.pop(key, None)
        return options

    def _fetch_datalist(self, request: dict[str, Any], datastore: Datastore) -> list[dict[str, str]]:
        pairs = []
        for image_id in sorted(datastore.get_labeled_images(DefaultLabelTag.FINAL.value)):
            if datastore.get_image_info(image_id).get("synthetic"):
                continue
            pairs.append({"id": image_id, "image": datastore.get_image_uri(image_id),
                          "label": datastore.get_label_uri(image_id, DefaultLabelTag.FINAL.value)})
        if not pairs:
            raise InputError("the datastore has no real image with a final label map to train on")
        return pairs

    def _partition_datalist(self, datalist: list[dict[str, str]], request: dict[str, Any], shuffle: bool = False):
        val_split = float(request.get("val_split", 0.2))
        n_val = min(len(datalist) - 1, max(1, int(round(val_split * len(datalist))))) if len(datalist) > 1 else 0
        train_pairs, val_pairs = datalist[: len(datalist) - n_val], datalist[len(datalist) - n_val :]
        if not val_pairs:
            logger.warning("one labelled image: it is also the validation image")
            val_pairs = train_pairs
        folder = self.settings.work_dir / "train_data"
        with staged_directory(folder, overwrite=True) as stage:
            train = training_slices(train_pairs, stage, "training")
            val = training_slices(val_pairs, stage, "validation")
        if not train or not val:
            raise InputError("no slice with infection (GGO or consolidation) in the training or validation images")
        logger.info(f"training slices: {len(train)} from {len(train_pairs)} images; validation: {len(val)}")
        absolute = lambda items: [{**it, "image": str(folder / it["image"]), "label": str(folder / it["label"])}  # noqa: E731
                                  for it in items]
        return absolute(train), absolute(val)

    def _load_checkpoint(self, model_pytorch, pretrained, train_handlers) -> None:
        """No extra loader: every stage resumes from its own checkpoints (``resume`` in ``train.yaml``)."""

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        overrides.update(self.settings.train_overrides)
        overrides["epochs"] = int(overrides.pop(self.const.key_train_trainer_max_epochs()))
        overrides["output_dir"] = str(self.settings.checkpoint_dir)
        overrides["work_dir"] = str(self.settings.work_dir)
        overrides.pop(self.const.key_train_handlers(), None)  # the bundle's own handlers, unchanged
        return overrides

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Train the three stages (one process, one device; multi-GPU runs use ``multi_gpu_train.yaml`` directly)."""
        defaults = {"max_epochs": self.config()["max_epochs"], "val_split": 0.2}
        return super().__call__({**defaults, **request, "multi_gpu": False, "pretrained": False}, datastore)

    def run_single_gpu(self, request: dict[str, Any], overrides: dict[str, Any]) -> None:
        for stage in STAGES:
            logger.info(f"==== stage {stage} ====")
            monai.bundle.run(
                run_id="run", meta_file=self.bundle_metadata_path, config_file=self.bundle_config_path,
                stage=stage, **overrides,
            )
