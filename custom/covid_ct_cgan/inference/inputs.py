"""Synthesis inputs: find the (real image, label map) pairs, read them, remember their geometry.

Inputs come as

- a MONAI ``datalist.json`` (the prepared data's, or any with ``image`` and
  ``label`` items; paths relative to the file; ``datalist_key`` picks the list,
  default ``test_synthesis``; an item's ``scale`` names its intensity scale);
- a folder holding such a ``datalist.json``, or ``images/`` + ``labels/``
  matched by name stem (``images/`` entries may be files or DICOM series
  folders, whose label map is ``labels/<folder>.nii.gz``);
- one ``image`` (file or DICOM series folder) with one ``label`` file.

Images are NIfTI (2D slices or 3D volumes, HU or 8 bit), 8-bit PNG/JPEG/TIFF
pictures, or DICOM series (through ITK). Label maps use the label-map classes
of :mod:`covid_ct_cgan.labels` (0 outside lung, 1 lung, 2 GGO,
3 consolidation) on the image's voxel grid.

Reading goes through :func:`covid_ct_cgan.data.readers.load_image`, which
gives ``[x, y, z]`` arrays reoriented to LPS (the orientation the model was
trained on). :class:`Geometry` keeps what is needed to write a result exactly
like its input: the NIfTI header (affine, codes, dtype) and the orientation
transform back to the file's own array order; a picture's size; a DICOM
series' LPS affine (its results are written as NIfTI).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from nibabel import orientations

from .. import intensity
from ..data.prepare import check_prepared
from ..data.readers import AXCODES, IMAGE_SUFFIXES, PICTURE_SUFFIXES, _is_dicom_file, load_image
from ..errors import InputError
from ..labels import check_label_map, lung_region

logger = logging.getLogger(__name__)

DATALIST = "datalist.json"
LABEL_FOLDERS: tuple[str, ...] = ("labels", "label_maps")


@dataclass(frozen=True)
class SynthesisInput:
    """One input pair, found but not read yet.

    Attributes:
        name: unique base name of its outputs (the image's name stem).
        image: image file, or DICOM series folder.
        label: label-map file on the image's voxel grid.
        scale: intensity scale named by the datalist (``"hu"``/``"8bit"``), or None to detect it.
    """

    name: str
    image: Path
    label: Path
    scale: str | None = None


@dataclass
class Geometry:
    """How an input is stored, so that its results are written the same way.

    Attributes:
        kind: ``"nifti"``, ``"picture"`` or ``"dicom"``.
        shape: the file's own array shape (``[x, y]`` for pictures and 2D NIfTI).
        dtype: dtype of the written image (the input's stored dtype; float32 for scaled NIfTI).
        affine: 4x4 affine of the written NIfTI (the file's own; a DICOM series' LPS one).
        header: the NIfTI header to copy (None for pictures and DICOM).
        from_lps: nibabel orientation transform from the LPS arrays back to the file's axes.
    """

    kind: str
    shape: tuple[int, ...]
    dtype: np.dtype
    affine: np.ndarray
    header: nib.Nifti1Header | None = None
    from_lps: np.ndarray | None = None

    def to_file_order(self, array: np.ndarray) -> np.ndarray:
        """An LPS ``[x, y, z]`` array back in the file's own axis order and shape."""
        if self.from_lps is not None:
            array = orientations.apply_orientation(array, self.from_lps)
        return np.ascontiguousarray(array).reshape(self.shape)

    def file_slice(self, z: int, num_slices: int) -> int:
        """Index in the file of the LPS slice ``z`` (along the file's axis that became z)."""
        if self.from_lps is None or self.from_lps[2, 1] > 0:
            return int(z)
        return int(num_slices - 1 - z)


@dataclass
class LoadedInput:
    """A read and checked input.

    Attributes:
        item: where it came from.
        image: ``[x, y, z]`` float32 LPS array in the input's units (HU or 0..255).
        label: ``[x, y, z]`` uint8 LPS label map.
        scale: ``"hu"`` or ``"8bit"``.
        geometry: how to write results like this input.
    """

    item: SynthesisInput
    image: np.ndarray
    label: np.ndarray
    scale: str
    geometry: Geometry

    def slice_name(self, z: int) -> str:
        """``"<name>:<slice index in the file>"`` of the LPS slice ``z`` (for the manifest)."""
        return f"{self.item.name}:{self.geometry.file_slice(z, self.image.shape[2])}"

    def lung_slices(self) -> list[int]:
        """Indices ``z`` of the slices whose label map has lung."""
        return [z for z in range(self.label.shape[2]) if lung_region(self.label[:, :, z]).any()]


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), path.suffix.lower())


def _stem(path: Path) -> str:
    return path.name[: len(path.name) - len(_suffix(path))] if _suffix(path) in IMAGE_SUFFIXES else path.name


def _refuse_dicom_file(image: Path) -> None:
    """A single DICOM file is one slice of a series: the series is read from its folder."""
    if image.is_file() and _is_dicom_file(image):
        raise InputError(
            f"is a single DICOM file; pass its series folder instead (image: {image.parent}), "
            "which holds the .dcm files of all the slices",
            image,
        )


def _unique_names(pairs: list[tuple[Path, Path, str | None]]) -> list[SynthesisInput]:
    seen: dict[str, int] = {}
    items = []
    for image, label, scale in pairs:
        _refuse_dicom_file(image)
        base = _stem(image)
        count = seen.get(base, 0)
        seen[base] = count + 1
        items.append(SynthesisInput(base if count == 0 else f"{base}_{count + 1}", image, label, scale))
    return items


def _from_datalist(path: Path, key: str) -> list[SynthesisInput]:
    check_prepared(path)  # a datalist.json written by prepare: its slices as prepared
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read this datalist ({err})", path) from None
    if not isinstance(data, dict) or key not in data:
        keys = ", ".join(sorted(k for k in data if isinstance(data.get(k), list))) if isinstance(data, dict) else "none"
        raise InputError(f"datalist has no list {key!r} (lists found: {keys or 'none'}); set datalist_key", path)
    entries = data[key]
    if not isinstance(entries, list) or not entries:
        raise InputError(f"datalist list {key!r} is empty or not a list", path)
    pairs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("image", "label")):
            raise InputError(f"item {i} of {key!r} needs 'image' and 'label' paths", path)
        scale = entry.get("scale")
        if scale is not None and scale not in intensity.SCALES:
            raise InputError(
                f"item {i} of {key!r} has unknown scale {scale!r}; expected one of {intensity.SCALES}", path
            )
        pairs.append((path.parent / entry["image"], path.parent / entry["label"], scale))
    return _unique_names(pairs)


def _from_folder(folder: Path) -> list[SynthesisInput]:
    images_dir = folder / "images"
    labels_dir = next((folder / n for n in LABEL_FOLDERS if (folder / n).is_dir()), None)
    if not images_dir.is_dir() or labels_dir is None:
        raise InputError(
            f"expected a {DATALIST}, or images/ and labels/ folders (label maps matched by name), in this folder", folder
        )
    labels: dict[str, Path] = {}
    for path in labels_dir.iterdir():
        if path.is_file() and _suffix(path) in IMAGE_SUFFIXES:
            if _stem(path) in labels:
                raise InputError(f"several label maps share the name stem {_stem(path)!r}; keep one", labels_dir)
            labels[_stem(path)] = path
    pairs: list[tuple[Path, Path, str | None]] = []
    for image in sorted(images_dir.iterdir(), key=lambda p: p.name):
        if image.name.startswith(".") or not (image.is_dir() or _suffix(image) in IMAGE_SUFFIXES):
            continue
        label = labels.get(_stem(image))
        if label is None:
            raise InputError(f"no label map with the same name in {labels_dir}", image)
        pairs.append((image, label, None))
    if not pairs:
        raise InputError("no images (NIfTI, PNG/JPEG/TIFF or DICOM series folders) in images/", images_dir)
    return _unique_names(pairs)


def collect_inputs(
    input: str | Path | None = None,
    image: str | Path | None = None,
    label: str | Path | None = None,
    datalist_key: str = "test_synthesis",
) -> tuple[list[SynthesisInput], list[Path]]:
    """Find the input pairs (nothing is read yet).

    Args:
        input: a ``datalist.json``, or a folder (with a ``datalist.json``, or ``images/`` + ``labels/``).
        image: one image file or DICOM series folder (with ``label``; instead of ``input``).
        label: the label map of ``image``.
        datalist_key: the datalist's list to synthesise from.

    Returns:
        ``(inputs, input folders)``: the pairs in a stable order, and the folders that
        hold them (outputs must not go there).

    Raises:
        InputError: nothing or both given, a missing file or folder, a datalist
            without the list, an image without a label map.
    """
    single = bool(str(image or "").strip()) or bool(str(label or "").strip())
    given = bool(str(input or "").strip())
    if single and given:
        raise InputError(f"give either input ({input}) or image + label, not both")
    if single:
        if not str(image or "").strip() or not str(label or "").strip():
            raise InputError("a single input needs both image and label")
        image, label = Path(str(image)).expanduser(), Path(str(label)).expanduser()
        for path in (image, label):
            if not path.exists():
                raise InputError("does not exist", path)
        if not label.is_file():
            raise InputError("the label map must be a file (NIfTI or picture)", label)
        folders = [image.parent, label.parent] + ([image] if image.is_dir() else [])
        return _unique_names([(image, label, None)]), folders
    if not given:
        raise InputError("no input given: pass input (a datalist.json or a folder) or image + label")
    path = Path(str(input)).expanduser()
    if not path.exists():
        raise InputError(
            "input does not exist; pass input (a datalist.json or a folder) or image + label "
            "(the default input is the prepared data's datalist.json: run training or prepare first)",
            path,
        )
    if path.is_file():
        if not path.name.lower().endswith(".json"):
            raise InputError(
                "a single input file must be given as image + label; input takes a datalist.json or a folder", path
            )
        items = _from_datalist(path, datalist_key)
        root = path.parent
    elif (path / DATALIST).is_file():
        items, root = _from_datalist(path / DATALIST, datalist_key), path
    else:
        items, root = _from_folder(path), path
    folders = [root]
    for item in items:
        folders += [item.image.parent, item.label.parent] + ([item.image] if item.image.is_dir() else [])
    return items, folders


def _nifti_geometry(path: Path) -> Geometry:
    try:
        img = cast(nib.Nifti1Image, nib.load(str(path)))  # NIfTI-2 images subclass it
    except Exception as err:  # noqa: BLE001 - load_image already read it; this is a safety net
        raise InputError(f"cannot read this NIfTI header ({' '.join(str(err).split())[:200]})", path) from None
    header = img.header.copy()
    slope, inter = header.get_slope_inter()
    scaled = (slope not in (None, 1.0) and not np.isnan(slope)) or (inter not in (None, 0.0) and not np.isnan(inter))
    dtype = np.dtype(np.float32) if scaled else np.dtype(header.get_data_dtype())
    shape = tuple(int(s) for s in img.shape)
    file_ornt = orientations.io_orientation(img.affine)
    from_lps = orientations.ornt_transform(orientations.axcodes2ornt(tuple(AXCODES)), file_ornt)
    return Geometry("nifti", shape, dtype, np.asarray(img.affine, np.float64), header, from_lps)


def load_input(item: SynthesisInput, keep_effusion: bool = False) -> LoadedInput:
    """Read and check one input pair.

    Checks: both files readable, same shape, label values in the known classes, some lung.

    Args:
        item: from :func:`collect_inputs`.
        keep_effusion: class 4 (effusion) is allowed.

    Returns:
        The :class:`LoadedInput`.

    Raises:
        InputError: naming the offending file.
    """
    image, affine, guessed = load_image(item.image)
    label, _, _ = load_image(item.label, is_mask=True)
    if label.shape != image.shape:
        raise InputError(
            f"label map shape {label.shape[:2] if label.shape[2] == 1 else label.shape} differs from image shape "
            f"{image.shape[:2] if image.shape[2] == 1 else image.shape} ({item.image})",
            item.label,
        )
    try:
        check_label_map(label, keep_effusion)
    except ValueError as err:
        raise InputError(str(err), item.label) from None
    if not lung_region(label).any():
        raise InputError("label map has no lung (no pixel > 0); nothing to synthesise", item.label)
    scale = item.scale or guessed
    if item.image.is_dir():
        geometry = Geometry("dicom", image.shape, np.dtype(np.int16), affine)
    elif _suffix(item.image) in PICTURE_SUFFIXES:
        geometry = Geometry("picture", image.shape[:2], np.dtype(np.uint8), affine)
        if scale != "8bit":
            raise InputError(f"a picture is 8-bit, but its datalist item says scale {scale!r}", item.image)
    else:
        geometry = _nifti_geometry(item.image)
        if int(np.prod(geometry.shape)) != image.size:
            raise InputError(f"unexpected array shape {geometry.shape} (read as {image.shape})", item.image)
    return LoadedInput(item, image, label.astype(np.uint8), scale, geometry)
