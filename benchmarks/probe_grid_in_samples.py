"""Probe: the up-sampling grid in a training run's sample grids, epoch by epoch, without a finished generator.

Each stage folder's ``samples/epoch_NNNN.png`` (``SampleGridSaver``: per validation slice, label map | real |
generated | difference, 512-px tiles at the recipe's settings) holds the generated slices of that epoch; for a
lesion-inpainting run they are composites, so the region the generator drew is where they differ from the real
tile. The grid peaks of :mod:`covid_ct_cgan.evaluation.realism` are taken there (generated and, at the same
windows, real), one row per run, stage and epoch::

    python benchmarks/probe_grid_in_samples.py transposed=work_a/output_lesion_inpainting \\
        resize=work_b/output_lesion_inpainting --stage local --epochs 10,20,30 --out grid.csv

Only for composites (``condition: map+context``): a map-only run redraws the whole lung and its tile differs from
the real one everywhere.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from covid_ct_cgan.errors import InputError, exit_on_input_error
from covid_ct_cgan.evaluation.realism import GRID_FREQUENCIES, grid_peaks, region_power_spectrum

# a column name for each grid frequency (cycles a pixel from row to row, from column to column)
FREQUENCY_NAMES = {(0.5, 0.0): "half_rows", (0.0, 0.5): "half_cols", (0.5, 0.5): "half_both",
                   (0.25, 0.0): "quarter_rows", (0.0, 0.25): "quarter_cols", (0.25, 0.25): "quarter_both"}
TILE = 512  # the sample grid's tile at the recipe's 512-px grid, with 2-px white separators
SEPARATOR = 2


def drawn_tiles(path: Path, tile: int = TILE) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(generated, real, region drawn)`` of every row of a sample grid (grey levels)."""
    picture = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    step = tile + SEPARATOR
    if (picture.shape[1] + SEPARATOR) % step:
        raise InputError(f"is not a sample grid of {tile}-px tiles (width {picture.shape[1]})", path)
    out = []
    for row in range((picture.shape[0] + SEPARATOR) // step):
        real = picture[row * step:row * step + tile, step:step + tile]
        generated = picture[row * step:row * step + tile, 2 * step:2 * step + tile]
        drawn = ndimage.binary_closing(ndimage.binary_erosion(np.abs(generated - real) > 0), iterations=3)
        out.append((generated, real, drawn))
    return out


def columns() -> list[str]:
    names = [FREQUENCY_NAMES[f] for f in GRID_FREQUENCIES]
    return ["run", "stage", "epoch", "windows", "grid_peak", "grid_peak_real", *names]


def measure(runs: dict[str, Path], stage: str, epochs: list[int]) -> list[dict[str, object]]:
    """One row per run and epoch (see the module docstring)."""
    rows: list[dict[str, object]] = []
    for name, root in runs.items():
        for epoch in epochs:
            path = root / stage / "samples" / f"epoch_{epoch:04d}.png"
            if not path.is_file():
                raise InputError("no such sample grid (has the stage reached that epoch?)", path)
            tiles = drawn_tiles(path)
            power, real, windows = region_power_spectrum([g for g, _, _ in tiles], [m for _, _, m in tiles],
                                                         reference=[r for _, r, _ in tiles])
            peaks = grid_peaks(power)
            row: dict[str, object] = {"run": name, "stage": stage, "epoch": epoch, "windows": windows,
                                      "grid_peak": round(max(peaks.values()), 2),
                                      "grid_peak_real": round(max(grid_peaks(real).values()), 2) if real is not None else ""}
            row.update({FREQUENCY_NAMES[f]: round(v, 2) for f, v in peaks.items()})
            rows.append(row)
            print(", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return rows


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=OUTPUT_DIR", help="a training run's output_dir")
    parser.add_argument("--stage", default="local")
    parser.add_argument("--epochs", default="10,20,30")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        name, _, folder = item.partition("=")
        if not folder:
            raise InputError(f"expected NAME=OUTPUT_DIR, got {item!r}")
        runs[name] = Path(folder)
    rows = measure(runs, args.stage, [int(e) for e in args.epochs.split(",")])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns())
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
