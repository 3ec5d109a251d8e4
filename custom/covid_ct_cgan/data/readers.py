"""Read the raw dataset layouts (bundle/docs/data.md, "Sources read by prepare") into validated cases.

Every file goes through MONAI's ``LoadImage`` (``NibabelReader`` for NIfTI,
``PILReader`` for PNG/JPEG/TIFF, ``ITKReader`` for DICOM series folders), so
arrays follow MONAI's ``[x, y(, z)]`` convention. Volumes (and 2D NIfTI
slices) are reoriented with MONAI's ``Orientation`` to ``LPS`` axis codes:
our phantom's affine ``diag(-sx, -sy, sz)`` is already LPS and comes out
unchanged, and ``arr[:, :, k].T`` is a radiological axial view. Each mask is
reoriented by its own affine (as ``LoadImaged`` + ``Orientationd`` would),
then its shape must equal the image's. Picture files (PNG, JPEG, TIFF) carry
no geometry: they get 1 mm pixels and the affine ``diag(-1, -1, 1)``.

Layouts (:func:`detect_layout` names them):

``radiopaedia``
    ``rp_im/N.nii.gz`` (CT), ``rp_msk/N.nii.gz`` (lesions: 1 GGO,
    2 consolidation, 3 effusion), optional ``rp_lung_msk/N.nii.gz`` (non-zero
    is lung). Patient id ``N``.
``medseg``
    ``tr_im.nii.gz``, ``tr_mask.nii.gz``, optional
    ``tr_lungmasks_updated.nii.gz``; slices along the last axis. The slices'
    patients are unknown, so each slice is its own patient ``medseg_<k>``.
``slices``
    ``images/`` + ``labels/`` (or ``masks/``) + optional ``lungs/`` (or
    ``lung_masks/``), files matched by name stem (``7.jpg`` <-> ``7.png``),
    any of png/jpg/jpeg/tif/tiff/nii/nii.gz. Folders holding such a triple
    one level down (``train/images``, ``test/images`` ...) are pooled.
    Lesion masks are multi-class (0..3 as above) or binary (0/1, 0/255:
    infection of unknown type). Patient id = file stem, or the one group of
    ``patient_regex`` matched against the stem (e.g. ``r"(.+)_\\d+"``).
``dicom``
    One or more series folders ``<dataset_dir>/<series>/`` of DICOM files
    (read through ITK, so HU via RescaleSlope/Intercept and the geometry of
    ImagePositionPatient/PixelSpacing; a damaged file of a series is an error
    naming it, where ITK alone would skip it). The lesion mask of a series is the
    NIfTI ``<dataset_dir>/<series>_lesion.nii.gz`` next to the folder, on
    the series' voxel grid; an optional lung mask is
    ``<dataset_dir>/<series>_lung.nii.gz``. Patient id = series folder name.

Intensity scale: picture files must be 8-bit (``"8bit"``, colour is turned
to grey). NIfTI and DICOM images are ``"hu"``, except a NIfTI whose values
all lie in 0..255, which is taken as already windowed (``"8bit"``): CT in HU
always holds air near -1000.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from ..errors import InputError

LAYOUTS: tuple[str, ...] = ("radiopaedia", "medseg", "slices", "dicom")
PICTURE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
IMAGE_SUFFIXES: tuple[str, ...] = PICTURE_SUFFIXES + NIFTI_SUFFIXES
LESION_FOLDERS: tuple[str, ...] = ("labels", "masks")
LUNG_FOLDERS: tuple[str, ...] = ("lungs", "lung_masks")
AXCODES = "LPS"
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
PICTURE_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
SOURCE_LESION_VALUES = frozenset({0, 1, 2, 3})
BINARY_255_VALUES = frozenset({0, 255})

_LAYOUT_HELP = (
    "looked for: radiopaedia (rp_im/ + rp_msk/), medseg (tr_im.nii.gz + tr_mask.nii.gz), "
    "slices (images/ + labels/ or masks/, also one level down such as train/images/), "
    "dicom (series folders of .dcm files, lesion masks <series>_lesion.nii.gz)"
)


@dataclass
class CaseFiles:
    """The files of one case, found but not read yet.

    Attributes:
        patient: patient id.
        image: image file, or DICOM series folder.
        lesion: lesion mask file (None: a DICOM series without one).
        lung: lung mask file, or None (derive it).
        slice_number: for a 2D slice file, its index among its patient's slices.
        patient_per_slice: each slice is its own patient ``<patient>_<k>``.
    """

    patient: str
    image: Path
    lesion: Path | None
    lung: Path | None = None
    slice_number: int | None = None
    patient_per_slice: bool = False


@dataclass
class Case:
    """One read and checked image volume (or slice) with its masks.

    Attributes:
        patient: patient id (see :meth:`patient_of`).
        image: ``[x, y, z]`` float32 array, HU or 8-bit values.
        lesion: ``[x, y, z]`` uint8 source lesion codes (0 none, 1 GGO,
            2 consolidation, 3 effusion; or binary 0/1, 0/255), or None.
        lung: ``[x, y, z]`` uint8 lung mask (1 = lung), or None.
        affine: 4x4 voxel-to-world (RAS mm) matrix of ``image``, LPS axes.
        scale: ``"hu"`` or ``"8bit"``.
        sources: file names by role (``image``, ``lesion``, ``lung``), for
            error messages and provenance.
        slice_numbers: source slice index of each ``z`` of ``image``.
        patient_per_slice: each slice is its own patient.
    """

    patient: str
    image: np.ndarray
    lesion: np.ndarray | None
    lung: np.ndarray | None
    affine: np.ndarray
    scale: str
    sources: dict[str, str]
    slice_numbers: tuple[int, ...] = field(default=())
    patient_per_slice: bool = False

    def __post_init__(self) -> None:
        if not self.slice_numbers:
            self.slice_numbers = tuple(range(self.image.shape[2]))

    def patient_of(self, z: int) -> str:
        """Patient id of slice ``z`` of this case."""
        return f"{self.patient}_{self.slice_numbers[z]}" if self.patient_per_slice else self.patient

    def slice_affine(self, z: int) -> np.ndarray:
        """4x4 affine of the 2D slice ``z``: in-plane axes of the volume, origin moved to the slice."""
        aff = np.array(self.affine, dtype=np.float64)
        aff[:3, 3] = aff[:3, 3] + aff[:3, 2] * z
        return aff


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".nii.gz",) + IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _stem(path: Path) -> str:
    return path.name[: len(path.name) - len(_suffix(path))]


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _is_dicom_folder(folder: Path) -> bool:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return bool(files) and _is_dicom_file(files[0])


def _slice_roots(dataset_dir: Path) -> list[Path]:
    if (dataset_dir / "images").is_dir():
        return [dataset_dir]
    subdirs = sorted((p for p in dataset_dir.iterdir() if p.is_dir()), key=lambda p: _natural_key(p.name))
    return [p for p in subdirs if (p / "images").is_dir()]


def _check_dataset_dir(dataset_dir: str | Path | None) -> Path:
    if dataset_dir is None or str(dataset_dir).strip() == "":
        raise InputError("no dataset_dir given")
    path = Path(dataset_dir).expanduser()
    if not path.exists():
        raise InputError("dataset_dir does not exist", path)
    if not path.is_dir():
        raise InputError("dataset_dir is not a folder", path)
    if not any(p for p in path.iterdir() if not p.name.startswith(".")):
        raise InputError("dataset_dir is empty", path)
    return path


def detect_layout(dataset_dir: str | Path) -> str:
    """Name the layout of a raw dataset folder.

    Args:
        dataset_dir: folder in one of the layouts of the module docstring.

    Returns:
        ``"radiopaedia"``, ``"medseg"``, ``"slices"`` or ``"dicom"``.

    Raises:
        InputError: the folder is missing or empty, or no layout fits (the
            message lists the layouts looked for).
    """
    path = _check_dataset_dir(dataset_dir)
    if (path / "rp_im").is_dir():
        return "radiopaedia"
    if (path / "tr_im.nii.gz").is_file() or (path / "tr_im.nii").is_file():
        return "medseg"
    if _slice_roots(path):
        return "slices"
    if any(_is_dicom_folder(p) for p in path.iterdir() if p.is_dir()):
        return "dicom"
    raise InputError(f"no known dataset layout; {_LAYOUT_HELP}", path)


def _find_by_stem(folder: Path, stem: str) -> Path | None:
    matches = [p for p in folder.iterdir() if p.is_file() and _stem(p) == stem and _suffix(p) in IMAGE_SUFFIXES]
    if len(matches) > 1:
        names = ", ".join(sorted(p.name for p in matches))
        raise InputError(f"several files share the name stem {stem!r} ({names}); keep one", folder)
    return matches[0] if matches else None


def _nifti_in(folder: Path, stem: str) -> Path | None:
    for suffix in NIFTI_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def _patient_from_stem(stem: str, pattern: re.Pattern | None, path: Path) -> str:
    if pattern is None:
        return stem
    match = pattern.fullmatch(stem)
    if match is None:
        raise InputError(f"file name stem {stem!r} does not match patient_regex {pattern.pattern!r}", path)
    return match.group(1)


def _find_radiopaedia(path: Path) -> list[CaseFiles]:
    images = [p for p in (path / "rp_im").iterdir() if _suffix(p) in NIFTI_SUFFIXES]
    images.sort(key=lambda p: _natural_key(p.name))
    if not images:
        raise InputError("no NIfTI volumes (*.nii.gz) in rp_im/", path / "rp_im")
    cases = []
    for image in images:
        stem = _stem(image)
        lesion = _nifti_in(path / "rp_msk", stem) if (path / "rp_msk").is_dir() else None
        if lesion is None:
            raise InputError(f"no lesion mask rp_msk/{stem}.nii.gz for this image", image)
        lung = _nifti_in(path / "rp_lung_msk", stem) if (path / "rp_lung_msk").is_dir() else None
        cases.append(CaseFiles(patient=stem, image=image, lesion=lesion, lung=lung))
    return cases


def _find_medseg(path: Path) -> list[CaseFiles]:
    image = _nifti_in(path, "tr_im")
    if image is None:  # a layout given as "medseg" for a folder of another layout
        raise InputError("no image tr_im.nii.gz in this folder", path)
    lesion = _nifti_in(path, "tr_mask")
    if lesion is None:
        raise InputError("no lesion mask tr_mask.nii.gz next to this image", image)
    lung = _nifti_in(path, "tr_lungmasks_updated") or _nifti_in(path, "tr_lungmasks")
    return [CaseFiles(patient="medseg", image=image, lesion=lesion, lung=lung, patient_per_slice=True)]


def _find_slices(path: Path, patient_regex: str | None) -> list[CaseFiles]:
    pattern = None
    if patient_regex:
        try:
            pattern = re.compile(patient_regex)
        except re.error as err:
            raise InputError(f"patient_regex {patient_regex!r} is not a valid regular expression ({err})") from None
        if pattern.groups != 1:
            raise InputError(
                f"patient_regex {patient_regex!r} must have exactly one group (the patient id), found {pattern.groups}"
            )
    found: list[CaseFiles] = []
    for root in _slice_roots(path):
        lesion_dir = next((root / n for n in LESION_FOLDERS if (root / n).is_dir()), None)
        if lesion_dir is None:
            raise InputError(f"no lesion mask folder ({' or '.join(LESION_FOLDERS)}) next to images/", root)
        lung_dir = next((root / n for n in LUNG_FOLDERS if (root / n).is_dir()), None)
        images = [p for p in (root / "images").iterdir() if p.is_file() and _suffix(p) in IMAGE_SUFFIXES]
        stems = [_stem(p) for p in images]
        for stem in {s for s in stems if stems.count(s) > 1}:
            _find_by_stem(root / "images", stem)  # raises: ambiguous names
        for image in sorted(images, key=lambda p: _natural_key(p.name)):
            stem = _stem(image)
            lesion = _find_by_stem(lesion_dir, stem)
            if lesion is None:
                raise InputError(f"no lesion mask with the same name in {lesion_dir}", image)
            lung = _find_by_stem(lung_dir, stem) if lung_dir is not None else None
            patient = _patient_from_stem(stem, pattern, image)
            found.append(CaseFiles(patient=patient, image=image, lesion=lesion, lung=lung))
    if not found:
        raise InputError("no image files (png/jpg/jpeg/tif/tiff/nii/nii.gz) in the images/ folders", path)
    counters: dict[str, int] = {}
    for case in sorted(found, key=lambda c: (_natural_key(c.patient), _natural_key(_stem(c.image)), str(c.image))):
        case.slice_number = counters.get(case.patient, 0)
        counters[case.patient] = case.slice_number + 1
    return found


def _find_dicom(path: Path, require_lesion: bool) -> list[CaseFiles]:
    cases = []
    for folder in sorted((p for p in path.iterdir() if p.is_dir()), key=lambda p: _natural_key(p.name)):
        if not _is_dicom_folder(folder):
            continue
        lesion = _nifti_in(path, f"{folder.name}_lesion")
        if lesion is None and require_lesion:
            raise InputError(f"no lesion mask {folder.name}_lesion.nii.gz next to this DICOM series folder", folder)
        lung = _nifti_in(path, f"{folder.name}_lung")
        cases.append(CaseFiles(patient=folder.name, image=folder, lesion=lesion, lung=lung))
    if not cases:
        raise InputError("no DICOM series folders", path)
    return cases


def find_cases(
    dataset_dir: str | Path, layout: str | None = None, patient_regex: str | None = None, require_lesion: bool = True
) -> list[CaseFiles]:
    """List the cases of a dataset (file names only; nothing is read yet).

    Args:
        dataset_dir: raw dataset folder.
        layout: one of :data:`LAYOUTS`, or None to detect it.
        patient_regex: slice folders only: regular expression with one group
            that takes the patient id out of a file name stem.
        require_lesion: DICOM only: a series without a lesion mask is an error.

    Returns:
        The cases in a stable order.

    Raises:
        InputError: missing folder or file, ambiguous names, unknown layout.
    """
    path = _check_dataset_dir(dataset_dir)
    layout = layout or detect_layout(path)
    if layout == "radiopaedia":
        return _find_radiopaedia(path)
    if layout == "medseg":
        return _find_medseg(path)
    if layout == "slices":
        return _find_slices(path, patient_regex)
    if layout == "dicom":
        return _find_dicom(path, require_lesion)
    raise InputError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")


def _to_grey(data: np.ndarray, path: Path, is_mask: bool) -> np.ndarray:
    """Picture arrays ``[x, y]`` or ``[x, y, c]`` to ``[x, y]``."""
    if data.ndim == 2:
        return data
    if data.ndim != 3 or data.shape[2] not in (3, 4):
        raise InputError(f"expected a greyscale or RGB(A) picture, got array shape {tuple(data.shape)}", path)
    rgb = data[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0]
    if is_mask:
        raise InputError("mask is a colour picture; expected one value per pixel (class codes or 0/255)", path)
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def load_image(path: str | Path, is_mask: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """Read one image file or DICOM series folder with MONAI's ``LoadImage``.

    Args:
        path: NIfTI, PNG/JPEG/TIFF file, or a folder holding one DICOM series.
        is_mask: a mask (colour pictures are refused instead of made grey).

    Returns:
        ``(array [x, y, z] float32, affine 4x4, scale)``; 2D files get ``z = 1``.
        Volumes are reoriented to LPS axis codes.

    A damaged file is an error naming it, never read another way or skipped:
    NIfTI is read by ``NibabelReader`` alone (MONAI's fallback to ITK would read
    a cut-short ``.nii.gz`` as garbage); a DICOM series must give one slice per
    file (ITK leaves out files it cannot read), else the error names the first
    damaged file; NaN/inf values are refused before any conversion.

    Raises:
        InputError: unreadable or corrupt file (for a DICOM series: the damaged
            file), unsupported shape, non-finite values, a picture that is not 8-bit.
    """
    from monai.data import ITKReader, NibabelReader, PILReader
    from monai.transforms import LoadImage  # imported on first read: MONAI takes seconds to import

    path = Path(path)
    picture = path.is_file() and _suffix(path) in PICTURE_SUFFIXES
    # the reader instance is passed at call time: LoadImage then uses it alone, instead of falling
    # back to other readers (ITK reads a truncated .nii.gz as garbage)
    reader = ITKReader() if path.is_dir() else (PILReader() if picture else NibabelReader())
    try:
        data = LoadImage(image_only=True, dtype=np.float32)(str(path), reader=reader)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file for the user
        if path.is_dir():  # name the damaged file of the series, not only its folder
            _check_dicom_files(path, _dicom_files(path), f"ITK cannot read the series: {_one_line(err, 120)}")
        raise InputError(f"cannot read this file ({_one_line(err)})", path) from None
    array = np.asarray(data)
    if path.is_dir():
        _check_series_complete(path, array)
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(f"holds {bad} non-finite voxel(s) (NaN or inf)", path)
    if picture:  # no geometry, no orientation: MONAI's [x, y] already
        array = _to_grey(array, path, is_mask)
        if array.size and (array.min() < 0 or array.max() > 255):
            span = f"{array.min():g}..{array.max():g}"
            raise InputError(f"picture values span {span}; expected 8-bit 0..255 (store CT in HU as NIfTI)", path)
        return array[:, :, None].astype(np.float32, copy=False), PICTURE_AFFINE.copy(), "8bit"
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise InputError(f"expected a 2D slice or a 3D volume, got array shape {tuple(array.shape)}", path)
    if array.ndim == 2:
        array = array[:, :, None]
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(f"holds {bad} non-finite voxel(s) (NaN or inf)", path)
    array, affine = _reorient(array, np.asarray(data.affine, dtype=np.float64))
    scale = "8bit" if array.size and array.min() >= 0 and array.max() <= 255 else "hu"
    return array.astype(np.float32, copy=False), affine, scale


def _one_line(err: BaseException, limit: int = 200) -> str:
    """An exception's message on one line (a reader's message may span several), at most ``limit`` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dicom_files(folder: Path) -> list[Path]:
    """The DICOM files of a series folder (hidden files left out), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and _is_dicom_file(p))


def _check_dicom_files(folder: Path, files: list[Path], context: str) -> None:
    """Raise an error naming the first damaged DICOM file of a series, if any.

    A file is damaged when pydicom cannot parse it, it holds no pixel data, or
    its uncompressed pixel data cannot be decoded (cut short). Compressed pixel
    data is not decoded here (pydicom may lack the codec that ITK has).

    Args:
        folder: the series folder.
        files: its DICOM files.
        context: what went wrong with the series as a whole (added to the message).

    Raises:
        InputError: naming the first damaged file (the others by name).
    """
    import pydicom

    bad: list[tuple[Path, str]] = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
            if "PixelData" not in ds:
                raise ValueError("no pixel data")
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            if syntax is None or not syntax.is_compressed:
                ds.pixel_array  # noqa: B018 - decoding is the check
        except Exception as err:  # noqa: BLE001 - any failure: this file is not a readable image
            bad.append((f, _one_line(err, 120)))
    if bad:
        others = f"; also damaged: {', '.join(f.name for f, _ in bad[1:6])}" if len(bad) > 1 else ""
        raise InputError(
            f"damaged DICOM file of the series {folder.name} ({bad[0][1]}; {context}){others}", bad[0][0]
        )


def _check_series_complete(folder: Path, array: np.ndarray) -> None:
    """ITK skips unreadable files and files of other series: every DICOM file must have become a slice."""
    files = _dicom_files(folder)
    slices = array.shape[2] if array.ndim >= 3 else 1
    if len(files) <= slices:  # (a multi-frame file holds several slices)
        return
    _check_dicom_files(folder, files, f"ITK read {slices} slice(s) from the series' {len(files)} files")
    raise InputError(
        f"DICOM series of {len(files)} files gave {slices} slices (the folder holds several series or sizes; "
        "keep one series per folder)",
        folder,
    )


def _reorient(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    tensor = MetaTensor(array[None], affine=affine)  # type: ignore[arg-type]  # it converts the array itself
    oriented = cast(MetaTensor, Orientation(axcodes=AXCODES, labels=_RAS_LABELS)(tensor))
    return np.ascontiguousarray(oriented[0].numpy()), np.asarray(oriented.affine, dtype=np.float64)


def _shape(array: np.ndarray) -> tuple[int, ...]:
    return tuple(array.shape[:2]) if array.shape[2] == 1 else tuple(array.shape)


def _check_lesion_values(lesion: np.ndarray, path: Path) -> None:
    if not np.all(np.equal(np.mod(lesion, 1), 0)):
        raise InputError("lesion mask holds non-integer values; expected class codes 0..3 or 0/255", path)
    values = set(np.unique(lesion).astype(np.int64).tolist())
    if values <= BINARY_255_VALUES or values <= SOURCE_LESION_VALUES:
        return
    unknown = sorted(values - SOURCE_LESION_VALUES)
    raise InputError(
        f"lesion mask holds unknown label values {unknown}; expected 0 none, 1 GGO, 2 consolidation, "
        "3 effusion (or a binary 0/1 or 0/255 infection mask)",
        path,
    )


def load_case(files: CaseFiles) -> Case:
    """Read and check the files of one case.

    Checks: every file readable, finite values, masks of the image's shape,
    lesion codes known (0..3, or binary 0/255).

    Args:
        files: from :func:`find_cases`.

    Returns:
        The :class:`Case`.

    Raises:
        InputError: naming the offending file.
    """
    image, affine, scale = load_image(files.image)
    sources = {"image": str(files.image)}
    masks: dict[str, np.ndarray | None] = {"lesion": None, "lung": None}
    for role in ("lesion", "lung"):
        path = getattr(files, role)
        if path is None:
            continue
        mask, _, _ = load_image(path, is_mask=True)
        if mask.shape != image.shape:
            raise InputError(
                f"{role} mask shape {_shape(mask)} differs from image shape {_shape(image)} ({files.image.name})", path
            )
        if role == "lesion":
            _check_lesion_values(mask, path)
            masks[role] = mask.astype(np.uint8)  # codes 0..3 or 0/255
        else:
            masks[role] = (mask != 0).astype(np.uint8)
        sources[role] = str(path)
    numbers = (files.slice_number,) if files.slice_number is not None else ()
    if numbers and image.shape[2] != 1:
        raise InputError(f"expected a 2D slice in a slice folder, got a volume of shape {image.shape}", files.image)
    return Case(
        patient=files.patient,
        image=image,
        lesion=masks["lesion"],
        lung=masks["lung"],
        affine=affine,
        scale=scale,
        sources=sources,
        slice_numbers=numbers,
        patient_per_slice=files.patient_per_slice,
    )

