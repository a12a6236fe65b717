"""Uniqueness sees what the picture shows: visibly present cut-off instances (hand-built scenes).

A cut-off instance is never described, but when enough of it shows (``visible_cutoff_ratio`` of
the object or ``visible_cutoff_pixels`` pixels) a reader sees it: its colour blocks colour words
even below the colour rule's ``min_pixels``, and it counts in the groups a reader would see.
"""

from __future__ import annotations

from datagen.config import RulesConfig
from tests.datagen.scenes import box, describe

BLUE_CAR = box(1, "small_vehicle", 200, 100, 224, 112, "blue")  # 288 px, fully visible


def test_a_visible_blue_sliver_blocks_the_blue_car():
    # 8 x 12 = 96 px (< the colour rule's 100 px) showing 45 % of the object: visibly present.
    sliver = box(2, "small_vehicle", 0, 300, 8, 312, "blue", cutoff=True, ratio=0.45)
    _, texts, _ = describe([BLUE_CAR, sliver])
    assert "2" not in texts  # cut-off instances are never described
    assert "the blue small vehicle" not in texts["1"]
    assert "the blue small vehicle in the top center" in texts["1"]  # the grid still tells


def test_an_invisible_sliver_does_not_block_the_blue_car():
    # 5 x 12 = 60 px showing 20 % of the object: below both thresholds, a reader misses it.
    sliver = box(2, "small_vehicle", 0, 300, 5, 312, "blue", cutoff=True, ratio=0.2)
    _, texts, _ = describe([BLUE_CAR, sliver])
    assert "the blue small vehicle" in texts["1"]


def test_visibility_thresholds_are_configurable():
    sliver = box(2, "small_vehicle", 0, 300, 8, 312, "blue", cutoff=True, ratio=0.45)
    stricter = RulesConfig(visible_cutoff_ratio=0.5, visible_cutoff_pixels=200)
    _, texts, _ = describe([BLUE_CAR, sliver], cfg=stricter)
    assert "the blue small vehicle" in texts["1"]
    looser = RulesConfig(visible_cutoff_ratio=0.5, visible_cutoff_pixels=90)  # 96 px shows
    _, texts, _ = describe([BLUE_CAR, sliver], cfg=looser)
    assert "the blue small vehicle" not in texts["1"]


def test_a_visible_sliver_of_another_colour_does_not_block():
    sliver = box(2, "small_vehicle", 0, 300, 8, 312, "red", cutoff=True, ratio=0.45)
    _, texts, _ = describe([BLUE_CAR, sliver])
    assert "the blue small vehicle" in texts["1"]


def _pair_and_third(third):
    """Two large vehicles 10 px apart near the right border, a third (cut-off) beside them, a
    fully visible group of three in the top left, and a car below the pair."""
    return [
        box(1, "large_vehicle", 400, 200, 440, 220, "white"),
        box(2, "large_vehicle", 400, 230, 440, 250, "white"),
        third,
        box(4, "large_vehicle", 40, 40, 80, 60, "white"),
        box(5, "large_vehicle", 40, 70, 80, 90, "white"),
        box(6, "large_vehicle", 40, 100, 80, 120, "white"),
        box(7, "small_vehicle", 410, 300, 434, 312, "red"),
    ]


def _cluster_texts(rules, record, member_ids):
    """The cluster with these members and its kept expressions (group and instance ids overlap,
    so targets are looked up by kind)."""
    group = next(
        g for g in rules.groups if g.kind == "cluster" and sorted(g.member_ids) == member_ids
    )
    target = [t for t in record["targets"] if t["kind"] == "cluster" and t["id"] == str(group.id)]
    return group, [e["text"] for e in target[0]["expressions"]] if target else []


def test_a_visible_third_vehicle_blocks_the_group_of_two_and_the_other_group_of_three():
    third = box(3, "large_vehicle", 450, 200, 480, 220, "white", cutoff=True, ratio=0.6)
    rules, _, record = describe(_pair_and_third(third))
    pair, pair_texts = _cluster_texts(rules, record, ["1", "2"])
    assert pair.ambiguous_count and pair_texts == []
    assert [(b.category, b.size) for b in rules.count_blockers] == [("large_vehicle", 3)]
    _, trio_texts = _cluster_texts(rules, record, ["4", "5", "6"])
    assert "the group of 3 large vehicles" not in trio_texts  # a reader sees two groups of 3
    assert "the group of 3 large vehicles in the top left" in trio_texts
    # Relations never name the pair by a count the picture does not show.
    every_text = [e["text"] for t in record["targets"] for e in t["expressions"]]
    assert not any("a group of 2 large vehicles" in text for text in every_text)


def test_an_invisible_third_vehicle_leaves_both_groups_described():
    third = box(3, "large_vehicle", 476, 200, 480, 215, "white", cutoff=True, ratio=0.1)
    rules, _, record = describe(_pair_and_third(third))
    pair, pair_texts = _cluster_texts(rules, record, ["1", "2"])
    assert not pair.ambiguous_count and rules.count_blockers == []
    assert "the group of 2 large vehicles" in pair_texts
    every_text = [e["text"] for t in record["targets"] for e in t["expressions"]]
    assert any("a group of 2 large vehicles" in text for text in every_text)
    _, trio_texts = _cluster_texts(rules, record, ["4", "5", "6"])
    assert "the group of 3 large vehicles" in trio_texts
