"""Feature networks for the FID: one trained by the project on real CT slices, or a user's Inception-v3.

FID compares the feature statistics of generated and real images. The usual
Inception-v3 (ImageNet) weights cannot be downloaded here, and ImageNet
features say little about lung texture anyway, so by default the features
come from a small network the project trains on the **real training slices**
of the synthesis split (never on test slices, never on generated ones):

- network: a MONAI ``DenseNet`` (2D, 1 channel, init 16 features, growth 16,
  blocks (2, 2, 2)), swappable in ``evaluate.yaml`` (``fid#network_def``);
- target: for each slice, the fraction of the image that is lung and the
  fractions of the lung that are GGO and consolidation (regression, MSE).
  Predicting how much of each lesion type a slice holds forces the features to
  encode what GGO and consolidation look like (density, texture, extent) and
  where the lung is, which is what the synthesis must get right; the labels
  come free with every training slice;
- half of the training inputs have everything outside the lung set to -1, so
  the same network also serves the "lung only" FID (computed on images with
  everything outside the lung set to -1);
- features: the input of the network's last linear layer (the globally
  pooled DenseNet features, 60 numbers);
- training: MONAI ``SupervisedTrainer`` (``StatsHandler``,
  ``CheckpointSaver``), seeded; the weights are cached under
  ``<output_dir>/fid_features/<settings hash>/feature_net.pt`` and reused
  by every later run with the same settings and training slices;
- in ``evaluate.yaml`` all of this is the ``fid`` component (:class:`FIDFeatures`,
  e.g. ``--fid#epochs 5``), which trains or loads the network only when a run
  first needs its features.

With ``inception_weights`` (a ``pt_inception-2015-12-05.pth`` of pytorch-fid
or a torchvision ``inception_v3`` state dict) the 2048 pool features of
Inception-v3 are used instead (inputs: grey repeated to 3 channels, bilinear
resize to 299, [-1, 1]). Building it needs ``torchvision``; with
``pytorch-fid`` installed its FID blocks are used, as in pytorch-fid. FID
values of either network are not comparable with the paper's (other data,
other features) and, with few test slices, are dominated by sampling noise:
compare models evaluated in the same run only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, RandomizableTransform

from ..checkpoints import read_checkpoint, state_dict_of
from ..errors import InputError
from ..labels import CONSOLIDATION, GGO, lung_region

logger = logging.getLogger(__name__)

FEATURE_NET_FILE = "feature_net.pt"
INCEPTION_SIZE = 299


# --------------------------------------------------------------------------- targets and inputs


def lesion_fractions(label: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``[lung / image, GGO / lung, consolidation / lung]`` of a label map (0 where there is no lung)."""
    lab = torch.as_tensor(np.asarray(label)).long()
    lung = float((lab > 0).sum())
    ggo = float((lab == GGO).sum())
    cons = float((lab >= CONSOLIDATION).sum())
    if lung == 0:
        return torch.tensor([0.0, 0.0, 0.0])
    return torch.tensor([lung / lab.numel(), ggo / lung, cons / lung], dtype=torch.float32)


def mask_outside_lung(image: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray, value: float = -1.0) -> Any:
    """The image with every pixel outside the lung (label 0) set to ``value`` (the "lung only" FID input)."""
    if isinstance(image, torch.Tensor):
        return torch.where(torch.as_tensor(label) > 0, image, torch.full_like(image, value))
    return np.where(lung_region(np.asarray(label)), image, value).astype(np.float32)


class LesionFractionsd(MapTransform):
    """Add ``fractions_key``: :func:`lesion_fractions` of the label map (the feature network's target)."""

    def __init__(self, label_key: str = "label", fractions_key: str = "fractions") -> None:
        super().__init__([label_key])
        self.label_key, self.fractions_key = label_key, fractions_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d[self.fractions_key] = lesion_fractions(torch.as_tensor(d[self.label_key]))
        return d


class RandMaskOutsideLungd(RandomizableTransform, MapTransform):
    """With probability ``prob``, set the image outside the lung to -1 (as the "lung only" FID inputs are)."""

    def __init__(self, image_key: str = "image", label_key: str = "label", prob: float = 0.5) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, [image_key])
        self.image_key, self.label_key = image_key, label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if self._do_transform:
            d[self.image_key] = mask_outside_lung(torch.as_tensor(d[self.image_key]), torch.as_tensor(d[self.label_key]))
        return d


def prepare_fraction_batch(
    batchdata: dict[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``prepare_batch`` of the feature network's ``SupervisedTrainer``: (image, lesion fractions)."""
    return (batchdata["image"].to(device=device, non_blocking=non_blocking, **kwargs),
            batchdata["fractions"].to(device=device, non_blocking=non_blocking, **kwargs))


# --------------------------------------------------------------------------- extractors


class FeatureExtractor:
    """Images ``(B, 1, S, S)`` in [-1, 1] -> features ``(B, F)``: the input of the network's last linear layer.

    Args:
        network: a classifier / regressor whose last ``nn.Linear`` sees pooled features.
        image_size: the square input size it expects (images are resized to it).
        description: what it is, for the report.
        channels: input channels (grey images are repeated).
        device: where it runs.
    """

    def __init__(self, network: torch.nn.Module, image_size: int, description: str, channels: int = 1,
                 device: str | torch.device = "cpu") -> None:
        linears = [m for m in network.modules() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise ValueError("the feature network has no linear layer whose input could serve as features")
        self.network = network.to(device).eval()
        self.head = linears[-1]
        self.image_size = int(image_size)
        self.description = description
        self.channels = int(channels)
        self.device = torch.device(device)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Features of ``images`` (``(B, 1, H, W)``, resized bilinearly to ``image_size`` when needed)."""
        captured: list[torch.Tensor] = []
        hook = self.head.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].detach().float().cpu()))
        try:
            for start in range(0, images.shape[0], batch_size):
                x = images[start : start + batch_size].to(self.device, torch.float32)
                if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
                    x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
                self.network(x.repeat(1, self.channels, 1, 1) if self.channels > 1 else x)
        finally:
            hook.remove()
        return torch.cat(captured).flatten(1) if captured else torch.empty(0, 0)


def default_feature_network() -> torch.nn.Module:
    """The default FID feature network: a small MONAI DenseNet with 3 outputs (the lesion fractions)."""
    from monai.networks.nets import DenseNet

    return DenseNet(spatial_dims=2, in_channels=1, out_channels=3, init_features=16, growth_rate=16,
                    block_config=(2, 2, 2), bn_size=2)


def _settings_key(settings: Mapping[str, Any]) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:12]


def train_feature_network(
    items: Sequence[Mapping[str, Any]],
    cache_dir: str | Path,
    network: torch.nn.Module | None = None,
    image_size: int = 128,
    epochs: int = 20,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    seed: int = 0,
    window_level: float = -600.0,
    window_width: float = 1500.0,
    device: str | torch.device = "cpu",
) -> FeatureExtractor:
    """Train the FID feature network on real training slices (or reuse the cached one).

    Args:
        items: datalist items (``image``, ``label``, optional ``scale``; absolute paths) of real training slices.
        cache_dir: folder of cached networks; one sub-folder per settings hash.
        network: the network to train; default :func:`default_feature_network`.
        image_size: square input size.
        epochs: training epochs.
        batch_size: batch size.
        learning_rate: Adam learning rate.
        seed: seed of the weights and augmentation.
        window_level: HU window level.
        window_width: HU window width.
        device: where it trains.

    Returns:
        A :class:`FeatureExtractor` on the trained network.

    Raises:
        InputError: no training slices.
    """
    from ignite.engine import Events
    from monai.data import CacheDataset, DataLoader
    from monai.engines import SupervisedTrainer
    from monai.handlers import CheckpointSaver, StatsHandler, from_engine
    from monai.transforms import Compose, EnsureTyped, LoadImaged, RandAffined, Resized, SpatialPadd
    from monai.utils import set_determinism

    from ..fileio import staged_directory, write_json
    from ..logs import progress_handler
    from ..transforms import ScaleIntensityToModeld

    if not items:
        raise InputError("no real training slices to train the FID feature network on")
    network = network if network is not None else default_feature_network()
    settings = {
        "network": repr(network), "images": sorted(str(it["image"]) for it in items), "image_size": int(image_size),
        "epochs": int(epochs), "batch_size": int(batch_size), "learning_rate": float(learning_rate), "seed": int(seed),
        "window_level": float(window_level), "window_width": float(window_width), "target": "lesion fractions",
    }
    key = _settings_key(settings)
    folder = Path(cache_dir) / key
    description = (f"project feature net {type(network).__name__} ({key}), trained {epochs} epochs on "
                   f"{len(items)} real training slices at {image_size} px, seed {seed}")
    if (folder / FEATURE_NET_FILE).is_file():
        state = read_checkpoint(folder / FEATURE_NET_FILE, what="cached FID feature network")
        network.load_state_dict(state_dict_of(state, ["network"], folder / FEATURE_NET_FILE, "FID feature network"), strict=True)
        logger.info(f"FID feature network from the cache {folder}")
        return FeatureExtractor(network, image_size, description, device=device)

    set_determinism(seed=int(seed))
    size = int(image_size)
    transform = Compose([
        LoadImaged(keys=["image", "label"], image_only=True, ensure_channel_first=True),
        ScaleIntensityToModeld(keys="image", window_level=window_level, window_width=window_width),
        Resized(keys=["image", "label"], spatial_size=size, size_mode="longest", mode=["area", "nearest"]),
        SpatialPadd(keys="image", spatial_size=[size, size], value=-1.0),
        SpatialPadd(keys="label", spatial_size=[size, size]),
        LesionFractionsd(),
        RandMaskOutsideLungd(prob=0.5),
        RandAffined(keys=["image", "label"], prob=0.3, rotate_range=0.17, mode=["bilinear", "nearest"],
                    padding_mode="border"),
        EnsureTyped(keys=["image", "fractions"], dtype=torch.float32, track_meta=False),
    ])
    loader = DataLoader(CacheDataset([dict(it) for it in items], transform, progress=False),
                        batch_size=int(batch_size), shuffle=True, num_workers=0)
    network = network.to(device)
    with staged_directory(folder) as stage:
        trainer = SupervisedTrainer(
            device=torch.device(device), max_epochs=int(epochs), train_data_loader=loader, network=network,
            optimizer=torch.optim.Adam(network.parameters(), lr=float(learning_rate)),
            loss_function=torch.nn.MSELoss(), prepare_batch=prepare_fraction_batch,
            train_handlers=[
                StatsHandler(name="fid_feature_net", tag_name="feature_net_loss", iteration_log=False,
                             output_transform=from_engine(["loss"], first=True)),
                CheckpointSaver(save_dir=str(stage), save_dict={"network": network}, save_final=True,
                                final_filename=FEATURE_NET_FILE),
                progress_handler(desc="FID feature network"),
            ],
        )
        losses: list[float] = []
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
        trainer.run()
        write_json({**settings, "final_loss": losses[-1] if losses else None}, stage / "settings.json")
    logger.info(f"FID feature network trained and cached in {folder}")
    return FeatureExtractor(network, image_size, description, device=device)


def inception_extractor(weights: str | Path, device: str | torch.device = "cpu") -> FeatureExtractor:
    """Inception-v3 pool features (2048) from a local weights file (never downloaded).

    Args:
        weights: pytorch-fid's ``pt_inception-2015-12-05.pth`` or a torchvision ``inception_v3`` state dict.
        device: where it runs.

    Raises:
        InputError: the file is missing or unreadable, torchvision is not installed, or the weights do not fit.
    """
    path = Path(weights).expanduser()
    if not path.is_file():
        raise InputError("inception_weights file not found", path)
    try:
        from torchvision.models import inception_v3
    except ImportError:
        raise InputError(
            "inception_weights needs torchvision, which is not installed (pip install torchvision matching your "
            "torch), or leave inception_weights empty to use the project's own feature network", path,
        ) from None
    state = read_checkpoint(path, what="the Inception weights")
    state = state.get("state_dict", state)
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise InputError("not an Inception-v3 state dict (no 'fc.weight')", path)
    net = inception_v3(weights=None, aux_logits=any(k.startswith("AuxLogits.") for k in state),
                       init_weights=False, num_classes=int(state["fc.weight"].shape[0]), transform_input=False)
    note = "torchvision blocks"
    try:  # pytorch-fid's variant of the blocks, when installed (its own loader would download)
        from pytorch_fid import inception as fid_blocks

        net.Mixed_5b = fid_blocks.FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = fid_blocks.FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = fid_blocks.FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = fid_blocks.FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = fid_blocks.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = fid_blocks.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = fid_blocks.FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = fid_blocks.FIDInceptionE_1(1280)
        net.Mixed_7c = fid_blocks.FIDInceptionE_2(2048)
        note = "pytorch-fid blocks"
    except ImportError:
        pass
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(f"the weights do not fit Inception-v3: {str(err).splitlines()[0]}", path) from None
    return FeatureExtractor(net, INCEPTION_SIZE, f"Inception-v3 pool features ({path.name}, {note})", channels=3,
                            device=device)


class FIDFeatures:
    """The FID features of ``evaluate.yaml`` (its ``fid`` component), built on first use.

    The network is not trained (or read from the cache) when the config is parsed, only when a run asks
    for :meth:`extractor`: the project's feature network (``network_def``) trained on real training slices
    by :func:`train_feature_network` and cached in ``cache_dir``, or with ``inception_weights`` the
    Inception-v3 pool features of :func:`inception_extractor`. Each extractor is built once per run.

    Args:
        cache_dir: folder of cached feature networks (one sub-folder per settings hash).
        network_def: the feature network before training; default :func:`default_feature_network`.
        image_size: its square input size.
        epochs: its training epochs.
        batch_size: its training batch size.
        learning_rate: its Adam learning rate.
        inception_weights: a local Inception-v3 weights file used instead; empty: the project's network.
        seed: seed of its weights and augmentation.
        device: where it trains and runs.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        network_def: torch.nn.Module | None = None,
        image_size: int = 128,
        epochs: int = 20,
        batch_size: int = 8,
        learning_rate: float = 1e-3,
        inception_weights: str | Path = "",
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.network_def = network_def
        self.image_size, self.epochs, self.batch_size = image_size, epochs, batch_size
        self.learning_rate = learning_rate
        self.inception_weights = inception_weights
        self.seed = seed
        self.device = device
        self._built: dict[tuple[Any, ...], FeatureExtractor] = {}

    def extractor(
        self, items: Sequence[Mapping[str, Any]], window_level: float = -600.0, window_width: float = 1500.0
    ) -> FeatureExtractor:
        """The feature extractor, trained on ``items`` (or read from the cache) on the first call.

        Args:
            items: datalist items (``image``, ``label``, optional ``scale``) of real training slices
                (not used with ``inception_weights``).
            window_level: HU window level of the training slices.
            window_width: HU window width of the training slices.

        Returns:
            A :class:`FeatureExtractor`.

        Raises:
            InputError: no training slices, or unusable ``inception_weights``.
        """
        if self.inception_weights:
            key: tuple[Any, ...] = ("inception",)
        else:
            key = (float(window_level), float(window_width), tuple(sorted(str(it["image"]) for it in items)))
        if key not in self._built:
            if self.inception_weights:
                self._built[key] = inception_extractor(self.inception_weights, self.device)
            else:  # a copy: extractors of other windows keep their own weights
                network = copy.deepcopy(self.network_def) if self.network_def is not None else None
                self._built[key] = train_feature_network(
                    items, self.cache_dir, network, self.image_size, self.epochs, self.batch_size,
                    self.learning_rate, self.seed, window_level, window_width, self.device,
                )
        return self._built[key]


def fid(generated: torch.Tensor, real: torch.Tensor) -> float:
    """Frechet distance between two feature sets ``(N, F)``, MONAI ``FIDMetric``; NaN with fewer than 2 each."""
    from monai.metrics import FIDMetric

    if generated.shape[0] < 2 or real.shape[0] < 2:
        return float("nan")
    return float(FIDMetric()(generated.double(), real.double()).item())
