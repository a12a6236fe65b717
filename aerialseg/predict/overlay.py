"""Overlay pictures: masks tinted over the image with a legend strip of the expressions below it.

The legend sits under the image rather than on it, so that it never hides what an expression such as
"the car in the top left" points at.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# Colour-blind-friendly qualitative palette (Okabe-Ito), RGB.
PALETTE = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (255, 255, 255),
)
ALPHA = 0.45
LINE_HEIGHT = 22
# The legend is drawn for a picture shown about this wide (the web page's column, a document
# page): wider overlays get proportionally larger text, so it stays readable once scaled down.
LEGEND_VIEW_WIDTH = 900


def overlay_colors(count: int) -> list[tuple[int, int, int]]:
    """The RGB colour of each of ``count`` expressions in overlays (and in the web page's table)."""
    return [PALETTE[i % len(PALETTE)] for i in range(count)]


def hex_color(color: tuple[int, int, int]) -> str:
    """``(230, 159, 0)`` -> ``'#e69f00'``."""
    return "#" + "".join(f"{int(c):02x}" for c in color)


def _ascii(text: str) -> str:
    # OpenCV's Hershey fonts draw ASCII only.
    return text.encode("ascii", "replace").decode("ascii")


def draw_overlay(
    image: np.ndarray,
    masks: np.ndarray | Sequence[np.ndarray],
    labels: Sequence[str],
    max_side: int | None = 2048,
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """Tint each mask over ``image`` and list ``labels`` below it.

    Args:
        image: ``H x W x 3`` uint8 RGB (may be a decimated preview of the masks' image).
        masks: N bool masks, each ``H' x W'`` (resized to the image with nearest neighbour).
        labels: N legend lines (e.g. the expressions with their scores).
        max_side: shrink the picture so its longest side is at most this (``None``: keep).
        colors: N RGB colours; the Okabe-Ito palette by default.

    Returns:
        ``(H + legend) x W x 3`` uint8 RGB. The legend's text grows with the picture's width
        (past :data:`LEGEND_VIEW_WIDTH`), so that it stays readable when shown at page width.
    """
    colors = list(colors or overlay_colors(len(labels)))
    canvas = image
    if max_side is not None and max(image.shape[:2]) > max_side:
        scale = max_side / max(image.shape[:2])
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        canvas = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    # uint8 throughout (about 8 bytes per pixel at the peak, not the 30 of a float32 canvas):
    # each tint is blended by OpenCV into a scratch image and copied back inside the mask.
    canvas = np.array(canvas, dtype=np.uint8, copy=True)
    height, width = canvas.shape[:2]
    tint = np.empty_like(canvas)
    blended = np.empty_like(canvas)
    outlines = []
    for mask, color in zip(masks, colors):
        mask = np.asarray(mask, dtype=bool).view(np.uint8)
        if mask.shape != (height, width):
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
        tint[:] = color
        cv2.addWeighted(canvas, 1 - ALPHA, tint, ALPHA, 0.0, dst=blended)
        np.copyto(canvas, blended, where=mask.view(bool)[..., None])
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outlines.append((contours, color))
    del tint, blended
    for contours, color in outlines:
        cv2.drawContours(canvas, contours, -1, tuple(int(c) for c in color), 2)
    scale = max(1.0, width / LEGEND_VIEW_WIDTH)
    line = round(LINE_HEIGHT * scale)

    def at(value: float) -> int:
        return round(value * scale)

    legend = np.full((line * len(labels) + at(6), width, 3), 24, np.uint8)
    for i, (label, color) in enumerate(zip(labels, colors)):
        top = at(4) + i * line
        cv2.rectangle(
            legend, (at(6), top + at(3)), (at(20), top + at(17)), tuple(int(c) for c in color), -1
        )
        cv2.putText(
            legend,
            _ascii(label),
            (at(28), top + at(15)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45 * scale,
            (240, 240, 240),
            max(1, round(scale)),
            cv2.LINE_AA,
        )
    return np.concatenate([canvas, legend], axis=0)
