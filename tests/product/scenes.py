"""Scenes and a colour-keyed fake predictor shared by the product tests.

The fake predictor is for geometry checks only (tiling, stitching, coordinates, exports): it
"segments" the pixels of a named colour, so the tests know exactly where every mask and polygon
must land. Everything about the real model is tested with the real tiny ClipSAM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.transform import from_origin

COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0)}
# A UTM zone 33N scene at 0.5 m per pixel whose top-left corner is (500000 E, 4000000 N).
CRS = "EPSG:32633"
ORIGIN = (500_000.0, 4_000_000.0)
PIXEL = 0.5


@dataclass
class FakePrediction:
    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray


class ColourPredictor:
    """``predict(image, expressions)`` with logits +4 on pixels of the named colour, -4 elsewhere.

    Records the shape and the pixel values of every window it is given.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], list[str]]] = []
        self.images: list[np.ndarray] = []

    def predict(self, image: np.ndarray, expressions: list[str]) -> FakePrediction:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        self.calls.append((image.shape, list(expressions)))
        self.images.append(image.copy())
        masks = np.stack([(image == COLOURS[e]).all(axis=-1) for e in expressions])
        logits = np.where(masks, 4.0, -4.0).astype(np.float32)
        return FakePrediction(masks, masks.mean(axis=(1, 2)), logits)


def colour_scene(height: int = 500, width: int = 600) -> np.ndarray:
    """3 x H x W uint8: a red 100x50 rectangle (rows 100-149, cols 200-299), a blue 70x100 one
    (rows 300-399, cols 50-119) with a 10x10 hole (rows 340-349, cols 80-89), black elsewhere."""
    scene = np.zeros((3, height, width), np.uint8)
    scene[0, 100:150, 200:300] = 255
    scene[2, 300:400, 50:120] = 255
    scene[2, 340:350, 80:90] = 0
    return scene


def write_geotiff(path, bands: np.ndarray, **profile) -> str:
    """Write a C x H x W array as a GeoTIFF in ``CRS``, ``PIXEL`` m per pixel from ``ORIGIN``."""
    count, height, width = bands.shape
    base = dict(
        driver="GTiff",
        height=height,
        width=width,
        count=count,
        dtype=bands.dtype.name,
        crs=CRS,
        transform=from_origin(*ORIGIN, PIXEL, PIXEL),
    )
    base.update(profile)
    with rasterio.open(path, "w", **base) as dataset:
        dataset.write(bands)
    return str(path)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG bytes of an H x W x 3 uint8 array."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type (``files``: field -> (name, bytes))."""
    boundary = "aerialseg-test-boundary"
    parts = []
    for key, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for key, (name, data) in files.items():
        header = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(header.encode() + data + b"\r\n")
    return b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
