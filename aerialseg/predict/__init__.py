"""Prediction on real imagery: band/bit-depth normalisation, windowed stitching and exports.

``aerialseg predict`` and ``aerialseg serve`` are thin shells over :func:`predict_file` and
:func:`predict_source`; any object with ``predict(image, expressions)`` (the contract of
``aerialseg.apis.ReferringSegmenter``) can drive them.
"""

from aerialseg.predict.export import (
    coco_rle,
    encode_png,
    geojson_document,
    predictions_document,
    safe_filename,
    safe_stem,
    slugify,
)
from aerialseg.predict.overlay import draw_overlay
from aerialseg.predict.pipeline import (
    ImageResult,
    PredictOptions,
    build_predictor,
    predict_file,
    predict_source,
    validate_expressions,
)
from aerialseg.predict.raster import InputImageError, RasterInfo, RasterSource, open_raster
from aerialseg.predict.windows import StitchedPrediction, predict_windows, tile_grid

__all__ = [
    "ImageResult",
    "InputImageError",
    "PredictOptions",
    "RasterInfo",
    "RasterSource",
    "StitchedPrediction",
    "build_predictor",
    "coco_rle",
    "draw_overlay",
    "encode_png",
    "geojson_document",
    "open_raster",
    "predict_file",
    "predict_source",
    "predict_windows",
    "predictions_document",
    "safe_filename",
    "safe_stem",
    "slugify",
    "tile_grid",
    "validate_expressions",
]
