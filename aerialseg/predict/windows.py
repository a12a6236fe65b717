"""Overlapping-window prediction of large rasters with logits blended in the overlaps.

A referring model sees a fixed-size square; aerial scenes are far larger. The scene is cut into
``window x window`` tiles that overlap by ``overlap`` pixels, with a last tile aligned to the right
and bottom borders so that every pixel is covered. Each tile's logits are weighted by a separable
ramp that falls from 1 in the tile's interior to a small value at its edges (where the model has the
least context) and the weighted logits are averaged, so the stitched mask has no seams.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
from tqdm import tqdm

from aerialseg.predict.raster import RasterSource

EDGE_WEIGHT = 0.05  # weight of a tile's outermost pixels; > 0 so border pixels stay defined
MASK_LOGIT = 8.0  # logit magnitude used when a predictor returns masks but no logits


class Predictor(Protocol):
    """The inference contract (``aerialseg.apis.ReferringSegmenter`` satisfies it)."""

    def predict(self, image: np.ndarray, expressions: list[str]):
        """``image``: H x W x 3 uint8 RGB. Returns an object with ``masks`` (bool [N, H, W]),
        ``scores`` (float [N]) and ``logits`` (float [N, H, W] or ``None``)."""


@dataclass(frozen=True)
class Tile:
    """One window of the grid, in pixel coordinates of the full image."""

    row: int
    col: int
    height: int
    width: int


@dataclass
class StitchedPrediction:
    """Full-image result of :func:`predict_windows`.

    Attributes:
        logits: float32 [N, H, W] blended logits (``-MASK_LOGIT`` where no tile was predicted,
            i.e. in tiles that were entirely invalid).
        masks: bool [N, H, W], ``logits > 0`` and valid.
        scores: float [N], the model's predicted IoU of each mask: the mean of the windows'
            predicted IoUs weighted by the mask pixels each window predicted (the plain mean
            where no window predicted any); for a single window, exactly the model's score.
        valid: bool [H, W] or ``None`` when every input pixel is valid.
    """

    logits: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    valid: np.ndarray | None


def window_starts(length: int, window: int, overlap: int) -> list[int]:
    """Start offsets of windows covering ``[0, length)``; the last one ends at ``length``."""
    if window <= 0 or length <= window:
        return [0]
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window), got overlap={overlap} window={window}")
    stride = window - overlap
    starts = list(range(0, length - window, stride))
    starts.append(length - window)
    return starts


def tile_grid(height: int, width: int, window: int, overlap: int) -> list[Tile]:
    """Row-major tiles covering an ``height x width`` image (one tile when ``window <= 0``)."""
    tile_h = height if window <= 0 else min(window, height)
    tile_w = width if window <= 0 else min(window, width)
    return [
        Tile(row, col, tile_h, tile_w)
        for row in window_starts(height, window, overlap)
        for col in window_starts(width, window, overlap)
    ]


def blend_weights(height: int, width: int, overlap: int) -> np.ndarray:
    """float32 [height, width] separable ramp: ``EDGE_WEIGHT`` at the edges, 1 past ``overlap``."""

    def ramp(length: int) -> np.ndarray:
        if overlap <= 0:
            return np.ones(length, np.float32)
        distance = np.minimum(np.arange(length), np.arange(length)[::-1]).astype(np.float32)
        return np.clip((distance + 1.0) / overlap, EDGE_WEIGHT, 1.0)

    return np.outer(ramp(height), ramp(width))


def prediction_logits(prediction, count: int, height: int, width: int) -> np.ndarray:
    """float32 [count, height, width] logits of one predictor result.

    Uses ``prediction.logits`` (resized bilinearly if the predictor returned another size) and falls
    back to ``±MASK_LOGIT`` from ``prediction.masks`` for predictors without logits.
    """
    logits = getattr(prediction, "logits", None)
    if logits is None:
        masks = np.asarray(prediction.masks, dtype=bool).reshape(count, height, width)
        return np.where(masks, MASK_LOGIT, -MASK_LOGIT).astype(np.float32)
    if hasattr(logits, "detach"):
        logits = logits.detach().float().cpu().numpy()
    logits = np.asarray(logits, dtype=np.float32)
    logits = logits.reshape(count, logits.shape[-2], logits.shape[-1])
    if logits.shape[1:] != (height, width):
        logits = np.stack(
            [cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in logits]
        )
    return logits


def predict_windows(
    source: RasterSource,
    expressions: Sequence[str],
    predictor: Predictor,
    window: int = 480,
    overlap: int = 96,
    progress: bool = True,
    on_tile: Callable[[int, int], None] | None = None,
) -> StitchedPrediction:
    """Predict every expression over a whole raster, tile by tile.

    Args:
        source: an open :class:`RasterSource`.
        expressions: validated, non-empty expressions (N of them).
        predictor: anything with the :class:`Predictor` ``predict`` method.
        window: tile side in source pixels; ``<= 0`` predicts the whole image at once.
        overlap: pixels shared by neighbouring tiles (blended); must be ``< window``.
        progress: show a tqdm bar over tiles.
        on_tile: called with ``(done, total)`` after each tile (e.g. for a web progress report).
    """
    expressions = list(expressions)
    height, width = source.height, source.width
    if window > 0 and not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window), got overlap={overlap} window={window}")
    tiles = tile_grid(height, width, window, overlap)
    count = len(expressions)
    # Memory: 4N + 4 bytes per pixel here (float32 logit and weight sums), N + 1 more for the
    # bool masks and validity below; nothing else is held at full size.
    logit_sum = np.zeros((count, height, width), np.float32)
    weight_sum = np.zeros((height, width), np.float32)
    score_sum = np.zeros(count, np.float64)  # predicted IoU x predicted mask pixels
    pixel_sum = np.zeros(count, np.float64)
    plain_sum = np.zeros(count, np.float64)
    predicted_tiles = 0
    valid_all = None
    bar = tqdm(
        tiles, desc=f"predict {source.name}", unit="window", disable=not progress, leave=False
    )
    for done, tile in enumerate(bar, start=1):
        rgb, valid = source.read_window(tile.row, tile.col, tile.height, tile.width)
        rows = slice(tile.row, tile.row + tile.height)
        cols = slice(tile.col, tile.col + tile.width)
        if valid is not None:
            if valid_all is None:
                valid_all = np.ones((height, width), bool)
            valid_all[rows, cols] = valid
            if not valid.any():
                # nothing to see: leave the tile to neighbours (or to the empty default)
                if on_tile is not None:
                    on_tile(done, len(tiles))
                continue
        prediction = predictor.predict(rgb, expressions)
        logits = prediction_logits(prediction, count, tile.height, tile.width)
        weights = blend_weights(tile.height, tile.width, overlap if len(tiles) > 1 else 0)
        logit_sum[:, rows, cols] += logits * weights
        weight_sum[rows, cols] += weights
        tile_scores = np.asarray(prediction.scores, np.float64).reshape(count)
        pixels = np.count_nonzero(logits > 0, axis=(1, 2))
        score_sum += tile_scores * pixels
        pixel_sum += pixels
        plain_sum += tile_scores
        predicted_tiles += 1
        if on_tile is not None:
            on_tile(done, len(tiles))
    bar.close()
    uncovered = weight_sum <= 0
    weight_sum[uncovered] = 1.0
    logits = np.divide(logit_sum, weight_sum, out=logit_sum)
    del weight_sum
    logits[:, uncovered] = -MASK_LOGIT
    del uncovered
    masks = logits > 0
    if valid_all is not None:
        masks &= valid_all
    plain = plain_sum / max(predicted_tiles, 1)
    scores = np.where(pixel_sum > 0, score_sum / np.maximum(pixel_sum, 1), plain)
    return StitchedPrediction(logits, masks, scores, valid_all)
