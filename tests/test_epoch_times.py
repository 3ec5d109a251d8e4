"""``benchmarks/epoch_times.py``: epochs split by whether validation ran, from a training log."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("epoch_times", REPO_ROOT / "benchmarks" / "epoch_times.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _epoch(n: int, seconds: float) -> str:
    return f"2026-12-07 - ignite.engine.engine.ConditionalGanTrainer - INFO - Epoch[{n}] Complete. Time taken: 00:00:{seconds:06.3f}"


VALIDATED = "2026-12-07 - ignite.engine.engine.SupervisedEvaluator - INFO - Engine run finished. Time taken: 00:00:04.1"
START = "2026-12-07 - ignite.engine.engine.ConditionalGanTrainer - INFO - Engine run resuming from iteration 0, epoch 0 until 6 epochs"


def test_epochs_are_split_by_validation_and_the_first_of_each_start_left_out(tmp_path: Path) -> None:
    m = _module()
    lines = [START, _epoch(1, 40.0), _epoch(2, 20.0), VALIDATED, _epoch(3, 30.0), _epoch(4, 20.0),
             START, VALIDATED, _epoch(5, 50.0), _epoch(6, 20.0), VALIDATED, _epoch(7, 30.0)]
    assert m.epoch_times(lines) == ([30.0, 30.0], [20.0, 20.0, 20.0])
    log = tmp_path / "training.log"
    log.write_text("\n".join(lines))
    text = m.report(log)
    assert "Validation and sample grid: 10.0 s, 50 % of a training-only epoch." in text
    assert "| 5 | 0.73 |" in text  # (4 x 20 + 30) / (5 x 30)


def test_a_log_without_both_kinds_of_epoch_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "training.log"
    log.write_text("\n".join([START, _epoch(1, 40.0), VALIDATED, _epoch(2, 30.0)]))
    with pytest.raises(SystemExit, match="needs epochs with and without validation"):
        _module().report(log)
