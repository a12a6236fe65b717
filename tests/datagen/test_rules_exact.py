"""Rules against independent computations: plain loops for directions, gates and the relation
table, scikit-learn's DBSCAN for the clusters, pycocotools for group masks; and the exact edge
cases (a distance equal to the gate, a centre on a box edge, a size equal to the ratio)."""

from __future__ import annotations

import json
import math
from collections import Counter

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from sklearn.cluster import DBSCAN

from datagen.config import ColorConfig, RulesConfig
from datagen.pipeline import run_pipeline
from datagen.records import GROUP, INSTANCE, Patch, RelationTable
from datagen.rules import (
    DIRECTION_PHRASES,
    box_gaps,
    classify_colors,
    cluster_boxes,
    derive_rules,
    direction_sector,
    extreme_labels,
    grid_candidates,
    pairwise_relations,
    run_rules,
    size_labels,
    visibly_present,
)
from datagen.stage_state import StageError
from datagen.storage import read_json, read_rgb
from tests.datagen.scenes import box, describe

CFG = RulesConfig()


def loop_sector(theta: float, borderline: float) -> tuple[int, int]:
    """Sector k holds [45k - 22.5, 45k + 22.5) modulo 360; the neighbour across an edge that
    lies closer than ``borderline`` degrees."""
    for k in range(8):
        into = (theta - (45 * k - 22.5)) % 360.0
        if into < 45.0:
            if into < borderline:
                return k, (k + 7) % 8
            if 45.0 - into < borderline:
                return k, (k + 1) % 8
            return k, -1
    raise AssertionError(theta)


def loop_relation(src_box, src_centre, ref_box, ref_centre, cfg: RulesConfig) -> dict:
    (sx, sy), (rx, ry) = src_centre, ref_centre
    theta = math.degrees(math.atan2(sy - ry, rx - sx))
    sector, adjacent = loop_sector(theta, cfg.relation_borderline_degrees)
    half_sides = lambda b: (b[2] - b[0] + b[3] - b[1]) / 4  # noqa: E731
    gate = cfg.relation_base_distance + half_sides(src_box) + half_sides(ref_box)
    distance = math.hypot(rx - sx, ry - sy)

    def inside(x, y, b):
        return b[0] <= x < b[2] and b[1] <= y < b[3]

    return {
        "sector": sector,
        "adjacent": adjacent,
        "distance": distance,
        "near": distance <= gate,
        "possible": distance <= gate * cfg.relation_possible_slack,
        "contained": inside(sx, sy, ref_box) or inside(rx, ry, src_box),
    }


@pytest.mark.parametrize(
    "theta, sector, adjacent",
    [
        (-7.5, 0, -1),  # exactly 15 degrees inside the edge: not borderline
        (7.5, 0, -1),
        (8.0, 0, 1),
        (22.0, 0, 1),
        (-20.0, 0, 7),
        (-23.0, 7, 0),
        (-30.0, 7, 0),
        (90.0, 2, -1),
    ],
)
def test_direction_sector_edges(theta, sector, adjacent):
    assert loop_sector(theta, 15.0) == (sector, adjacent)
    got_sector, got_adjacent = direction_sector(np.array([theta]), 15.0)
    assert (got_sector.tolist(), got_adjacent.tolist()) == ([sector], [adjacent])


def test_an_angle_a_rounding_error_below_an_edge_still_names_a_direction():
    # (theta + 22.5) mod 360 rounds to 360.0 here: still one of the eight phrases.
    sector, adjacent = direction_sector(np.array([np.nextafter(-22.5, -np.inf)]), 15.0)
    assert {int(sector[0]), int(adjacent[0])} == {0, 7}
    assert DIRECTION_PHRASES[sector[0]] and DIRECTION_PHRASES[adjacent[0]]


def test_pairwise_relations_equal_a_plain_loop():
    rng = np.random.default_rng(5)
    corners = rng.integers(0, 440, (14, 2))
    boxes = np.concatenate([corners, corners + rng.integers(4, 60, (14, 2))], axis=1).astype(float)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    # Edge cases: a distance equal to the gate (170) and to the widened gate (212.5); a centre on
    # each edge of a box; a big box holding a small box's centre, not the other way round.
    extra = [  # (source box, source centre, reference box, reference centre)
        ([0, 0, 20, 20], [10, 10], [170, 0, 190, 20], [180, 10]),
        ([0, 0, 20, 20], [10, 10], [212.5, 0, 232.5, 20], [222.5, 10]),
        ([110, 115, 130, 125], [120, 120], [120, 100, 200, 140], [160, 120]),  # left edge
        ([110, 110, 130, 130], [120, 120], [100, 120, 140, 200], [120, 160]),  # top edge
        ([110, 115, 130, 125], [120, 120], [40, 100, 120, 140], [80, 120]),  # right edge
        ([110, 110, 130, 130], [120, 120], [100, 40, 140, 120], [120, 80]),  # bottom edge
        ([300, 300, 400, 400], [350, 350], [340, 340, 350, 350], [345, 345]),
    ]
    extra_src, extra_src_c, extra_ref, extra_ref_c = (list(column) for column in zip(*extra))
    src = np.concatenate([boxes, extra_src])
    src_c = np.concatenate([centres, extra_src_c])
    ref = np.concatenate([boxes[:9], extra_ref])
    ref_c = np.concatenate([centres[:9], extra_ref_c])
    rel = pairwise_relations(src, src_c, ref, ref_c, CFG)
    for i in range(len(src)):
        for j in range(len(ref)):
            expected = loop_relation(src[i], src_c[i], ref[j], ref_c[j], CFG)
            got = {key: rel[key][i, j].item() for key in expected}
            assert got == pytest.approx(expected), (i, j)
    n = len(boxes)
    edge = [bool(rel[key][n + k, 9 + k]) for k in range(len(extra))
            for key in ("near", "possible", "contained")]  # fmt: skip
    assert edge == [
        True, True, False,  # at the gate
        False, True, False,  # at the widened gate
        True, True, True,  # on the left edge: inside
        True, True, True,  # on the top edge: inside
        True, True, False,  # on the right edge: outside
        True, True, False,  # on the bottom edge: outside
        True, True, True,  # the small box's centre lies in the big box, not the other way round
    ]  # fmt: skip


def loop_relation_rows(rules) -> set[tuple]:
    """Every relation row of a patch, by loops: instance -> instance, instance -> cluster (not
    its own) and cluster -> cluster; definite when near, well inside a sector and the reference
    is fully visible (instances) or shows the count it names (clusters)."""
    instances = rules.patch.instances
    clusters = [(k, g) for k, g in enumerate(rules.groups) if g.kind == "cluster"]
    objects = [
        (INSTANCE, k, np.array(i.bbox, float), ((i.bbox[0] + i.bbox[2]) / 2,
         (i.bbox[1] + i.bbox[3]) / 2), not i.is_cutoff, i.id, set())
        for k, i in enumerate(instances)
    ]  # fmt: skip
    groups = [
        (GROUP, k, np.array(g.bbox, float), g.centroid, not g.ambiguous_count, None,
         set(g.member_ids))
        for k, g in clusters
    ]  # fmt: skip
    pairs = [(s, r) for s in objects for r in objects + groups if r[1] != s[1] or r[0] != s[0]]
    pairs += [(s, r) for s in groups for r in groups if r[1] != s[1]]
    rows = set()
    for source, reference in pairs:
        s_kind, s_index, s_box, s_centre, _, s_id, _ = source
        r_kind, r_index, r_box, r_centre, r_definite, _, r_members = reference
        if s_id in r_members:
            continue
        rel = loop_relation(s_box, s_centre, r_box, r_centre, CFG)
        if not rel["possible"] or rel["contained"]:
            continue
        definite = rel["near"] and rel["adjacent"] < 0 and r_definite
        rows.add((s_kind, s_index, r_kind, r_index, rel["sector"], rel["adjacent"],
                  round(rel["distance"], 2), definite))  # fmt: skip
    return rows


def table_rows(table) -> set[tuple]:
    return {
        (int(table.source_kind[m]), int(table.source[m]), int(table.reference_kind[m]),
         int(table.reference[m]), int(table.direction[m]), int(table.adjacent[m]),
         round(float(table.distance[m]), 2), bool(table.definite[m]))
        for m in range(len(table))
    }  # fmt: skip


def test_relation_table_of_a_scene_equals_a_plain_loop():
    objects = [
        box(1, "ship", 40, 40, 60, 60),
        box(2, "ship", 210, 40, 230, 60),  # 170 px right of ship 1: exactly the gate
        box(3, "harbor", 40, 225, 60, 245),  # 185 px below ship 1: possible only
        box(4, "harbor", 300, 300, 340, 330),
        box(5, "ship", 60, 300, 80, 320),
        box(6, "ship", 420, 200, 440, 230, cutoff=True, ratio=0.3),
        box(7, "harbor", 262, 300, 276, 330),
        box(8, "storage_tank", 100, 100, 180, 180),
        box(9, "storage_tank", 130, 130, 140, 140),  # centre inside tank 8
    ]
    rules, _, _ = describe(objects)
    got = table_rows(rules.relations)
    assert got == loop_relation_rows(rules)
    assert len(rules.relations) == len(got)
    # The cases the scene was built for.
    assert (INSTANCE, 1, INSTANCE, 0, 4, -1, 170.0, True) in got  # right of ship 1, at the gate
    assert (INSTANCE, 2, INSTANCE, 0, 2, -1, 185.0, False) in got  # possible, not near
    assert not any(row[3] == 5 and row[7] for row in got)  # a cut-off reference: never definite
    assert not any({row[1], row[3]} == {7, 8} for row in got)  # a centre inside the other box
    # The rules file stores the documented column types (ints stay ints in the JSON).
    empty = RelationTable.empty()
    for column in ("source_kind", "source", "reference_kind", "reference", "direction",
                   "adjacent", "distance", "definite"):  # fmt: skip
        assert getattr(rules.relations, column).dtype == getattr(empty, column).dtype, column


def test_size_labels_edges():
    cats = ["ship"] * 3
    none_cut = np.zeros(3, bool)
    # 1000 vs 900: no "largest" (needs 1.5x); 300 * 1.5 < 900: "smallest".
    areas = np.array([1000.0, 900.0, 300.0])
    assert size_labels(areas, np.ones(3), cats, none_cut, 1.5) == [[], [], ["smallest"]]
    # Exactly 1.5x is not enough either way.
    areas = np.array([1350.0, 900.0, 600.0])
    assert size_labels(areas, np.ones(3), cats, none_cut, 1.5) == [[], [], []]
    areas = np.array([1351.0, 900.0, 599.0])
    assert size_labels(areas, np.ones(3), cats, none_cut, 1.5) == [["largest"], [], ["smallest"]]
    # A cut-off leader takes no label; a cut-off runner-up does not stop the leader.
    cutoff = np.array([True, False, False])
    areas = np.array([3000.0, 1000.0, 100.0])
    assert size_labels(areas, np.ones(3), cats, cutoff, 1.5) == [[], [], ["smallest"]]
    cutoff = np.array([False, True, False])
    assert size_labels(areas, np.ones(3), cats, cutoff, 1.5) == [["largest"], [], ["smallest"]]
    cutoff = np.array([False, False, True])
    assert size_labels(areas, np.ones(3), cats, cutoff, 1.5) == [["largest"], [], []]
    # A lone harbor sorts before the ships and does not end the loop.
    labels = size_labels(
        np.array([50.0, 3000.0, 1000.0, 100.0]), np.ones(4), ["harbor", *cats],
        np.zeros(4, bool), 1.5,
    )  # fmt: skip
    assert labels == [[], ["largest"], [], ["smallest"]]


def test_box_gaps_are_euclidean_between_box_edges():
    boxes = np.array([[0, 0, 10, 10], [13, 14, 20, 20], [5, 5, 30, 8], [10, 0, 12, 10]], float)
    gaps = box_gaps(boxes)
    assert gaps[0, 1] == 5.0 and gaps[1, 0] == 5.0  # 3-4-5 between the corners
    assert gaps[0, 2] == 0.0 and gaps[0, 3] == 0.0  # overlapping / touching
    assert np.diag(gaps).tolist() == [0.0] * 4


def _partition(labels) -> set[frozenset[int]]:
    return {frozenset(np.flatnonzero(labels == k).tolist()) for k in set(labels) - {-1}}


def test_clusters_equal_sklearn_dbscan_on_box_gaps():
    rng = np.random.default_rng(11)
    compared = 0
    for _ in range(60):
        count = int(rng.integers(2, 14))
        corners = rng.integers(0, 300, (count, 2))
        boxes = np.concatenate([corners, corners + rng.integers(5, 30, (count, 2))], 1)
        eps, min_samples = float(rng.choice([20.0, 40.0])), int(rng.choice([2, 3]))
        gaps = box_gaps(boxes.astype(float))
        reference = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit(gaps)
        core = (gaps <= eps).sum(1) >= min_samples
        # sklearn gives a border point to the first cluster that reaches it, ours to the
        # nearest core point: compare where a border point sees only one cluster.
        if any(
            len(set(reference.labels_[core & (gaps[p] <= eps)].tolist())) > 1
            for p in np.flatnonzero(~core)
        ):
            continue
        expected = {group for group in _partition(reference.labels_) if len(group) <= 4}
        labels = cluster_boxes(boxes, eps, min_samples, 4)
        assert _partition(labels) == expected
        # Clusters are numbered in the order of their first member.
        firsts = [int(np.flatnonzero(labels == k)[0]) for k in range(labels.max() + 1)]
        assert firsts == sorted(firsts)
        compared += 1
    assert compared >= 40


def test_cluster_edge_cases():
    # A gap of exactly eps links; two boxes are enough for min_samples = 2.
    pair = np.array([[0, 0, 10, 10], [50, 0, 60, 10]])
    assert cluster_boxes(pair, 40, 2, 8).tolist() == [0, 0]
    # One core point (it sees both others) holds two border points that do not see each other.
    star = np.array([[100, 100, 110, 110], [60, 100, 70, 110], [140, 100, 150, 110]])
    assert cluster_boxes(star, 35, 3, 8).tolist() == [0, 0, 0]
    # A border point (it sees one core point of each cluster) joins the nearest one's cluster,
    # where sklearn would give it to the cluster found first.
    rows = [[x, 0, x + 10, 10] for x in (0, 12, 24, 36, 100, 112, 124, 136, 70)]
    assert cluster_boxes(np.array(rows), 30, 4, 8).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    # Three clusters, one of them exactly max_size (kept) and one larger (dissolved).
    rows = [[x, y, x + 10, y + 10] for y in (0, 100, 200) for x in (0, 20, 40)]
    rows += [[60, 200, 70, 210]]
    assert cluster_boxes(np.array(rows), 15, 2, 3).tolist() == [0, 0, 0, 1, 1, 1] + [-1] * 4


def test_groups_hold_the_union_mask_and_a_rounded_centroid():
    rules, _, _ = describe(
        [
            box(1, "small_vehicle", 20, 20, 44, 32),
            box(2, "small_vehicle", 50, 21, 75, 33),
            box(3, "small_vehicle", 81, 20, 106, 32),
            box(4, "storage_tank", 300, 300, 320, 320),
            box(5, "storage_tank", 330, 300, 350, 320),
            box(6, "large_vehicle", 300, 40, 340, 56),
            box(7, "large_vehicle", 350, 40, 390, 56),
        ]
    )
    clusters = {g.category: g for g in rules.groups if g.kind == "cluster"}
    # Cluster ids follow the class ids (storage tank 1, large vehicle 2, small vehicle 3).
    assert [(g.category, g.id) for g in rules.groups if g.kind == "cluster"] == [
        ("storage_tank", 1), ("large_vehicle", 2), ("small_vehicle", 3),
    ]  # fmt: skip
    cars = clusters["small_vehicle"]
    union = np.zeros((480, 480), np.uint8)
    union[20:32, 20:44] = union[21:33, 50:75] = union[20:32, 81:106] = 1
    decoded = mask_utils.decode({**cars.rle, "counts": cars.rle["counts"].encode()})
    assert np.array_equal(decoded, union) and cars.area == int(union.sum())
    # Centres (32, 26), (62.5, 27), (93.5, 26): the mean rounded to 2 decimals.
    assert cars.centroid == (62.67, 26.33)
    # Two members: the union of both masks too.
    tanks = clusters["storage_tank"]
    assert tanks.centroid == (325.0, 310.0) and tanks.area == 800
    assert tanks.bbox == (300, 300, 350, 320)


def test_visibly_present_cutoff_instances():
    areas = np.array([50, 50, 150, 50, 100, 99, 150])
    ratios = np.array([1.0, 0.4, 0.1, 0.39, 0.1, 0.1, 0.1])
    cutoff = np.array([False, True, True, True, True, True, False])
    got = visibly_present(areas, ratios, cutoff, CFG).tolist()
    assert got == [True, True, True, False, True, False, True]


def test_count_blockers_and_ambiguous_counts_of_a_scene():
    rules, _, _ = describe(
        [
            # Two tanks and a visible cut-off third beside them: "the group of 2" is ambiguous.
            box(1, "storage_tank", 100, 300, 120, 320),
            box(2, "storage_tank", 125, 300, 145, 320),
            box(3, "storage_tank", 150, 300, 170, 320, cutoff=True, ratio=0.5),
            # The same for large vehicles, seen from a grid line (x = 170 is 10 px from 160).
            box(4, "large_vehicle", 100, 100, 140, 116),
            box(5, "large_vehicle", 150, 100, 190, 116),
            box(6, "large_vehicle", 200, 100, 240, 116, cutoff=True, ratio=0.5),
            # Small vehicles right of the large ones: the visible cut-off one stands alone.
            box(7, "small_vehicle", 260, 100, 284, 112, "red"),
            box(8, "small_vehicle", 290, 100, 314, 112),
            box(10, "small_vehicle", 360, 200, 368, 208, "red", cutoff=True, ratio=0.1),
            box(11, "small_vehicle", 470, 0, 480, 30, cutoff=True, ratio=0.5),
            box(9, "building", 400, 400, 440, 440, "red"),
            box(12, "ship", 0, 240, 6, 250, cutoff=True, ratio=0.2),  # a class with no cluster
        ],
        regions=[("water", np.pad(np.ones((40, 60), np.uint8), ((440, 0), (0, 420))))],
        source="loveda", name="L3_patch_0",
    )  # fmt: skip
    assert [(b.category, b.size, b.cells) for b in rules.count_blockers] == [
        ("storage_tank", 3, [3, 4, 6, 7]),  # centre (135, 310): near both grid lines
        ("large_vehicle", 3, [0, 1]),  # centre (170, 108)
    ]
    clusters = [g for g in rules.groups if g.kind == "cluster"]
    assert [(g.id, g.category, g.member_ids, g.ambiguous_count) for g in clusters] == [
        (1, "storage_tank", ["1", "2"], True),
        (2, "large_vehicle", ["4", "5"], True),
        (3, "small_vehicle", ["7", "8"], False),
    ]
    groups = {g.id: g for g in rules.groups}
    # Class groups and regions in class-id order (not by name), then the vehicle pair.
    assert [(g.id, g.kind, g.category) for g in rules.groups if g.id >= 1_000_000] == [
        (1_000_000, "class", "storage_tank"),
        (1_000_001, "class", "large_vehicle"),
        (1_000_002, "class", "small_vehicle"),
        (1_000_003, "region", "water"),
        (2_000_000, "vehicle_pair", "vehicle_pair"),
    ]
    assert groups[1_000_003].centroid == (30.0, 460.0)  # the centre of the region's box
    assert groups[2_000_000].member_ids == ["4", "5", "6", "7", "8", "10", "11"]
    # Instance attributes: the box centre, and colour words (a building is only light or dark).
    attributes = rules.attributes
    assert attributes[3].centroid == (120.0, 108.0)
    # Relations to and between clusters: never to an own cluster, definite only to a cluster
    # that shows the count it names.
    rows = table_rows(rules.relations)
    assert rows == loop_relation_rows(rules) and len(rules.relations) == len(rows)
    assert {row[0] for row in rows} == {INSTANCE, GROUP} and any(row[7] for row in rows)
    group_rows = [row for row in rows if row[2] == GROUP]
    assert any(row[0] == GROUP for row in group_rows) and any(
        row[0] == INSTANCE for row in group_rows
    )
    assert any(row[3] == 2 and row[7] for row in group_rows)  # the small vehicles: countable
    # The small vehicles' group is near the large vehicles' one, whose count is ambiguous.
    assert (GROUP, 2, GROUP, 1, 4, -1, 142.01, False) in rows
    assert (attributes[6].color, attributes[10].color) == ("red", None)
    assert attributes[10].colors == ["light", "dark"]
    # Too small to name, and not visibly present: not even its red is possible.
    assert (attributes[8].color, attributes[8].colors) == (None, ["light", "dark"])
    # Only clusters can have an ambiguous count.
    assert not any(g.ambiguous_count for g in rules.groups if g.kind != "cluster")


LIGHT, DARK, RED, BLUE = (0, 0, 235), (0, 0, 25), (0, 220, 220), (110, 220, 220)


def _objects(*mixes):
    """HSV pixels and owners of objects given as [(hsv, count), ...] each."""
    pixels, owner = [], []
    for index, mix in enumerate(mixes):
        for hsv, count in mix:
            pixels += [hsv] * count
            owner += [index] * count
    return np.array(pixels, dtype=np.uint8), np.array(owner, dtype=np.int64)


def test_colour_rules_at_their_thresholds():
    mixes = [
        [(LIGHT, 40), (RED, 30), (DARK, 30)],  # light + chromatic = 70 %, light the largest
        [(LIGHT, 50), (RED, 50)],  # light ties with the chromatic share
        [(DARK, 50), (RED, 30), (LIGHT, 20)],
        [(DARK, 40), (RED, 30), (LIGHT, 30)],  # dark + chromatic = 70 %
        [(DARK, 40), (RED, 40), (LIGHT, 20)],  # dark ties with the chromatic share
        [(RED, 70), (LIGHT, 30)],  # chromatic = 70 %
        [(RED, 50), (BLUE, 20), (LIGHT, 30)],  # red is 71 % of the chromatic pixels
        [(RED, 45), (BLUE, 30), (LIGHT, 25)],  # red is exactly 60 % of them
        [(LIGHT, 75), (RED, 25)],  # red holds exactly the possible share
        [(LIGHT, 100)],  # a building: light, and nothing else possible
        [(RED, 40)],  # small and visible: every colour it shows is possible
        [(RED, 40)],  # a small building: light or dark only
        [(RED, 10), (LIGHT, 30)],
        [((0, 220, 51), 100)],  # V = 20 % exactly: not too dark for a hue
        [((0, 0, 137), 100)],  # V = 53.7 %: dark
        [((0, 0, 138), 100)],  # V = 54.1 %: light
        [((0, 20, 235), 100)],  # S = 7.8 %: achromatic
    ]
    hsv, owner = _objects(*mixes)
    building = np.zeros(len(mixes), bool)
    building[[9, 11]] = True
    got = classify_colors(hsv, owner, len(mixes), ColorConfig(), building)
    assert got == [
        ("light", ["light", "dark", "red"]),
        ("light", ["light", "red"]),
        ("dark", ["dark", "red"]),
        ("dark", ["light", "dark", "red"]),
        ("dark", ["dark", "red"]),
        ("red", ["light", "red"]),
        ("red", ["light", "red"]),
        ("red", ["light", "red", "blue"]),
        ("light", ["light", "red"]),
        ("light", ["light"]),
        (None, ["light", "dark", "red"]),
        (None, ["light", "dark"]),
        (None, ["light", "dark", "red"]),
        ("red", ["red"]),
        ("dark", ["dark"]),
        ("light", ["light"]),
        ("light", ["light"]),
    ]


def test_extremes_at_the_margin_and_with_two_members():
    # Two members are enough; x and y orders differ; a lead of exactly 24 px (5 %) is none.
    centres = np.array([[100, 300], [300, 100], [50, 50], [400, 74]], dtype=float)
    cats = ["harbor", "harbor", "bridge", "bridge"]
    labels = extreme_labels(centres, cats, np.zeros(4, bool), 480, 480, 0.05)
    assert labels == [
        ["bottommost", "leftmost"], ["topmost", "rightmost"], ["leftmost"], ["rightmost"],
    ]  # fmt: skip
    # A lone category sorting first does not end the loop.
    labels = extreme_labels(centres[:3], ["harbor", "harbor", "bridge"], np.zeros(3, bool),
                            480, 480, 0.05)  # fmt: skip
    assert labels == [["bottommost", "leftmost"], ["topmost", "rightmost"], []]


def test_a_point_on_the_patch_edge_is_in_the_last_cell():
    assert grid_candidates(480, 80, 480, 480, 0.1) == (2, [2])
    assert grid_candidates(80, 480, 480, 480, 0.1) == (6, [6])


def test_the_stage_writes_the_rules_of_every_patch_and_redoes_what_changed(make_config, capsys):
    # LoveDA tiles only (about a second): every patch's file at stages/rules/<split>/<name>.json
    # holds derive_rules of its patch, and the report sums the per-patch counts.
    cfg = make_config(synthetic={"isaid_images": {}}, isaid={"enabled": False})
    report = run_pipeline(cfg, until="rules")["rules"]
    work = cfg.work_path
    expected, totals = {}, Counter()
    for split in cfg.loveda.splits:
        source = work / "stages" / "loveda" / split
        for name in read_json(source / "index.json"):
            patch = Patch.from_dict(read_json(source / "annotations" / f"{name}.json"))
            rules = derive_rules(patch, read_rgb(source / "images" / f"{name}.png"), cfg.rules)
            expected[work / "stages" / "rules" / split / f"{name}.json"] = rules.to_dict()
            totals.update(patches=1, groups=len(rules.groups), relations=len(rules.relations),
                          definite_relations=int(rules.relations.definite.sum()))  # fmt: skip
    written = sorted((work / "stages" / "rules").rglob("*.json"))
    assert written == sorted(expected) and len(written) > 1
    for path in written:
        assert read_json(path) == json.loads(json.dumps(expected[path]))
    assert report["counts"] == dict(totals) and totals["relations"] > 0
    # Redone with nothing changed, the files are left as they are (same inode).
    inodes = {path: path.stat().st_ino for path in written}
    run_rules(cfg, overwrite=True)
    assert {path: path.stat().st_ino for path in written} == inodes
    # A lost file is written again; the others are not touched.
    lost = written[0]
    lost.unlink()
    run_rules(cfg)
    assert read_json(lost) == json.loads(json.dumps(expected[lost]))
    assert all(path.stat().st_ino == inodes[path] for path in written[1:])
    # A changed pixel outside every mask redoes the patch, but its file is kept as it is.
    kept = written[2]
    kept_source = work / "stages" / "loveda" / kept.parent.name
    image_path = kept_source / "images" / f"{kept.stem}.png"
    patch = Patch.from_dict(read_json(kept_source / "annotations" / f"{kept.stem}.json"))
    covered = np.zeros((patch.height, patch.width), bool)
    for instance in patch.instances:
        rle = {**instance.rle, "counts": instance.rle["counts"].encode()}
        covered |= mask_utils.decode(rle).astype(bool)
    y, x = np.argwhere(~covered)[0]
    image = read_rgb(image_path)
    image[y, x] = 255 - image[y, x]
    cv2.imwrite(str(image_path), image[:, :, ::-1])
    run_rules(cfg)
    assert kept.stat().st_ino == inodes[kept]
    # A patch gone from the source index takes its rules file with it.
    index_path = work / "stages" / "loveda" / written[-1].parent.name / "index.json"
    names = read_json(index_path)
    index_path.write_text(json.dumps([n for n in names if n != written[-1].stem]))
    run_rules(cfg)
    assert not written[-1].exists()
    index_path.write_text(json.dumps(names))
    run_rules(cfg)
    assert read_json(written[-1]) == json.loads(json.dumps(expected[written[-1]]))
    # A changed annotation or image redoes exactly that patch.
    with_instances = [p for p in written if read_json(p)["attributes"]]
    edited, painted = with_instances[0], with_instances[1]
    split, name = edited.parent.name, edited.stem
    source = work / "stages" / "loveda" / split / "annotations" / f"{name}.json"
    annotation = read_json(source)
    source.write_text(json.dumps({**annotation, "instances": []}))
    split, name = painted.parent.name, painted.stem
    image_path = work / "stages" / "loveda" / split / "images" / f"{name}.png"
    black = np.zeros_like(read_rgb(image_path))
    cv2.imwrite(str(image_path), black)
    run_rules(cfg)
    assert read_json(edited)["attributes"] == []
    patch = Patch.from_dict(read_json(image_path.parent.parent / "annotations" / f"{name}.json"))
    repainted = json.loads(json.dumps(derive_rules(patch, black, cfg.rules).to_dict()))
    assert read_json(painted) == repainted != json.loads(json.dumps(expected[painted]))
    # Another LoveDA configuration upstream: the rules are refused until overwritten, and an
    # overwrite starts from an empty rules folder.
    changed = make_config(
        synthetic={"isaid_images": {}}, isaid={"enabled": False}, loveda={"num_images": 1}
    )
    run_pipeline(changed, until="loveda", overwrite=True)
    with pytest.raises(StageError, match="different configuration"):
        run_rules(changed)
    stray = work / "stages" / "rules" / "train" / "stray.json"
    stray.write_text("{}")
    changed.progress = True
    capsys.readouterr()
    run_rules(changed, overwrite=True)
    assert not stray.exists()
    bar = capsys.readouterr().err
    assert "\rrules: 100%" in bar and "patch/s]" in bar
