"""Source stages: iSAID windows and polygon cropping, LoveDA instances and regions, validation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from datagen.config import InstanceRule, ISAIDConfig, LoveDAConfig
from datagen.isaid_patches import (
    SourceAnnotation,
    extract_isaid_patches,
    extract_patches,
    parse_annotations,
    patch_dir,
    window_origins,
)
from datagen.loveda_patches import extract_loveda_patches, find_instances
from datagen.records import Patch, decode_rle
from datagen.storage import read_json
from datagen.synthetic import loveda_paths
from tests.datagen.conftest import polygon_annotation, write_isaid_split


def annotation(id_, points, category="harbor"):
    array = np.array(points, dtype=float)
    bbox = (array[0::2].min(), array[1::2].min(), array[0::2].max(), array[1::2].max())
    return SourceAnnotation(str(id_), category, [array], bbox)


def by_window(patches):
    return {patch.window[:2]: (patch, pixels) for patch, pixels in patches}


def test_windows_cover_the_border_strip():
    # Regression (bug 14): the strip right of the last stride was never covered.
    assert window_origins(1000, 480, 384) == [0, 384, 520]
    assert window_origins(864, 480, 384) == [0, 384]
    assert window_origins(480, 480, 384) == [0]
    assert window_origins(300, 480, 384) == [0]


def test_polygons_are_cropped_like_a_full_image_raster():
    image = np.full((700, 1000, 3), 120, dtype=np.uint8)
    polygons = [
        [100, 100, 300, 120, 280, 400, 90, 380],
        [400, 200, 700, 180, 720, 300, 650, 650, 430, 600],  # spans six windows
        [930, 300, 990, 300, 990, 340, 930, 340],  # only in the border-aligned column
    ]
    anns = [annotation(k, p) for k, p in enumerate(polygons)]
    patches, counts = extract_patches(image, anns, ISAIDConfig(), "P0001", "train", "P0001.png")
    assert counts["windows"] == 6 and counts["patches"] == 6
    full = [mask_utils.decode(mask_utils.frPyObjects([p], 700, 1000))[:, :, 0] for p in polygons]
    seen = set()
    for patch, pixels in patches:
        x, y, w, h = patch.window
        assert pixels.shape == (480, 480, 3) and patch.name == f"P0001_x{x:05d}_y{y:05d}"
        for instance in patch.instances:
            mask = decode_rle(instance.rle)
            expected = full[int(instance.id)][y : y + h, x : x + w]
            assert instance.area == mask.sum() > 0
            assert np.count_nonzero(mask != expected) <= 0.001 * expected.sum() + 2
            ys, xs = np.nonzero(mask)
            assert instance.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            seen.add((instance.id, x))
    assert ("2", 520) in seen and ("2", 384) not in seen


def test_cutoff_rule_uses_visible_share_or_truncated_small_objects():
    image = np.full((700, 1000, 3), 120, dtype=np.uint8)
    big = annotation(0, [420, 100, 620, 100, 620, 300, 420, 300])  # 200 x 200
    car = annotation(1, [470, 400, 494, 400, 494, 412, 470, 412], "small_vehicle")
    whole_car = annotation(2, [200, 400, 224, 400, 224, 412, 200, 412], "small_vehicle")
    patches = by_window(
        extract_patches(image, [big, car, whole_car], ISAIDConfig(), "P1", "train", "P1")[0]
    )
    first = {i.id: i for i in patches[(0, 0)][0].instances}
    # Regression (bug 13): 30 % visible with 12,000 px was a normal target in the original.
    assert first["0"].area == 60 * 200 and first["0"].visible_ratio == pytest.approx(0.3, abs=0.01)
    assert first["0"].is_cutoff
    assert first["1"].is_cutoff and first["1"].area == 10 * 12  # truncated and tiny
    assert not first["2"].is_cutoff and first["2"].visible_ratio == 1.0
    middle = {i.id: i for i in patches[(384, 0)][0].instances}
    assert not middle["0"].is_cutoff and middle["0"].visible_ratio == 1.0
    border = {i.id: i for i in patches[(520, 0)][0].instances}
    assert border["0"].visible_ratio == pytest.approx(0.5, abs=0.01) and not border["0"].is_cutoff


def test_black_windows_are_dropped_and_small_images_padded():
    image = np.full((700, 1000, 3), 120, dtype=np.uint8)
    image[:, 700:] = 0  # 62 % of the x=520 windows, 34 % of the x=384 ones
    anns = [annotation(0, [600, 50, 700, 50, 700, 150, 600, 150])]
    _, counts = extract_patches(image, anns, ISAIDConfig(), "P1", "train", "P1")
    assert (counts["windows_black"], counts["windows_empty"], counts["patches"]) == (2, 3, 1)
    small = np.full((200, 300, 3), 90, dtype=np.uint8)
    patches, counts = extract_patches(
        small, [annotation(0, [10, 10, 60, 10, 60, 40, 10, 40])], ISAIDConfig(), "P2", "train", "P2"
    )
    ((patch, pixels),) = patches
    assert (
        pixels.shape == (480, 480, 3)
        and (pixels[:200, :300] == 90).all()
        and not pixels[200:].any()
    )
    assert patch.instances[0].area == 50 * 30


def test_annotation_validation_counts_every_problem():
    raw = [
        polygon_annotation("Small_Vehicle", [10, 10, 30, 10, 30, 20, 10, 20]),
        polygon_annotation("Tree", [10, 10, 30, 10, 30, 20]),
        polygon_annotation("ship", [10, 10, 30, 10, 30]),
        polygon_annotation("ship", [700, 700, 750, 700, 750, 750]),
        polygon_annotation("ship", [-20, 10, 30, 10, 30, 40]),
        {"category_name": "plane", "segmentation": {"counts": "x", "size": [1, 1]}},
    ]
    kept, skips, messages = parse_annotations(raw, 600, 600)
    assert [a.category for a in kept] == ["small_vehicle", "ship"]
    assert skips == {
        "unknown_category": 1, "bad_polygon": 2, "polygon_outside_image": 1, "polygon_clipped": 1,
    }  # fmt: skip
    assert any("Tree" in m for m in messages)


def test_isaid_stage_reports_bad_inputs_and_keeps_going(make_config):
    cfg = make_config(
        synthetic={"enabled": False}, loveda={"enabled": False}, isaid={"splits": ["train"]}
    )
    root = cfg.isaid_root()
    good = np.full((600, 600, 3), 150, dtype=np.uint8)
    car = polygon_annotation("Small_Vehicle", [100, 100, 124, 100, 124, 112, 100, 112])
    write_isaid_split(
        root,
        "train",
        [
            ("P0001.png", good, [car, polygon_annotation("Tree", [1, 1, 5, 1, 5, 5])]),
            ("P0002.png", None, [car]),
            ("P0003.png", b"not a png", [car]),
            ("P0004.png", np.full((600, 600, 3), 60000, dtype=np.uint16), [car]),
            ("P0005.png", np.full((600, 600), 80, dtype=np.uint8), [car]),
        ],
    )
    report = extract_isaid_patches(cfg)
    assert report["skips"] == {
        "missing_image": 1, "corrupt_image": 1, "unsupported_image": 2, "unknown_category": 1,
    }  # fmt: skip
    assert any("P0002.png" in m for m in report["messages"])
    names = read_json(patch_dir(cfg.work_path, "isaid", "train") / "index.json")
    # 600 px: windows at 0 and 120; the car (x 100-124) shows 4 px in the second, as cut off.
    assert names == ["P0001_x00000_y00000", "P0001_x00120_y00000"]
    record = Patch.from_dict(
        read_json(patch_dir(cfg.work_path, "isaid", "train") / "annotations" / f"{names[0]}.json")
    )
    assert record.instances[0].category == "small_vehicle" and not record.instances[0].is_cutoff


def test_missing_annotation_file_is_one_clear_error(make_config):
    cfg = make_config(synthetic={"enabled": False})
    with pytest.raises(FileNotFoundError, match="instances_train.json"):
        extract_isaid_patches(cfg)


# -- LoveDA ----------------------------------------------------------------------------------------


def test_building_instances_are_filtered_by_area_shape_and_solidity():
    mask = np.zeros((480, 480), dtype=np.uint8)
    mask[20:60, 20:60] = 1  # kept
    mask[100:105, 100:105] = 1  # 25 px: too small
    mask[200:203, 10:250] = 1  # 3 x 240 line: aspect ratio
    mask[300:360, 300:360] = 1
    mask[304:356, 304:356] = 0  # hollow square: solidity 0.25
    found = find_instances(mask, InstanceRule())
    assert [bbox for _, bbox in found] == [(20, 20, 60, 60)]
    lake = np.zeros((480, 480), dtype=np.uint8)
    lake[50:450, 40:340] = 1  # 120,000 px
    water = LoveDAConfig().water
    # Regression (bug 15): lakes above 100,000 px were never instances.
    assert [int(m.sum()) > 100_000 for m, _ in find_instances(lake, water)] == [True]


def test_loveda_stage_keeps_land_cover_only_tiles_and_roads(make_config):
    cfg = make_config(
        synthetic={"enabled": False}, isaid={"enabled": False}, loveda={"splits": ["train"]}
    )
    root = cfg.loveda_root()
    tiles = {}
    forest = np.full((512, 512), 6, dtype=np.uint8)
    forest[:, :200] = 1
    tiles["1"] = forest
    roads = np.full((512, 512), 1, dtype=np.uint8)
    roads[:, 250:270] = 3
    roads[100:150, 100:150] = 2
    tiles["2"] = roads
    bad = np.full((512, 512), 1, dtype=np.uint8)
    bad[0, 0] = 9
    tiles["3"] = bad
    for image_id, label in tiles.items():
        image_path, mask_path = loveda_paths(root, "train", "Urban", image_id)
        image_path.parent.mkdir(parents=True, exist_ok=True)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image_path), np.full((512, 512, 3), 100, dtype=np.uint8))
        cv2.imwrite(str(mask_path), label)
    (root / "Train" / "Rural" / "images_png").mkdir(parents=True)
    report = extract_loveda_patches(cfg)
    assert report["skips"] == {"unknown_mask_values": 1}
    out = patch_dir(cfg.work_path, "loveda", "train")
    assert read_json(out / "index.json") == ["L1_patch_0", "L2_patch_0"]
    forest_patch = Patch.from_dict(read_json(out / "annotations" / "L1_patch_0.json"))
    # Regression (bug 15): a tile without building/water instances was dropped.
    assert forest_patch.instances == [] and [r.category for r in forest_patch.regions] == ["forest"]
    road_patch = Patch.from_dict(read_json(out / "annotations" / "L2_patch_0.json"))
    assert [r.category for r in road_patch.regions] == ["building", "road"]
    assert [i.category for i in road_patch.instances] == ["building"]
    assert cv2.imread(str(out / "images" / "L2_patch_0.png")).shape == (480, 480, 3)
