"""Rules on hand-built scenes with known answers (grid, directions, extremes, size, colour,
clusters, groups), including regression tests for the bugs of the original pipeline."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from datagen.config import ColorConfig, RulesConfig
from datagen.rules import (
    DIRECTION_PHRASES,
    classify_color,
    cluster_boxes,
    direction_sector,
    extreme_labels,
    grid_candidates,
    pairwise_relations,
)
from tests.datagen.scenes import box, describe, polygon


def hsv_of(rgb, count=200):
    pixels = np.array([rgb] * count, dtype=np.uint8)[:, None, :]
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV)[:, 0, :]


# -- grid ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x, y, cell, cells",
    [
        (240, 80, 1, [1]),  # top center
        (240, 240, 4, [4]),  # "in the center"
        (208, 80, 1, [1]),  # exactly 48 px from the line: not borderline
        (272, 400, 7, [7]),
        (273, 400, -1, [7, 8]),  # 47 px from the second line
        (161, 80, -1, [0, 1]),  # 1 px right of the first vertical line
        (158, 158, -1, [0, 1, 3, 4]),  # near both lines
    ],
)
def test_grid_cell_and_borderline_candidates(x, y, cell, cells):
    assert grid_candidates(x, y, 480, 480, 0.1) == (cell, cells)


# -- directions ------------------------------------------------------------------------------------


def test_direction_sectors_cover_every_angle_including_157_to_180():
    theta = np.array([0, 45, 90, 135, 160, 170, 179, 180, -179, -90, -45, -160])
    sector, adjacent = direction_sector(theta, 15.0)
    names = [DIRECTION_PHRASES[s] for s in sector]
    # Regression (bug 3): (157.5, 180] was "to the bottom right of" in the original.
    assert names == [
        "to the left of", "to the bottom left of", "below", "to the bottom right of",
        "to the right of", "to the right of", "to the right of", "to the right of",
        "to the right of", "above", "to the top left of", "to the right of",
    ]  # fmt: skip
    # Within 15 degrees of a sector edge the neighbouring sector is possible as well.
    assert adjacent.tolist() == [-1, -1, -1, -1, 3, 3, -1, -1, -1, -1, -1, 5]


def test_relation_describes_source_relative_to_reference():
    boxes = np.array([[290, 90, 310, 110], [130, 90, 150, 110]], dtype=float)
    centres = np.array([[300, 100], [140, 100]], dtype=float)
    rel = pairwise_relations(boxes, centres, boxes, centres, RulesConfig())
    assert DIRECTION_PHRASES[rel["sector"][0, 1]] == "to the right of"
    assert DIRECTION_PHRASES[rel["sector"][1, 0]] == "to the left of"
    assert rel["near"][0, 1]  # 160 px <= 150 + 10 + 10
    assert rel["contained"].tolist() == [[True, False], [False, True]]
    far = pairwise_relations(boxes, centres + [[30, 0], [0, 0]], boxes, centres, RulesConfig())
    assert not far["near"][0, 1] and far["possible"][0, 1]  # 190 px: within 1.25 x the gate


def test_scene_relation_at_179_degrees_reads_to_the_right_of():
    # Regression (bug 3): a ship right of (and 2 px below) a harbor, theta = 178.9 degrees.
    _, texts, _ = describe(
        [box(1, "harbor", 130, 210, 170, 250), box(2, "ship", 240, 222, 260, 242, "red")]
    )
    assert "the ship that is to the right of a harbor" in texts["2"]
    assert "the ship in the center that is to the right of a harbor" in texts["2"]
    assert "the harbor that is to the left of a ship" in texts["1"]
    assert not any("bottom right" in t for t in texts["2"])


# -- extremes --------------------------------------------------------------------------------------


def test_extremes_can_hold_several_labels_and_skip_cutoff_leaders():
    centres = np.array([[30, 30], [200, 200], [420, 430]], dtype=float)
    cats = ["small_vehicle"] * 3
    labels = extreme_labels(centres, cats, np.zeros(3, bool), 480, 480, 0.05)
    # Regression (bug 10): the original kept only the last label (leftmost / rightmost).
    assert labels == [["topmost", "leftmost"], [], ["bottommost", "rightmost"]]
    # A cut-off leader gets no label, and the runner-up does not inherit it.
    cutoff = np.array([True, False, False])
    assert extreme_labels(centres, cats, cutoff, 480, 480, 0.05) == [
        [],
        [],
        ["bottommost", "rightmost"],
    ]
    # A lead within the 24 px margin is no extreme.
    close = np.array([[30, 30], [200, 50], [420, 430]], dtype=float)
    assert "topmost" not in extreme_labels(close, cats, np.zeros(3, bool), 480, 480, 0.05)[0]


def test_two_extremes_of_one_object_are_both_expressed():
    _, texts, _ = describe(
        [
            box(1, "small_vehicle", 20, 20, 44, 32),
            box(2, "small_vehicle", 200, 200, 224, 212),
            box(3, "small_vehicle", 400, 420, 424, 432),
        ]
    )
    assert {"the topmost small vehicle", "the leftmost small vehicle"} <= set(texts["1"])
    assert {"the bottommost small vehicle", "the rightmost small vehicle"} <= set(texts["3"])


# -- size ------------------------------------------------------------------------------------------


def test_size_labels_are_written_and_use_mask_area():
    # Regression (bug 6): largest/smallest were never written out.
    rules, texts, _ = describe(
        [
            box(1, "harbor", 20, 20, 120, 60),  # 4000 px
            box(2, "harbor", 300, 300, 350, 330),  # 1500 px
            box(3, "harbor", 400, 40, 420, 55),  # 300 px
        ]
    )
    assert rules.attributes[0].sizes == ["largest"] and rules.attributes[2].sizes == ["smallest"]
    assert "the largest harbor" in texts["1"] and "the smallest harbor" in texts["3"]

    # A thin diagonal object has a huge box but a small mask: the solid square is the largest.
    diagonal = [(20, 20), (26, 20), (176, 170), (170, 176), (20, 26)]
    rules, texts, _ = describe(
        [polygon(1, "bridge", diagonal), box(2, "bridge", 300, 300, 360, 360)]
    )
    assert rules.patch.instances[0].area < 2400 < rules.patch.instances[1].area
    assert rules.attributes[1].sizes == ["largest"] and rules.attributes[0].sizes == ["smallest"]


def test_size_of_cutoff_objects_is_estimated_and_never_labelled():
    rules, _, _ = describe(
        [
            box(1, "harbor", 20, 20, 120, 60),  # 4000 px
            box(2, "harbor", 440, 300, 480, 350, cutoff=True, ratio=0.4),  # 2000 px of ~5000
            box(3, "harbor", 200, 400, 220, 415),
        ]
    )
    assert rules.attributes[0].sizes == [] and rules.attributes[1].sizes == []


# -- colour ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rgb, color",
    [
        ((235, 235, 235), "light"),
        ((25, 25, 28), "dark"),
        ((128, 128, 128), "dark"),  # V = 50 < 54
        ((20, 22, 40), "dark"),  # near black: saturation is noise, not blue
        ((200, 30, 30), "red"),
        ((30, 60, 200), "blue"),
        ((40, 160, 60), "green"),
        ((220, 190, 40), "yellow"),
    ],
)
def test_colour_names(rgb, color):
    assert classify_color(hsv_of(rgb), ColorConfig())[0] == color


def test_colour_rules_mixed_ambiguous_and_restricted():
    cfg = ColorConfig()
    mixed = np.concatenate([hsv_of((200, 30, 30), 100), hsv_of((30, 60, 200), 100)])
    assert classify_color(mixed, cfg) == (None, ["light", "dark", "red", "blue"])
    # light + chromatic >= 70 % with light the largest share -> light
    light_red = np.concatenate(
        [hsv_of((235, 235, 235), 50), hsv_of((200, 30, 30), 30), hsv_of((25, 25, 25), 20)]
    )
    assert classify_color(light_red, cfg) == ("light", ["light", "red"])
    assert classify_color(hsv_of((235, 235, 235), 99), cfg) == (None, ["light", "dark"])  # < 100 px
    # Buildings and water: light/dark only.
    assert classify_color(hsv_of((200, 30, 30)), cfg, achromatic_only=True) == (
        None,
        ["light", "dark"],
    )
    # Hue 20 is orange (the original ranges overlapped there), 21 yellow.
    for hue, name in ((20, "orange"), (21, "yellow"), (170, "red"), (169, "magenta")):
        pixels = np.tile(np.array([[hue, 220, 220]], dtype=np.uint8), (150, 1))
        assert classify_color(pixels, cfg)[0] == name


# -- clusters and groups ---------------------------------------------------------------------------


def test_dbscan_on_box_gaps_dissolves_large_clusters():
    row = np.array([[10 + 34 * k, 10, 34 + 34 * k, 22] for k in range(3)] + [[300, 300, 324, 312]])
    assert cluster_boxes(row, 40, 2, 8).tolist() == [0, 0, 0, -1]
    nine = np.array([[10 + 34 * k, 10, 34 + 34 * k, 22] for k in range(9)])
    assert cluster_boxes(nine, 40, 2, 8).tolist() == [-1] * 9
    assert cluster_boxes(row, 40, 4, 8).tolist() == [-1] * 4  # no point has 3 neighbours


def test_groups_share_one_id_space_and_loveda_regions_are_expressed():
    building_region = np.zeros((480, 480), dtype=np.uint8)
    forest = np.zeros((480, 480), dtype=np.uint8)
    forest[300:480, 0:200] = 1
    objects = [
        box(1, "building", 20, 20, 50, 50), box(2, "building", 60, 20, 90, 50),
        box(3, "building", 380, 380, 410, 410), box(4, "building", 420, 380, 450, 410),
    ]  # fmt: skip
    for spec in objects:
        x0, y0, x1, y1 = spec["box"]
        building_region[y0:y1, x0:x1] = 1
    rules, texts, record = describe(
        objects, regions=[("building", building_region), ("forest", forest)], source="loveda",
        name="L1_patch_0",
    )  # fmt: skip
    kinds = {(g.kind, g.category, g.id) for g in rules.groups}
    # Regression (bug 8): one groups collection, one id allocator, clusters expressed.
    assert kinds == {
        ("cluster", "building", 1), ("cluster", "building", 2),
        ("region", "building", 1_000_000), ("region", "forest", 1_000_001),
    }  # fmt: skip
    assert texts["1000000"] == ["all buildings in the image"]
    assert texts["1000001"] == ["all forest areas in the image"]
    assert "the group of 2 buildings in the top left" in texts["1"]
    assert "the group of 2 buildings in the bottom right" in texts["2"]


def test_class_groups_and_vehicle_pair():
    rules, texts, _ = describe(
        [
            box(1, "small_vehicle", 20, 20, 44, 32),
            box(2, "small_vehicle", 300, 300, 324, 312),
            box(3, "large_vehicle", 200, 400, 250, 416),
        ]
    )
    by_id = {g.id: g for g in rules.groups}
    assert by_id[1_000_000].kind == "class" and by_id[1_000_000].member_ids == ["1", "2"]
    assert by_id[2_000_000].member_ids == ["1", "2", "3"]
    assert texts["1000000"] == ["all small vehicles in the image"]
    assert texts["2000000"] == ["all small and large vehicles in the image"]


def test_patch_without_instances_has_only_its_regions():
    forest = np.zeros((480, 480), dtype=np.uint8)
    forest[100:400, 50:300] = 1
    rules, texts, _ = describe([], regions=[("forest", forest)], source="loveda", name="L2_patch_0")
    assert rules.attributes == [] and len(rules.relations) == 0
    assert texts == {"1000000": ["all forest areas in the image"]}
