"""Ignite handlers of the GAN stages: sample grids, validation curves, non-finite guard, LR schedule,
epoch means and the spread of the learned DFM weight."""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver, ValidationHandler
from PIL import Image

from ..fileio import atomic_path
from ..figures import label_picture, pyplot, to_uint8_picture, write_figure
from ..networks.windows import generate
from ..networks.wrapping import unwrap
from ..precision import autocast_context
from .attached import attached, check_records_handlers

logger = logging.getLogger(__name__)

def linear_decay_lambda(total_epochs: int, constant_epochs: int | None = None):
    """LR factor of the paper (pix2pixHD): constant, then linear decay towards 0.

    Args:
        total_epochs: epochs of the stage.
        constant_epochs: epochs at the full rate; default half of ``total_epochs``.

    Returns:
        ``f(epoch)`` for :class:`torch.optim.lr_scheduler.LambdaLR` stepped once per epoch:
        1 for the first ``constant_epochs`` epochs, then ``1 - k / (n_decay + 1)`` for the
        k-th decaying epoch, so the last epoch trains at ``1 / (n_decay + 1)`` of the rate and
        the rate after it is 0.
    """
    total = max(int(total_epochs), 1)
    const = total // 2 if constant_epochs is None else int(constant_epochs)
    n_decay = max(total - const, 0)

    def factor(epoch: int) -> float:
        if epoch < const:
            return 1.0
        return max(0.0, 1.0 - (epoch - const + 1) / (n_decay + 1))

    return factor


def sample_grid(
    labels: Sequence[np.ndarray], reals: Sequence[np.ndarray], fakes: Sequence[np.ndarray], min_tile: int = 192
) -> np.ndarray:
    """Rows of ``label map | real | generated | |difference|`` as one RGB array.

    All inputs are [x, y] arrays; images in [-1, 1]; the difference is shown
    on [0, 1] (white = the full range of the model's intensity). Small slices
    are enlarged (nearest neighbour) to at least ``min_tile`` pixels so a
    person can see them.
    """
    size = max(np.asarray(labels[0]).shape)
    zoom = max(1, -(-min_tile // size))
    if zoom > 1:
        labels = [np.kron(np.asarray(x), np.ones((zoom, zoom), np.int64)) for x in labels]
        reals = [np.kron(np.asarray(x, np.float32), np.ones((zoom, zoom), np.float32)) for x in reals]
        fakes = [np.kron(np.asarray(x, np.float32), np.ones((zoom, zoom), np.float32)) for x in fakes]
    rows = []
    for lab, real, fake in zip(labels, reals, fakes):
        grey = [to_uint8_picture(real), to_uint8_picture(fake)]
        diff = np.clip(np.abs(np.asarray(fake, np.float32) - np.asarray(real, np.float32)).T * 255.0, 0, 255)
        tiles = [label_picture(lab)] + [np.repeat(g[..., None], 3, -1) for g in grey]
        tiles.append(np.repeat(diff.astype(np.uint8)[..., None], 3, -1))
        sep = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
        rows.append(np.concatenate([x for t in tiles for x in (t, sep)][:-1], axis=1))
    hsep = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([x for r in rows for x in (r, hsep)][:-1], axis=0)


def save_png(picture: np.ndarray, path: str | Path) -> Path:
    """Write an RGB/grey uint8 array as PNG, atomically (replaces an older preview of a run)."""
    with atomic_path(path, overwrite=True) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
    return Path(path)


def every_and_last(interval: int) -> Callable[[Engine, int], bool]:
    """An Ignite event filter for ``EPOCH_COMPLETED``: every ``interval`` epochs, and the run's last epoch."""
    interval = max(int(interval), 1)

    def due(engine: Engine, epoch: int) -> bool:
        return epoch % interval == 0 or epoch == engine.state.max_epochs

    return due


class PeriodicValidation(ValidationHandler):
    """MONAI's epoch-level ``ValidationHandler`` run every ``interval`` epochs and after the last one, so the
    final weights are always validated (and ``best_generator.pt`` can be them) whatever ``interval`` is."""

    def attach(self, engine: Engine) -> None:
        """Attach to a trainer: validate at the epochs :func:`every_and_last` selects."""
        if not self.epoch_level:
            raise ValueError("PeriodicValidation validates at epoch ends: keep epoch_level true")
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=every_and_last(self.interval)), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)


class SampleGridSaver:
    """Each epoch, write a PNG grid ``label map | real | generated | |difference|``.

    The same validation slices are shown every epoch (the first ``num_samples``
    of ``dataset``), so the grids show the model's progress. Written to
    ``output_dir/epoch_XXXX.png`` and ``output_dir/latest.png``.

    Args:
        dataset: validation dataset (items with ``condition``, ``image``, ``region``, ``label``).
        output_dir: folder of the grids.
        num_samples: rows of the grid.
        composite: show the generated region composited into the real slice.
        interval: epochs between grids (and the run's last epoch).
        amp: generate with mixed precision.
        window: generate through windows of this size (a generator trained on crops), see
            :func:`~covid_ct_cgan.networks.windows.generate`; ``0``: the whole slice.
    """

    def __init__(
        self,
        dataset: Any,
        output_dir: str | Path,
        num_samples: int = 4,
        composite: bool = False,
        interval: int = 1,
        amp: bool = False,
        window: int = 0,
    ) -> None:
        self.window = int(window)
        self.dataset = dataset
        self.output_dir = Path(output_dir)
        self.num_samples = int(num_samples)
        self.composite = composite
        self.interval = max(int(interval), 1)
        self.amp = amp
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        """Attach to a trainer (``generator`` attribute) at epoch completion."""
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=every_and_last(self.interval)), self)

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        if getattr(engine.state, "rank", 0) != 0 or len(self.dataset) == 0:
            return
        items = [self.dataset[i] for i in range(min(self.num_samples, len(self.dataset)))]
        device = torch.device(engine.state.device)  # type: ignore[attr-defined]  # MONAI's Workflow sets it
        gen = unwrap(engine.generator)  # type: ignore[attr-defined]  # a ConditionalGanTrainer
        was_training = gen.training
        gen.eval()
        cond = torch.stack([torch.as_tensor(it["condition"]) for it in items]).to(device).float()
        with autocast_context(device, self.amp):
            fake = generate(gen, cond, self.window).float().cpu()
        gen.train(was_training)
        reals = [torch.as_tensor(it["image"]).float()[0] for it in items]
        regions = [torch.as_tensor(it["region"]).float()[0] for it in items]
        fakes = [f[0] for f in fake]
        if self.composite:
            fakes = [r * f + (1 - r) * x for f, x, r in zip(fakes, reals, regions)]
        labels = [torch.as_tensor(it["label"])[0].numpy() for it in items]
        grid = sample_grid(labels, [r.numpy() for r in reals], [f.numpy() for f in fakes])
        path = save_png(grid, self.output_dir / f"epoch_{engine.state.epoch:04d}.png")
        save_png(grid, self.output_dir / "latest.png")
        self.written.append(path)


def rewrite_epoch_csv(csv_path: Path, epoch: int, values: Mapping[str, str], names: Sequence[str],
                      restval: str = "") -> list[dict[str, str]]:
    """Keep one row per epoch in ``csv_path``: drop the rows of ``epoch`` and later (a resumed run trains them
    again), append ``values`` as ``epoch``'s row, and rewrite the file atomically.

    Args:
        csv_path: the CSV (``epoch`` and ``names`` columns); created with its folder when missing.
        epoch: the epoch of the new row.
        values: the new row's cells, by name.
        names: the columns after ``epoch``.
        restval: the cell written where a row has no value for a column.

    Returns:
        The rows now in the file.
    """
    rows: list[dict[str, str]] = []
    if csv_path.exists():
        with open(csv_path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < epoch]
    rows.append({"epoch": str(epoch), **values})
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(csv_path, overwrite=True) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", *names], restval=restval)
            writer.writeheader()
            writer.writerows(rows)
    return rows


class ValidationCurveWriter:
    """After each validation, append the metrics to a CSV and redraw the curve PNG.

    Attach to the evaluator; the trainer epoch is the evaluator's epoch
    (MONAI's ``ValidationHandler`` runs it with the trainer's epoch).
    """

    def __init__(self, output_dir: str | Path, metric_names: Sequence[str] | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.metric_names = list(metric_names) if metric_names else None

    def attach(self, engine: Engine) -> None:
        """Attach to an evaluator at run completion."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if getattr(engine.state, "rank", 0) != 0:
            return
        metrics = {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))}
        names = self.metric_names or sorted(metrics)
        rows = rewrite_epoch_csv(self.output_dir / "validation.csv", engine.state.epoch,
                                 {n: f"{metrics.get(n, math.nan):.6f}" for n in names}, names)
        self._plot(rows, names)

    def _plot(self, rows: list[dict[str, str]], names: list[str]) -> None:
        plt = pyplot()
        epochs = [int(r["epoch"]) for r in rows]
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
        for ax, name in zip(axes[0], names):
            ax.plot(epochs, [float(r[name]) for r in rows], marker="o")
            ax.set_xlabel("epoch")
            ax.set_title(name)
            ax.grid(alpha=0.3)
        write_figure(fig, self.output_dir / "validation_curve.png", overwrite=True)


class NonFiniteLossGuard:
    """Stop training cleanly when an iteration produced a non-finite loss.

    The trainer skipped that iteration's optimizer steps, so the weights are
    the last good ones; this handler logs one clear message, records it in
    ``engine.state.stop_reason`` and terminates the engine (no checkpoint of the
    failed iteration is written by the epoch-level savers).
    """

    def attach(self, engine: Engine) -> None:
        """Attach to the trainer at iteration completion."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        bad = getattr(engine.state, "non_finite", None)
        if not bad:
            return
        parts = ", ".join(f"{k}={v:.4g}" for k, v in bad.items())
        message = (
            f"non-finite loss at epoch {engine.state.epoch}, iteration {engine.state.iteration} ({parts}); "
            "training stopped before the bad update, the weights and checkpoints are the last good ones"
        )
        logger.error(message)
        engine.state.stop_reason = message  # type: ignore[attr-defined]  # read by engines/stages.py
        engine.terminate()


class EpochMeans:
    """Average per-iteration scalars of the trainer's output over each epoch into ``engine.state.metrics``.

    ``train_<key>`` for each key (GAN parts, DESUM/DFM weights) and ``lr``, so
    ``StatsHandler``, ``TensorBoardStatsHandler`` and MLflow's epoch logging
    record them without any handler knowing about GANs.

    With ``csv_path`` the means are also kept per epoch in a CSV (``training.csv`` of a stage:
    ``epoch``, ``lr`` and each key, ``nan`` where a key is not trained in the stage), rewritten
    atomically each epoch; a resumed run drops the rows of the epochs it trains again.

    Args:
        keys: scalar keys of the trainer's output.
        optimizer: optimizer whose first group's learning rate is logged as ``lr``.
        csv_path: the CSV to keep; ``None``: none (ranks other than 0).
        metric_columns: epoch metrics other handlers published (``engine.state.metrics``, e.g. the
            critics' ranking accuracy of :class:`~covid_ct_cgan.engines.critic_ranking.CriticRanking`,
            attached before this one) written as further CSV columns.
    """

    def __init__(self, keys: Sequence[str], optimizer: torch.optim.Optimizer | None = None,
                 csv_path: str | Path | None = None, metric_columns: Sequence[str] = ()) -> None:
        self.keys = list(keys)
        self.metric_columns = list(metric_columns)
        self.optimizer = optimizer
        self.csv_path = Path(csv_path) if csv_path else None
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def attach(self, engine: Engine) -> None:
        """Attach to a trainer."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _reset(self, engine: Engine) -> None:
        self._sums, self._counts = {}, {}
        if self.optimizer is not None:  # the rate this epoch trains with
            engine.state.metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])

    def _accumulate(self, engine: Engine) -> None:
        output = engine.state.output
        first = output[0] if isinstance(output, list) and output else output
        if not isinstance(first, dict):
            return
        for key in self.keys:
            value = first.get(key)
            if isinstance(value, torch.Tensor):
                value = float(value.detach().float().mean())
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._sums[key] = self._sums.get(key, 0.0) + float(value)
                self._counts[key] = self._counts.get(key, 0) + 1

    def _publish(self, engine: Engine) -> None:
        for key, total in self._sums.items():
            engine.state.metrics[f"train_{key}"] = total / self._counts[key]
        if self.csv_path is not None:
            self._write(self.csv_path, engine.state.epoch, engine.state.metrics)

    def _write(self, csv_path: Path, epoch: int, metrics: dict[str, Any]) -> None:
        values = {"lr": metrics.get("lr", math.nan), **{k: metrics.get(f"train_{k}", math.nan) for k in self.keys},
                  **{k: metrics.get(k, math.nan) for k in self.metric_columns}}
        rewrite_epoch_csv(csv_path, epoch, {n: f"{float(v):.6g}" for n, v in values.items()}, list(values),
                          restval="nan")


class DfmWeightSpread:
    """Per epoch, how the learned DFM weight ``b`` is spread over the samples: a histogram and the bound fractions.

    The DFM net maximises a loss that is linear in ``b``, so each sample's
    ``b`` is driven towards a bound of its range (0.1 or 0.9 by default): the
    net learns a per-sample switch between D1 and D2 rather than a blend. This
    handler collects every sample's ``b`` of an epoch (the trainer's
    ``dfm_weights`` output, present while the DFM net learns) and publishes
    ``train_dfm_weight_at_low`` and ``train_dfm_weight_at_high`` (the fractions
    of samples within ``tolerance`` of the range's width from each bound) in
    ``engine.state.metrics``, so the epoch's log, TensorBoard scalars and MLflow
    record them; with ``log_dir`` it also writes a TensorBoard histogram
    ``train_dfm_weight`` per epoch. Attach it before the handlers that log the
    epoch's metrics. Under DDP each rank sees its own samples.

    Args:
        bounds: ``(low, high)`` range of ``b`` (:class:`~covid_ct_cgan.networks.DfmWeight`'s ``low`` and ``high``).
        tolerance: distance from a bound, as a fraction of ``high - low``, that counts as "at the bound".
        log_dir: TensorBoard folder of the histogram; ``None`` writes none.
        key: the per-sample key of the trainer's output.

    Raises:
        ValueError: ``bounds`` not increasing, or ``tolerance`` outside ``(0, 0.5)``.
    """

    def __init__(
        self,
        bounds: Sequence[float] = (0.1, 0.9),
        tolerance: float = 0.01,
        log_dir: str | Path | None = None,
        key: str = "dfm_weights",
    ) -> None:
        low, high = float(bounds[0]), float(bounds[1])
        if not low < high:
            raise ValueError(f"DfmWeightSpread: bounds must be (low, high) with low < high, got {tuple(bounds)}")
        if not 0.0 < tolerance < 0.5:
            raise ValueError(f"DfmWeightSpread: tolerance must be in (0, 0.5), got {tolerance}")
        self.low, self.high, self.tolerance = low, high, float(tolerance)
        self.log_dir = Path(log_dir) if log_dir else None
        self.key = key
        self.values: list[float] = []
        self._writer: Any = None

    def attach(self, engine: Engine) -> None:
        """Attach to a trainer."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)
        engine.add_event_handler(Events.COMPLETED, self.close)

    def _reset(self, engine: Engine) -> None:
        self.values = []

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        for item in items:
            value = item.get(self.key) if isinstance(item, dict) else None
            if value is not None:
                self.values += [v for v in torch.as_tensor(value).detach().float().reshape(-1).tolist() if math.isfinite(v)]

    def fractions(self) -> tuple[float, float]:
        """The fractions of this epoch's samples at the low and at the high bound (``nan`` when none were seen)."""
        if not self.values:
            return math.nan, math.nan
        values = np.asarray(self.values)
        margin = self.tolerance * (self.high - self.low)
        return float(np.mean(values <= self.low + margin)), float(np.mean(values >= self.high - margin))

    def _publish(self, engine: Engine) -> None:
        if not self.values:
            return
        at_low, at_high = self.fractions()
        engine.state.metrics["train_dfm_weight_at_low"] = at_low
        engine.state.metrics["train_dfm_weight_at_high"] = at_high
        if self.log_dir is not None:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.log_dir))
            bins = np.linspace(self.low, self.high, 21)
            self._writer.add_histogram("train_dfm_weight", np.asarray(self.values), engine.state.epoch, bins=bins)
            self._writer.flush()

    def close(self, engine: Engine | None = None) -> None:
        """Close the TensorBoard writer (at the end of the run)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` writing each file under a temporary name, then renaming it.

    MONAI turns Ignite's atomic saving off (for file permissions, which Ignite
    0.5 now handles), so a run killed while saving could leave a truncated
    checkpoint; with this saver a checkpoint is either complete or absent.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                disk = checkpoint.save_handler  # MONAI's DiskSaver: the folder, and a fixed name (best_generator.pt)
                atomic = AtomicDiskSaver(disk.dirname, getattr(disk, "filename", None))
                checkpoint.save_handler = _RemoveAfterSave(atomic, checkpoint.n_saved)  # type: ignore[assignment]


class AtomicDiskSaver(BaseSaveHandler):
    """Ignite save handler that writes each checkpoint through :func:`covid_ct_cgan.fileio.atomic_path`.

    Ignite's own atomic mode leaves its ``tmpXXXXXXXX`` file behind when closing it fails (a full disk)
    and lets the ``OSError`` through; here the temporary file (``.<name>.XXXXXXXX.tmp``, never matched
    by ``*.pt``) is removed on any failure and a full or read-only disk is a
    :class:`~covid_ct_cgan.fileio.WriteError` naming the checkpoint.

    Args:
        dirname: the folder of the checkpoints.
        filename: a fixed file name for every save (MONAI's key-metric and final checkpoints), or ``None``.
        save_on_rank: the process that writes (multi-GPU).
    """

    def __init__(self, dirname: str | Path, filename: str | None = None, save_on_rank: int = 0) -> None:
        self.dirname = Path(dirname)
        self.filename = filename
        self.save_on_rank = save_on_rank

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        with atomic_path(self.dirname / (self.filename or filename), overwrite=True, keep_suffix=False) as tmp:
            torch.save(checkpoint, tmp)

    def remove(self, filename: str) -> None:
        if idist.get_rank() == self.save_on_rank:
            (self.dirname / (self.filename or filename)).unlink(missing_ok=True)


_NUMBERED = re.compile(r"(?P<kind>.+=)(?P<n>\d+)\.pt")  # checkpoint_epoch=3.pt, checkpoint_iteration=10.pt


class _RemoveAfterSave(BaseSaveHandler):
    """Ignite removes the oldest checkpoint before writing the new one; remove it after, so a kill keeps one.

    Ignite only knows the files its own process wrote: those of the same kind that an earlier (killed,
    then resumed) run left, at lower numbers, are removed too once this run has saved past them, so a stage
    keeps ``n_saved`` of each kind.
    """

    def __init__(self, inner: Any, n_saved: int | None = None) -> None:
        self.inner, self.n_saved = inner, n_saved
        self.pending: list[str] = []

    def __call__(self, checkpoint: Any, filename: str, metadata: Any = None) -> None:
        self.inner(checkpoint, filename, metadata)
        fixed = getattr(self.inner, "filename", None)  # MONAI's fixed name (best_generator.pt): just replaced
        for old in self.pending:
            if fixed is None and old != filename:
                self.inner.remove(old)
        self.pending = []
        if fixed is None:
            self._remove_earlier_runs(filename)

    def _remove_earlier_runs(self, filename: str) -> None:
        saved = _NUMBERED.fullmatch(filename)
        folder = getattr(self.inner, "dirname", None)
        if saved is None or folder is None or not self.n_saved:
            return
        earlier = []
        for path in Path(folder).iterdir():
            found = _NUMBERED.fullmatch(path.name)
            if found and found["kind"] == saved["kind"] and int(found["n"]) < int(saved["n"]):
                earlier.append((int(found["n"]), path))
        for _, path in sorted(earlier, reverse=True)[self.n_saved - 1 :]:
            path.unlink(missing_ok=True)
            logger.info(f"removed {path}: superseded by {filename}")

    def remove(self, filename: str) -> None:
        self.pending.append(filename)


class TrainingCheckpointSaver(AtomicCheckpointSaver):
    """:class:`AtomicCheckpointSaver` that also saves the engine it is attached to, as ``trainer``.

    The config cannot put the trainer in ``save_dict`` (the trainer is built
    from its handlers, a circular reference), so the engine's state (epoch,
    iteration) is added here; :func:`covid_ct_cgan.engines.stages.resume`
    restores it with the other objects.
    """

    def attach(self, engine: Engine) -> None:
        """Add the engine to the saved objects, then attach as ``CheckpointSaver``."""
        self.save_dict["trainer"] = engine
        super().attach(engine)

    def interval_completed(self, engine: Engine) -> None:
        """Save, except mid-epoch savers at an epoch's last iteration: the epoch-level checkpoint,
        written after the epoch-end handlers (LR step, validation), is the resume point there.
        Nothing is saved after an iteration with a non-finite loss (the run stops; the last good
        checkpoints stay the newest)."""
        if getattr(engine.state, "non_finite", None):
            return
        length = engine.state.epoch_length
        if not self.epoch_level and length and engine.state.iteration % length == 0:
            return
        super().interval_completed(engine)


def attached_mlflow_handler(engine: Engine) -> Any:
    """The ``MLFlowHandler`` attached to ``engine`` (by ``--tracking mlflow``), or ``None``."""
    from monai.handlers import MLFlowHandler

    trackers = attached(engine, MLFlowHandler)
    return trackers[0] if trackers else None


MLFLOW_PARAMS_PER_BATCH = 100  # MLflow refuses a log_batch call with more params (its MAX_PARAMS_TAGS_PER_BATCH)


def log_missing_params(client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """Log the ``params`` that the MLflow run does not hold yet, through MLflow's public client.

    A param already logged (a resumed run) keeps its value: MLflow refuses to change one.
    Values are logged as strings; MLflow itself truncates one longer than its limit.

    Args:
        client: an ``mlflow.tracking.MlflowClient`` (``MLFlowHandler.client``).
        run_id: the run to log to.
        params: name -> value.
    """
    from mlflow.entities import Param

    logged = client.get_run(run_id).data.params
    missing = [Param(str(key), str(value)) for key, value in params.items() if str(key) not in logged]
    for start in range(0, len(missing), MLFLOW_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=missing[start : start + MLFLOW_PARAMS_PER_BATCH])


ITERATION_SUFFIX = "_iteration"  # MLflow: each iteration's value, beside the epoch mean of the same name


class TrackingExtras:
    """What MONAI's ``--tracking mlflow`` patch does not record: hyper-parameters and pictures.

    With an ``MLFlowHandler`` attached to the trainer (``--tracking mlflow``)
    this logs ``params`` and the run's own config once, and after each epoch the
    newest sample grid and the validation curve and table as artifacts of the
    same run. Without one it does nothing.

    The config is this run's (a training stage's: ``stage`` set, the command's
    overrides, the stage's section and the tracking handlers in), written to ``config_file`` and logged
    as ``config/<name>``. ``train.yaml`` sets ``save_execute_config: false`` so
    MONAI neither writes ``config_<time>.json`` files shared by the stages of a run
    nor logs a second copy.

    Args:
        params: hyper-parameters to record.
        files: files logged as artifacts after each epoch (missing ones are skipped).
        latest_in: folders whose newest PNG is logged after each epoch (the sample grids).
        config: the run's command (:func:`covid_ct_cgan.settings.current_command`) or raw config;
            ``None``: no config is logged.
        config_file: where the config is written before it is logged (required with ``config``).
    """

    def __init__(
        self,
        params: dict[str, Any],
        files: Sequence[str] = (),
        latest_in: Sequence[str] = (),
        config: Any = None,
        config_file: str | None = None,
    ) -> None:
        self.params = {k: str(v) for k, v in params.items()}
        self.files = [Path(f) for f in files]
        self.latest_in = [Path(f) for f in latest_in]
        self.config = config
        self.config_file = Path(config_file) if config_file else None

    def attach(self, engine: Engine) -> None:
        """Attach to a trainer that records its handlers (:class:`~.attached.RecordsAttachedHandlers`: the
        :class:`~covid_ct_cgan.engines.ConditionalGanTrainer`), where it finds the MLflow handler.

        Raises:
            TypeError: ``engine`` does not record its handlers.
        """
        check_records_handlers(engine)
        engine.add_event_handler(Events.EPOCH_STARTED(once=1), self._log_params)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._log_files)

    def _log_params(self, engine: Engine) -> None:
        tracker = attached_mlflow_handler(engine)
        if tracker is None:
            return
        epoch_means = {f"train_{key}" for means in attached(engine, EpochMeans) for key in means.keys}
        if tracker.tag_name in epoch_means:
            # MONAI's tracking settings log each iteration's loss as `train_loss`, the name of EpochMeans' epoch
            # mean: two series in one history, at overlapping steps (iterations and epochs)
            tracker.tag_name = f"{tracker.tag_name}{ITERATION_SUFFIX}"
        if tracker.cur_run is None:
            return
        log_missing_params(tracker.client, tracker.cur_run.info.run_id, self.params)
        if self.config is not None and self.config_file is not None:
            from ..fileio import write_json

            raw = self.config.load() if hasattr(self.config, "load") else dict(self.config)
            write_json(raw, self.config_file, overwrite=True)
            tracker.client.log_artifact(tracker.cur_run.info.run_id, str(self.config_file), artifact_path="config")

    def _log_files(self, engine: Engine) -> None:
        tracker = attached_mlflow_handler(engine)
        if tracker is None or tracker.cur_run is None:
            return
        run_id = tracker.cur_run.info.run_id
        for path in self.files:
            if path.is_file():
                tracker.client.log_artifact(run_id, str(path))
        for folder in self.latest_in:
            pictures = sorted(p for p in folder.glob("epoch_*.png"))
            if pictures:
                tracker.client.log_artifact(run_id, str(pictures[-1]), artifact_path=folder.name)
