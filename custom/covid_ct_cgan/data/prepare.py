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
        raw_files.json                         size and SHA-256 of each raw file (provenance)
        prepared_files.json                    size and SHA-256 of each file above, checked before the data is used

Splits: ``training`` + ``validation`` (the synthesis-train part; validation
is carved from it), ``test_synthesis`` and ``test_segmentation``, in the
ratio ``split_ratios`` (paper: 300/73/73). ``split="patient"`` (default) puts
whole patients into one split (training and validation included, unless
training has a single patient); ``split="paper"`` shuffles slices, as the
paper did, which leaks patients across splits; ``split="predefined"`` keeps
a slice-folder dataset's own ``train/`` and ``test/`` folders apart:
training and validation come from ``train/``, and ``test_synthesis`` and
``test_segmentation`` both hold all of ``test/`` (the same slices, so a
published test set is scored whole; no ``test/`` slice is ever in training
or validation).

:func:`run_prepare` is the ``prepare`` run id's work, :func:`prepare_if_needed`
the training run ids' (the configs call both through
:func:`covid_ct_cgan.errors.entry_point`: bad input is one ``ERROR:`` line,
exit status 2). :func:`prepare_if_needed` generates the phantom when no
dataset is given and skips the work when ``data_dir`` is already prepared
with the same settings from the same raw files. Both check everything they
can before they write anything (a refusal leaves the disk as it was), and a
failed run removes the folders it created. Raw files are recognised by their
contents (size and SHA-256, recorded in ``datalist.json``), a phantom by its
parameters, so a copied or moved work folder is still recognised.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import labels as lab
from ..errors import InputError
from ..fileio import check_writable, staged_directory, write_json, write_nifti, write_text
from ..logs import progress
from ..intensity import to_storage
from .lung_mask import derive_lung_mask
from .phantom import read_phantom_marker
from .readers import BINARY_255_VALUES, Case, detect_layout, find_cases, load_case

SPLITS: tuple[str, ...] = ("training", "validation", "test_synthesis", "test_segmentation")
SPLIT_MODES: tuple[str, ...] = ("patient", "paper", "predefined")
PREDEFINED_FOLDERS: tuple[str, ...] = ("train", "test")
DATALIST = "datalist.json"
RAW_FILES = "raw_files.json"  # in data_dir: size, time and SHA-256 of every raw file read (see hash_raw_files)
PREPARED_FILES = "prepared_files.json"  # in data_dir: size and SHA-256 of every file prepare wrote (verify_prepared_files)
PHANTOM_KEYS: tuple[str, ...] = ("phantom_patients", "phantom_size", "phantom_slices")
# the train.yaml key of a preparation option, where its name differs (messages name what the user sets)
CONFIG_KEYS: dict[str, str] = {"seed": "data_seed"}
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
        items: dicts with at least ``"patient"`` (and a unique ``"image"``);
            for ``"predefined"`` also ``"subset"`` (``"train"`` or ``"test"``).
        split: ``"patient"`` (whole patients per split), ``"paper"`` (slices
            shuffled) or ``"predefined"`` (the dataset's own train/test subsets:
            training and validation from ``train``, both test lists = all of ``test``;
            ``split_ratios`` is not used).
        split_ratios: synthesis-train : synthesis-test : segmentation-test.
        validation_fraction: part of synthesis-train moved to ``validation``
            (at least one slice, or one patient, when there is more than one).
        seed: random seed; the split is a function of items, settings and seed.

    Returns:
        ``(splits, notes)``: the items of each split (sorted by image name), and
        remarks for the summary.

    Raises:
        InputError: unknown mode, bad ratios, too few slices or patients, a
            ``predefined`` subset missing or empty.
    """
    ratios = _check_split_args(split, split_ratios, validation_fraction)
    rng = np.random.default_rng(seed)
    order = sorted(items, key=lambda it: it["image"])
    split_fn = {"paper": _split_slices, "patient": _split_patients, "predefined": _split_predefined}[split]
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
    training, validation, notes = _carve_validation(train, validation_fraction, rng)
    return (training, validation, tests[0], tests[1]), notes


def _split_predefined(
    order: list[dict[str, Any]], ratios: list[float], validation_fraction: float, rng: np.random.Generator
) -> tuple[Parts, list[str]]:
    """Predefined mode: training + validation from the ``train`` subset; both test lists are the ``test`` subset."""
    del ratios  # the dataset's own subsets fix the sizes
    subsets: dict[str, list[dict[str, Any]]] = {name: [] for name in PREDEFINED_FOLDERS}
    for it in order:
        subset = it.get("subset")
        if subset not in subsets:
            raise InputError(
                f"split=predefined: slice {it['image']} has subset {subset!r}; expected one of {', '.join(PREDEFINED_FOLDERS)}"
            )
        subsets[subset].append(it)
    for name, part in subsets.items():
        if not part:
            raise InputError(f"split=predefined: no slice kept from the dataset's {name}/ folder")
    train, test = subsets["train"], subsets["test"]
    training, validation, notes = _carve_validation(train, validation_fraction, rng)
    notes.insert(
        0,
        f"split=predefined: training and validation from train/ ({len(train)} slices), test_synthesis and "
        f"test_segmentation both hold the same {len(test)} slices of test/; split_ratios not used "
        "(segmentation experiments must then train on `training`, not on test_synthesis)",
    )
    shared = sorted({it["patient"] for it in train} & {it["patient"] for it in test}, key=str)
    if shared:
        names = ", ".join(shared[:5]) + (" ..." if len(shared) > 5 else "")
        notes.append(f"{len(shared)} patient id(s) have slices in both train/ and test/ ({names})")
    return (training, validation, list(test), list(test)), notes


def _carve_validation(
    train: list[dict[str, Any]], validation_fraction: float, rng: np.random.Generator
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Move about ``validation_fraction`` of ``train`` to validation: whole (smallest) patients when there are several."""
    counts: dict[str, int] = {}
    for it in train:
        counts[it["patient"]] = counts.get(it["patient"], 0) + 1
    train_patients = sorted(counts)
    notes: list[str] = []
    held_out: set[str] = set()
    if validation_fraction > 0 and len(train_patients) >= 2:
        candidates = [str(p) for p in rng.permutation(train_patients)]
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
    return training, validation, notes


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


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_raw_files(
    dataset_dir: str | Path, known: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Size, modification time and SHA-256 of every file under a raw dataset folder.

    Hidden files and folders (names starting with ``.``, such as the phantom's
    marker) are left out. The contents decide whether two folders hold the
    same data; the modification time only saves work: a file whose size and
    time equal its entry in ``known`` keeps the recorded hash and is not read
    again, so checking an unchanged dataset costs one ``stat`` per file.

    Args:
        dataset_dir: the raw dataset folder.
        known: a previous result (from ``datalist.json``), or None.

    Returns:
        ``{relative POSIX path: {"size", "mtime_ns", "sha256"}}``, sorted by path.
    """
    root = Path(dataset_dir)
    known = known or {}
    records: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p.relative_to(root))):
        name = path.relative_to(root).as_posix()
        stat = path.stat()
        old = known.get(name)
        if isinstance(old, Mapping) and old.get("size") == stat.st_size and old.get("mtime_ns") == stat.st_mtime_ns:
            sha = old.get("sha256")
        else:
            sha = _sha256(path)
        records[name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
    return records


def verify_prepared_files(data_dir: str | Path) -> tuple[Path, str] | None:
    """Compare the files of a prepared ``data_dir`` with the sizes and SHA-256 recorded when they were written.

    Sizes are compared first (one ``stat`` a file), then contents; the first damaged file is reported.

    Returns:
        ``None`` when every recorded file is as prepared, else ``(file, what is wrong)``; ``(record, ...)``
        when ``prepared_files.json`` is missing or unreadable (prepared by an older version, or damaged).
    """
    root = Path(data_dir)
    record = root / PREPARED_FILES
    try:
        files = json.loads(record.read_text(encoding="utf-8"))
        entries = [(name, int(e["size"]), str(e["sha256"])) for name, e in files.items()]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return record, "missing or unreadable, so the prepared files cannot be checked (prepared by an older version?)"
    for name, size, _ in entries:
        path = root / name
        if not path.is_file():
            return path, "missing (it was written when the data was prepared)"
        found = path.stat().st_size
        if found != size:
            return path, f"damaged: {found} bytes, {size} when it was prepared"
    for name, _, sha in entries:
        if _sha256(root / name) != sha:
            return root / name, "damaged: its contents differ from those it was prepared with (SHA-256)"
    return None


def _damaged_error(path: Path, problem: str) -> InputError:
    """The error for a finding of :func:`verify_prepared_files`, with the fix."""
    restore = "" if path.name == PREPARED_FILES else " (or restore the file)"
    return InputError(f"{problem}; prepare the data again with --overwrite True{restore}", path)


def check_prepared(datalist: str | Path) -> None:
    """Verify the prepared folder that ``datalist`` belongs to before a run trusts it (:func:`verify_prepared_files`).

    Called by the runs that read a prepared ``datalist.json`` without preparing it (synthesis, evaluation,
    segmentation), before their first expensive step; training verifies through :func:`prepare_if_needed`.
    A datalist with no ``prepared_files.json`` beside it was not written by ``prepare`` (a user's own, or
    one a run wrote): it is not checked here.

    Raises:
        InputError: names the file that changed since preparation, and the fix.
    """
    folder = Path(datalist).expanduser().parent
    if not (folder / PREPARED_FILES).exists():
        return
    damaged = verify_prepared_files(folder)
    if damaged is not None:
        raise _damaged_error(*damaged)


def dataset_fingerprint(records: Mapping[str, Mapping[str, Any]]) -> str:
    """One hash of the names, sizes and contents in ``records`` (from :func:`hash_raw_files`); times left out."""
    digest = hashlib.sha256()
    for name in sorted(records):
        digest.update(f"{name}\0{records[name]['size']}\0{records[name]['sha256']}\n".encode())
    return digest.hexdigest()


def _raw_file_changes(old: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]]) -> str:
    """``"1 changed (a.nii.gz), 2 added (b.png, c.png)"``: how two :func:`hash_raw_files` results differ ("" if not)."""
    groups = {
        "changed": sorted(n for n in set(old) & set(new) if (old[n].get("size"), old[n].get("sha256")) != (new[n]["size"], new[n]["sha256"])),
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
    }
    parts = []
    for what, names in groups.items():
        if names:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            parts.append(f"{len(names)} {what} ({shown})")
    return ", ".join(parts)


def _source_settings(source: Path) -> dict[str, Any]:
    """How the raw data is identified: a generated phantom by its parameters, any other folder by its path."""
    params = read_phantom_marker(source)
    if params is None:
        return {"dataset_dir": str(source.expanduser().resolve())}
    return {"dataset_dir": "", **_phantom_settings(params)}


def _phantom_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """The phantom marker's parameters under the names of the ``phantom_*`` options."""
    return {
        "phantom_patients": params.get("num_patients"),
        "phantom_size": params.get("size"),
        "phantom_slices": params.get("num_slices"),
        "phantom_seed": params.get("seed"),
    }


def _settings(source_settings: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
    settings = dict(source_settings)
    for key, value in kwargs.items():
        settings[key] = list(value) if isinstance(value, (tuple, list)) else value
    return settings


def _config_name(key: str) -> str:
    if key == "phantom_seed":
        return CONFIG_KEYS.get("seed", "seed")
    return CONFIG_KEYS.get(key, key)


def _shown(key: str, value: Any) -> str:
    if key == "dataset_dir" and value == "":
        return "'' (the phantom)"
    return "unset" if value is None else repr(value)


def _setting_differences(found: Mapping[str, Any], expected: Mapping[str, Any], skip: Sequence[str] = ()) -> list[str]:
    """``"<key> was <old>, now <new>"`` for each setting that differs, named by its ``train.yaml`` key (once)."""
    lines: dict[str, str] = {}
    for key in list(expected) + [k for k in found if k not in expected]:
        if key in skip or found.get(key) == expected.get(key):
            continue
        name = _config_name(key)
        lines.setdefault(name, f"{name} was {_shown(key, found.get(key))}, now {_shown(key, expected.get(key))}")
    return list(lines.values())


# --------------------------------------------------------------------------- prepare


def _check_predefined(dataset_dir: Path, layout: str) -> None:
    """``split=predefined`` needs a slice-folder dataset made of exactly its own ``train/`` and ``test/`` folders."""
    wanted = " and ".join(f"{name}/ (with {name}/images and {name}/labels)" for name in PREDEFINED_FOLDERS)
    if layout != "slices":
        raise InputError(f"split=predefined needs the dataset's own {wanted}; this is a {layout} dataset "
                         "without them: use split=patient", dataset_dir)
    if (dataset_dir / "images").is_dir():
        raise InputError(f"split=predefined needs the dataset's own {wanted}, not one images/ folder; "
                         "use split=patient", dataset_dir)
    roots = sorted(p.name for p in dataset_dir.iterdir() if p.is_dir() and (p / "images").is_dir())
    missing = [name for name in PREDEFINED_FOLDERS if name not in roots]
    extra = [name for name in roots if name not in PREDEFINED_FOLDERS]
    if missing or extra:
        found = ", ".join(f"{name}/" for name in roots) or "none"
        raise InputError(f"split=predefined needs the dataset's own {wanted} and no other image folders; "
                         f"found {found}", dataset_dir)


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
            where = str(case.sources["image"])
            if case.image.shape[2] > 1:
                where = f"{where} slice {case.slice_numbers[z]}"
            lung = derive_lung_mask(image, case.scale, lesion, source=where)
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
        found.pixel_counts[str(item["image"])] = np.bincount(label.ravel(), minlength=n_classes)[:n_classes]


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
        split: ``"patient"``, ``"paper"`` or ``"predefined"`` (a slice-folder
            dataset's own ``train/`` and ``test/``), see :func:`split_items`.
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
            patients for the split, ``split="predefined"`` without the dataset's
            ``train/`` and ``test/`` folders, ``data_dir`` exists without
            ``overwrite`` or cannot be written (checked before the raw files
            are read). Nothing is written then.
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
    if split == "predefined":
        _check_predefined(source, layout)
    _check_folders(source, target)
    check_writable(target)  # before every raw file is read and hashed (minutes on a large dataset)
    cases = find_cases(source, layout, patient_regex)
    raw_files = hash_raw_files(source)
    settings = _settings(
        _source_settings(source),
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
        for files in progress(cases, desc="reading", unit="file"):
            case = load_case(files)
            _write_case_slices(case, stage, source, found, keep_effusion, int(min_lesion_pixels), include_healthy)
        items, pixel_counts, slices_read, derived = found.items, found.pixel_counts, found.slices_read, found.derived
        if split == "predefined":
            for it in items:  # the dataset's own subset: the first folder of the slice's source file
                it["subset"] = Path(it["source"]).parts[0]
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
            "dataset_fingerprint": dataset_fingerprint(raw_files),
        }
        write_json({**splits, "properties": properties}, stage / DATALIST)
        write_json(summary, stage / "summary.json")
        write_json(raw_files, stage / RAW_FILES)
        text = format_summary(summary)
        write_text(text, stage / "summary.md")
        # the summaries are for people and name the folder they were written in: not part of what training reads
        prepared = {name: {"size": r["size"], "sha256": r["sha256"]} for name, r in hash_raw_files(stage).items()
                    if name not in ("summary.json", "summary.md")}
        write_json(prepared, stage / PREPARED_FILES)
    print(text, flush=True)
    return summary


# --------------------------------------------------------------------------- entry points

RETIRED_PREFIX = "retired-"  # output_dir/retired-<UTC time>/: stages trained on data prepared before


def _read_datalist(data_dir: Path) -> str | None:
    try:
        return (data_dir / DATALIST).read_text(encoding="utf-8")
    except OSError:
        return None


def retire_outputs(output_dir: str | Path | None, data_dir: Path, before: str | None) -> Path | None:
    """Move the stages of ``output_dir`` aside when ``data_dir`` now holds other data than they were trained on.

    A stage that resumed (or was skipped as complete) after the data changed would mix two datasets and
    splits, and its weights would not be the ones ``datalist.json`` describes; its files are kept, in
    ``output_dir/retired-<UTC time>/``, and the stages start over.

    Args:
        output_dir: the training output folder (``None``: nothing to retire).
        data_dir: the prepared data folder, just written.
        before: the text of its ``datalist.json`` before this preparation (``None``: there was none).

    Returns:
        The folder the stages were moved to, or ``None`` when nothing was moved (no output, or the same data).
    """
    if output_dir is None or not str(output_dir).strip() or before is None or before == _read_datalist(data_dir):
        return None
    out = Path(output_dir).expanduser()
    entries = sorted(p for p in out.iterdir() if not p.name.startswith((".", RETIRED_PREFIX))) if out.is_dir() else []
    if not entries:
        return None
    aside = out / f"{RETIRED_PREFIX}{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    while aside.exists():
        aside = aside.with_name(aside.name + "_")
    aside.mkdir()
    for entry in entries:
        os.replace(entry, aside / entry.name)
    print(f"{out}: moved {', '.join(e.name for e in entries)} to {aside}: trained on the data prepared before "
          f"(the data in {data_dir} changed); the stages start over", flush=True)
    return aside



@contextlib.contextmanager
def _removing_new_folders(*paths: Path) -> Iterator[None]:
    """On any failure, remove the folders on the way to ``paths`` that this run created and left empty."""
    created: set[Path] = set()
    for path in paths:
        folder = path.expanduser().absolute()
        while not folder.exists() and folder.parent != folder:
            created.add(folder)
            folder = folder.parent
    try:
        yield
    except BaseException:
        for folder in sorted(created, key=lambda f: len(f.parts), reverse=True):  # deepest first
            with contextlib.suppress(OSError):  # not empty (or not there): keep it
                folder.rmdir()
        raise


def _phantom_folder(data_dir: Path, phantom_dir: str | None) -> Path:
    return Path(phantom_dir).expanduser() if phantom_dir else data_dir.expanduser().resolve().parent / "phantom_raw"


def _phantom_params(num_patients: int, size: int, num_slices: int, seed: int) -> dict[str, int]:
    """The phantom generator's parameters (checked: positive integers, as the generator needs)."""
    params = {"num_patients": num_patients, "size": size, "num_slices": num_slices}
    minimum = {"num_patients": 1, "size": 16, "num_slices": 1}
    for key, value in params.items():
        name = {"num_patients": "phantom_patients", "size": "phantom_size", "num_slices": "phantom_slices"}[key]
        try:
            ok = not isinstance(value, bool) and int(value) == value and int(value) >= minimum[key]
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"{name} must be an integer >= {minimum[key]}, got {value!r}")
        params[key] = int(value)
    return {**params, "seed": int(seed)}


def _phantom_needs_generating(folder: Path, params: Mapping[str, int], overwrite: bool) -> bool:
    """Whether the phantom must be (re)generated into ``folder``; refuses what must not be replaced.

    Raises:
        InputError: ``folder`` holds files that the phantom generator did not
            write (never replaced), or a phantom of other parameters and
            ``overwrite`` is false.
    """
    found = read_phantom_marker(folder)
    if found == dict(params):
        return False
    if found is None:
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise InputError(
                "phantom_dir exists and was not written by the phantom generator; choose another folder", folder
            )
        return True
    if not overwrite:
        changes = _setting_differences(_phantom_settings(found), _phantom_settings(params))
        raise InputError(
            f"holds a phantom generated with other settings ({'; '.join(changes)}); "
            "pass --overwrite True to generate it again",
            folder,
        )
    return True


def _generate_phantom(folder: Path, params: Mapping[str, int]) -> Path:
    from .phantom import generate_phantom_dataset  # the module is imported already; looked up here so tests can stand in

    print(f"no dataset_dir given: generating a phantom dataset in {folder}", flush=True)
    generate_phantom_dataset(
        out_dir=folder, num_patients=params["num_patients"], size=params["size"],
        num_slices=params["num_slices"], seed=params["seed"], overwrite=True,
    )
    return folder


def _flag(name: str, value: Any) -> bool:
    """A true/false option: a bool, or the words ``true`` / ``false`` (as ``--key true`` arrives from the command line)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InputError(f"{name} must be true or false, got {value!r}")


def _prepare_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The settings :func:`prepare_dataset` records, for the given keyword arguments (checked)."""
    params = inspect.signature(prepare_dataset).parameters
    options = {k: p.default for k, p in params.items() if k not in ("dataset_dir", "data_dir", "overwrite")}
    unknown = sorted(set(kwargs) - set(options) - {"overwrite"})
    if unknown:
        raise InputError(f"unknown preparation option(s) {', '.join(unknown)}; expected {', '.join(options)}")
    options.update({k: v for k, v in kwargs.items() if k != "overwrite"})
    for key in ("keep_effusion", "include_healthy"):
        options[key] = _flag(key, options[key])
    try:
        options["min_lesion_pixels"] = int(options["min_lesion_pixels"])
    except (TypeError, ValueError):
        raise InputError(f"min_lesion_pixels must be an integer, got {options['min_lesion_pixels']!r}") from None
    if not options["patient_regex"]:
        options["patient_regex"] = None  # "" and None both mean: the file stem is the patient
    _check_split_args(options["split"], options["split_ratios"], options["validation_fraction"])
    return options


def _check_data_dir(
    target: Path, source: Path | None, source_settings: Mapping[str, Any], options: Mapping[str, Any], overwrite: bool
) -> tuple[bool, dict[str, Any]]:
    """Compare ``data_dir`` with what this run would prepare; nothing is written.

    Args:
        target: ``data_dir``.
        source: the raw dataset folder, or None for the phantom (known by its settings).
        source_settings: :func:`_source_settings` of what this run reads.
        options: the preparation options.
        overwrite: whether a different ``data_dir`` may be replaced.

    Returns:
        ``(ready, properties)``: ``ready`` when ``data_dir`` already holds this
        preparation (its ``datalist.json`` properties are returned).

    Raises:
        InputError: ``data_dir`` is not a folder, or, when ``overwrite`` is false, one of the files
            recorded in its ``prepared_files.json`` changed since preparation (that file is named), or it
            holds other data (another preparation: the differing settings are named).
    """
    if target.exists() and not target.is_dir():
        raise InputError("exists and is not a folder", target)
    datalist = target / DATALIST
    if not datalist.is_file():
        if target.exists() and any(target.iterdir()) and not overwrite:
            raise InputError(
                "holds other files and no datalist.json; pass --overwrite True to replace it, or choose another data_dir",
                target,
            )
        return False, {}
    # the recorded files first: a damaged datalist.json or raw_files.json is named as such, not read as other settings
    damaged = verify_prepared_files(target)
    if damaged is not None:
        if not overwrite:
            raise _damaged_error(*damaged)
        print(f"{damaged[0]}: {damaged[1]}; preparing {target} again (overwrite)", flush=True)
        return False, {}
    try:
        properties = json.loads(datalist.read_text(encoding="utf-8")).get("properties", {})
    except (OSError, ValueError, AttributeError):
        properties = {}
    found = properties.get("settings") if isinstance(properties, dict) else None
    recorded_files = _read_raw_files(target)
    if not isinstance(found, dict) or recorded_files is None:
        changes = ["it has no record of its raw files' contents (prepared by an older version, or damaged)"]
    else:
        expected = _settings(source_settings, **options)
        both_folders = bool(found.get("dataset_dir")) and bool(expected.get("dataset_dir"))
        # a dataset folder is known by its contents: a moved or copied one is the same data
        changes = _setting_differences(found, expected, skip=("dataset_dir",) if both_folders else ())
        if both_folders and not changes and source is not None:
            differ = _raw_file_changes(recorded_files, hash_raw_files(source, known=recorded_files))
            if differ:
                changes.append(f"the raw files in dataset_dir differ from those it was prepared from: {differ}")
    if not changes:
        return True, properties
    if not overwrite:
        raise InputError(
            f"holds data prepared with other settings or data: {'; '.join(changes)}; "
            "pass --overwrite True to prepare it again",
            target,
        )
    return False, properties


def _read_summary(data_dir: Path, properties: dict[str, Any]) -> dict[str, Any]:
    """``summary.json`` of a verified ``data_dir``, else its ``properties``.

    The summary is written for people and left out of ``prepared_files.json`` (it names the folder it was
    written in), so it is not verified: a damaged or deleted one is not an error, nothing else reads it.
    """
    try:
        summary = json.loads((data_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return properties
    return summary if isinstance(summary, dict) else properties


def _read_raw_files(data_dir: Path) -> dict[str, dict[str, Any]] | None:
    try:
        records = json.loads((data_dir / RAW_FILES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return records if isinstance(records, dict) else None


def prepare_if_needed(
    dataset_dir: str | None,
    data_dir: str,
    phantom_dir: str | None = None,
    phantom_patients: int = 6,
    phantom_size: int = 256,
    phantom_slices: int = 12,
    output_dir: str | None = None,
    **prepare_kwargs: Any,
) -> dict[str, Any]:
    """Prepare ``data_dir`` unless it already holds the same preparation of the same raw data.

    Everything is checked before anything is written, so a refusal leaves the
    disk as it was: the options, ``data_dir`` (a folder of other files, or a
    preparation with other settings: each differing setting is named with its
    recorded and its new value), and the phantom folder. A dataset folder is
    recognised by its contents (sizes and SHA-256 of its files, recorded in
    ``raw_files.json``; files whose size and modification time are unchanged
    are not read again), so moving it or copying the work folder is no change.
    With no ``dataset_dir`` (None or ``""``) the data is a phantom, known by
    its parameters; it is generated into ``phantom_dir`` (default:
    ``<data_dir>/../phantom_raw``) only when it is not there already with the
    same parameters, and only after the checks above. A run that fails
    removes the folders it created and left empty.

    Args:
        dataset_dir: raw dataset folder, or None/``""`` for the phantom.
        data_dir: prepared data folder.
        phantom_dir: where the phantom's raw volumes go.
        phantom_patients: phantom patients (volumes).
        phantom_size: phantom slice size in pixels.
        phantom_slices: phantom slices per volume.
        output_dir: the training output folder: when ``data_dir`` is prepared again with other data, its
            stages are moved aside (:func:`retire_outputs`).
        prepare_kwargs: the other arguments of :func:`prepare_dataset`
            (``seed`` also seeds the phantom). ``overwrite=True`` prepares
            again when ``data_dir`` differs (and regenerates a phantom of other
            parameters); a ``data_dir`` that already matches is kept.

    Returns:
        The summary of the preparation (read back from ``summary.json`` when
        nothing had to be done).

    Raises:
        InputError: as :func:`prepare_dataset`; also when ``data_dir`` holds
            other data, or ``phantom_dir`` a phantom of other parameters, and
            ``overwrite`` is false; or ``phantom_dir`` holds files the phantom
            generator did not write.
    """
    overwrite = _flag("overwrite", prepare_kwargs.get("overwrite", False))
    options = _prepare_options(prepare_kwargs)
    target = Path(data_dir).expanduser() if data_dir is not None and str(data_dir).strip() else None
    if target is None:
        raise InputError("no data_dir given")
    phantom = dataset_dir is None or str(dataset_dir).strip() == ""
    if phantom:
        params = _phantom_params(phantom_patients, phantom_size, phantom_slices, options["seed"])
        source = _phantom_folder(target, phantom_dir)
        source_settings = {"dataset_dir": "", **_phantom_settings(params)}
        if options["split"] == "predefined":
            raise InputError("split=predefined needs a dataset with its own train/ and test/ folders; "
                             "the phantom has none: use split=patient")
    else:
        source = Path(str(dataset_dir)).expanduser()
        detect_layout(source)  # exists, not empty, a known layout
        source_settings = _source_settings(source)
    _check_folders(source, target)
    ready, properties = _check_data_dir(target, None if phantom else source, source_settings, options, overwrite)
    if ready:
        print(f"prepared data found at {target}", flush=True)
        return _read_summary(target, properties)
    before = _read_datalist(target)
    with _removing_new_folders(target, source):
        if phantom and _phantom_needs_generating(source, params, overwrite):
            check_writable(source)
            check_writable(target)
            _generate_phantom(source, params)
        summary = prepare_dataset(str(source), str(target), overwrite=overwrite, **options)
    retire_outputs(output_dir, target, before)
    return summary


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
    output_dir: str | None = None,
) -> dict[str, Any]:
    """The ``prepare`` run id's work: :func:`prepare_dataset`, phantom when no dataset.

    Unlike :func:`prepare_if_needed` it always prepares, so an existing
    non-empty ``data_dir`` needs ``overwrite``; that is checked (as are the
    options and the phantom folder) before a phantom is generated.

    Args:
        dataset_dir: raw dataset folder; None or ``""`` generates the phantom
            (see :func:`prepare_if_needed` for the ``phantom_*`` arguments).
        data_dir: output folder.
        split, split_ratios, validation_fraction, keep_effusion, min_lesion_pixels, seed,
        overwrite, patient_regex, include_healthy: as :func:`prepare_dataset`.
        phantom_dir, phantom_patients, phantom_size, phantom_slices, output_dir: as :func:`prepare_if_needed`.

    Returns:
        The summary.

    Raises:
        InputError: bad input, naming the file; nothing is written then.
    """
    options = _prepare_options(dict(
        split=split, split_ratios=split_ratios, validation_fraction=validation_fraction,
        keep_effusion=keep_effusion, min_lesion_pixels=min_lesion_pixels, seed=seed,
        patient_regex=patient_regex, include_healthy=include_healthy,
    ))
    overwrite = _flag("overwrite", overwrite)
    if data_dir is None or str(data_dir).strip() == "":
        raise InputError("no data_dir given")
    target = Path(data_dir).expanduser()
    before = _read_datalist(target)
    if dataset_dir is not None and str(dataset_dir).strip() != "":
        with _removing_new_folders(target):  # a failed run leaves no empty work folder
            summary = prepare_dataset(str(dataset_dir), str(target), overwrite=overwrite, **options)
        retire_outputs(output_dir, target, before)
        return summary
    if options["split"] == "predefined":
        raise InputError("split=predefined needs a dataset with its own train/ and test/ folders; "
                         "the phantom has none: use split=patient")
    params = _phantom_params(phantom_patients, phantom_size, phantom_slices, options["seed"])
    source = _phantom_folder(target, phantom_dir)
    _check_folders(source, target)
    if target.exists() and not target.is_dir():
        raise InputError("exists and is not a folder", target)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise InputError("already exists and is not empty; pass --overwrite True to replace it", target)
    with _removing_new_folders(target, source):
        if _phantom_needs_generating(source, params, overwrite):
            check_writable(source)
            check_writable(target)
            _generate_phantom(source, params)
        else:
            print(f"phantom data found at {source}", flush=True)
        summary = prepare_dataset(str(source), str(target), overwrite=overwrite, **options)
    retire_outputs(output_dir, target, before)
    return summary

