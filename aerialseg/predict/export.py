"""Prediction outputs, encoded in memory: mask PNGs, COCO RLE JSON, GeoJSON polygons and mask
GeoTIFFs (written to disk atomically by :func:`aerialseg.predict.pipeline.predict_file`)."""

from __future__ import annotations

import io
import json
import os
import re
import unicodedata
from collections.abc import Sequence

import numpy as np
import rasterio
import rasterio.features
from PIL import Image
from pycocotools import mask as mask_utils
from shapely.geometry import mapping, shape

from aerialseg.predict.raster import RasterInfo


def slugify(text: str, max_length: int = 40) -> str:
    """A file-name-safe ASCII slug: ``'The white car!'`` -> ``'the-white-car'``."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:max_length].rstrip("-") or "expression"


def safe_stem(filename: str) -> str:
    """A safe output stem from a user-supplied file name: no folders, dots or odd characters."""
    base = re.split(r"[\\/]", filename)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.strip(".") else base
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_stem).strip("_-")
    return clean[:80] or "image"


def safe_filename(filename: str) -> str:
    """A safe display name for an uploaded file: ``'../../etc/x y.TIF'`` -> ``'x_y.tif'``."""
    base = re.split(r"[\\/]", filename)[-1]
    suffix = base.rsplit(".", 1)[1] if "." in base.strip(".") else ""
    suffix = re.sub(r"[^a-z0-9]", "", suffix.lower())[:8]
    stem = safe_stem(base)
    return f"{stem}.{suffix}" if suffix else stem


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an ``H x W`` (grey) or ``H x W x 3`` (RGB) uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    """A single-band 8-bit PNG: 255 inside the mask, 0 outside."""
    return encode_png(np.where(mask, 255, 0).astype(np.uint8))


def coco_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE ``{'size': [h, w], 'counts': str}`` of a bool [H, W] mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def crs_name(crs: rasterio.crs.CRS) -> str:
    """The GeoJSON 2008 ``crs`` name: an OGC URN when the CRS has an EPSG code, else WKT."""
    epsg = crs.to_epsg()
    return f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_wkt()


def predictions_document(
    info: RasterInfo, expressions: Sequence[str], masks: np.ndarray, scores: np.ndarray
) -> dict:
    """The COCO-RLE JSON document of one image's predictions."""
    predictions = []
    for index, (expression, mask, score) in enumerate(zip(expressions, masks, scores)):
        rle = coco_rle(mask)
        bbox = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()})
        predictions.append(
            {
                "expression_index": index,
                "expression": expression,
                "score": round(float(score), 6),
                "area": int(mask.sum()),
                "bbox": [int(v) for v in bbox],
                "segmentation": rle,
            }
        )
    document = {
        "image": os.path.basename(info.name),
        "height": info.height,
        "width": info.width,
        "bands": list(info.bands),
        "predictions": predictions,
    }
    if info.georeferenced:
        document["crs"] = info.crs.to_string()
        document["transform"] = list(info.transform)[:6]
    return document


def polygon_features(
    info: RasterInfo,
    expressions: Sequence[str],
    masks: np.ndarray,
    scores: np.ndarray,
    simplify: float = 0.0,
) -> list[dict]:
    """GeoJSON features, one per connected region (4-connectivity), in the raster's CRS.

    Polygons follow pixel edges exactly (holes included) unless ``simplify`` (CRS units, e.g. m)
    is > 0. Properties: ``expression_index``, ``expression``, ``score`` and ``area`` (CRS units²).
    """
    features = []
    for index, (expression, mask, score) in enumerate(zip(expressions, masks, scores)):
        if not mask.any():
            continue
        regions = rasterio.features.shapes(
            mask.astype(np.uint8), mask=mask, transform=info.transform, connectivity=4
        )
        for geometry, _ in regions:
            polygon = shape(geometry)
            if simplify > 0:
                polygon = polygon.simplify(simplify, preserve_topology=True)
            if polygon.is_empty:
                continue
            features.append(
                {
                    "type": "Feature",
                    "properties": {
                        "expression_index": index,
                        "expression": expression,
                        "score": round(float(score), 6),
                        "area": round(float(polygon.area), 6),
                    },
                    "geometry": mapping(polygon),
                }
            )
    return features


def geojson_document(
    info: RasterInfo,
    expressions: Sequence[str],
    masks: np.ndarray,
    scores: np.ndarray,
    simplify: float = 0.0,
) -> dict:
    """A GeoJSON FeatureCollection in the raster's CRS, named by the (2008-style) ``crs`` member.

    RFC 7946 GeoJSON is WGS84-only; GIS tools (GDAL/OGR, QGIS) read the ``crs`` member, and keeping
    the raster's CRS avoids a lossy reprojection of pixel-exact polygons.
    """
    if not info.georeferenced:
        raise ValueError(
            f"'{info.name}' has no CRS/geotransform: GeoJSON needs a georeferenced input"
        )
    return {
        "type": "FeatureCollection",
        "name": os.path.basename(info.name),
        "crs": {"type": "name", "properties": {"name": crs_name(info.crs)}},
        "features": polygon_features(info, expressions, masks, scores, simplify),
    }


def masks_geotiff(info: RasterInfo, expressions: Sequence[str], masks: np.ndarray) -> bytes:
    """A georeferenced uint8 GeoTIFF, one band per expression (255 inside), bands described."""
    profile = {
        "driver": "GTiff",
        "height": info.height,
        "width": info.width,
        "count": len(masks),
        "dtype": "uint8",
        "crs": info.crs,
        "transform": info.transform,
        "compress": "deflate",
        "tiled": info.height > 512 and info.width > 512,
    }
    with rasterio.io.MemoryFile() as memory:
        with memory.open(**profile) as dataset:
            dataset.write(np.where(masks, 255, 0).astype(np.uint8))
            for band, expression in enumerate(expressions, start=1):
                dataset.set_band_description(band, expression)
        return memory.read()


def json_bytes(document: dict) -> bytes:
    return json.dumps(document, ensure_ascii=False, indent=1).encode("utf-8")
