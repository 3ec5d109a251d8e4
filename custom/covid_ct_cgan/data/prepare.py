"""The ``prepare`` step: raw dataset -> per-slice NIfTI files, ``datalist.json`` and a summary.

:func:`prepare_dataset` reads any layout of :mod:`.readers`, keeps the slices
that hold infection, merges lung and lesion masks into label maps
(:func:`covid_ct_cgan.labels.merge_label_map`), derives missing lung masks
(:mod:`.lung_mask`), splits the slices and writes, all under a temporary
folder that only replaces ``data_dir`` once everything is read, checked and
written (a bad input leaves no partial output)::

    data_dir/
        images/<patient>_<slice:04d>.nii.gz   2D slice, int16 HU or uint8 8-bit
        labels/<patient>_<slice:04d>.nii.gz   uint8 label map (0 outside lung .. 3/4)
        datalist.json                          MONAI datalist + "properties"
        summary.json, summary.md               slices, patients, class fractions

Splits: ``training`` + ``validation`` (the synthesis-train part; validation
is carved from it), ``test_synthesis`` and ``test_segmentation``, in the
ratio ``split_ratios`` (paper: 300/73/73). ``split="patient"`` (default) puts
whole patients into one split (training and validation included, unless
training has a single patient); ``split="paper"`` shuffles slices, as the
paper did, which leaks patients across splits.

:func:`run_prepare` is the bundle entry point (bad input: one ``ERROR:``
line, exit status 2); :func:`prepare_if_needed` generates the phantom when no
dataset is given and skips the work when ``data_dir`` is already prepared
with the same settings from the same raw files.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .. import labels as lab
from ..errors import InputError, exit_on_input_error
from ..fileio import staged_directory, write_json, write_nifti, write_text
from ..intensity import to_storage
from .lung_mask import derive_lung_mask
from .readers import BINARY_255_VALUES, Case, detect_layout, find_cases, load_case

SPLITS: tuple[str, ...] = ("training", "validation", "test_synthesis", "test_segmentation")
SPLIT_MODES: tuple[str, ...] = ("patient", "paper")
DATALIST = "datalist.json"
PHANTOM_MARKER = ".phantom.json"
LUNG_DERIVED_NOTE = "lung masks derived for {n} slices (threshold + largest components)"


def safe_name(text: str) -> str:
    """File-name-safe form of a patient id (letters, digits, ``.``, ``_``, ``-``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "case"


# --------------------------------------------------------------------------- split


def _rounded_sizes(total: int, ratios: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of ``total * ratio``, each part >= 1 when possible."""
    weights = np.asarray(ratios, dtype=np.float64) / float(np.sum(ratios))
    raw = weights * total
    sizes = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - sizes), kind="stable")[: total - int(sizes.sum())]:
        sizes[i] += 1
    if total >= len(sizes):
        for i in range(len(sizes)):
            while sizes[i] == 0:
                donor = int(np.argmax(sizes))
                sizes[donor] -= 1
                sizes[i] += 1
    return sizes.tolist()


def _check_split_args(split: str, split_ratios: Sequence[float], validation_fraction: float) -> list[float]:
    if split not in SPLIT_MODES:
        raise InputError(f"unknown split {split!r}; expected one of {', '.join(SPLIT_MODES)}")
    try:
        ratios = [float(r) for r in split_ratios]
    except (TypeError, ValueError):
        ratios = []
    if len(ratios) != 3 or any(not np.isfinite(r) or r <= 0 for r in ratios):
        raise InputError(
            "split_ratios must be three positive numbers (synthesis-train, synthesis-test, segmentation-test), "
            f"got {split_ratios!r}"
        )
    if not 0.0 <= float(validation_fraction) < 1.0:
        raise InputError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    return ratios


def _assign_patients(counts: dict[str, int], ratios: Sequence[float], rng: np.random.Generator) -> list[list[str]]:
    """Greedy: largest patient first, into the split furthest below its target; no split left empty."""
    patients = [str(p) for p in rng.permutation(sorted(counts))]
    patients.sort(key=lambda p: -counts[p])  # stable: ties keep the seeded order
    total = sum(counts.values())
    targets = [total * r / float(sum(ratios)) for r in ratios]
    groups: list[list[str]] = [[] for _ in ratios]
    filled = [0] * len(ratios)
    for i, patient in enumerate(patients):
        empty = [j for j in range(len(ratios)) if not groups[j]]
        choices = empty if len(patients) - i <= len(empty) else range(len(ratios))
        j = max(choices, key=lambda k: (targets[k] - filled[k], -k))
        groups[j].append(patient)
        filled[j] += counts[patient]
    return groups


def split_items(
    items: list[dict[str, Any]],
    split: str = "patient",
    split_ratios: Sequence[float] = (300, 73, 73),
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Split slice items into training / validation / test_synthesis / test_segmentation.

    Args:
        items: dicts with at least ``"patient"`` (and a unique ``"image"``).
        split: ``"patient"`` (whole patients per split) or ``"paper"`` (slices shuffled).
        split_ratios: synthesis-train : synthesis-test : segmentation-test.
        validation_fraction: part of synthesis-train moved to ``validation``
            (at least one slice, or one patient, when there is more than one).
        seed: random seed; the split is a function of items, settings and seed.

    Returns:
        ``(splits, notes)``: the items of each split (sorted by image name), and
        remarks for the summary.

    Raises:
        InputError: unknown mode, bad ratios, too few slices or patients.
    """
    ratios = _check_split_args(split, split_ratios, validation_fraction)
    rng = np.random.default_rng(seed)
    order = sorted(items, key=lambda it: it["image"])
    split_fn = _split_slices if split == "paper" else _split_patients
    parts, notes = split_fn(order, ratios, validation_fraction, rng)
    return {name: sorted(part, key=lambda it: it["image"]) for name, part in zip(SPLITS, parts)}, notes


Parts = tuple[list[dict[str, Any]], ...]


def _split_slices(
    order: list[dict[str, Any]], ratios: list[float], validation_fraction: float, rng: np.random.Generator
) -> tuple[Parts, list[str]]:
    """Paper mode: shuffled slices cut in the ratio; validation = first slices of synthesis-train."""
    if len(order) < 3:
        raise InputError(f"split=paper needs at least 3 slices, found {len(order)}")
    shuffled = [order[i] for i in rng.permutation(len(order))]
    n_train, n_test, _ = _rounded_sizes(len(shuffled), ratios)
    train = shuffled[:n_train]
    n_val = max(1, round(validation_fraction * n_train)) if validation_fraction > 0 and n_train >= 2 else 0
    parts = (train[n_val:], train[:n_val], shuffled[n_train : n_train + n_test], shuffled[n_train + n_test :])
    return parts, ["split=paper: slices shuffled across splits, so patients appear in several splits"]


def _split_patients(
    order: list[dict[str, Any]], ratios: list[float], validation_fraction: float, rng: np.random.Generator
) -> tuple[Parts, list[str]]:
    """Patient mode: whole patients per split; validation = whole (smallest) training patients."""
    counts: dict[str, int] = {}
    for it in order:
        counts[it["patient"]] = counts.get(it["patient"], 0) + 1
    if len(counts) < 3:
        raise InputError(
            f"split=patient needs at least 3 patients (one per split), found {len(counts)} "
            f"({', '.join(sorted(counts))}); use split=paper for a slice-level split"
        )
    train_patients, test_patients, seg_patients = _assign_patients(counts, ratios, rng)
    train = [it for it in order if it["patient"] in set(train_patients)]
    tests = [[it for it in order if it["patient"] in set(group)] for group in (test_patients, seg_patients)]
    notes: list[str] = []
    held_out: set[str] = set()
    if validation_fraction > 0 and len(train_patients) >= 2:
        candidates = [str(p) for p in rng.permutation(sorted(train_patients))]
        candidates.sort(key=lambda p: counts[p])  # smallest patients first, ties in seeded order
        taken = 0
        for patient in candidates[:-1]:  # at least one patient stays in training
            if taken >= validation_fraction * len(train):
                break
            held_out.add(patient)
            taken += counts[patient]
        validation = [it for it in train if it["patient"] in held_out]
    elif validation_fraction > 0 and len(train) >= 2:
        n_val = max(1, round(validation_fraction * len(train)))
        validation = [train[i] for i in sorted(rng.permutation(len(train))[:n_val].tolist())]
        notes.append("validation slices share the only training patient (too few patients to hold one out)")
    else:
        validation = []
    held = {it["image"] for it in validation}
    training = [it for it in train if it["image"] not in held]
    return (training, validation, tests[0], tests[1]), notes


# --------------------------------------------------------------------------- summary


def _summarise(
    splits: dict[str, list[dict[str, Any]]], pixel_counts: dict[str, np.ndarray], n_classes: int
) -> dict[str, Any]:
    table = {}
    for name in SPLITS:
        items = splits[name]
        counts = np.zeros(n_classes, dtype=np.int64)
        for it in items:
            counts += pixel_counts[it["image"]]
        total = max(int(counts.sum()), 1)
        table[name] = {
            "slices": len(items),
            "patients": len({it["patient"] for it in items}),
            "class_fractions": {lab.CLASS_NAMES[c]: float(counts[c]) / total for c in range(n_classes)},
        }
    return table


def format_summary(summary: dict[str, Any]) -> str:
    """Markdown text of a preparation summary: a table of the splits and the notes."""
    classes = list(next(iter(summary["splits"].values()))["class_fractions"])
    lines = [
        f"# Prepared data: {summary['slices_kept']} slices of {summary['patients']} patients",
        "",
        f"- source: `{summary['dataset_dir']}` (layout `{summary['layout']}`, scale `{summary['scale']}`)",
        f"- read {summary['slices_read']} slices in {summary['cases']} files; kept {summary['slices_kept']}",
        f"- split: `{summary['split']}`, seed {summary['seed']}",
    ]
    lines += [f"- {note}" for note in summary["notes"]]
    lines += ["", "| split | slices | patients | " + " | ".join(f"{c} %" for c in classes) + " |"]
    lines += ["|---|---:|---:|" + "---:|" * len(classes)]
    for name, row in summary["splits"].items():
        fractions = " | ".join(f"{100 * row['class_fractions'][c]:.2f}" for c in classes)
        lines.append(f"| {name} | {row['slices']} | {row['patients']} | {fractions} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- provenance


def dataset_fingerprint(dataset_dir: str | Path) -> str:
    """Hash of the names, sizes and modification times of the files under a folder.

    Used to tell whether prepared data still comes from the same raw files.
    """
    root = Path(dataset_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _settings(dataset_dir: Path, **kwargs: Any) -> dict[str, Any]:
    # a generated phantom is known by its parameters, so a work folder can move with its data
    marker = dataset_dir / PHANTOM_MARKER
    source = f"phantom {marker.read_text(encoding='utf-8').strip()}" if marker.is_file() else str(dataset_dir.resolve())
    settings = {"dataset_dir": source}
    for key, value in kwargs.items():
        settings[key] = list(value) if isinstance(value, (tuple, list)) else value
    return settings


# --------------------------------------------------------------------------- prepare


def _check_folders(dataset_dir: Path, data_dir: Path) -> None:
    """Refuse a ``data_dir`` whose replacement could delete the raw data or the working folder."""
    src, dst, cwd = dataset_dir.resolve(), data_dir.resolve(), Path.cwd().resolve()
    if src == dst or src in dst.parents or dst in src.parents:
        raise InputError(f"data_dir must lie outside dataset_dir {dataset_dir} (and not contain it)", data_dir)
    if dst == cwd or dst in cwd.parents:
        raise InputError("data_dir must not be the current folder or one above it", data_dir)


@dataclass
class _Collected:
    """What the slice loop of :func:`prepare_dataset` gathers."""

    items: list[dict[str, Any]] = field(default_factory=list)
    pixel_counts: dict[str, np.ndarray] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    scales: dict[str, str] = field(default_factory=dict)
    slices_read: int = 0
    derived: int = 0
    binary_255: bool = False


def _write_case_slices(
    case: Case,
    stage: Path,
    source: Path,
    found: _Collected,
    keep_effusion: bool,
    min_lesion_pixels: int,
    include_healthy: bool,
) -> None:
    """Keep the case's slices with infection: label map (lung derived if missing), then image and label files."""
    found.scales.setdefault(case.scale, case.sources["image"])
    if len(found.scales) > 1:
        hu, eight = found.scales["hu"], found.scales["8bit"]
        raise InputError(f"mixes intensity scales: {hu} is in HU, {eight} is 8-bit; prepare them separately", source)
    if case.lesion is None:
        raise InputError("no lesion mask for this image", case.sources["image"])
    found.binary_255 |= bool(np.any(case.lesion) and set(np.unique(case.lesion).tolist()) <= BINARY_255_VALUES)
    n_classes = lab.num_classes(keep_effusion)
    for z in range(case.image.shape[2]):
        found.slices_read += 1
        lesion = case.lesion[:, :, z]
        if not include_healthy and np.count_nonzero(lesion) < min_lesion_pixels:
            continue
        image = case.image[:, :, z]
        if case.lung is not None:
            lung = case.lung[:, :, z]
        else:
            lung = derive_lung_mask(image, case.scale, lesion)
            found.derived += 1
        label = lab.merge_label_map(lung, lesion, keep_effusion=keep_effusion)
        patient = case.patient_of(z)
        name = f"{safe_name(patient)}_{case.slice_numbers[z]:04d}"
        if name in found.names:
            other = found.names[name]
            raise InputError(f"two slices map to the same output name {name} ({other} and this file)", case.sources["image"])
        found.names[name] = case.sources["image"]
        write_nifti(to_storage(image, case.scale), case.slice_affine(z), stage / "images" / f"{name}.nii.gz")
        write_nifti(label, case.slice_affine(z), stage / "labels" / f"{name}.nii.gz")
        item = {
            "image": f"images/{name}.nii.gz",
            "label": f"labels/{name}.nii.gz",
            "patient": patient,
            "slice": int(case.slice_numbers[z]),
            "scale": case.scale,
            "source": Path(case.sources["image"]).resolve().relative_to(source.resolve()).as_posix(),
        }
        found.items.append(item)
        found.pixel_counts[item["image"]] = np.bincount(label.ravel(), minlength=n_classes)[:n_classes]


def prepare_dataset(
    dataset_dir: str | None,
    data_dir: str,
    split: str = "patient",
    split_ratios: Sequence[float] = (300, 73, 73),
    validation_fraction: float = 0.1,
    keep_effusion: bool = False,
    min_lesion_pixels: int = 1,
    seed: int = 0,
    overwrite: bool = False,
    patient_regex: str | None = None,
    include_healthy: bool = False,
) -> dict[str, Any]:
    """Read a raw dataset, keep infection slices, split them, write slices and ``datalist.json``.

    Args:
        dataset_dir: raw data in a layout of :mod:`.readers`.
        data_dir: output folder (created atomically).
        split: ``"patient"`` or ``"paper"``, see :func:`split_items`.
        split_ratios: synthesis-train : synthesis-test : segmentation-test.
        validation_fraction: part of synthesis-train held out for validation.
        keep_effusion: keep pleural effusion as class 4 (else folded into 3).
        min_lesion_pixels: a slice is kept when it has at least this many lesion pixels.
        seed: random seed of the split.
        overwrite: replace an existing non-empty ``data_dir``.
        patient_regex: slice folders: one-group regex giving the patient id from a file stem.
        include_healthy: also keep slices without infection.

    Returns:
        The summary (also written as ``summary.json``, ``summary.md`` and printed).

    Raises:
        InputError: missing/empty ``dataset_dir``, unreadable or corrupt file,
            image and mask shapes differ, unknown label values, non-finite
            voxels, no slice with infection, mixed intensity scales, too few
            patients for the split, ``data_dir`` exists without ``overwrite``.
            Nothing is written then.
    """
    if dataset_dir is None or str(dataset_dir).strip() == "":
        raise InputError("no dataset_dir given (run_prepare and prepare_if_needed generate a phantom dataset instead)")
    if data_dir is None or str(data_dir).strip() == "":
        raise InputError("no data_dir given")
    source, target = Path(dataset_dir).expanduser(), Path(data_dir).expanduser()
    _check_split_args(split, split_ratios, validation_fraction)
    if int(min_lesion_pixels) < 1:
        raise InputError(f"min_lesion_pixels must be at least 1, got {min_lesion_pixels}")
    layout = detect_layout(source)  # also checks that the folder exists and is not empty
    _check_folders(source, target)
    cases = find_cases(source, layout, patient_regex)
    settings = _settings(
        source,
        split=split,
        split_ratios=split_ratios,
        validation_fraction=validation_fraction,
        keep_effusion=keep_effusion,
        min_lesion_pixels=int(min_lesion_pixels),
        seed=seed,
        patient_regex=patient_regex,
        include_healthy=include_healthy,
    )
    n_classes = lab.num_classes(keep_effusion)
    found = _Collected()
    with staged_directory(target, overwrite=overwrite) as stage:
        (stage / "images").mkdir()
        (stage / "labels").mkdir()
        for files in tqdm(cases, desc="reading", unit="file", disable=None):
            case = load_case(files)
            _write_case_slices(case, stage, source, found, keep_effusion, int(min_lesion_pixels), include_healthy)
        items, pixel_counts, slices_read, derived = found.items, found.pixel_counts, found.slices_read, found.derived
        kept_infection = sum(1 for it in items if pixel_counts[it["image"]][lab.GGO :].sum() >= min_lesion_pixels)
        if kept_infection == 0:
            raise InputError(
                f"no slice with infection (>= {min_lesion_pixels} lesion pixels) among {slices_read} slices", source
            )
        splits, notes = split_items(items, split, split_ratios, validation_fraction, seed)
        if derived:
            notes.insert(0, LUNG_DERIVED_NOTE.format(n=derived))
        if layout == "medseg":
            notes.append("MedSeg volume: patient ids are unknown, so each slice is its own patient medseg_<k>")
        if found.binary_255:
            notes.append("binary (0/255) lesion masks: infection written as GGO (class 2)")
        if not include_healthy:
            notes.append(f"kept the {len(items)} of {slices_read} slices that hold infection")
        scale = next(iter(found.scales))
        summary: dict[str, Any] = {
            "dataset_dir": str(source),
            "data_dir": str(target),
            "layout": layout,
            "scale": scale,
            "cases": len(cases),
            "slices_read": slices_read,
            "slices_kept": len(items),
            "patients": len({it["patient"] for it in items}),
            "lung_masks_derived": derived,
            "split": split,
            "seed": seed,
            "notes": notes,
            "splits": _summarise(splits, pixel_counts, n_classes),
        }
        properties = {
            "scale": scale,
            "layout": layout,
            "keep_effusion": bool(keep_effusion),
            "num_classes": n_classes,
            "class_names": list(lab.CLASS_NAMES[:n_classes]),
            "split": split,
            "seed": seed,
            "lung_masks_derived": derived,
            "notes": notes,
            "settings": settings,
            "dataset_fingerprint": dataset_fingerprint(source),
        }
        write_json({**splits, "properties": properties}, stage / DATALIST)
        write_json(summary, stage / "summary.json")
        text = format_summary(summary)
        write_text(text, stage / "summary.md")
    print(text, flush=True)
    return summary


# --------------------------------------------------------------------------- entry points


def _ensure_phantom(phantom_dir: Path, num_patients: int, size: int, num_slices: int, seed: int) -> Path:
    """Generate the phantom dataset into ``phantom_dir`` unless it is there with the same parameters."""
    params = {"num_patients": int(num_patients), "size": int(size), "num_slices": int(num_slices), "seed": int(seed)}
    marker = phantom_dir / PHANTOM_MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")) == params:
                print(f"phantom data found at {phantom_dir}", flush=True)
                return phantom_dir
        except ValueError:
            pass
    elif phantom_dir.exists() and any(phantom_dir.iterdir()):
        raise InputError(
            "phantom_dir exists and was not written by the phantom generator; choose another folder", phantom_dir
        )
    from .phantom import generate_phantom_dataset  # lazy: only the phantom path needs it

    print(f"no dataset_dir given: generating a phantom dataset in {phantom_dir}", flush=True)
    generate_phantom_dataset(
        out_dir=phantom_dir, num_patients=params["num_patients"], size=params["size"],
        num_slices=params["num_slices"], seed=params["seed"], overwrite=True,
    )
    write_json(params, marker, overwrite=True)
    return phantom_dir


def _prepare_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The settings :func:`prepare_dataset` records, for the given keyword arguments."""
    params = inspect.signature(prepare_dataset).parameters
    options = {k: p.default for k, p in params.items() if k not in ("dataset_dir", "data_dir", "overwrite")}
    unknown = sorted(set(kwargs) - set(options) - {"overwrite"})
    if unknown:
        raise InputError(f"unknown preparation option(s) {', '.join(unknown)}; expected {', '.join(options)}")
    options.update({k: v for k, v in kwargs.items() if k != "overwrite"})
    options["min_lesion_pixels"] = int(options["min_lesion_pixels"])
    return options


def _source_dir(
    dataset_dir: str | None,
    data_dir: str,
    phantom_dir: str | None,
    phantom_patients: int,
    phantom_size: int,
    phantom_slices: int,
    seed: int,
) -> Path:
    if dataset_dir is not None and str(dataset_dir).strip() != "":
        return Path(dataset_dir).expanduser()
    folder = Path(phantom_dir).expanduser() if phantom_dir else Path(data_dir).expanduser().resolve().parent / "phantom_raw"
    return _ensure_phantom(folder, phantom_patients, phantom_size, phantom_slices, seed)


def prepare_if_needed(
    dataset_dir: str | None,
    data_dir: str,
    phantom_dir: str | None = None,
    phantom_patients: int = 6,
    phantom_size: int = 256,
    phantom_slices: int = 12,
    **prepare_kwargs: Any,
) -> dict[str, Any]:
    """Prepare ``data_dir`` unless it already holds the same preparation of the same raw files.

    With no ``dataset_dir`` (None or ``""``) a phantom dataset is generated
    first, into ``phantom_dir`` (default: ``<data_dir>/../phantom_raw``), and
    reused while its parameters stay the same.

    Args:
        dataset_dir: raw dataset folder, or None/``""`` for the phantom.
        data_dir: prepared data folder.
        phantom_dir: where the phantom's raw volumes go.
        phantom_patients: phantom patients (volumes).
        phantom_size: phantom slice size in pixels.
        phantom_slices: phantom slices per volume.
        prepare_kwargs: the other arguments of :func:`prepare_dataset`
            (``seed`` also seeds the phantom).

    Returns:
        The summary of the preparation (read back from ``summary.json`` when
        nothing had to be done).

    Raises:
        InputError: as :func:`prepare_dataset`; also when ``data_dir`` holds
            data prepared differently and ``overwrite`` is false.
    """
    seed = int(prepare_kwargs.get("seed", 0))
    source = _source_dir(dataset_dir, data_dir, phantom_dir, phantom_patients, phantom_size, phantom_slices, seed)
    target = Path(data_dir).expanduser()
    datalist = target / DATALIST
    if datalist.is_file():
        expected = _settings(source, **_prepare_options(prepare_kwargs))
        try:
            properties = json.loads(datalist.read_text(encoding="utf-8")).get("properties", {})
        except ValueError:
            properties = {}
        found = properties.get("settings", {})
        same_files = properties.get("dataset_fingerprint") == (dataset_fingerprint(source) if source.is_dir() else None)
        if found == expected and same_files:
            print(f"prepared data found at {target}", flush=True)
            summary_file = target / "summary.json"
            return json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else properties
        if not prepare_kwargs.get("overwrite", False):
            changed = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
            reason = f"other settings ({', '.join(changed)})" if changed else "raw files that have changed since"
            raise InputError(f"holds data prepared from {reason}; pass overwrite=true to prepare it again", target)
    return prepare_dataset(str(source), str(target), **prepare_kwargs)


@exit_on_input_error
def run_prepare(
    dataset_dir: str | None,
    data_dir: str,
    split: str = "patient",
    split_ratios: Sequence[float] = (300, 73, 73),
    validation_fraction: float = 0.1,
    keep_effusion: bool = False,
    min_lesion_pixels: int = 1,
    seed: int = 0,
    overwrite: bool = False,
    patient_regex: str | None = None,
    include_healthy: bool = False,
    phantom_dir: str | None = None,
    phantom_patients: int = 6,
    phantom_size: int = 256,
    phantom_slices: int = 12,
) -> dict[str, Any]:
    """Bundle entry point of the ``prepare`` run id: :func:`prepare_dataset`, phantom when no dataset.

    Bad input exits with status 2 and one ``ERROR: <file>: <problem>`` line on stderr.

    Args:
        dataset_dir: raw dataset folder; None or ``""`` generates the phantom
            (see :func:`prepare_if_needed` for the ``phantom_*`` arguments).
        data_dir: output folder.
        split, split_ratios, validation_fraction, keep_effusion, min_lesion_pixels, seed,
        overwrite, patient_regex, include_healthy: as :func:`prepare_dataset`.
        phantom_dir, phantom_patients, phantom_size, phantom_slices: as :func:`prepare_if_needed`.

    Returns:
        The summary.
    """
    source = _source_dir(dataset_dir, data_dir, phantom_dir, phantom_patients, phantom_size, phantom_slices, seed)
    return prepare_dataset(
        str(source), data_dir, split=split, split_ratios=split_ratios, validation_fraction=validation_fraction,
        keep_effusion=keep_effusion, min_lesion_pixels=min_lesion_pixels, seed=seed, overwrite=overwrite,
        patient_regex=patient_regex, include_healthy=include_healthy,
    )


run_prepare_if_needed = exit_on_input_error(prepare_if_needed)
"""Bundle entry point of the training run ids: :func:`prepare_if_needed`; bad input exits with one line."""
