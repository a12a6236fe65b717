"""``aerialseg predict``: tiling, stitching, band/bit-depth normalisation, exports and bad inputs.

Geometry is checked with the colour-keyed fake predictor from ``conftest.py`` (its masks are known
exactly); the real tiny model runs end to end in ``test_predict_model.py``.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import rasterio
from PIL import Image
from pycocotools import mask as mask_utils
from rasterio.transform import from_origin
from shapely.geometry import shape

from aerialseg.cli import main
from aerialseg.predict import (
    InputImageError,
    PredictOptions,
    open_raster,
    predict_file,
    predict_windows,
    tile_grid,
)
from tests.product.scenes import (
    COLOURS,
    CRS,
    ORIGIN,
    PIXEL,
    ColourPredictor,
    FakePrediction,
    colour_scene,
    write_geotiff,
)


def expected_masks() -> tuple[np.ndarray, np.ndarray]:
    scene = colour_scene()
    red = (scene[0] == 255) & (scene[1] == 0) & (scene[2] == 0)
    blue = (scene[0] == 0) & (scene[1] == 0) & (scene[2] == 255)
    return red, blue


@pytest.mark.parametrize(
    "height, width, window, overlap",
    [(500, 600, 256, 64), (480, 480, 480, 96), (100, 90, 480, 96), (1000, 481, 480, 96)],
)
def test_tile_grid_covers_every_pixel_with_border_aligned_tiles(height, width, window, overlap):
    tiles = tile_grid(height, width, window, overlap)
    cover = np.zeros((height, width), int)
    for tile in tiles:
        assert (tile.height, tile.width) == (min(window, height), min(window, width))
        cover[tile.row : tile.row + tile.height, tile.col : tile.col + tile.width] += 1
    assert cover.min() >= 1
    assert max(t.row + t.height for t in tiles) == height
    assert max(t.col + t.width for t in tiles) == width
    rows = sorted({t.row for t in tiles})
    assert all(b - a <= window - overlap for a, b in zip(rows, rows[1:]))


def test_tile_grid_whole_image_and_invalid_overlap():
    assert len(tile_grid(500, 600, 0, 0)) == 1
    assert tile_grid(500, 600, 0, 0)[0].height == 500
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(500, 600, 256, 256)


def test_windowed_prediction_equals_whole_image_prediction(tmp_path, colour_predictor):
    path = write_geotiff(tmp_path / "scene.tif", colour_scene())
    with open_raster(path) as source:
        tiled = predict_windows(
            source, ["red", "blue"], colour_predictor, window=128, overlap=32, progress=False
        )
        whole = predict_windows(
            source, ["red", "blue"], ColourPredictor(), window=0, overlap=0, progress=False
        )
    # rows start at 0, 96, 192, 288, 372 and columns at 0, 96, ..., 384, 472
    assert len(colour_predictor.calls) == 5 * 6
    assert {shape for shape, _ in colour_predictor.calls} == {(128, 128, 3)}
    red, blue = expected_masks()
    np.testing.assert_array_equal(tiled.masks[0], red)
    np.testing.assert_array_equal(tiled.masks[1], blue)
    np.testing.assert_array_equal(tiled.masks, whole.masks)
    np.testing.assert_allclose(tiled.logits, whole.logits, atol=1e-5)
    # one window: the model's own score; several: the windows' scores weighted by the mask
    # pixels each predicted (recomputed here from the windows the predictor was given)
    np.testing.assert_allclose(whole.scores, [5000 / 300_000, 6900 / 300_000])
    for index, colour in enumerate(["red", "blue"]):
        pixels = np.array(
            [(image == COLOURS[colour]).all(-1).sum() for image in colour_predictor.images]
        )
        window_scores = pixels / (128 * 128)
        expected = (window_scores * pixels).sum() / pixels.sum()
        assert tiled.scores[index] == pytest.approx(expected, rel=1e-9)


class TileConstantPredictor:
    """Logit 0 everywhere on the first tile, 10 on the second: shows how overlaps are blended."""

    def __init__(self) -> None:
        self.value = 0.0

    def predict(self, image, expressions):
        logits = np.full((len(expressions), *image.shape[:2]), self.value, np.float32)
        self.value += 10.0
        return FakePrediction(logits > 0, np.zeros(len(expressions)), logits)


def test_overlaps_blend_logits_smoothly_between_tiles(tmp_path):
    path = write_geotiff(tmp_path / "strip.tif", np.zeros((3, 64, 96), np.uint8))
    with open_raster(path) as source:
        result = predict_windows(
            source, ["x"], TileConstantPredictor(), window=64, overlap=32, progress=False
        )
    profile = result.logits[0, 32]
    np.testing.assert_allclose(profile[:32], 0.0)  # only the first tile covers these
    np.testing.assert_allclose(profile[64:], 10.0)  # only the second one covers these
    overlap = profile[31:65]
    assert np.all(np.diff(overlap) > 0)  # a ramp, not a step in the middle of the overlap
    assert np.max(np.diff(overlap)) < 10.0 / 16


def test_cli_geotiff_polygons_land_at_crs_coordinates(tmp_path, monkeypatch, capsys):
    path = write_geotiff(tmp_path / "scene.tif", colour_scene())
    predictor = ColourPredictor()
    monkeypatch.setattr("aerialseg.predict.build_predictor", lambda *args, **kwargs: predictor)
    out = tmp_path / "out"
    argv = ["predict", path, "-e", "red", "-e", "blue", "--out-dir", str(out)]
    argv += ["--window", "256", "--overlap", "64", "--no-progress", "--checkpoint", path]
    assert main(argv) == 0
    assert "'red': 5000 px, 1,250.0 m2" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == [
        "scene.geojson",
        "scene.mask-0-red.png",
        "scene.mask-1-blue.png",
        "scene.masks.tif",
        "scene.overlay.png",
        "scene.predictions.json",
    ]
    x0, y0 = ORIGIN
    geojson = json.loads((out / "scene.geojson").read_text())
    assert geojson["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    red = [f for f in geojson["features"] if f["properties"]["expression"] == "red"]
    blue = [f for f in geojson["features"] if f["properties"]["expression"] == "blue"]
    assert len(red) == 1 and len(blue) == 1
    red_polygon = shape(red[0]["geometry"])
    # red: rows 100-149, cols 200-299 at 0.5 m -> x 500100..500150, y 3999925..3999950
    assert red_polygon.bounds == (
        x0 + 200 * PIXEL,
        y0 - 150 * PIXEL,
        x0 + 300 * PIXEL,
        y0 - 100 * PIXEL,
    )
    assert red_polygon.area == pytest.approx(100 * 50 * PIXEL**2)
    # metres in UTM: 100 x 50 pixels of 0.5 m = 50 m x 25 m
    assert red[0]["properties"]["area_px"] == 5000
    assert red[0]["properties"]["area_m2"] == pytest.approx(1250.0)
    assert red[0]["properties"]["perimeter_m"] == pytest.approx(2 * (50 + 25))
    # blue: 35 m x 50 m with a 5 m x 5 m hole; the perimeter counts the hole's ring too
    assert blue[0]["properties"]["area_m2"] == pytest.approx(35 * 50 - 5 * 5)
    assert blue[0]["properties"]["perimeter_m"] == pytest.approx(2 * (35 + 50) + 4 * 5)
    blue_polygon = shape(blue[0]["geometry"])
    assert blue_polygon.bounds == (
        x0 + 50 * PIXEL,
        y0 - 400 * PIXEL,
        x0 + 120 * PIXEL,
        y0 - 300 * PIXEL,
    )
    assert len(blue_polygon.interiors) == 1  # the 10 x 10 hole survives as a ring
    hole = shape({"type": "Polygon", "coordinates": [blue_polygon.interiors[0].coords]})
    assert hole.bounds == (x0 + 80 * PIXEL, y0 - 350 * PIXEL, x0 + 90 * PIXEL, y0 - 340 * PIXEL)
    assert blue_polygon.area == pytest.approx((70 * 100 - 10 * 10) * PIXEL**2)

    red_mask, blue_mask = expected_masks()
    with rasterio.open(out / "scene.masks.tif") as masks:
        assert masks.crs.to_string() == CRS
        assert masks.transform == from_origin(x0, y0, PIXEL, PIXEL)
        assert masks.descriptions == ("red", "blue")
        np.testing.assert_array_equal(masks.read(1) == 255, red_mask)
        np.testing.assert_array_equal(masks.read(2) == 255, blue_mask)
    document = json.loads((out / "scene.predictions.json").read_text())
    assert document["crs"] == CRS and (document["height"], document["width"]) == (500, 600)
    first = document["predictions"][0]
    assert first["expression"] == "red" and first["area"] == 5000
    assert first["bbox"] == [200, 100, 100, 50]
    rle = dict(first["segmentation"], counts=first["segmentation"]["counts"].encode())
    np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), red_mask)
    png = np.asarray(Image.open(out / "scene.mask-1-blue.png"))
    np.testing.assert_array_equal(png, np.where(blue_mask, 255, 0))


def test_16bit_single_band_is_percentile_stretched_and_replicated(tmp_path):
    ramp = (np.arange(101, dtype=np.uint16) * 100 + 1000)[None, None].repeat(10, axis=1)
    path = write_geotiff(tmp_path / "dem.tif", ramp)
    with open_raster(path) as source:
        rgb, valid = source.read_all()
    assert valid is None and rgb.dtype == np.uint8 and rgb.shape == (10, 101, 3)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    # 2nd/98th percentiles are 1200 and 10800: 1000 -> 0, 6000 -> 127.5 -> 128, 11000 -> 255
    assert rgb[0, 0, 0] == 0 and rgb[0, 50, 0] == 128 and rgb[0, 100, 0] == 255
    assert np.all(np.diff(rgb[0, :, 0].astype(int)) >= 0)
    with open_raster(path, percentiles=(0, 100)) as source:
        assert source.read_all()[0][0, 50, 0] == 128


def test_four_band_default_and_bands_option(tmp_path):
    bands = np.stack([np.full((8, 8), 10 * (k + 1), np.uint8) for k in range(4)])
    path = write_geotiff(tmp_path / "rgbn.tif", bands)
    with open_raster(path) as source:
        assert source.bands == (1, 2, 3)
        assert tuple(source.read_all()[0][0, 0]) == (10, 20, 30)
    with open_raster(path, bands=(4, 3, 2)) as source:
        assert tuple(source.read_all()[0][0, 0]) == (40, 30, 20)
    with pytest.raises(InputImageError, match=r"band\(s\) \[5\] do not exist; the image has 4"):
        open_raster(path, bands=(5, 1, 1))
    six = write_geotiff(tmp_path / "six.tif", np.zeros((6, 8, 8), np.uint8))
    with pytest.raises(InputImageError, match="6 bands.*--bands"):
        open_raster(six)


def test_png_formats_and_alpha_mask_clear_predictions(tmp_path, colour_predictor):
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[10:20, 10:40, 0] = 255  # a red bar ...
    rgba[:, 30:, 3] = 0  # ... whose right part is transparent (invalid)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    result, _ = predict_file(
        tmp_path / "alpha.png", ["red"], colour_predictor, tmp_path / "out", PredictOptions()
    )
    assert not result.info.georeferenced
    assert result.masks[0].sum() == 10 * 20 and not result.masks[0][:, 30:].any()
    assert "alpha.geojson" not in os.listdir(tmp_path / "out")

    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(tmp_path / "grey16.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "photo.jpg", quality=90)
    with open_raster(tmp_path / "palette.png") as source:
        assert tuple(source.read_all()[0][0, 1]) == (255, 0, 0)
    with open_raster(tmp_path / "grey16.png") as source:
        assert source.info.dtype == "uint16" and source.read_all()[0].shape == (4, 4, 3)
    with open_raster(tmp_path / "photo.jpg") as source:
        assert source.read_all()[0].shape == (16, 16, 3)


def test_nodata_pixels_are_black_and_never_predicted(tmp_path, colour_predictor):
    scene = colour_scene(200, 320)
    scene[:, :, 250:] = 7  # nodata strip cutting through the red rectangle's right end
    path = write_geotiff(tmp_path / "nodata.tif", scene, nodata=7)
    result, _ = predict_file(
        path, ["red"], colour_predictor, tmp_path / "out", PredictOptions(window=128, overlap=32)
    )
    assert result.prediction.valid is not None and not result.prediction.valid[:, 250:].any()
    assert result.masks[0].sum() == 50 * 50  # cols 200-249 only
    assert all(not (image == 7).all(axis=-1).any() for image in colour_predictor.images)


def encoded(image_format: str) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.png", b"", "the file is empty (0 bytes)"),
        ("notes.png", b"hello, not an image", "not a PNG, JPEG or TIFF/GeoTIFF file"),
        ("corrupt.tif", b"II*\x00" + bytes(range(200)), "cannot read the file as an image"),
        ("truncated.png", encoded("PNG")[:3000], "the PNG file is truncated"),
        ("truncated.jpg", encoded("JPEG")[:1500], "the file is truncated or corrupt"),
    ],
)
def test_cli_bad_image_names_file_and_keeps_other_outputs(
    tmp_path, monkeypatch, capsys, name, content, message
):
    monkeypatch.setattr("aerialseg.predict.build_predictor", lambda *a, **k: ColourPredictor())
    good = write_geotiff(tmp_path / "good.tif", colour_scene(64, 64))
    bad = tmp_path / name
    bad.write_bytes(content)
    out = tmp_path / "out"
    out.mkdir()
    earlier = out / f"{bad.stem}.predictions.json"
    earlier.write_text("earlier result")
    argv = ["predict", str(bad), good, "-e", "red", "--out-dir", str(out), "--no-progress"]
    argv += ["--checkpoint", good]  # any existing file: build_predictor is replaced
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert f"'{bad}'" in error and message in error
    assert "Traceback" not in error
    assert earlier.read_text() == "earlier result"
    assert (out / "good.predictions.json").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-e", "red", "-e", "  "], "expression 2 is empty"),
        ([], "no expression given"),
        (["-e", "red", "--bands", "4,x,2"], "--bands expects 1 or 3 comma-separated"),
        (["-e", "red", "--window", "128", "--overlap", "128"], "must be smaller than --window"),
        (["-e", "red", "--overlap", "-1"], "--overlap must be >= 0"),
        (["-e", "red", "--percentiles", "50", "10"], "--percentiles must satisfy"),
        (["-e", "red", "--expressions-file", "/nonexistent/list.txt"], "cannot be read"),
        (["-e", "red", "--checkpoint", "/nonexistent/iter_9.pth"], "does not exist"),
        (["-e", "red", "--no-progress"], "give --checkpoint"),
    ],
)
def test_cli_bad_expressions_and_options(tmp_path, monkeypatch, capsys, argv, message):
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded for a bad argument")

    monkeypatch.setattr("aerialseg.predict.build_predictor", no_model)
    path = write_geotiff(tmp_path / "scene.tif", colour_scene(32, 32))
    try:
        code = main(["predict", path, "--out-dir", str(tmp_path / "out"), *argv])
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    assert code == 2
    error = capsys.readouterr().err
    assert message in error
    if not error.startswith("usage:"):  # argparse's own errors come with the usage text
        assert error.count("\n") == 1 and error.startswith("aerialseg predict: error: ")
    assert not (tmp_path / "out").exists()


def test_cli_unwritable_out_dir_is_a_usage_error_before_the_model(tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded for a bad argument")

    monkeypatch.setattr("aerialseg.predict.build_predictor", no_model)
    path = write_geotiff(tmp_path / "scene.tif", colour_scene(32, 32))
    blocker = tmp_path / "results.txt"
    blocker.write_text("an earlier file")
    for out_dir, message in (
        (blocker, "is a file, not a folder"),
        (blocker / "sub", "not writable"),
    ):
        code = main(["predict", path, "-e", "red", "--out-dir", str(out_dir), "--checkpoint", path])
        error = capsys.readouterr().err
        assert code == 2 and message in error and len(error.strip().splitlines()) == 1
    assert blocker.read_text() == "an earlier file"


def test_cli_results_on_stdout_progress_and_logs_on_stderr(tmp_path, monkeypatch, capsys):
    from mmengine.logging import print_log

    def loading_model(*args, **kwargs):
        print_log("ClipSAM parameters (trainable / total):", logger="current")
        print("a stray print while loading")
        return ColourPredictor()

    monkeypatch.setattr("aerialseg.predict.build_predictor", loading_model)
    path = write_geotiff(tmp_path / "scene.tif", colour_scene(64, 64))
    argv = ["predict", path, "-e", "red", "--out-dir", str(tmp_path / "out"), "--checkpoint", path]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "ClipSAM parameters" not in captured.out and "stray print" not in captured.out
    assert "ClipSAM parameters" in captured.err and "stray print" in captured.err
    assert "writing masks, overlay and GeoJSON" in captured.err  # after the progress bar
    assert captured.out.splitlines()[0] == f"{path}: 64 x 64 px"


def test_cli_missing_image(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("aerialseg.predict.build_predictor", lambda *a, **k: ColourPredictor())
    missing = tmp_path / "nowhere.tif"
    argv = ["predict", str(missing), "-e", "red", "--out-dir", str(tmp_path)]
    assert main([*argv, "--checkpoint", str(tmp_path)]) == 1
    assert f"'{missing}': input image not found" in capsys.readouterr().err
