"""``aerialseg predict`` end to end with the real tiny ClipSAM on a 16-bit, 4-band GeoTIFF."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from PIL import Image
from pycocotools import mask as mask_utils
from shapely.geometry import shape

from aerialseg.cli import main
from aerialseg.predict import PredictOptions, open_raster, predict_source, tile_grid
from tests.product.scenes import CRS, ORIGIN, PIXEL, write_geotiff


class CountingPredictor:
    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self.shapes = []

    def predict(self, image, expressions):
        self.shapes.append(image.shape)
        return self.predictor.predict(image, expressions)


def sixteen_bit_scene(height: int = 600, width: int = 700) -> np.ndarray:
    """4 x H x W uint16 (NIR, R, G, B order on purpose): noise with a bright red block."""
    rng = np.random.default_rng(0)
    bands = rng.integers(2000, 6000, size=(4, height, width), dtype=np.uint16)
    bands[1, 200:320, 300:450] = 30000  # red
    return bands


def test_cli_predicts_a_16bit_geotiff_with_the_tiny_model(tmp_path, tiny_model, capsys):
    path = write_geotiff(tmp_path / "scene.tif", sixteen_bit_scene())
    out = tmp_path / "out"
    argv = ["predict", path, "-e", "the red building", "-e", "all storage tanks"]
    argv += ["--checkpoint", tiny_model["checkpoint"], "--bands", "2,3,4"]
    argv += ["--window", "256", "--overlap", "64", "--out-dir", str(out), "--no-progress"]
    assert main(argv) == 0
    assert "scene.tif: 700 x 600 px" in capsys.readouterr().out

    document = json.loads((out / "scene.predictions.json").read_text())
    assert document["bands"] == [2, 3, 4] and document["crs"] == CRS
    masks = []
    for index, prediction in enumerate(document["predictions"]):
        rle = dict(prediction["segmentation"], counts=prediction["segmentation"]["counts"].encode())
        mask = mask_utils.decode(rle).astype(bool)
        slug = "the-red-building" if index == 0 else "all-storage-tanks"
        png = np.asarray(Image.open(out / f"scene.mask-{index}-{slug}.png")) == 255
        np.testing.assert_array_equal(mask, png)
        assert mask.shape == (600, 700) and prediction["area"] == int(mask.sum())
        assert 0.0 <= prediction["score"] <= 1.0
        masks.append(mask)
    with rasterio.open(out / "scene.masks.tif") as tif:
        assert tif.crs.to_string() == CRS and tif.count == 2
        for band, mask in enumerate(masks, start=1):
            np.testing.assert_array_equal(tif.read(band) == 255, mask)

    geojson = json.loads((out / "scene.geojson").read_text())
    x0, y0 = ORIGIN
    for feature in geojson["features"]:
        polygon = shape(feature["geometry"])
        left, bottom, right, top = polygon.bounds
        assert x0 <= left < right <= x0 + 700 * PIXEL and y0 - 600 * PIXEL <= bottom < top <= y0
    for index, mask in enumerate(masks):
        polygons = [f for f in geojson["features"] if f["properties"]["expression_index"] == index]
        area = sum(shape(f["geometry"]).area for f in polygons)
        assert area == pytest.approx(mask.sum() * PIXEL**2)


def test_real_model_is_called_once_per_window_with_stitched_full_size_logits(tmp_path, tiny_model):
    path = write_geotiff(tmp_path / "scene.tif", sixteen_bit_scene(300, 420))
    counting = CountingPredictor(tiny_model["segmenter"])
    options = PredictOptions(window=192, overlap=48, progress=False)
    with open_raster(path) as source:
        result = predict_source(source, ["the red building"], counting, options)
    assert len(counting.shapes) == len(tile_grid(300, 420, 192, 48)) == 2 * 3
    assert set(counting.shapes) == {(192, 192, 3)}
    logits = result.prediction.logits
    assert logits.shape == (1, 300, 420) and np.isfinite(logits).all()
    np.testing.assert_array_equal(result.masks, logits > 0)
