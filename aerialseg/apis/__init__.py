"""Inference API: :class:`ReferringSegmenter` (image + expressions -> masks and scores)."""

from aerialseg.apis.referring_segmenter import ReferringPrediction, ReferringSegmenter

__all__ = ["ReferringPrediction", "ReferringSegmenter"]
