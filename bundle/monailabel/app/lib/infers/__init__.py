"""Infer tasks: ``lesion_segmentation`` (pre-annotation) and ``synthesis`` (label map -> CT)."""

from .lesion_segmentation import LesionSegmentation
from .synthesis import Synthesis

__all__ = ["LesionSegmentation", "Synthesis"]
