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
        ``(H + legend) x W x 3`` uint8 RGB.
    """
    colors = list(colors or [PALETTE[i % len(PALETTE)] for i in range(len(labels))])
    canvas = image
    if max_side is not None and max(image.shape[:2]) > max_side:
        scale = max_side / max(image.shape[:2])
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        canvas = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    canvas = canvas.astype(np.float32)
    height, width = canvas.shape[:2]
    outlines = []
    for mask, color in zip(masks, colors):
        mask = np.asarray(mask, dtype=np.uint8)
        if mask.shape != (height, width):
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
        inside = mask.astype(bool)
        canvas[inside] = (1 - ALPHA) * canvas[inside] + ALPHA * np.asarray(color, np.float32)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outlines.append((contours, color))
    canvas = np.clip(canvas, 0, 255).astype(np.uint8)
    for contours, color in outlines:
        cv2.drawContours(canvas, contours, -1, tuple(int(c) for c in color), 2)
    legend = np.full((LINE_HEIGHT * len(labels) + 6, width, 3), 24, np.uint8)
    for i, (label, color) in enumerate(zip(labels, colors)):
        top = 4 + i * LINE_HEIGHT
        cv2.rectangle(legend, (6, top + 3), (20, top + 17), tuple(int(c) for c in color), -1)
        cv2.putText(
            legend,
            _ascii(label),
            (28, top + 15),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (240, 240, 240),
            1,
            cv2.LINE_AA,
        )
    return np.concatenate([canvas, legend], axis=0)
