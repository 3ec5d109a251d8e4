"""Ablations (paper Table V): ``evaluate.yaml`` run id ``ablation`` (:class:`AblationStudy`).

Each ablation is an overlay on ``train.yaml`` in ``bundle/configs/ablation/``
(``ours`` is the proposed model itself, trained with the same settings so the
rows compare):

==================  ===========================================================
``ours``            DESUM dynamic (from G2), DFM dynamic (from D1), two D, G1 + G2
``desum_sum``       w/o DESUM: ``F1 + F2`` (pix2pixHD's fusion)
``desum_from_global``  DESUM weight from G1's features
``desum_fixed``     constant DESUM weight 0.5
``dfm_equal``       w/o DFM: equal average of the two feature-matching losses
``dfm_from_half``   DFM weight from D2's features
``dfm_fixed``       constant DFM weight 0.9, the learned one's bound (0.5 would equal ``dfm_equal``)
``one_d``           one discriminator (full resolution), plain feature matching
``one_g``           one generator: G1 alone at full resolution, one stage
==================  ===========================================================

One command trains every ablation through the same training config (the
stages of :func:`covid_ct_cgan.engines.stages.run_stages`, resumable: a
finished one is skipped), then scores it as Table V does: FID and PSNR of the
complemented test slices (:func:`.image_quality.evaluate_image_quality`, the
shared FID feature network) and the infection Dice of experiment A at 50 %
synthetic (:func:`.segmentation.run_experiments`). Demo scale by default
(``ablation_image_size`` 64, ``ablation_epochs`` 2).

Outputs: checkpoints in each overlay's ``output_dir`` (``<work_dir>/ablation/<name>``);
results in ``<output_dir>/ablation/`` (``ablation.csv``, and per ablation
``<name>/image_quality/`` and ``<name>/segmentation/results/``), built under a
temporary name, replaced only with ``overwrite``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.prepare import check_prepared
from ..errors import InputError
from ..fileio import check_writable, staged_directory, write_json, write_text
from .fid_features import FIDFeatures
from .image_quality import csv_text, evaluate_image_quality, load_datalist
from .models import load_training_config, trained_model
from .segmentation import run_experiments

logger = logging.getLogger(__name__)

ABLATIONS: dict[str, str] = {
    "ours": "Ours (DESUM from G2, DFM from D1, D = 2, G = 2)",
    "desum_sum": "w/o DESUM (F1 + F2)",
    "desum_from_global": "DESUM weight from F1 (G1)",
    "desum_fixed": "fixed DESUM weight (a = 0.5)",
    "dfm_equal": "w/o DFM (equal weights)",
    "dfm_from_half": "DFM weight from D2",
    "dfm_fixed": "fixed DFM weight (b = 0.9)",
    "one_d": "D = 1",
    "one_g": "G = 1 (G1 alone at full resolution)",
}
FOLDER = "ablation"
COLUMNS: tuple[str, ...] = (
    "ablation", "description", "fid", "psnr", "ssim", "fid_lung", "psnr_lung", "dice_infection", "dice_fold_low",
    "dice_fold_high", "dice_fold_half_width", "dice_boot_low", "dice_boot_high", "data", "image_size", "epochs",
    "seed", "commit", "checkpoint", "segmentation",
)


def train_ablation(config_files: Sequence[str | Path], overrides: Mapping[str, Any]) -> None:
    """Train one ablation exactly as ``training`` would: prepare if needed, then its stages (resuming)."""
    from monai.bundle import ConfigParser

    from ..engines.stages import run_stages

    raw = load_training_config(config_files, overrides)
    parser = ConfigParser(copy.deepcopy(raw))
    parser.parse(reset=True)
    parser.get_parsed_content("prepare_if_needed")
    run_stages(list(parser.get_parsed_content("stages")), config=raw)


def _by_region(rows: Sequence[Mapping[str, Any]], region: str) -> Mapping[str, Any]:
    return next(r for r in rows if r["region"] == region)


def _dice_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    found = [r for r in rows if r["class"] == "infection" and r["metric"] == "dice" and r["run"] != "real_only"]
    return found[0] if found else {}


@dataclass
class AblationStudy:
    """Bundle run id ``ablation`` of ``evaluate.yaml`` (its ``ablation_study`` component): ``$@ablation_study.run()``.

    Args:
        output_dir: the evaluation folder; results go to ``<output_dir>/ablation``.
        datalist: the prepared ``datalist.json``.
        features: the FID features (``evaluate.yaml``'s ``fid``, shared with ``run``); ``None``: the project's
            feature network with its default settings, cached in ``<output_dir>/fid_features``.
        ablations: names of overlays in ``<config_dir>/ablation/``.
        config_dir: the folder of ``train.yaml`` and ``ablation/``.
        training_overrides: overrides of every ablation's training (``work_dir``, ``image_size``, ``epochs`` ...).
        segmentation_config: the segmentation config (its UNet and statistics).
        segmentation_overrides: overrides of it (``epochs``, ``image_size`` ...).
        ratio: the synthetic fraction of experiment A whose infection Dice is reported (paper: 0.5).
        seed: synthesis, segmentation and bootstrap seed.
        overwrite: replace existing ablation results.
        train: train the ablations first (``False``: evaluate existing checkpoints only).
        device: where the networks run.
    """

    output_dir: str | Path
    datalist: str | Path
    features: FIDFeatures | None = None
    ablations: Sequence[str] = field(default_factory=lambda: list(ABLATIONS))
    config_dir: str | Path = "bundle/configs"
    training_overrides: Mapping[str, Any] | None = None
    segmentation_config: str | Path = "bundle/configs/segmentation.yaml"
    segmentation_overrides: Mapping[str, Any] | None = None
    ratio: float = 0.5
    seed: int = 0
    overwrite: bool = False
    train: bool = True
    device: str | torch.device = "cpu"

    def run(self) -> list[dict[str, Any]]:
        """Train and score every ablation (see the module docstring).

        Returns:
            The rows of ``ablation.csv``.

        Raises:
            InputError: bad input, naming the file (``evaluate.yaml`` reports it with one ``ERROR:`` line).
        """
        from monai.bundle import ConfigParser

        output_dir, datalist, config_dir = Path(self.output_dir), Path(self.datalist), Path(self.config_dir)
        ablations, seed, device, ratio = list(self.ablations), self.seed, self.device, self.ratio
        target = output_dir / FOLDER
        if target.is_dir() and any(target.iterdir()) and not self.overwrite:
            raise InputError("already exists and is not empty; pass --overwrite True to replace it", target)
        unknown = [a for a in ablations if not (config_dir / FOLDER / f"{a}.yaml").is_file()]
        if unknown:
            raise InputError(f"no ablation overlay for {unknown} (expected {config_dir / FOLDER}/<name>.yaml)")
        # before the ablations train (hours): where the scores go, the data they are computed on, the UNets' config
        check_writable(output_dir)
        check_prepared(datalist)  # a datalist that is there already is as prepared (training prepares a missing one)
        if not Path(self.segmentation_config).is_file():
            raise InputError("segmentation config not found; set segmentation_config", self.segmentation_config)
        seg_raw = ConfigParser.load_config_files(str(self.segmentation_config))
        for key, value in (self.segmentation_overrides or {}).items():
            seg_raw[key] = copy.deepcopy(value)
        overrides = dict(self.training_overrides or {})
        configs = {a: [str(config_dir / "train.yaml"), str(config_dir / FOLDER / f"{a}.yaml")] for a in ablations}
        if self.train:
            for name in ablations:
                logger.info(f"==== ablation {name}: training ====")
                train_ablation(configs[name], overrides)
        if not datalist.is_file():
            raise InputError("datalist not found; prepare the data first or set data_dir", datalist)
        features = self.features or FIDFeatures(output_dir / "fid_features", seed=seed, device=device)
        level = float(overrides.get("window_level", -600.0))
        width = float(overrides.get("window_width", 1500.0))
        train_items = [] if features.inception_weights else load_datalist(datalist, "training")
        extractor = features.extractor(train_items, level, width)
        rows: list[dict[str, Any]] = []
        with staged_directory(target, overwrite=self.overwrite) as stage:
            for name in ablations:
                logger.info(f"==== ablation {name}: evaluation ====")
                model = trained_model(name, configs[name], overrides, device=device)
                quality = evaluate_image_quality(
                    [model], datalist, stage / name, seed=seed, mean_lung_baseline=False, resampled_real_baseline=False,
                    features=extractor, device=device,
                )
                seg = run_experiments(
                    stage / name / "segmentation", datalist, experiments=["A"], ratios=[ratio],
                    generator={"configs": configs[name], "overrides": overrides}, seed=seed, device=device,
                    config=seg_raw,
                )
                comp, lung, dice = _by_region(quality, "complemented"), _by_region(quality, "lung_only"), _dice_row(seg)
                rows.append({
                    "ablation": name, "description": ABLATIONS.get(name, name), "fid": comp["fid"],
                    "psnr": comp["psnr"], "ssim": comp["ssim"], "fid_lung": lung["fid"], "psnr_lung": lung["psnr"],
                    "dice_infection": dice.get("mean", math.nan), "dice_fold_low": dice.get("fold_low", math.nan),
                    "dice_fold_high": dice.get("fold_high", math.nan),
                    "dice_fold_half_width": dice.get("fold_half_width", math.nan),
                    "dice_boot_low": dice.get("boot_low", math.nan), "dice_boot_high": dice.get("boot_high", math.nan),
                    "data": comp["data"], "image_size": comp["image_size"], "epochs": comp["epochs"],
                    "seed": comp["seed"], "commit": comp["commit"], "checkpoint": comp["checkpoint"],
                    "segmentation": (f"experiment A, {ratio:.0%} synthetic; UNet {dice.get('image_size', '?')} px, "
                                     f"{dice.get('epochs', '?')} epochs"),
                })
            write_text(csv_text(rows, COLUMNS), stage / "ablation.csv")
            write_json({"ablations": ablations, "training_overrides": {k: str(v) for k, v in overrides.items()},
                        "segmentation_overrides": {k: str(v) for k, v in (self.segmentation_overrides or {}).items()},
                        "ratio": ratio, "feature_net": extractor.description, "seed": seed}, stage / "settings.json")
        print(f"ablation: {len(rows)} rows in {target / 'ablation.csv'}", flush=True)
        return rows
