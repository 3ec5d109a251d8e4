"""What each epoch's validation and sample grid cost a training stage, read from its log.

Usage, from the repository root::

    python benchmarks/epoch_times.py LOG [--out FILE.md]

``LOG`` is the console log of a ``training`` / ``train_*`` run (Ignite's ``Epoch[N] Complete. Time taken``
lines). An epoch whose validation ran (``SupervisedEvaluator`` lines before the trainer's ``Complete`` line: with
``validate_every`` N, every N-th epoch and the last) also drew its sample grid; the others only trained and ranked
the critics. The script prints the median time of both kinds of epoch (the first epoch of a run, which builds the
caches, left out), their ratio, and what ``validate_every`` 1 / 2 / 5 / 10 would cost relative to 1, all from
this one run on one machine.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

EPOCH = re.compile(r"ConditionalGanTrainer - INFO - Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d+):([\d.]+)")
STARTED = re.compile(r"ConditionalGanTrainer - INFO - Engine run (?:resuming|starting)")
VALIDATED = re.compile(r"SupervisedEvaluator - INFO - Engine run finished")


def epoch_times(lines: list[str]) -> tuple[list[float], list[float]]:
    """``(validated, not validated)`` epoch times in seconds; the first epoch after each (re)start is left out."""
    validated: list[float] = []
    trained: list[float] = []
    saw_validation, first = False, True
    for line in lines:
        if STARTED.search(line):
            first = True
        elif VALIDATED.search(line):
            saw_validation = True
        elif found := EPOCH.search(line):
            seconds = int(found[2]) * 3600 + int(found[3]) * 60 + float(found[4])
            if not first:
                (validated if saw_validation else trained).append(seconds)
            saw_validation, first = False, False
    return validated, trained


def report(log: Path) -> str:
    """The Markdown table of ``log``'s epoch times."""
    validated, trained = epoch_times(log.read_text(errors="replace").splitlines())
    if not validated or not trained:
        raise SystemExit(f"ERROR: {log} needs epochs with and without validation (train with --validate_every 2 or more)")
    v, t = statistics.median(validated), statistics.median(trained)
    lines = [f"Epoch times of `{log}` (medians; the first epoch of each start left out):", "",
             "| epochs | count | median s |", "|---|---|---|",
             f"| with validation and sample grid | {len(validated)} | {v:.1f} |",
             f"| training and critic ranking only | {len(trained)} | {t:.1f} |", "",
             f"Validation and sample grid: {v - t:.1f} s, {100 * (v - t) / t:.0f} % of a training-only epoch.", "",
             "| validate_every | stage time relative to 1 |", "|---|---|"]
    lines += [f"| {n} | {((n - 1) * t + v) / (n * v):.2f} |" for n in (1, 2, 5, 10)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--out", type=Path, help="also write the table here (Markdown)")
    args = parser.parse_args(argv)
    text = report(args.log)
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
