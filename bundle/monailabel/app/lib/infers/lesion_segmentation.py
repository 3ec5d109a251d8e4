"""Infer task ``lesion_segmentation``: pre-annotates a datastore image with a full label map.

The lesions come from the UNet of the segmentation experiments (``segmentation.yaml``:
``network_def``, ``image_size``, lung window; classes background / GGO / consolidation), run
slice by slice on the grid it was trained on (intensity to [-1, 1] in the lung window, longest
side resized to ``image_size``, padded to a square); its class probabilities are resized back
to each slice's own size before the arg-max. The lung comes from the threshold lung-mask
derivation of the data preparation (:func:`covid_ct_cgan.data.lung_mask.derive_lung_mask`,
lesions count as lung). Together they make the label map the ``synthesis`` task and the
training read: 0 outside lung, 1 lung, 2 GGO, 3 consolidation, written on the image's own
voxel grid (a NIfTI input's header and affine; a 2D slice keeps its spacing).

The UNet's weights: ``--conf segmentation_checkpoint <file>`` (default: the ``real_only`` run of
the segmentation experiments, ``work/segmentation/results/runs/real_only/seed_0/unet.pt``); any other
``segmentation.yaml`` key is set with ``--conf segmentation_<key> <value>``.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from covid_ct_cgan import intensity
from covid_ct_cgan.checkpoints import read_checkpoint, state_dict_of
from covid_ct_cgan.data.lung_mask import derive_lung_mask
from covid_ct_cgan.data.readers import PICTURE_SUFFIXES, load_image
from covid_ct_cgan.errors import InputError
from covid_ct_cgan.inference import Geometry, ModelGrid, write_like
from covid_ct_cgan.inference.inputs import _nifti_geometry
from covid_ct_cgan.labels import CONSOLIDATION, GGO, LUNG, merge_label_map

from ..settings import SEGMENTATION_CONFIG, AppSettings

logger = logging.getLogger(__name__)

LABELS = {"lung": LUNG, "ggo": GGO, "consolidation": CONSOLIDATION}  # label-map codes (covid_ct_cgan.labels)
BATCH_SIZE = 8


def image_geometry(path: Path, image: np.ndarray, affine: np.ndarray) -> Geometry:
    """How to write a result on the grid of ``path`` (as the synthesis does for its inputs)."""
    if path.is_dir():
        return Geometry("dicom", image.shape, np.dtype(np.int16), affine)
    if any(path.name.lower().endswith(s) for s in PICTURE_SUFFIXES):
        return Geometry("picture", image.shape[:2], np.dtype(np.uint8), affine)
    return _nifti_geometry(path)


def load_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The UNet weights of a checkpoint: a bare state dict (``unet.pt``) or one under ``network``/``model``."""
    if not checkpoint.is_file():
        raise InputError(
            "no lesion-segmentation UNet checkpoint; train one (python -m monai.bundle run run --config_file "
            "bundle/configs/segmentation.yaml) or start the server with --conf segmentation_checkpoint <file>",
            checkpoint,
        )
    ckpt = read_checkpoint(checkpoint)  # the package's one reader: weights_only, one clear error for a damaged file
    return dict(state_dict_of(ckpt, ["network", "model", "state_dict"], checkpoint, "UNet"))


class LesionSegmentation(InferTask):
    """Label map (lung, GGO, consolidation) of a chest CT image or volume, for the radiologist to edit.

    Args:
        settings: the server's settings (UNet checkpoint, ``segmentation.yaml`` overrides).
        device: where the UNet runs; default CUDA when available.
    """

    def __init__(self, settings: AppSettings, device: str | None = None) -> None:
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=LABELS,
            dimension=2,
            description="Label map for synthesis: lung (threshold lung mask) with GGO and consolidation "
            "from the lesion-segmentation UNet, slice by slice",
            config={},
        )
        self.settings = settings
        self.device = torch.device(device or ("cuda:0" if torch.cuda.is_available() else "cpu"))
        parser = ConfigParser()
        parser.read_config(str(SEGMENTATION_CONFIG))
        parser.update(settings.segmentation_overrides)
        self.parser = parser
        self.image_size = int(parser.get_parsed_content("image_size"))
        self.window = (float(parser.get_parsed_content("window_level")), float(parser.get_parsed_content("window_width")))
        self._cached: tuple[float | None, torch.nn.Module] | None = None

    def is_valid(self) -> bool:
        """Always listed; a missing checkpoint is reported when the task is called."""
        return True

    def network(self) -> torch.nn.Module:
        """The UNet with the checkpoint's weights (reloaded when the file changes)."""
        path = self.settings.segmentation_checkpoint
        mtime = path.stat().st_mtime if path.is_file() else None
        if self._cached is not None and self._cached[0] == mtime:
            return self._cached[1]
        state = load_state_dict(path)  # refuses a missing or foreign file
        net = self.parser.get_parsed_content("network_def", lazy=False)  # a new instance
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise InputError(
                f"checkpoint does not fit segmentation.yaml's network_def ({str(err).splitlines()[0]}); "
                "pass the settings it was trained with (--conf segmentation_<key> <value>)",
                path,
            ) from None
        net = net.to(self.device).eval()
        self._cached = (mtime, net)
        return net

    def label_map(self, image: np.ndarray, scale: str) -> np.ndarray:
        """``[x, y, z]`` image (HU or 8 bit) -> ``[x, y, z]`` uint8 label map."""
        net, grid = self.network(), ModelGrid(self.image_size)
        label = np.zeros(image.shape, np.uint8)
        slices = list(range(image.shape[2]))
        for start in range(0, len(slices), BATCH_SIZE):
            batch = slices[start : start + BATCH_SIZE]
            grids = [grid.to_grid(intensity.to_model(image[:, :, z], scale, *self.window), np.zeros(image.shape[:2]))[0]
                     for z in batch]
            with torch.inference_mode():
                probs = torch.softmax(net(torch.stack(grids).to(self.device)).float(), dim=1).cpu()
            for z, p in zip(batch, probs):
                back = np.stack([grid.from_grid(p[c : c + 1], image.shape[:2]) for c in range(p.shape[0])])
                lesion = back.argmax(0)  # 0 none, 1 GGO, 2 consolidation: the source-mask codes of labels.py
                lung = derive_lung_mask(image[:, :, z], scale, lesion)
                label[:, :, z] = merge_label_map(lung, lesion)
        return label

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Segment ``request["image"]`` (a file or DICOM series folder).

        Returns:
            ``(label-map file, result JSON)``: the file has the image's grid and header.

        Raises:
            InputError: unreadable image, no checkpoint, a checkpoint of another network.
        """
        path = Path(request["image"])
        image, affine, scale = load_image(path)
        label = self.label_map(image, scale)
        geometry = image_geometry(path, image, affine)
        suffix = ".png" if geometry.kind == "picture" else ".nii.gz"
        out = Path(tempfile.NamedTemporaryFile(prefix="lesion_segmentation_", suffix=suffix, delete=False).name)
        write_like(label, geometry, out, is_label=True, overwrite=True)
        counts = {name: int(np.count_nonzero(label == code)) for name, code in LABELS.items()}
        logger.info(f"lesion_segmentation of {path}: pixels per class {counts}")
        return str(out), {"label_names": LABELS, "pixels": counts, "checkpoint": str(self.settings.segmentation_checkpoint)}
