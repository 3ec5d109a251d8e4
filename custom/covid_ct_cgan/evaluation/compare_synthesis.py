"""Two synthesis runs of the same inputs side by side: how far a fast or quantized path moved the output.

Pairs the outputs of two synthesis folders (``inference.yaml``'s ``output_dir``: ``manifest.csv``,
``images/``, ``labels/``) by output name, and inside the lung of each slice's label map (the region the
generator draws) measures PSNR against the reference (over the intensity window: 255 for 8-bit
outputs, the window width in HU otherwise), the largest and the 99th-percentile absolute difference.
Writes ``compare.csv`` (one row a slice, then ``all``) and ``compare.png`` (reference | other |
difference x10 for the slices with the most lung), atomically.

    python -m covid_ct_cgan.evaluation.compare_synthesis REFERENCE_DIR OTHER_DIR --output_dir OUT
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..errors import InputError, exit_on_input_error
from ..figures import pyplot, write_figure
from ..fileio import atomic_path

PICTURE_SLICES = 4
DIFFERENCE_GAIN = 10.0  # the difference column is amplified so that a few HU show


def _manifest(folder: Path) -> dict[str, dict[str, str]]:
    path = folder / "manifest.csv"
    if not path.is_file():
        raise InputError("not a synthesis output folder (no manifest.csv)", folder)
    with path.open(newline="") as f:
        return {row["output"]: row for row in csv.DictReader(f)}


def _load(path: Path) -> np.ndarray:
    import nibabel as nib

    try:
        return np.asarray(cast(nib.Nifti1Image, nib.load(str(path))).dataobj)  # NIfTI-2 images subclass it
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for damaged files
        raise InputError(f"cannot read the image ({type(err).__name__}: {str(err)[:200]})", path) from None


def _data_range(folder: Path, image: np.ndarray) -> tuple[float, str]:
    """The intensity range PSNR is taken over, and the unit of the differences."""
    if image.dtype == np.uint8:
        return 255.0, "8-bit"
    settings = json.loads((folder / "settings.json").read_text()) if (folder / "settings.json").is_file() else {}
    return float(settings.get("window_width", 1500.0)), "HU"


def compare_synthesis(reference: str | Path, other: str | Path, output_dir: str | Path,
                      pictures: int = PICTURE_SLICES, overwrite: bool = False) -> dict[str, Any]:
    """Compare ``other``'s outputs with ``reference``'s inside the lung; write ``compare.csv`` and ``compare.png``.

    Args:
        reference: the reference synthesis folder (e.g. fp32 or bf16).
        other: the compared folder (e.g. ``precision: int8``), made from the same inputs.
        output_dir: where the table and the picture go.
        pictures: slices in the picture (those with the most lung).
        overwrite: replace an existing ``compare.csv`` / ``compare.png``.

    Returns:
        The ``all`` row: ``slices``, ``psnr_db`` (pooled over every lung pixel), ``max_abs``, ``p99_abs``, ``unit``.

    Raises:
        InputError: a folder is not a synthesis output, the two share no output, or shapes differ.
    """
    reference, other, output_dir = Path(reference), Path(other), Path(output_dir)
    ref_rows, other_rows = _manifest(reference), _manifest(other)
    names = sorted(set(ref_rows) & set(other_rows))
    if not names:
        raise InputError(f"no output of {reference} is in this folder's manifest.csv: not the same inputs", other)
    rows, pooled, diffs, shown = [], [0.0, 0], [], []
    data_range, unit = 0.0, ""
    for name in names:
        stored = _load(reference / name)
        a, b = stored.astype(np.float64), _load(other / name).astype(np.float64)
        if a.shape != b.shape:
            raise InputError(f"{name}: shape {b.shape} here, {a.shape} in {reference}", other)
        lung = _load(reference / ref_rows[name]["label_map"]) > 0
        if not data_range:
            data_range, unit = _data_range(reference, stored)
        d = np.abs(a - b)[lung]
        if d.size == 0:
            continue
        mse = float(np.mean(d**2))
        pooled = [pooled[0] + float(np.sum(d**2)), pooled[1] + d.size]
        diffs.append(d)
        rows.append({"output": name, "lung_pixels": int(d.size), "psnr_db": _psnr(mse, data_range),
                     "max_abs": float(d.max()), "p99_abs": float(np.percentile(d, 99)), "unit": unit})
        shown.append((int(d.size), name, a, b, lung, rows[-1]["max_abs"]))
    if not rows:
        raise InputError("no output has lung in its label map: nothing to compare", reference)
    every = np.concatenate(diffs)
    summary = {"output": "all", "lung_pixels": int(every.size), "psnr_db": _psnr(pooled[0] / pooled[1], data_range),
               "max_abs": float(every.max()), "p99_abs": float(np.percentile(every, 99)), "unit": unit}
    output_dir.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(summary))
    writer.writeheader()
    writer.writerows([*rows, summary])
    with atomic_path(output_dir / "compare.csv", overwrite=overwrite) as tmp:
        tmp.write_text(text.getvalue())
    shown = sorted(shown, key=lambda s: -s[0])[: max(1, int(pictures))]
    _picture(shown, reference.name, other.name, data_range, unit, output_dir / "compare.png", overwrite)
    return {**summary, "slices": len(rows)}


def _psnr(mse: float, data_range: float) -> float:
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _picture(shown: list, reference_name: str, other_name: str, data_range: float, unit: str, path: Path,
             overwrite: bool) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(len(shown), 3, figsize=(9, 3 * len(shown)), squeeze=False)
    for row, (_, name, a, b, lung, largest) in zip(axes, shown):
        low, high = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        row[0].imshow(a.T, cmap="gray", vmin=low, vmax=high)
        row[1].imshow(b.T, cmap="gray", vmin=low, vmax=high)
        diff = np.where(lung, np.abs(a - b), 0.0) * DIFFERENCE_GAIN
        row[2].imshow(diff.T, cmap="magma", vmin=0, vmax=data_range / 4)
        row[0].set_title(f"{reference_name}: {Path(name).name}", fontsize=8)
        row[1].set_title(other_name, fontsize=8)
        row[2].set_title(f"|difference| x{DIFFERENCE_GAIN:g} in the lung (max {largest:.0f} {unit})", fontsize=8)
        for ax in row:
            ax.axis("off")
    write_figure(fig, path, overwrite=overwrite)


@exit_on_input_error
def main(argv: list[str] | None = None) -> None:
    """Command line: ``REFERENCE_DIR OTHER_DIR --output_dir OUT [--pictures N] [--overwrite]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", help="reference synthesis output folder (e.g. fp32 or bf16)")
    parser.add_argument("other", help="synthesis output folder of the same inputs to compare (e.g. int8)")
    parser.add_argument("--output_dir", required=True, help="where compare.csv and compare.png are written")
    parser.add_argument("--pictures", type=int, default=PICTURE_SLICES, help="slices in the picture")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing compare.csv / compare.png")
    args = parser.parse_args(argv)
    summary = compare_synthesis(args.reference, args.other, args.output_dir, args.pictures, args.overwrite)
    print(f"{summary['slices']} slices: lung PSNR {summary['psnr_db']:.2f} dB, largest difference "
          f"{summary['max_abs']:.1f} {summary['unit']}, 99th percentile {summary['p99_abs']:.1f}; "
          f"{Path(args.output_dir) / 'compare.csv'}, {Path(args.output_dir) / 'compare.png'}")


if __name__ == "__main__":
    main()
