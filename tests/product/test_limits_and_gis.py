"""Request limits of the web API, progress reports, and GIS-grade outputs (ground areas and
perimeters against pyproj/shapely referees, GCP-only GeoTIFFs, a legend readable at page size)."""

from __future__ import annotations

import gc
import http.client
import json
import threading
import time
import tracemalloc
from urllib.parse import urlsplit

import numpy as np
import pytest
import rasterio
from pyproj import CRS, Geod, Transformer
from rasterio.control import GroundControlPoint
from rasterio.transform import from_origin
from shapely.geometry import shape
from shapely.ops import transform as reproject

from aerialseg.predict import PredictOptions, open_raster, predict_file, predict_source
from aerialseg.predict.export import geojson_document, metric_measure
from aerialseg.predict.overlay import PALETTE, draw_overlay, hex_color
from aerialseg.serve import BackgroundServer, ServeSettings, create_app
from tests.product.scenes import ColourPredictor, colour_scene, multipart, png_bytes, write_geotiff


def post(server, fields: dict, image: bytes, name: str = "scene.png"):
    body, content_type = multipart(fields, {"image": (name, image)})
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.request("POST", "/api/predict", body, {"Content-Type": content_type})
    response = connection.getresponse()
    status, data = response.status, json.loads(response.read())
    connection.close()
    return status, data


def get(server, path: str):
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.request("GET", path)
    response = connection.getresponse()
    status, data = response.status, json.loads(response.read())
    connection.close()
    return status, data


# --------------------------------------------------------------------------- request limits
def test_too_many_expressions_get_413_naming_the_limit_before_any_work():
    predictor = ColourPredictor()
    settings = ServeSettings(max_expressions=4, max_expression_pixels=10_000)
    image = png_bytes(np.moveaxis(colour_scene(64, 64), 0, -1).copy())
    with BackgroundServer(create_app(predictor, settings)) as server:
        status, info = get(server, "/api/info")
        assert info["max_expressions"] == 4 and info["max_expression_pixels"] == 10_000
        gc.collect()
        tracemalloc.start()
        status, data = post(server, {"expressions": "\n".join(["red"] * 2000)}, image)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert status == 413
        assert data["detail"].startswith("2000 expressions in one request")
        assert "limit of 4" in data["detail"]
        # refused before any window was read or predicted: no N x H x W buffer was allocated
        assert predictor.calls == [] and peak < 2_000_000

        status, data = post(server, {"expressions": "red\nblue\nred"}, image)  # 3 x 64 x 64
        assert status == 413
        assert data["detail"].startswith("3 expressions x 64 x 64 pixels = 12,288 expression-")
        assert "limit of 10,000 per request" in data["detail"]
        assert predictor.calls == []
        status, data = post(server, {"expressions": "red\nblue"}, image)  # 8,192 <= 10,000
        assert status == 200 and len(predictor.calls) == 1


def test_expression_pixel_limit_names_the_product_and_the_limit():
    predictor = ColourPredictor()
    settings = ServeSettings(max_expression_pixels=2_000_000)
    image = png_bytes(np.zeros((1000, 1000, 3), np.uint8))
    with BackgroundServer(create_app(predictor, settings)) as server:
        status, data = post(server, {"expressions": "red\nblue\ngreen"}, image)
    assert status == 413 and predictor.calls == []
    assert data["detail"].startswith(
        "3 expressions x 1000 x 1000 pixels = 3,000,000 expression-pixels"
    )
    assert "limit of 2,000,000 per request" in data["detail"]


def test_progress_of_a_running_request_counts_windows():
    class Slow(ColourPredictor):
        def predict(self, image, expressions):
            time.sleep(0.05)
            return super().predict(image, expressions)

    settings = ServeSettings(window=64, overlap=16)
    image = png_bytes(np.moveaxis(colour_scene(200, 200), 0, -1).copy())
    job = "0123456789abcdef0123456789abcdef"
    seen = []
    with BackgroundServer(create_app(Slow(), settings)) as server:
        worker = threading.Thread(
            target=post, args=(server, {"expressions": "red", "job": job}, image)
        )
        worker.start()
        while worker.is_alive():
            status, data = get(server, f"/api/progress/{job}")
            if status == 200:
                seen.append((data["phase"], data["done"], data["total"]))
            time.sleep(0.02)
        worker.join()
        status, data = get(server, f"/api/progress/{job}")
        assert (status, data["phase"]) == (200, "done")
        assert get(server, "/api/progress/not-a-job")[0] == 404
    windows = [entry for entry in seen if entry[0] == "predict" and entry[2]]
    assert windows and {total for _, _, total in windows} == {16}  # 4 x 4 windows
    assert max(done for _, done, _ in windows) >= 2
    assert any(phase == "export" for phase, _, _ in seen)


def test_long_expressions_are_reported_as_truncated(tiny_model):
    segmenter = tiny_model["segmenter"]
    assert segmenter.text_length == 64
    long_text = " ".join(["the large red building next to the pool"] * 12)
    counts = segmenter.token_counts(["the red building", long_text])
    tokenizer = segmenter.preprocessor.tokenizer  # referee: the tokenizer without truncation
    assert counts == [
        len(tokenizer(t.lower())["input_ids"]) for t in ["the red building", long_text]
    ]
    warnings = segmenter.truncation_warnings(["the red building", long_text])
    assert warnings == [
        f"expression 2 has {counts[1]} tokens; the text tower reads only the first 64, "
        "the rest is ignored"
    ]
    with BackgroundServer(create_app(segmenter, ServeSettings(window=0))) as server:
        image = png_bytes(np.moveaxis(colour_scene(64, 64), 0, -1).copy())
        status, data = post(server, {"expressions": f"red\n{long_text}"}, image)
    assert status == 200 and data["warnings"] == warnings


# ------------------------------------------------------------------------- ground areas
def square_scene(size: int = 120) -> np.ndarray:
    scene = np.zeros((3, size, size), np.uint8)
    scene[0, 10:70, 20:100] = 255  # red: 60 rows x 80 columns
    scene[0, 30:40, 40:50] = 0  # with a 10 x 10 hole
    return scene


def features_of(path, expressions=("red",)):
    with open_raster(path) as source:
        result = predict_source(
            source, list(expressions), ColourPredictor(), PredictOptions(window=0, progress=False)
        )
    geojson = json.loads(result.files[result.outputs["geojson"]])
    return result, geojson["features"]


def test_epsg4326_areas_are_geodesic_metres_matching_an_equal_area_referee(tmp_path):
    # 1e-4 degree pixels (about 11 m x 8 m) at 45 N 7 E
    west, north, step = 7.0, 45.0, 1e-4
    path = write_geotiff(
        tmp_path / "wgs84.tif",
        square_scene(),
        crs="EPSG:4326",
        transform=from_origin(west, north, step, step),
    )
    result, features = features_of(path)
    (feature,) = features
    properties = feature["properties"]
    assert properties["area_px"] == 60 * 80 - 10 * 10
    polygon = shape(feature["geometry"])
    # referee 1: shapely in a Lambert azimuthal equal-area projection centred on the scene
    laea = CRS.from_proj4(f"+proj=laea +lat_0={north - 0.004} +lon_0={west + 0.006} +ellps=WGS84")
    to_laea = Transformer.from_crs("EPSG:4326", laea, always_xy=True).transform
    projected = reproject(to_laea, polygon)
    assert properties["area_m2"] == pytest.approx(projected.area, rel=1e-3)
    assert properties["perimeter_m"] == pytest.approx(projected.length, rel=1e-3)
    # referee 2: pyproj's own Geod on WGS84 for the area of the exterior minus the hole
    geod = Geod(ellps="WGS84")
    outer = abs(geod.polygon_area_perimeter(*polygon.exterior.xy)[0])
    hole = abs(geod.polygon_area_perimeter(*polygon.interiors[0].xy)[0])
    assert properties["area_m2"] == pytest.approx(outer - hole, rel=1e-6)
    assert properties["area_m2"] > 300_000  # not degrees²
    assert result.areas_m2 == [pytest.approx(properties["area_m2"])]


def test_utm_areas_are_metres_in_the_projected_crs_and_agree_with_geodesic(tmp_path):
    path = write_geotiff(tmp_path / "utm.tif", square_scene())  # EPSG:32633, 0.5 m pixels
    _, (feature,) = features_of(path)
    properties = feature["properties"]
    assert properties["area_m2"] == pytest.approx((60 * 80 - 10 * 10) * 0.25)
    assert properties["perimeter_m"] == pytest.approx(2 * (30 + 40) + 4 * 5)
    to_lonlat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform
    lonlat = reproject(to_lonlat, shape(feature["geometry"]))
    geod = Geod(ellps="WGS84")
    outer = abs(geod.polygon_area_perimeter(*lonlat.exterior.xy)[0])
    hole = abs(geod.polygon_area_perimeter(*lonlat.interiors[0].xy)[0])
    assert properties["area_m2"] == pytest.approx(outer - hole, rel=1e-3)  # UTM scale 0.9996


def test_projected_crs_in_feet_is_converted_to_metres(tmp_path):
    # NAD83 / Massachusetts Mainland (ftUS): one pixel = 1 US survey foot
    crs = "EPSG:2249"
    path = write_geotiff(
        tmp_path / "feet.tif",
        square_scene(),
        crs=crs,
        transform=from_origin(700_000, 3_000_000, 1, 1),
    )
    _, (feature,) = features_of(path)
    foot = 1200 / 3937  # metres per US survey foot, the referee's definition
    assert feature["properties"]["area_m2"] == pytest.approx(4700 * foot**2, rel=1e-6)
    assert metric_measure(None) is None


def affine_gcps(transform, points):
    return [
        GroundControlPoint(
            row=row, col=col, x=(transform * (col, row))[0], y=(transform * (col, row))[1]
        )
        for row, col in points
    ]


def test_gcp_only_geotiff_is_georeferenced_through_an_affine_fit(tmp_path):
    grid = from_origin(500_000, 4_000_000, 0.5, 0.5)
    points = [(0, 0), (0, 119), (119, 0), (119, 119), (60, 60)]
    path = tmp_path / "gcps.tif"
    with rasterio.open(
        path, "w", driver="GTiff", height=120, width=120, count=3, dtype="uint8"
    ) as dataset:
        dataset.write(square_scene())
        dataset.gcps = (affine_gcps(grid, points), rasterio.crs.CRS.from_epsg(32633))
    result, (feature,) = features_of(path)
    assert result.info.georeferenced and result.info.crs.to_epsg() == 32633
    np.testing.assert_allclose(list(result.info.transform)[:6], list(grid)[:6], atol=1e-6)
    assert feature["properties"]["area_m2"] == pytest.approx(4700 * 0.25)


def test_gcps_off_an_affine_grid_are_refused_for_geojson_with_a_clear_message(tmp_path, capsys):
    grid = from_origin(500_000, 4_000_000, 0.5, 0.5)
    gcps = affine_gcps(grid, [(0, 0), (0, 119), (119, 0), (119, 119)])
    gcps[3] = GroundControlPoint(row=119, col=119, x=gcps[3].x + 20.0, y=gcps[3].y)  # 40 px off
    path = tmp_path / "warped.tif"
    with rasterio.open(
        path, "w", driver="GTiff", height=120, width=120, count=3, dtype="uint8"
    ) as dataset:
        dataset.write(square_scene())
        dataset.gcps = (gcps, rasterio.crs.CRS.from_epsg(32633))
    result, written = predict_file(path, ["red"], ColourPredictor(), tmp_path / "out")
    assert not result.info.georeferenced and "geojson" not in result.outputs
    (note,) = result.notes
    assert "ground control points" in note and "do not fit an affine grid" in note
    assert "gdalwarp" in note
    with pytest.raises(ValueError, match="ground control points"):
        geojson_document(result.info, ["red"], result.masks, result.scores)


# --------------------------------------------------------------------------- overlays
def test_legend_text_grows_with_the_overlay_width():
    masks = [np.zeros((10, 10), bool)]
    small = draw_overlay(np.zeros((300, 600, 3), np.uint8), masks, ["x"], max_side=None)
    large = draw_overlay(np.zeros((1000, 2000, 3), np.uint8), masks, ["x"], max_side=None)
    small_legend, large_legend = small.shape[0] - 300, large.shape[0] - 1000
    # shown at the page's width, the large legend keeps the size of the small one
    assert large_legend == pytest.approx(small_legend * 2000 / 900, abs=2)
    # its colour swatch is the expression's palette colour, as in the web page's table
    swatch = large[1000 + large_legend // 2, round(12 * 2000 / 900)]
    assert hex_color(tuple(swatch)) == hex_color(PALETTE[0]) == "#e69f00"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-expressions", "0"], "--max-expressions must be > 0"),
        (["--max-expression-megapixels", "-1"], "--max-expression-megapixels must be > 0"),
        (["--port", "70000"], "--port must be in 0..65535"),
        (["--window", "64", "--overlap", "64"], "must be smaller than --window"),
        ([], "give --checkpoint"),
    ],
)
def test_serve_bad_arguments_are_one_line_before_the_model_loads(
    monkeypatch, capsys, flags, message
):
    from aerialseg.cli import main

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded for a bad argument")

    monkeypatch.setattr("aerialseg.predict.build_predictor", no_model)
    checkpoint = [] if not flags else ["--checkpoint", __file__]
    assert main(["serve", *checkpoint, *flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith("aerialseg serve: error: ") and message in error
    assert error.count("\n") == 1
