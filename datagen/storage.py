"""Validated source reads, input errors and stable seeds shared by every stage.

The atomic writers live in the light bottom package (:mod:`aerialformats.atomic`); they are
re-exported here for the stages and for callers written before they moved.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from aerialformats.atomic import (
    TEMP_SUFFIX,
    atomic_copy,
    atomic_open,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_png,
    atomic_write_text,
    remove_temp_files,
)
from aerialformats.seeds import stable_seed

__all__ = [
    "TEMP_SUFFIX",
    "InputError",
    "SourceError",
    "atomic_copy",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_png",
    "atomic_write_text",
    "read_json",
    "read_label_png",
    "read_rgb",
    "remove_temp_files",
    "stable_seed",
]


class SourceError(ValueError):
    """A dataset-level source file (e.g. an annotation JSON) is malformed: the stage cannot
    start. The message names the file and the field."""


class InputError(ValueError):
    """A source file is missing, unreadable or malformed; ``reason`` is the skip-report key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_json(path: str | os.PathLike):
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def _read_unchanged(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"missing_{what}", f"{what} not found: '{path}'")
    # imread decodes straight from the file: no second copy of the compressed bytes in memory.
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"corrupt_{what}", f"{what} '{path}' is not a readable image")
    return image


def read_rgb(path: str | os.PathLike, order: str = "rgb") -> np.ndarray:
    """Read an 8-bit colour image as (H, W, 3) uint8; RGBA drops alpha.

    ``order='bgr'`` returns OpenCV's own channel order, skipping the conversion (30 ms on a
    4000² image) for callers that only slice the pixels and write them back with OpenCV.

    Raises:
        InputError: missing or corrupt file, 16-bit samples, or a single band.
    """
    path = Path(path)
    image = _read_unchanged(path, "image")
    if image.dtype != np.uint8:
        raise InputError(
            "unsupported_image", f"image '{path}' has {image.dtype} samples; convert it to 8-bit"
        )
    if image.ndim == 2 or image.shape[2] == 1:
        raise InputError("unsupported_image", f"image '{path}' has one band; expected RGB")
    if order not in ("rgb", "bgr"):
        raise ValueError(f"order must be 'rgb' or 'bgr', got {order!r}")
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if order == "rgb" else cv2.COLOR_BGRA2BGR)
    if order == "bgr":
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place: no second copy


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel 8-bit class-id mask as (H, W) uint8 (RGB masks: first channel).

    Raises:
        InputError: missing or corrupt file, or samples that are not 8-bit.
    """
    path = Path(path)
    label = _read_unchanged(path, "mask")
    if label.dtype != np.uint8:
        raise InputError(
            "unsupported_mask", f"mask '{path}' has {label.dtype} samples; expected uint8"
        )
    if label.ndim == 3:
        label = label[:, :, 0]
    return label
