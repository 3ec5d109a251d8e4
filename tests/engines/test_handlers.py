"""Trainer handlers on a plain Ignite engine: the spread of the learned DFM weight, MLflow's params and losses."""

from __future__ import annotations

import math
import types
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from covid_ct_cgan.engines.attached import RecordsAttachedHandlers, attached
from covid_ct_cgan.engines.handlers import DfmWeightSpread, log_missing_params


def _engine(batches: list[list[float]]) -> Engine:
    """An engine whose outputs are decollated like the trainer's: one dict per sample with its own b."""

    def step(engine: Engine, batch: list[float]) -> list[dict]:
        return [{"loss": 1.0, "dfm_weights": torch.tensor(b)} for b in batch]

    engine = Engine(step)
    engine.state.metrics = {}
    return engine


def test_dfm_weight_spread_counts_samples_at_each_bound_and_writes_a_histogram(tmp_path: Path) -> None:
    # range 0.1..0.9, tolerance 1 % of it (0.008): at low <= 0.108, at high >= 0.892
    epochs = [[[0.1001, 0.5], [0.8995, 0.9]], [[0.107, 0.109], [0.893, 0.891]]]
    engine = _engine(epochs[0])
    spread = DfmWeightSpread(bounds=(0.1, 0.9), tolerance=0.01, log_dir=tmp_path)
    spread.attach(engine)
    published: list[tuple[float, float]] = []
    engine.add_event_handler(
        Events.EPOCH_COMPLETED,
        lambda e: published.append((e.state.metrics["train_dfm_weight_at_low"], e.state.metrics["train_dfm_weight_at_high"])),
    )
    data = epochs[0] + epochs[1]
    engine.run(data, max_epochs=2, epoch_length=2)
    assert published == [(0.25, 0.5), (0.25, 0.25)]
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    events.Reload()
    histograms = events.Histograms("train_dfm_weight")
    assert [h.step for h in histograms] == [1, 2]
    assert [h.histogram_value.num for h in histograms] == [4, 4]
    assert histograms[1].histogram_value.min == pytest.approx(0.107)
    assert histograms[1].histogram_value.max == pytest.approx(0.893)


def test_dfm_weight_spread_without_values_publishes_nothing(tmp_path: Path) -> None:
    engine = Engine(lambda e, b: [{"loss": 1.0}])
    engine.state.metrics = {}
    spread = DfmWeightSpread(log_dir=tmp_path / "tb")
    spread.attach(engine)
    engine.run([0, 1], max_epochs=1)
    assert "train_dfm_weight_at_low" not in engine.state.metrics
    assert not (tmp_path / "tb").exists()
    assert spread.fractions() == pytest.approx((math.nan, math.nan), nan_ok=True)


@pytest.mark.parametrize("bounds, tolerance", [((0.9, 0.1), 0.01), ((0.1, 0.9), 0.0), ((0.1, 0.9), 0.5)])
def test_dfm_weight_spread_refuses_bad_settings(bounds: tuple, tolerance: float) -> None:
    with pytest.raises(ValueError, match="DfmWeightSpread"):
        DfmWeightSpread(bounds=bounds, tolerance=tolerance)


def test_checkpoints_left_by_a_killed_run_are_removed_once_superseded(tmp_path: Path) -> None:
    from covid_ct_cgan.engines.handlers import TrainingCheckpointSaver

    # the killed run wrote these; the resumed run (iterations 11..16, 4 an epoch) knows nothing of them
    for name in ("checkpoint_iteration=10.pt", "checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"):
        (tmp_path / name).write_bytes(b"earlier run")
    net = torch.nn.Linear(1, 1)
    engine = Engine(lambda e, b: None)
    for epoch_level, interval, n_saved in ((True, 1, 2), (False, 3, 1)):
        TrainingCheckpointSaver(save_dir=str(tmp_path), save_dict={"net": net}, epoch_level=epoch_level,
                                save_interval=interval, n_saved=n_saved).attach(engine)

    @engine.on(Events.STARTED)
    def resumed(e: Engine) -> None:
        e.state.iteration, e.state.epoch = 10, 2

    engine.run(range(4), max_epochs=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_epoch=3.pt", "checkpoint_epoch=4.pt", "checkpoint_iteration=15.pt"]


class _FakeMlflowClient:
    """The two calls of MLflow's client that :func:`log_missing_params` makes, on a run holding ``logged``."""

    def __init__(self, logged: dict[str, str]) -> None:
        self.logged = logged
        self.batches: list[list[tuple[str, str]]] = []

    def get_run(self, run_id: str) -> types.SimpleNamespace:
        assert run_id == "r1"
        return types.SimpleNamespace(data=types.SimpleNamespace(params=dict(self.logged)))

    def log_batch(self, run_id: str, params: list) -> None:
        assert run_id == "r1"
        self.batches.append([(p.key, p.value) for p in params])


def test_log_missing_params_keeps_logged_values_and_batches_by_mlflows_limit() -> None:
    client = _FakeMlflowClient({"stage": "global"})
    log_missing_params(client, "r1", {"stage": "local", "ngf": 32, **{f"p{i:03d}": i for i in range(150)}})
    assert [len(b) for b in client.batches] == [100, 51]  # MLflow takes at most 100 params a call
    logged = dict(pair for batch in client.batches for pair in batch)
    assert "stage" not in logged  # a resumed run keeps the value it holds (MLflow refuses to change one)
    assert logged["ngf"] == "32" and logged["p149"] == "149"
    client = _FakeMlflowClient({"stage": "global"})
    log_missing_params(client, "r1", {"stage": "global"})
    assert client.batches == []


class _RecordingEngine(RecordsAttachedHandlers, Engine):
    """A plain Ignite engine that records its handlers, as the GAN trainer does."""


def test_attached_finds_handlers_by_class_in_attach_order_once_each() -> None:
    from covid_ct_cgan.engines.handlers import EpochMeans, TrackingExtras

    engine = _RecordingEngine(lambda e, b: None)
    first, second = EpochMeans(keys=["loss"]), EpochMeans(keys=["d_loss"])
    first.attach(engine)
    TrackingExtras(params={}).attach(engine)
    second.attach(engine)
    engine.add_event_handler(Events.COMPLETED, lambda e: None)
    assert attached(engine, EpochMeans) == [first, second]  # each attaches several methods: listed once
    assert len(attached(engine, TrackingExtras)) == 1
    assert attached(engine, Path) == []


def test_tracking_extras_refuses_an_engine_that_does_not_record_its_handlers() -> None:
    from covid_ct_cgan.engines.handlers import TrackingExtras

    with pytest.raises(TypeError, match="records its handlers"):
        TrackingExtras(params={}).attach(Engine(lambda e, b: None))
    with pytest.raises(TypeError, match="RecordsAttachedHandlers"):
        attached(Engine(lambda e, b: None), Path)


def test_the_gan_trainer_records_its_handlers() -> None:
    from covid_ct_cgan.engines import ConditionalGanTrainer

    assert issubclass(ConditionalGanTrainer, RecordsAttachedHandlers)


@pytest.mark.integration
def test_mlflow_keeps_iteration_losses_apart_from_the_epoch_means(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from monai.handlers import MLFlowHandler

    from covid_ct_cgan.engines.handlers import EpochMeans, TrackingExtras

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    engine = _RecordingEngine(lambda e, b: {"loss": torch.tensor(float(e.state.iteration))})
    EpochMeans(keys=["loss"]).attach(engine)
    TrackingExtras(params={"stage": "global"}).attach(engine)
    # as MONAI's `--tracking mlflow` settings attach it (train.yaml's handlers first)
    MLFlowHandler(tracking_uri=uri, experiment_name="e", iteration_log=True, epoch_log=True, tag_name="train_loss",
                  output_transform=lambda out: out["loss"], close_on_complete=True).attach(engine)
    engine.run(range(3), max_epochs=2)
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("e").experiment_id])[0]
    epochs = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_loss")]
    iterations = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_loss_iteration")]
    assert sorted(epochs) == [(1, 2.0), (2, 5.0)]
    assert sorted(iterations) == [(i, float(i)) for i in range(1, 7)]
    params = client.get_run(run.info.run_id).data.params  # with MONAI's own (max_epochs, epoch_length)
    assert params["stage"] == "global"
    log_missing_params(client, run.info.run_id, {"stage": "local", "ngf": 32})  # as a resumed run: nothing refused
    assert client.get_run(run.info.run_id).data.params == {**params, "ngf": "32"}


def test_periodic_validation_runs_every_interval_and_after_the_last_epoch() -> None:
    from covid_ct_cgan.engines.handlers import PeriodicValidation

    validated: list[int] = []

    class Recording(PeriodicValidation):  # the schedule alone: what runs at each chosen epoch is MONAI's
        def __call__(self, engine: Engine) -> None:
            validated.append(engine.state.epoch)

    for interval, epochs, expected in ((3, 7, [3, 6, 7]), (1, 3, [1, 2, 3]), (5, 5, [5])):
        validated.clear()
        trainer = Engine(lambda e, b: None)
        Recording(validator=None, interval=interval, epoch_level=True).attach(trainer)
        trainer.run(range(2), max_epochs=epochs)
        assert validated == expected  # the last epoch once, never twice
