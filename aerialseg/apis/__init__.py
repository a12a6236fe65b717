"""Inference API: :class:`ReferringSegmenter` (image + expressions -> masks and scores), and the
strict loading of trained checkpoints that it, ``aerialseg predict``/``serve`` and
``tools/test.py`` share."""

from aerialseg.apis.export_model import export_model
from aerialseg.apis.referring_segmenter import (
    ReferringPrediction,
    ReferringSegmenter,
    resolve_model_config,
)
from aerialseg.apis.trained_weights import load_trained_weights, read_checkpoint

__all__ = [
    "ReferringPrediction",
    "ReferringSegmenter",
    "export_model",
    "load_trained_weights",
    "read_checkpoint",
    "resolve_model_config",
]
