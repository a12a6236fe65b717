"""One image in, every output out: the core shared by ``aerialseg predict`` and ``serve``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from aerialformats.atomic import atomic_write_bytes
from aerialseg.predict.export import (
    encode_png,
    expression_areas_m2,
    geojson_document,
    json_bytes,
    mask_png,
    masks_geotiff,
    predictions_document,
    safe_stem,
    slugify,
)
from aerialseg.predict.overlay import draw_overlay, overlay_colors
from aerialseg.predict.raster import RasterInfo, RasterSource, open_raster
from aerialseg.predict.windows import Predictor, StitchedPrediction, predict_windows


@dataclass
class PredictOptions:
    """How an image is read, tiled and exported (the CLI flags of ``aerialseg predict``).

    ``window``/``overlap`` are in source pixels (``0 <= overlap < window`` when ``window > 0``);
    the defaults match Aerial-D's 480 px patches with 20% overlap, so a scene at the training
    ground sampling distance is seen at the trained scale.
    ``window <= 0`` predicts the whole image in one pass (the model resizes it), which keeps
    whole-image spatial words ("top left") meaningful on small images.
    """

    window: int = 480
    overlap: int = 96
    bands: tuple[int, ...] | None = None
    percentiles: tuple[float, float] = (2.0, 98.0)
    simplify: float = 0.0
    overlay_max_side: int = 2048
    progress: bool = True
    max_pixels: int | None = None


@dataclass
class ImageResult:
    """Everything predicted for one image, plus its encoded output files.

    ``files`` maps output file names to bytes; ``mask_files`` names the mask PNG of each expression
    and ``outputs`` names the others by kind (``overlay``, ``predictions``, ``geojson``,
    ``masks_tif``).
    """

    info: RasterInfo
    expressions: list[str]
    prediction: StitchedPrediction
    overlay: np.ndarray
    preview: np.ndarray
    files: dict[str, bytes] = field(default_factory=dict)
    mask_files: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    areas_m2: list[float | None] = field(default_factory=list)
    colors: list[tuple[int, int, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def masks(self) -> np.ndarray:
        return self.prediction.masks

    @property
    def scores(self) -> np.ndarray:
        return self.prediction.scores


def check_tiling(window: int, overlap: int) -> None:
    """Refuse an overlap that leaves no stride (``--overlap >= --window``) or is negative."""
    if overlap < 0:
        raise ValueError(f"--overlap must be >= 0, got {overlap}")
    if window > 0 and overlap >= window:
        raise ValueError(
            f"--overlap ({overlap}) must be smaller than --window ({window}): neighbouring "
            "windows would not advance"
        )


def validate_expressions(expressions: Sequence[str] | None) -> list[str]:
    """Strip expressions and refuse an empty list or an empty (blank) expression, by position."""
    if not expressions:
        raise ValueError("no expression given: pass at least one referring expression")
    cleaned = []
    for position, expression in enumerate(expressions, start=1):
        if not isinstance(expression, str) or not expression.strip():
            raise ValueError(f"expression {position} is empty: every expression needs some text")
        cleaned.append(" ".join(expression.split()))
    return cleaned


def predict_source(
    source: RasterSource,
    expressions: Sequence[str],
    predictor: Predictor,
    options: PredictOptions | None = None,
    stem: str | None = None,
    on_tile=None,
    on_phase=None,
) -> ImageResult:
    """Predict ``expressions`` on an open raster and encode all outputs (in memory).

    Output names (keys of ``result.files``), with ``stem`` the safe input stem:
    ``{stem}.mask-{k}-{slug}.png`` per expression, ``{stem}.predictions.json`` (COCO RLE),
    ``{stem}.overlay.png`` and, for georeferenced inputs, ``{stem}.geojson`` and
    ``{stem}.masks.tif``.

    Args:
        on_tile: called with ``(done, total)`` windows after each window.
        on_phase: called with ``'predict'`` before the first window and ``'export'`` before the
            outputs are encoded (progress reports for long scenes).
    """
    options = options or PredictOptions()
    expressions = validate_expressions(expressions)
    check_tiling(options.window, options.overlap)
    if on_phase is not None:
        on_phase("predict")
    stitched = predict_windows(
        source,
        expressions,
        predictor,
        window=options.window,
        overlap=options.overlap,
        progress=options.progress,
        on_tile=on_tile,
    )
    if on_phase is not None:
        on_phase("export")
    info = source.info
    preview = source.read_preview(options.overlay_max_side)
    labels = [
        f"{i}. {text}  (score {score:.2f}, {np.count_nonzero(mask)} px)"
        for i, (text, score, mask) in enumerate(zip(expressions, stitched.scores, stitched.masks))
    ]
    colors = overlay_colors(len(expressions))
    overlay = draw_overlay(
        preview, stitched.masks, labels, max_side=options.overlay_max_side, colors=colors
    )
    result = ImageResult(info, expressions, stitched, overlay, preview, colors=colors)
    result.areas_m2 = [None] * len(expressions)
    if info.georeference_note:
        result.notes.append(info.georeference_note)
    stem = stem or safe_stem(os.path.basename(info.name))
    for index, (expression, mask) in enumerate(zip(expressions, stitched.masks)):
        name = f"{stem}.mask-{index}-{slugify(expression)}.png"
        result.files[name] = mask_png(mask)
        result.mask_files.append(name)
    document = predictions_document(info, expressions, stitched.masks, stitched.scores)
    result.outputs["predictions"] = f"{stem}.predictions.json"
    result.files[result.outputs["predictions"]] = json_bytes(document)
    result.outputs["overlay"] = f"{stem}.overlay.png"
    result.files[result.outputs["overlay"]] = encode_png(overlay)
    if info.georeferenced:
        geojson = geojson_document(
            info, expressions, stitched.masks, stitched.scores, options.simplify
        )
        result.areas_m2 = expression_areas_m2(geojson["features"], len(expressions))
        result.outputs["geojson"] = f"{stem}.geojson"
        result.files[result.outputs["geojson"]] = json_bytes(geojson)
        result.outputs["masks_tif"] = f"{stem}.masks.tif"
        result.files[result.outputs["masks_tif"]] = masks_geotiff(info, expressions, stitched.masks)
    return result


def predict_file(
    path: str | os.PathLike,
    expressions: Sequence[str],
    predictor: Predictor,
    out_dir: str | os.PathLike,
    options: PredictOptions | None = None,
    on_phase=None,
) -> tuple[ImageResult, list[str]]:
    """Predict on one image file and write its outputs into ``out_dir`` (atomically).

    Returns the result and the written paths. Nothing is written unless the whole image succeeded,
    and each file goes to a temporary name first and is then renamed (``os.replace``), so an
    interrupted run never leaves a half-written output nor damages an earlier one.
    """
    options = options or PredictOptions()
    expressions = validate_expressions(expressions)
    with open_raster(
        path, bands=options.bands, percentiles=options.percentiles, max_pixels=options.max_pixels
    ) as source:
        result = predict_source(source, expressions, predictor, options, on_phase=on_phase)
    written = []
    for name, data in result.files.items():
        target = os.path.join(os.fspath(out_dir), name)
        atomic_write_bytes(target, data)
        written.append(target)
    return result, written


def build_predictor(
    config: str | None = None,
    checkpoint: str | None = None,
    device: str = "cpu",
    cfg_options: dict | None = None,
    pretrained_root: str | None = None,
    allow_partial: bool = False,
) -> Predictor:
    """Load ``aerialseg.apis.ReferringSegmenter`` once.

    Args:
        config: model config; ``None`` uses the config saved in the checkpoint (training
            checkpoints carry it).
        checkpoint: trained checkpoint (``.pth``), or a folder written by ``aerialseg
            export-model`` (its ``model.pth``).
        device: torch device.
        cfg_options: overrides merged into the config (``--cfg-options``).
        pretrained_root: folder searched first for the pretrained files (``--pretrained-root``).
        allow_partial: load a checkpoint whose keys do not all match (``--allow-partial``).
    """
    from aerialseg.apis import ReferringSegmenter

    if config is None and checkpoint is None:
        raise ValueError("give --checkpoint (its saved config is used), --config, or both")
    if config is not None and not os.path.isfile(config):
        raise FileNotFoundError(f"config file not found: '{config}'")
    if checkpoint is not None and os.path.isdir(checkpoint):
        checkpoint = os.path.join(checkpoint, "model.pth")
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint file not found: '{checkpoint}'")
    return ReferringSegmenter(
        config,
        checkpoint=checkpoint,
        device=device,
        cfg_options=cfg_options,
        pretrained_root=pretrained_root,
        allow_partial=allow_partial,
    )
