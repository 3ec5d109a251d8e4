"""Infer task ``synthesis``: a datastore image and its (edited) label map -> a synthetic CT.

The bundle's own synthesis (``inference.yaml``, run id ``run``) does the work: the task reads
the config, sets ``image``, ``label`` and a scratch ``output_dir``, and calls
:func:`covid_ct_cgan.inference.run_evaluator` with the config's ``evaluator``. So the
result is the generated lung composited into the real image, written with the input's
geometry and HU scale (outside the lung it is the input, bit for bit).

Each result is added to the datastore as a new image (``<image>_synthetic_<time>_v<k>``, image
info ``synthetic: true`` and where it came from) whose ``final`` label is the map it was
generated from. The response file is the first result; the response JSON names the new images.

Request parameters (``params`` of ``POST /infer/synthesis?image=<id>``):

- ``label_tag``: the label of the input image to synthesise from (default ``final``, else
  ``original``); a label map uploaded with the request (``label`` file) takes precedence;
- ``num_variants`` (default 1), ``seed`` (default 0): as in ``inference.yaml`` (variants after
  the first use lesion-map augmentation).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from covid_ct_cgan.errors import InputError
from covid_ct_cgan.inference import run_evaluator

from ..settings import INFERENCE_CONFIG, AppSettings
from .lesion_segmentation import LABELS

logger = logging.getLogger(__name__)

SOURCE_TAGS = (DefaultLabelTag.FINAL.value, DefaultLabelTag.ORIGINAL.value)


class Synthesis(InferTask):
    """Synthetic CT for a datastore image and its label map, added back to the datastore.

    Args:
        datastore: the app's datastore (where the inputs are and the results go).
        settings: the server's settings (checkpoint folder, bundle overrides).
    """

    def __init__(self, datastore: Datastore, settings: AppSettings) -> None:
        super().__init__(
            type=InferType.OTHERS,
            labels=LABELS,
            dimension=2,
            description="Synthetic chest CT from the image's label map (0 outside lung, 1 lung, 2 GGO, "
            "3 consolidation): the generated lung composited into the real image; added to the datastore "
            "as a new image whose final label is the map used",
            config={"label_tag": DefaultLabelTag.FINAL.value, "num_variants": 1, "seed": 0},
        )
        self.datastore = datastore
        self.settings = settings

    def is_valid(self) -> bool:
        """Always listed; a missing checkpoint is reported when the task is called."""
        return True

    def _label_path(self, request: dict[str, Any], image_id: str) -> Path:
        uploaded = request.get("label")
        if isinstance(uploaded, str) and uploaded and Path(uploaded).is_file():
            return Path(uploaded)
        asked = request.get("label_tag") or DefaultLabelTag.FINAL.value
        for tag in dict.fromkeys([asked, *SOURCE_TAGS]):
            uri = self.datastore.get_label_uri(image_id, tag) if image_id else ""
            if uri and Path(uri).is_file():
                return Path(uri)
        raise InputError(
            f"image {image_id!r} has no label map (tags tried: {', '.join(dict.fromkeys([asked, *SOURCE_TAGS]))}); "
            "save one first (PUT /datastore/label?image=<id>&tag=final) or upload it with the request"
        )

    def _synthesise(self, image: Path, label: Path, output_dir: Path, request: dict[str, Any]) -> list[dict[str, Any]]:
        parser = ConfigParser()
        parser.read_config(str(INFERENCE_CONFIG))
        parser.update(self.settings.inference_overrides)
        parser.update({
            "checkpoint_dir": str(self.settings.checkpoint_dir),
            "image": str(image),
            "label": str(label),
            "output_dir": str(output_dir),
            "overwrite": False,
            "num_variants": int(request.get("num_variants", 1)),
            "seed": int(request.get("seed", 0)),
        })
        return run_evaluator(parser.get_parsed_content("evaluator"))

    def _new_image_id(self, image_id: str, variant: int) -> str:
        existing = set(self.datastore.list_images())
        base = f"{image_id}_synthetic_{time.strftime('%Y%m%d%H%M%S')}_v{variant}"
        new_id, count = base, 1
        while new_id in existing:
            count += 1
            new_id = f"{base}_{count}"
        return new_id

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Run the synthesis and store its results.

        Args:
            request: the infer request; ``image`` is the input's file, ``image_id`` its datastore id
                (set by the app).

        Returns:
            ``(file of the first synthetic image, result JSON)``; the server deletes the file after sending it.

        Raises:
            InputError: no label map, no checkpoint, or inputs the synthesis refuses.
        """
        image = Path(request["image"])
        image_id = str(request.get("image_id") or "")
        label = self._label_path(request, image_id)
        scratch = Path(tempfile.mkdtemp(prefix="synthesis_"))
        try:
            out = scratch / "out"
            rows = self._synthesise(image, label, out, request)
            added = []
            for row in rows:
                new_id = self._new_image_id(image_id or image.name.split(".")[0], int(row["variant"]))
                provenance = {
                    "synthetic": True, "source_image": image_id, "source_label": str(label),
                    "variant": int(row["variant"]), "seed": int(row["seed"]), "augmentation": row["augmentation"],
                }
                self.datastore.add_image(new_id, str(out / row["output"]), provenance)
                self.datastore.save_label(new_id, str(out / row["label_map"]), DefaultLabelTag.FINAL.value,
                                          {"synthetic": True, "source_image": image_id})
                added.append(new_id)
            suffix = ".nii.gz" if rows[0]["output"].endswith(".nii.gz") else Path(rows[0]["output"]).suffix
            first = Path(tempfile.NamedTemporaryFile(prefix="synthesis_", suffix=suffix, delete=False).name)
            shutil.copyfile(out / rows[0]["output"], first)  # the server deletes the response file after sending
            settings = json.loads((out / "settings.json").read_text(encoding="utf-8"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        logger.info(f"synthesis of {image_id or image}: new datastore images {added}")
        return str(first), {
            "image": added[0], "images": added, "label_tag": DefaultLabelTag.FINAL.value,
            "source_image": image_id, "source_label": str(label), "settings": settings,
        }
