"""Damaged inputs for the fuzz tests: a valid tiny dataset, then up to two mutations drawn by hypothesis.

A mutation is plain data (so hypothesis can shrink and print it):

- ``("truncate", role, index, fraction)``: keep the first ``fraction`` of the file's bytes;
- ``("garbage", role, index, size, seed)``: replace the file by ``size`` random bytes;
- ``("array", role, index, spec)``: replace the file's content by another array
  (dtype, shape and values from ``spec``; same format as the file);
- ``("delete", role, index)``: remove the file (a pair loses its partner);
- ``("empty_folder", role)``: remove every file of that role;
- ``("stray", role, kind)``: add an unexpected file next to that role's files.

``role`` is ``image``, ``lesion`` or ``lung``; ``index`` picks a file of that role
(modulo their number). :func:`apply` returns what was changed, for the oracle;
:func:`attempt`, :func:`common_verdict` and :func:`names_damaged` are the rules that
oracle shares between the fuzzed readers.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from PIL import Image

from covid_ct_cgan.errors import InputError

ROLES = ("image", "lesion", "lung")
DTYPES = ("uint8", "int8", "int16", "uint16", "int32", "float32", "float64")
SHAPES = ("same", "transposed", "smaller", "2d", "4d", "empty", "thin", "one")
FILLS = ("orig", "nan", "inf", "zeros", "const255", "random_int", "random_float", "big_labels")
ARRAY_SUFFIXES = (".nii", ".nii.gz", ".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
PICTURE_MODES = ("L", "I;16", "RGB_colour", "RGB_grey", "LA", "1", "F_nan", "F_normal", "P")


@dataclass
class Applied:
    """What the mutations did."""

    kinds: list[str] = field(default_factory=list)
    damaged: list[Path] = field(default_factory=list)  # files whose bytes are no longer a valid file
    changed: list[Path] = field(default_factory=list)  # every file touched, added or removed
    thin: bool = False  # an image of a 1-pixel-wide or 1-pixel shape was written
    nonfinite: list[Path] = field(default_factory=list)  # files rewritten with NaN or inf values


def mutations(max_size: int = 2) -> st.SearchStrategy:
    """Lists of mutations."""
    role = st.sampled_from(ROLES)
    index = st.integers(0, 7)
    one = st.one_of(
        st.tuples(st.just("truncate"), role, index, st.floats(0.0, 0.95)),
        st.tuples(st.just("garbage"), role, index, st.integers(0, 400), st.integers(0, 2**16)),
        st.tuples(
            st.just("array"), role, index,
            st.fixed_dictionaries({
                "dtype": st.sampled_from(DTYPES), "shape": st.sampled_from(SHAPES), "fill": st.sampled_from(FILLS),
                "mode": st.sampled_from(PICTURE_MODES), "seed": st.integers(0, 2**16),
            }),
        ),
        st.tuples(st.just("delete"), role, index),
        st.tuples(st.just("empty_folder"), role),
        st.tuples(st.just("stray"), role, st.sampled_from(["text", "garbage_image"])),
    )
    return st.lists(one, min_size=0, max_size=max_size)


def _new_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    nx, ny = shape[0], shape[1] if len(shape) > 1 else 1
    nz = shape[2:] if len(shape) > 2 else ()
    return {
        "same": shape,
        "transposed": (ny, nx, *nz) if nx != ny else (nx, ny + 3, *nz),
        "smaller": (max(nx - 5, 1), ny, *nz),
        "2d": (nx, ny),
        "4d": (nx, ny, *(nz or (1,)), 2),
        "empty": (nx, 0, *nz),
        "thin": (1, ny, *nz),
        "one": (1, 1, *((1,) if nz else ())),
    }[kind]


def _values(orig: np.ndarray, spec: dict) -> np.ndarray:
    rng = np.random.default_rng(spec["seed"])
    shape = _new_shape(orig.shape, spec["shape"])
    fill = spec["fill"]
    if fill == "orig":
        src = np.asarray(orig, np.float64)
        while src.ndim < len(shape):
            src = src[..., None]
        while src.ndim > len(shape):
            src = src[..., 0]
        out = np.zeros(shape, dtype=np.float64)
        crop = tuple(slice(0, min(a, b)) for a, b in zip(shape, src.shape))
        out[crop] = src[crop]
    elif fill == "nan":
        out = np.full(shape, np.nan)
    elif fill == "inf":
        out = np.full(shape, -np.inf)
    elif fill == "zeros":
        out = np.zeros(shape)
    elif fill == "const255":
        out = np.full(shape, 255.0)
    elif fill == "random_int":
        out = rng.integers(-5, 300, size=shape).astype(np.float64)
    elif fill == "random_float":
        out = rng.normal(0, 500, size=shape)
    else:  # big_labels
        out = rng.integers(0, 6, size=shape).astype(np.float64)
    dtype = np.dtype(spec["dtype"])
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = np.clip(np.nan_to_num(out, nan=0, posinf=info.max, neginf=info.min), info.min, info.max)
    return out.astype(dtype)


def _write_picture(path: Path, orig: np.ndarray, spec: dict) -> Path:
    """Replace a picture: same stem, PNG (or TIFF for float modes); returns the new path."""
    rng = np.random.default_rng(spec["seed"])
    shape = _new_shape(orig.shape[:2], spec["shape"])[:2]
    shape = (max(shape[0], 0), max(shape[1], 0))
    base = np.zeros(shape, np.float64)
    crop = tuple(slice(0, min(a, b)) for a, b in zip(shape, orig.shape[:2]))
    base[crop] = np.asarray(orig, np.float64)[crop] if orig.ndim == 2 else np.asarray(orig, np.float64)[..., 0][crop]
    mode = spec["mode"]
    suffix = ".png"
    if mode == "L":
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8).T.copy())
    elif mode == "I;16":
        img = Image.fromarray((rng.integers(0, 4000, size=shape)).astype(np.uint16).T.copy())
    elif mode == "RGB_colour":
        arr = np.stack([base, 255 - base, base * 0], -1).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(np.ascontiguousarray(np.swapaxes(arr, 0, 1)))
    elif mode == "RGB_grey":
        arr = np.repeat(base.clip(0, 255).astype(np.uint8)[..., None], 3, -1)
        img = Image.fromarray(np.ascontiguousarray(np.swapaxes(arr, 0, 1)))
    elif mode == "LA":
        arr = np.stack([base, np.full(shape, 255.0)], -1).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(np.ascontiguousarray(np.swapaxes(arr, 0, 1)), "LA")
    elif mode == "1":
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8).T.copy()).convert("1")
    elif mode == "P":
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8).T.copy()).convert("P")
    else:  # float TIFF
        values = np.full(shape, np.nan, np.float32) if mode == "F_nan" else base.astype(np.float32)
        img = Image.fromarray(values.T.copy())
        suffix = ".tif"
    if 0 in shape:
        new = path.with_name(path.name[: -len(path.suffix)] + suffix)
        path.unlink()
        new.write_bytes(b"")  # PIL cannot write an empty picture: an empty file stands for it
        return new
    new = path.with_name(path.name[: -len(path.suffix)] + suffix)
    path.unlink()
    img.save(new)
    return new


def _rewrite(path: Path, spec: dict) -> tuple[Path, bool]:
    """Replace the content of ``path`` by another array in the same format. Returns (new path, thin)."""
    spec = dict(spec)
    import nibabel as nib

    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        img = nib.load(str(path))
        orig = np.asanyarray(img.dataobj)
        values = _values(orig, spec)
        path.unlink()
        out = nib.Nifti1Image(values, img.affine, dtype=values.dtype)
        nib.save(out, str(path))
        return path, spec["shape"] in ("thin", "one")
    if name.endswith(".dcm"):
        import pydicom

        ds = pydicom.dcmread(str(path))
        rng = np.random.default_rng(spec["seed"])
        ny, nx = int(ds.Rows), int(ds.Columns)
        new_y, new_x = {"smaller": (ny, max(nx - 5, 1)), "thin": (ny, 1), "one": (1, 1)}.get(spec["shape"], (ny + 2, nx))
        ds.Rows, ds.Columns = new_y, new_x
        ds.PixelData = rng.integers(0, 2000, size=(new_y, new_x)).astype(np.uint16).tobytes()
        ds.save_as(str(path), enforce_file_format=True)
        return path, spec["shape"] in ("thin", "one")
    orig = np.asarray(Image.open(path))
    orig = np.swapaxes(orig, 0, 1) if orig.ndim >= 2 else orig
    return _write_picture(path, orig, spec), spec["shape"] in ("thin", "one")


def _pixels(path: Path) -> np.ndarray | None:
    """A picture's pixels as PIL decodes them (None for other files or when they cannot be decoded)."""
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        return None
    try:
        with Image.open(path) as img:
            return np.asarray(img)
    except Exception:  # noqa: BLE001 - undecodable
        return None


def apply(muts: list[tuple], files: dict[str, list[Path]]) -> Applied:
    """Apply mutations to the files of a dataset (``role -> files``, updated in place)."""
    done = Applied()
    for mut in muts:
        kind, role = mut[0], mut[1]
        pool = files.get(role) or []
        done.kinds.append(kind)
        if kind == "empty_folder":
            for path in pool:
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
                done.changed.append(path)
            files[role] = []
            continue
        if kind == "stray":
            folder = pool[0].parent if pool else None
            if folder is None or not folder.is_dir():
                continue
            stray = folder / ("notes.txt" if mut[2] == "text" else "zz_stray.png")
            stray.write_bytes(b"readme" if mut[2] == "text" else b"\x89PNG\r\n\x1a\n" + bytes(40))
            done.changed.append(stray)  # not "damaged": a layout may rightly ignore files it does not read
            continue
        if not pool:
            continue
        path = pool[mut[2] % len(pool)]
        if not path.exists():
            continue
        done.changed.append(path)
        if kind == "truncate":
            data = path.read_bytes()
            before = _pixels(path)
            path.write_bytes(data[: int(len(data) * mut[3])])
            if before is None or not np.array_equal(before, _pixels(path)):  # a cut after a picture's pixel data is harmless
                done.damaged.append(path)
        elif kind == "garbage":
            path.write_bytes(np.random.default_rng(mut[4]).integers(0, 256, size=mut[3], dtype=np.uint8).tobytes())
            done.damaged.append(path)
        elif kind == "delete":
            path.unlink()
            pool.remove(path)
        elif kind == "array":
            if path in done.damaged or not path.name.lower().endswith(ARRAY_SUFFIXES):  # nothing to read an array from
                continue
            new, thin = _rewrite(path, mut[3])
            done.thin |= thin
            spec = mut[3]
            is_picture = new.suffix.lower() in (".png", ".tif")
            if (is_picture and spec["mode"] == "F_nan") or (
                not is_picture and new.suffix != ".dcm" and spec["fill"] in ("nan", "inf")
                and spec["dtype"].startswith("float") and spec["shape"] != "empty"
            ):
                done.nonfinite.append(new)
            if new != path:
                pool[pool.index(path)] = new
                done.changed.append(new)
            if new.stat().st_size == 0:  # an empty picture cannot be written: an empty file stands for it
                done.damaged.append(new)
    return done


# --------------------------------------------------------------------------- the oracle's shared rules


def mentions(text: str, path: Path) -> bool:
    """``text`` names ``path`` itself (not merely a longer name that starts with it)."""
    return re.search(re.escape(str(path)) + r"(?![\w.-])", text) is not None


def attempt(call: Callable[[], object]) -> tuple[str, BaseException | None]:
    """Run ``call``: ``("ok", None)``, ``("error", the InputError)`` or ``("raw", any other exception)``."""
    try:
        call()
        return "ok", None
    except InputError as caught:
        return "error", caught
    except Exception as caught:  # noqa: BLE001 - the point: anything else is a finding
        return "raw", caught


def common_verdict(done: Applied, outcome: str, err: BaseException | None, read: Callable[[Path], bool],
                   what: str) -> str | None:
    """What broke the rules every fuzzed reader keeps, or None.

    No exception other than :class:`InputError`; nothing damaged or non-finite that the
    reader reads (``read``) accepted; an error in one line, and only for changed input
    (``what`` names the input in the finding). For an error, None leaves to the caller
    whether it names the right file.
    """
    if outcome == "raw":
        return f"raw {type(err).__name__}: {err}"
    if outcome == "ok":
        damaged = [p for p in done.damaged if read(p)]
        if damaged:
            return f"damaged file(s) accepted: {[p.name for p in damaged]}"
        nonfinite = [p for p in done.nonfinite if read(p)]
        return f"NaN/inf values accepted: {[p.name for p in nonfinite]}" if nonfinite else None
    text = str(err)
    if "\n" in text:
        return f"error message spans several lines: {text!r}"
    if not done.changed:
        return f"valid {what} refused: {text}"
    return None


def names_damaged(text: str, damaged: list[Path]) -> bool:
    """``text`` names one of the damaged files itself (for a DICOM slice: the file, not merely its series folder)."""
    return any(mentions(text, p) for p in damaged)
