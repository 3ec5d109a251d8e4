"""The one place that knows the label classes of a chest CT label map.

A label map is an integer image, one value per pixel:

====  ======================  ==========================================
code  name                    meaning
====  ======================  ==========================================
0     ``outside_lung``        everything that is not lung (body, air, ...)
1     ``lung``                healthy (aerated) lung
2     ``ggo``                 ground-glass opacity
3     ``consolidation``       consolidation (and pleural effusion, folded)
4     ``effusion``            pleural effusion, only with ``keep_effusion``
====  ======================  ==========================================

Source lesion masks (Radiopaedia ``rp_msk``, MedSeg ``tr_mask``, 2D label
PNGs) all code lesions as 1 GGO, 2 consolidation, 3 pleural effusion; a binary
mask (0/1 or 0/255) means "infection" of unknown type.
"""

from __future__ import annotations

import numpy as np

OUTSIDE_LUNG = 0
LUNG = 1
GGO = 2
CONSOLIDATION = 3
EFFUSION = 4

CLASS_NAMES: tuple[str, ...] = ("outside_lung", "lung", "ggo", "consolidation", "effusion")

# codes used by the source lesion masks
SOURCE_GGO = 1
SOURCE_CONSOLIDATION = 2
SOURCE_EFFUSION = 3


def num_classes(keep_effusion: bool = False) -> int:
    """Number of label-map classes (channels of the one-hot map).

    Args:
        keep_effusion: keep pleural effusion as its own class 4 instead of
            folding it into consolidation.

    Returns:
        5 with ``keep_effusion``, else 4.
    """
    return 5 if keep_effusion else 4


def merge_label_map(
    lung_mask: np.ndarray,
    lesion_mask: np.ndarray,
    keep_effusion: bool = False,
    binary_lesion_class: int = GGO,
) -> np.ndarray:
    """Merge a lung mask and a source lesion mask into one label map.

    Lesions are lung by definition: a lesion pixel outside the lung mask is
    still written as its lesion class (lung masks often miss dense
    consolidation and effusion).

    Args:
        lung_mask: any array, non-zero is lung.
        lesion_mask: integer array, same shape, coded 0 none, 1 GGO,
            2 consolidation, 3 effusion; or binary (0/1, 0/255): infection.
        keep_effusion: write effusion as class 4 instead of consolidation.
        binary_lesion_class: label-map class for a binary infection mask.

    Returns:
        ``uint8`` label map of the same shape.

    Raises:
        ValueError: shapes differ, or the lesion mask holds codes other than
            0..3 (or 0/255 binary).
    """
    lung_mask = np.asarray(lung_mask)
    lesion = np.asarray(lesion_mask)
    if lung_mask.shape != lesion.shape:
        raise ValueError(f"lung mask shape {lung_mask.shape} differs from lesion mask shape {lesion.shape}")
    if not np.all(np.isfinite(lesion)):
        raise ValueError("lesion mask holds non-finite values")
    if not np.all(np.equal(np.mod(lesion, 1), 0)):
        raise ValueError("lesion mask holds non-integer values")
    lesion = lesion.astype(np.int64)
    values = set(np.unique(lesion).tolist())
    out = np.where(lung_mask != 0, LUNG, OUTSIDE_LUNG).astype(np.uint8)
    if values <= {0, 255}:  # binary 8-bit mask
        out[lesion == 255] = binary_lesion_class
        return out
    unknown = values - {0, SOURCE_GGO, SOURCE_CONSOLIDATION, SOURCE_EFFUSION}
    if unknown:
        raise ValueError(f"lesion mask holds unknown label values {sorted(unknown)}; expected 0 none, 1 GGO, 2 consolidation, 3 effusion")
    out[lesion == SOURCE_GGO] = GGO
    out[lesion == SOURCE_CONSOLIDATION] = CONSOLIDATION
    out[lesion == SOURCE_EFFUSION] = EFFUSION if keep_effusion else CONSOLIDATION
    return out


def check_label_map(label: np.ndarray, keep_effusion: bool = False) -> None:
    """Raise ``ValueError`` if a label map holds values outside its classes."""
    label = np.asarray(label)
    if label.size and (not np.all(np.isfinite(label)) or not np.all(np.equal(np.mod(label, 1), 0))):
        raise ValueError("label map holds non-integer or non-finite values")
    values = set(np.unique(label).astype(np.int64).tolist())
    unknown = values - set(range(num_classes(keep_effusion)))
    if unknown:
        raise ValueError(
            f"label map holds unknown classes {sorted(unknown)}; expected 0..{num_classes(keep_effusion) - 1} "
            f"({', '.join(CLASS_NAMES[: num_classes(keep_effusion)])})"
        )


def lung_region(label: np.ndarray) -> np.ndarray:
    """Boolean lung mask (lung and lesions) of a label map."""
    return np.asarray(label) > OUTSIDE_LUNG
