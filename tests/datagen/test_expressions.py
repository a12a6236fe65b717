"""Expression texts and records of hand-built rules (no image analysis): every template slot,
relation phrases and articles, clusters and class-wide groups, the uniqueness decision, the
per-target cap and the record that ``write_expressions`` returns.

Expected strings follow the template table of the reference (``the K S E C G R``, "the group of
N C G R", "all <phrase> in the image") with this project's natural nouns and plurals.
"""

from __future__ import annotations

import numpy as np
import pytest

from datagen.expressions import (
    CLUSTER_TEMPLATES,
    INSTANCE_TEMPLATES,
    describe_patch,
    filter_candidates,
    patch_candidates,
    write_expressions,
)
from datagen.records import (
    GROUP,
    INSTANCE,
    CountBlocker,
    Group,
    Instance,
    InstanceAttributes,
    Patch,
    PatchRules,
    RelationTable,
)
from datagen.rules import COLORS, EXTREMES, SIZES
from datagen.storage import stable_seed
from datagen.uniqueness import slot_bits

NAME = "P0007_x00384_y00000"


def _rle(tag: int) -> dict:
    return {"size": [480, 480], "counts": f"rle-{tag}"}


def _instance(index, id_, category, cutoff=False):
    x0, y0 = 10 * index, 20 * index
    return Instance(
        id=id_, category=category, bbox=(x0, y0, x0 + 12 + index, y0 + 8), area=90 + index,
        rle=_rle(index), visible_ratio=0.3 if cutoff else 1.0 - index / 100, is_cutoff=cutoff,
    )  # fmt: skip


def _attrs(cell, cells, extremes=(), sizes=(), color=None, colors=("light", "dark")):
    return InstanceAttributes(
        centroid=(100.0, 100.0), cell=cell, cells=list(cells), extremes=list(extremes),
        sizes=list(sizes), color=color, colors=list(colors),
    )  # fmt: skip


def _group(id_, kind, category, members, cell=-1, cells=(), ambiguous=False):
    return Group(
        id=id_, kind=kind, category=category, member_ids=list(members), rle=_rle(id_),
        bbox=(id_ % 7, 2, 40 + id_ % 7, 50), area=1000 + id_ % 1000,
        centroid=(20.5 + id_ % 7, 26.0), cell=cell, cells=list(cells), ambiguous_count=ambiguous,
    )  # fmt: skip


# (source kind, source, reference kind, reference, direction, adjacent, distance, definite)
RELATIONS = [
    (INSTANCE, 0, INSTANCE, 2, 0, -1, 120.0, True),  # s1 to the left of the harbor
    (INSTANCE, 1, INSTANCE, 2, 1, 2, 150.0, False),  # s2 bottom left / below: blocks only
    (INSTANCE, 0, GROUP, 0, 4, -1, 90.0, True),  # s1 to the right of the 3 small vehicles
    (INSTANCE, 2, INSTANCE, 8, 6, -1, 60.0, True),  # the harbor above the agricultural field
    (INSTANCE, 9, INSTANCE, 2, 2, -1, 140.0, True),  # s3 below the harbor
    (GROUP, 0, GROUP, 1, 2, -1, 200.123, True),
    (GROUP, 1, GROUP, 0, 6, -1, 200.123, True),
    (GROUP, 0, GROUP, 1, 3, -1, 210.0, False),  # not definite: never listed
    (GROUP, 2, GROUP, 0, 0, -1, 50.0, True),  # from the ambiguous cluster: never written
    (GROUP, 1, GROUP, 2, 4, -1, 70.0, False),  # to the ambiguous cluster: blocks only
]


def hand_rules(relations=RELATIONS, blockers=None) -> PatchRules:
    """Ships s1-s3, a harbor, three small and two large vehicles, an agricultural field and a
    cut-off plane; a small-vehicle and a large-vehicle cluster, an ambiguous helicopter cluster,
    a class group, the vehicle pair and a water region."""
    specs = [
        ("s1", "ship", _attrs(0, [0, 1], ["topmost"], ["largest"], "red", ["red", "orange"])),
        ("s2", "ship", _attrs(-1, [4, 5])),
        ("h1", "harbor", _attrs(8, [8], ["bottommost", "rightmost"], [], "light", ["light"])),
        ("v1", "small_vehicle", _attrs(2, [2])),
        ("v2", "small_vehicle", _attrs(2, [2])),
        ("v3", "small_vehicle", _attrs(2, [2])),
        ("l1", "large_vehicle", _attrs(-1, [6, 7])),
        ("l2", "large_vehicle", _attrs(-1, [6, 7])),
        ("f1", "agriculture", _attrs(-1, [3, 4])),
        ("s3", "ship", _attrs(6, [6], color="dark", colors=["dark"])),
        ("p1", "plane", _attrs(3, [3], ["leftmost"], ["smallest"], "blue", ["blue"])),
    ]
    instances = [
        _instance(k, id_, category, cutoff=id_ == "p1")
        for k, (id_, category, _) in enumerate(specs)
    ]
    patch = Patch(
        name=NAME, split="val", source="isaid", source_image="P0007.png",
        window=(384, 0, 864, 480), scale=1.0, width=480, height=480, instances=instances,
    )  # fmt: skip
    groups = [
        _group(5, "cluster", "small_vehicle", ["v1", "v2", "v3"], cell=2, cells=[2]),
        _group(6, "cluster", "large_vehicle", ["l1", "l2"], cells=[6, 7]),
        _group(7, "cluster", "helicopter", ["x1", "x2"], cell=4, cells=[4], ambiguous=True),
        _group(1_000_000, "class", "small_vehicle", ["v1", "v2", "v3"], cell=2, cells=[2]),
        _group(2_000_000, "vehicle_pair", "vehicle_pair", ["v1", "l1"], cell=4, cells=[4]),
        _group(1_000_001, "region", "water", [], cell=4, cells=[4]),
    ]
    rows = list(zip(*relations)) if relations else [[]] * 8
    table = RelationTable.from_dict(
        dict(
            zip(
                (
                    "source_kind", "source", "reference_kind", "reference",
                    "direction", "adjacent", "distance", "definite",
                ),
                rows,
            )
        )
    )  # fmt: skip
    if blockers is None:
        blockers = [CountBlocker("small_vehicle", 3, [5])]
    return PatchRules(patch, [a for *_, a in specs], groups, table, blockers)


S1_PLAIN = [
    "the ship",
    "the ship in the top left",
    "the topmost ship",
    "the topmost ship in the top left",
    "the largest ship",
    "the largest ship in the top left",
    "the largest topmost ship in the top left",
    "the red ship",
    "the red ship in the top left",
    "the red topmost ship",
    "the red topmost ship in the top left",
    "the red largest ship",
    "the red largest ship in the top left",
    "the red largest topmost ship in the top left",
]
S1_RELATIONAL_PREFIXES = [
    "the ship",
    "the ship in the top left",
    "the topmost ship in the top left",
    "the largest ship in the top left",
    "the largest topmost ship in the top left",
    "the red ship",
    "the red ship in the top left",
    "the red topmost ship in the top left",
    "the red largest ship in the top left",
    "the red largest topmost ship in the top left",
]
S1_RELATIONS = [
    "that is to the left of a harbor",
    "that is to the right of a group of 3 small vehicles",
]
H1_EXPRESSIONS = [
    "the harbor",
    "the harbor in the bottom right",
    "the bottommost harbor",
    "the rightmost harbor",
    "the bottommost harbor in the bottom right",
    "the rightmost harbor in the bottom right",
    "the light harbor",
    "the light harbor in the bottom right",
    "the light bottommost harbor",
    "the light rightmost harbor",
    "the light bottommost harbor in the bottom right",
    "the light rightmost harbor in the bottom right",
] + [
    f"{prefix} that is above an agricultural field"
    for prefix in [
        "the harbor",
        "the harbor in the bottom right",
        "the bottommost harbor in the bottom right",
        "the rightmost harbor in the bottom right",
        "the light harbor",
        "the light harbor in the bottom right",
        "the light bottommost harbor in the bottom right",
        "the light rightmost harbor in the bottom right",
    ]
]
S3_EXPRESSIONS = [
    "the ship",
    "the ship in the bottom left",
    "the dark ship",
    "the dark ship in the bottom left",
    "the ship that is below a harbor",
    "the ship in the bottom left that is below a harbor",
    "the dark ship that is below a harbor",
    "the dark ship in the bottom left that is below a harbor",
]
SMALL_GROUP = "the group of 3 small vehicles"


def every_candidate(rules: PatchRules) -> dict:
    """The record with every candidate written (nothing filtered, no cap)."""
    cands = patch_candidates(rules)
    keep_all = (np.ones(len(cands.instances), bool), np.ones(len(cands.clusters), bool))
    return write_expressions(rules, cands, keep_all, None, 0)


def texts_by_target(record: dict) -> dict[str, list[str]]:
    return {t["id"]: [e["text"] for e in t["expressions"]] for t in record["targets"]}


def test_every_template_slot_in_the_order_the_K_S_E_C_G_R():
    texts = texts_by_target(every_candidate(hand_rules()))
    s1_relational = [f"{p} {r}" for p in S1_RELATIONAL_PREFIXES for r in S1_RELATIONS]
    assert texts["s1"] == S1_PLAIN + s1_relational
    # Two extremes and no size: one candidate per extreme, no size template.
    assert texts["h1"] == H1_EXPRESSIONS
    assert texts["s3"] == S3_EXPRESSIONS
    # No colour, no cell, no definite relation (its only relation row merely blocks).
    assert texts["s2"] == ["the ship"] and texts["l1"] == ["the large vehicle"]
    assert texts["v2"] == ["the small vehicle", "the small vehicle in the top right"]
    assert texts["f1"] == ["the agricultural field"]
    assert "p1" not in texts  # cut off: a target that keeps nothing
    # An empty slot is left out of the template, not written empty.
    templates = {
        t["id"]: [e["template"] for e in t["expressions"]]
        for t in every_candidate(hand_rules())["targets"]
    }
    assert templates["s2"] == ["C"] == templates["f1"]
    assert templates["v2"] == ["C", "C G"]
    assert templates["s3"] == ["C", "C G", "K C", "K C G", "C R", "C G R", "K C R", "K C G R"]
    assert templates["6"] == ["N C", "N C R"]


def test_cluster_and_class_wide_group_texts():
    record = every_candidate(hand_rules())
    groups = {t["id"]: t for t in record["targets"] if t["kind"] != "instance"}
    assert list(groups) == ["5", "6", "1000000", "2000000", "1000001"]  # "7": ambiguous count
    texts = texts_by_target(record)
    below = "that is below a group of 2 large vehicles"
    assert texts["5"] == [
        SMALL_GROUP,
        f"{SMALL_GROUP} in the top right",
        f"{SMALL_GROUP} {below}",
        f"{SMALL_GROUP} in the top right {below}",
    ]
    assert texts["6"] == [
        "the group of 2 large vehicles",
        "the group of 2 large vehicles that is above a group of 3 small vehicles",
    ]
    assert texts["1000000"] == ["all small vehicles in the image"]
    assert texts["2000000"] == ["all small and large vehicles in the image"]
    assert texts["1000001"] == ["all water in the image"]
    assert [e["template"] for e in groups["5"]["expressions"]] == list(CLUSTER_TEMPLATES)
    assert [e["features"] for e in groups["5"]["expressions"]] == [
        ["category"], ["category", "position"], ["category", "relationship"],
        ["category", "position", "relationship"],
    ]  # fmt: skip
    for kind in ("1000000", "2000000", "1000001"):
        assert groups[kind]["expressions"] == [
            {"id": "0", "text": texts[kind][0], "template": "C", "features": ["category"]}
        ]


def test_instance_templates_and_features_of_each_expression():
    record = every_candidate(hand_rules())
    s1 = next(t for t in record["targets"] if t["id"] == "s1")
    templates = [e["template"] for e in s1["expressions"]]
    relational = [t for t in INSTANCE_TEMPLATES if "R" in t]
    plain = [t for t in INSTANCE_TEMPLATES if "R" not in t]
    assert templates == plain + [t for t in relational for _ in S1_RELATIONS]
    assert [e["id"] for e in s1["expressions"]] == [str(n) for n in range(len(templates))]
    by_template = {e["template"]: e["features"] for e in s1["expressions"]}
    assert by_template["K S E C G R"] == [
        "color", "size", "extreme", "category", "position", "relationship",
    ]  # fmt: skip
    assert by_template["C"] == ["category"]
    assert by_template["E C G"] == ["extreme", "category", "position"]


def test_articles_follow_the_noun():
    texts = texts_by_target(every_candidate(hand_rules()))
    assert "the harbor that is above an agricultural field" in texts["h1"]
    assert "the ship that is to the left of a harbor" in texts["s1"]


def test_only_unique_candidates_are_kept():
    record = describe_patch(hand_rules(), None, 0)
    texts = texts_by_target(record)
    # "the ship" fits three ships; s2's cells (4, 5) do not include the top left.
    assert texts["s1"][:6] == S1_PLAIN[1:7]  # the same order, without "the ship"
    assert "the ship that is to the left of a harbor" in texts["s1"]
    # s2 may be dark and may be below the harbor (its adjacent sector): both block s3.
    assert texts["s3"] == [
        "the ship in the bottom left",
        "the dark ship in the bottom left",
        "the ship in the bottom left that is below a harbor",
        "the dark ship in the bottom left that is below a harbor",
    ]
    assert "s2" not in texts and "p1" not in texts
    # Three small vehicles in one cell and nothing else: none is unique.
    assert not {"v1", "v2", "v3", "l1", "l2"} & set(texts)
    assert texts["f1"] == ["the agricultural field"]  # the only one
    assert texts["h1"] == H1_EXPRESSIONS  # the only harbor
    # The count blocker (3 small vehicles seen in cell 5) fits every relation.
    assert texts["5"] == [
        f"{SMALL_GROUP} in the top right",
        f"{SMALL_GROUP} in the top right that is below a group of 2 large vehicles",
    ]
    assert texts["6"] == [
        "the group of 2 large vehicles",
        "the group of 2 large vehicles that is above a group of 3 small vehicles",
    ]
    counts = record["counts"]
    everything = every_candidate(hand_rules())
    per_target = [34, 1, 20, 2, 2, 2, 1, 1, 1, 8, 0, 4, 2]  # s1 ... p1, then both clusters
    assert counts["candidates"] == everything["counts"]["candidates"] == sum(per_target)
    # Class-wide groups are unique as built: written, never candidates.
    assert counts["unique"] == counts["written"] - 3 == sum(len(v) for v in texts.values()) - 3


def test_colour_alternatives_of_a_target_block_others():
    # s1 may read orange, so another ship of definite orange keeps no colour-only text.
    rules = hand_rules()
    rules.attributes[9] = _attrs(6, [6], color="orange", colors=["orange"])
    texts = texts_by_target(describe_patch(rules, None, 0))
    assert "the orange ship" not in texts["s3"]
    assert "the orange ship in the bottom left" in texts["s3"]
    assert "the red ship" in texts["s1"]


def test_target_table_holds_every_possible_value():
    rules = hand_rules()
    cands = patch_candidates(rules)
    targets = cands.instance_targets
    for t, attr in enumerate(rules.attributes):
        expected = (
            np.bitwise_or.reduce(slot_bits("cell", attr.cells))
            | np.bitwise_or.reduce(slot_bits("color", [COLORS.index(c) for c in attr.colors]))
            | np.bitwise_or.reduce(
                slot_bits("extreme", [EXTREMES.index(e) for e in attr.extremes] or [-1])
            )
            | np.bitwise_or.reduce(slot_bits("size", [SIZES.index(s) for s in attr.sizes] or [-1]))
        )
        assert int(targets.bits[t]) == int(expected), rules.patch.instances[t].id
    assert targets.key.tolist() == [5, 5, 7, 3, 3, 3, 2, 2, 21, 5, 4]  # class ids
    clusters = cands.cluster_targets
    # The three clusters, then the blocker: key class id * 1000 + count, bits their cells.
    assert clusters.key.tolist() == [3003, 2002, 15002, 3003]
    assert clusters.bits.tolist() == [1 << 2, (1 << 6) | (1 << 7), 1 << 4, 1 << 5]
    assert clusters.relations[3].all() and clusters.relations.shape[0] == 4


def test_the_record_fields_and_group_relations():
    rules = hand_rules()
    record = describe_patch(rules, None, 0)
    assert {k: v for k, v in record.items() if k not in ("targets", "counts")} == {
        "name": NAME,
        "split": "val",
        "source": "isaid",
        "source_image": "P0007.png",
        "width": 480,
        "height": 480,
        "group_relations": [
            {"source_id": "5", "target_id": "6", "direction": "below", "distance": 200.12},
            {"source_id": "6", "target_id": "5", "direction": "above", "distance": 200.12},
        ],
    }
    by_id = {t["id"]: t for t in record["targets"]}
    assert list(by_id) == ["s1", "h1", "f1", "s3", "5", "6", "1000000", "2000000", "1000001"]
    s1 = rules.patch.instances[0]
    assert {k: v for k, v in by_id["s1"].items() if k != "expressions"} == {
        "kind": "instance",
        "id": "s1",
        "category": "ship",
        "bbox": list(s1.bbox),
        "area": s1.area,
        "rle": s1.rle,
        "visible_ratio": s1.visible_ratio,
        "cell": 0,
        "color": "red",
        "colors": ["red", "orange"],
    }
    assert by_id["h1"]["bbox"] == [20, 40, 34, 48] and by_id["h1"]["area"] == 92
    assert by_id["s3"]["color"] == "dark" and by_id["s3"]["visible_ratio"] == 0.91
    cluster = rules.groups[0]
    assert {k: v for k, v in by_id["5"].items() if k != "expressions"} == {
        "kind": "cluster",
        "id": "5",
        "category": "small_vehicle",
        "member_ids": ["v1", "v2", "v3"],
        "bbox": list(cluster.bbox),
        "area": cluster.area,
        "rle": cluster.rle,
        "centroid": list(cluster.centroid),
        "cell": 2,
    }
    assert by_id["6"]["cell"] == -1 and by_id["6"]["member_ids"] == ["l1", "l2"]
    assert by_id["1000001"]["kind"] == "region" and by_id["1000001"]["member_ids"] == []
    assert by_id["2000000"]["kind"] == "vehicle_pair"
    assert by_id["2000000"]["bbox"] == [2, 2, 42, 50]
    assert by_id["2000000"]["centroid"] == [22.5, 26.0]


def test_relations_are_only_listed_between_written_groups():
    blocked = hand_rules(blockers=[CountBlocker("small_vehicle", 3, [2])])
    record = describe_patch(blocked, None, 0)
    # The blocker sees 3 small vehicles in the cluster's own cell: the cluster keeps nothing.
    assert "5" not in {t["id"] for t in record["targets"]}
    assert record["group_relations"] == []


def test_no_relations_no_relational_text():
    rules = hand_rules(relations=[], blockers=[])
    texts = texts_by_target(every_candidate(rules))
    assert texts["s1"] == S1_PLAIN
    assert texts["5"] == [SMALL_GROUP, f"{SMALL_GROUP} in the top right"]
    assert describe_patch(rules, None, 0)["group_relations"] == []


def test_a_patch_with_nothing_to_say():
    rules = hand_rules(relations=[], blockers=[])
    rules.patch.instances = [rules.patch.instances[-1]]  # the cut-off plane
    rules.attributes = [rules.attributes[-1]]
    rules.groups = []
    record = describe_patch(rules, None, 0)
    assert record["targets"] == [] and record["group_relations"] == []
    assert record["counts"] == {"candidates": 0, "unique": 0, "written": 0}


@pytest.mark.parametrize("seed", [11, 12])
@pytest.mark.parametrize("cap", [1, 3])
def test_the_cap_keeps_a_seeded_subset_in_order(cap, seed):
    rules = hand_rules(blockers=[])  # the small-vehicle cluster keeps all 4 texts
    full = texts_by_target(describe_patch(rules, None, 0))
    capped = describe_patch(rules, cap, seed)
    assert capped == describe_patch(rules, cap, seed)
    texts = texts_by_target(capped)
    assert list(texts) == list(full)
    for id_, kept in texts.items():
        everything = full[id_]
        assert len(kept) == min(cap, len(everything))
        # The subset named by the seed of (seed, patch, kind, target), in its original order.
        if len(everything) > cap:
            kind = "group" if id_.isdigit() else "instance"
            picks = np.random.default_rng(stable_seed(seed, NAME, kind, id_)).choice(
                len(everything), size=cap, replace=False
            )
            assert kept == [everything[i] for i in sorted(picks)]
    assert capped["counts"]["written"] == sum(len(v) for v in texts.values())
    assert capped["counts"]["unique"] == describe_patch(rules, None, 0)["counts"]["unique"]
    # Enough room: the cap changes nothing.
    assert texts_by_target(describe_patch(rules, 100, seed)) == full


def test_the_filter_returns_one_mask_per_family():
    cands = patch_candidates(hand_rules())
    instance_kept, cluster_kept = filter_candidates(cands)
    assert instance_kept.shape == (len(cands.instances),)
    # Plain candidates of both clusters first, then the relational ones.
    assert cluster_kept.tolist() == [False, True, True, False, True, True]
    assert len(cands) == len(cands.instances) + len(cands.clusters) == 78


def test_adjacent_directions_block_and_direction_zero_is_written():
    # s2 may be read as "to the left of" the harbor (its adjacent sector 0), which blocks s1's
    # plain relation; s3 is to the top left (sector 7), which no well-placed relation reaches.
    relations = list(RELATIONS)
    relations[1] = (INSTANCE, 1, INSTANCE, 2, 1, 0, 150.0, False)
    relations[4] = (INSTANCE, 9, INSTANCE, 2, 7, -1, 140.0, True)
    texts = texts_by_target(describe_patch(hand_rules(relations), None, 0))
    assert "the ship that is to the left of a harbor" not in texts["s1"]
    assert "the ship in the top left that is to the left of a harbor" in texts["s1"]
    assert "the ship that is to the top left of a harbor" in texts["s3"]
    assert "the dark ship that is to the top left of a harbor" in texts["s3"]


def test_cluster_relations_between_clusters_only():
    # Two clusters of two, one to the left of the other: the references are clusters only, so
    # "to the left of" the first of them is relation key 0.
    rules = hand_rules(
        relations=[
            (GROUP, 0, GROUP, 1, 0, -1, 80.0, True),
            (GROUP, 1, GROUP, 0, 4, -1, 80.0, True),
        ],
        blockers=[],
    )
    rules.groups[0].member_ids = ["v1", "v2"]
    texts = texts_by_target(describe_patch(rules, None, 0))
    assert texts["5"] == [
        "the group of 2 small vehicles",
        "the group of 2 small vehicles in the top right",
        "the group of 2 small vehicles that is to the left of a group of 2 large vehicles",
        "the group of 2 small vehicles in the top right that is to the left of a group of 2 "
        "large vehicles",
    ]
    assert texts["6"] == [
        "the group of 2 large vehicles",
        "the group of 2 large vehicles that is to the right of a group of 2 small vehicles",
    ]


def test_the_order_of_the_groups_changes_nothing_but_the_order_of_the_record():
    # The class group first and the ambiguous cluster before the others: relation rows name
    # groups by index, clusters are numbered among clusters only.
    order = [3, 2, 0, 1, 4, 5]  # new position -> old index
    new_index = {old: new for new, old in enumerate(order)}
    moved = [
        (
            sk, new_index[s] if sk == GROUP else s, rk, new_index[r] if rk == GROUP else r,
            *rest,
        )
        for sk, s, rk, r, *rest in RELATIONS
    ]  # fmt: skip
    rules = hand_rules(moved)
    rules.groups = [rules.groups[old] for old in order]
    record = describe_patch(rules, None, 0)
    original = describe_patch(hand_rules(), None, 0)
    assert texts_by_target(record) == texts_by_target(original)
    assert [t["id"] for t in record["targets"] if t["kind"] != "instance"] == [
        "1000000", "5", "6", "2000000", "1000001",
    ]  # fmt: skip
    assert record["group_relations"] == original["group_relations"]


def test_two_references_of_one_category_make_one_relation():
    # s1 is to the left of two harbors: one relation "to the left of a harbor", written once.
    rules = hand_rules([*RELATIONS, (INSTANCE, 0, INSTANCE, 11, 0, -1, 150.0, True)])
    rules.patch.instances.append(_instance(11, "h2", "harbor"))
    rules.attributes.append(_attrs(-1, [7, 8]))
    texts = texts_by_target(every_candidate(rules))
    s1_relational = [f"{p} {r}" for p in S1_RELATIONAL_PREFIXES for r in S1_RELATIONS]
    assert texts["s1"] == S1_PLAIN + s1_relational
