"""Prediction outputs, encoded in memory: mask PNGs, COCO RLE JSON, GeoJSON polygons and mask
GeoTIFFs (written to disk atomically by :func:`aerialseg.predict.pipeline.predict_file`)."""

from __future__ import annotations

import io
import json
import os
import re
import unicodedata
from collections.abc import Callable, Sequence

import numpy as np
import rasterio
import rasterio.errors
import rasterio.features
from PIL import Image
from pycocotools import mask as mask_utils
from shapely.geometry import Polygon, mapping, shape
from shapely.geometry.polygon import orient

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


def mask_uint8(mask: np.ndarray) -> np.ndarray:
    """uint8 [H, W], 255 inside a bool mask: one byte per pixel (``np.where`` would make an
    int64 temporary of eight)."""
    return np.asarray(mask, dtype=bool).view(np.uint8) * np.uint8(255)


def mask_png(mask: np.ndarray) -> bytes:
    """A single-band 8-bit PNG: 255 inside the mask, 0 outside."""
    return encode_png(mask_uint8(mask))


def coco_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE ``{'size': [h, w], 'counts': str}`` of a bool [H, W] mask."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, bool).view(np.uint8)))
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


def metric_measure(crs: rasterio.crs.CRS | None) -> Callable[[Polygon], tuple] | None:
    """``polygon -> (area m², perimeter m)`` for polygons in ``crs``, or ``None`` if unknown.

    The perimeter is the length of every ring, holes included (as shapely's ``length``).

    * geographic CRS (e.g. EPSG:4326, coordinates lon/lat in degrees): geodesic area and perimeter
      on the CRS's own ellipsoid (``pyproj.Geod.geometry_area_perimeter``, Karney's algorithm);
    * projected CRS: planar area and length in the CRS, converted from its linear unit to metres
      (for UTM: exactly pixel count x pixel area, as GIS tools report it for projected data);
    * anything else (local or engineering CRSs without a unit): ``None``.
    """
    if crs is None:
        return None
    if crs.is_geographic:
        from pyproj import CRS

        geod = CRS.from_wkt(crs.to_wkt()).get_geod()
        if geod is None:
            return None

        def geodesic(polygon: Polygon) -> tuple[float, float]:
            # pyproj sums signed ring areas: exterior counter-clockwise, holes clockwise.
            polygon = orient(polygon, sign=1.0)
            area, _ = geod.geometry_area_perimeter(polygon)
            rings = [polygon.exterior, *polygon.interiors]
            return area, sum(geod.line_length(*ring.xy) for ring in rings)

        return geodesic
    if crs.is_projected:
        try:
            _, metres = crs.linear_units_factor
        except rasterio.errors.CRSError:
            return None
        return lambda geometry: (geometry.area * metres**2, geometry.length * metres)
    return None


def polygon_features(
    info: RasterInfo,
    expressions: Sequence[str],
    masks: np.ndarray,
    scores: np.ndarray,
    simplify: float = 0.0,
) -> list[dict]:
    """GeoJSON features, one per connected region (4-connectivity), in the raster's CRS.

    Polygons follow pixel edges exactly (holes included) unless ``simplify`` (CRS units, e.g. m)
    is > 0. Properties: ``expression_index``, ``expression``, ``score`` (the expression's),
    ``area_px`` (pixels of the region), and ``area_m2`` / ``perimeter_m`` (of the polygon as
    written, see :func:`metric_measure`; ``null`` when the CRS has no known unit).
    """
    measure = metric_measure(info.crs)
    features = []
    for index, (expression, mask, score) in enumerate(zip(expressions, masks, scores)):
        if not mask.any():
            continue
        mask = np.asarray(mask, bool)
        regions = rasterio.features.shapes(
            mask.view(np.uint8), mask=mask, transform=info.transform, connectivity=4
        )
        for geometry, _ in regions:
            polygon = shape(geometry)
            pixels = polygon.area / abs(info.transform.determinant)
            if simplify > 0:
                polygon = polygon.simplify(simplify, preserve_topology=True)
            if polygon.is_empty:
                continue
            area_m2, perimeter_m = measure(polygon) if measure else (None, None)
            features.append(
                {
                    "type": "Feature",
                    "properties": {
                        "expression_index": index,
                        "expression": expression,
                        "score": round(float(score), 6),
                        "area_px": int(round(pixels)),
                        "area_m2": None if area_m2 is None else round(float(area_m2), 4),
                        "perimeter_m": None if perimeter_m is None else round(perimeter_m, 4),
                    },
                    "geometry": mapping(polygon),
                }
            )
    return features


def expression_areas_m2(features: Sequence[dict], count: int) -> list[float | None]:
    """Total ``area_m2`` of each expression's features (``None`` when areas are unknown)."""
    totals: list[float | None] = [0.0] * count
    for feature in features:
        properties = feature["properties"]
        index = properties["expression_index"]
        if properties["area_m2"] is None or totals[index] is None:
            totals[index] = None
        else:
            totals[index] += properties["area_m2"]
    return totals


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
            info.georeference_note
            or f"'{info.name}' has no CRS/geotransform: GeoJSON needs a georeferenced input"
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
            for band, (expression, mask) in enumerate(zip(expressions, masks), start=1):
                dataset.write(mask_uint8(mask), band)  # one band at a time: 1 byte/pixel
                dataset.set_band_description(band, expression)
        return memory.read()


def json_bytes(document: dict) -> bytes:
    return json.dumps(document, ensure_ascii=False, indent=1).encode("utf-8")
