"""The uniqueness filter: predicate evaluation over all targets, and the expression-level
regressions of the original string-counting filter."""

from __future__ import annotations

import numpy as np
import pytest

from datagen import uniqueness
from datagen.config import RulesConfig
from datagen.expressions import describe_patch
from datagen.pipeline import run_pipeline
from datagen.records import PatchRules
from datagen.rules import derive_rules
from datagen.storage import read_json
from datagen.uniqueness import CandidateTable, TargetTable, count_matches, slot_bits
from tests.datagen.scenes import box, describe, make_scene


def table(keys, bits, relations=None):
    keys = np.asarray(keys, dtype=np.int64)
    rel = np.zeros((keys.size, 1), bool) if relations is None else np.asarray(relations, bool)
    return TargetTable(keys, np.asarray(bits, dtype=np.uint64), rel)


def candidates(target, required, relation=None):
    target = np.asarray(target, dtype=np.int64)
    relation = np.full(target.size, -1) if relation is None else np.asarray(relation)
    return CandidateTable(target, np.asarray(required, dtype=np.uint64), relation.astype(np.int64))


def test_counts_targets_of_the_same_key_that_fit():
    cell = lambda k: int(slot_bits("cell", [k])[0])  # noqa: E731
    red = int(slot_bits("color", [2])[0])
    targets = table([1, 1, 2], [cell(0) | red, cell(0) | cell(1), cell(0)])
    cands = candidates([0, 0, 1, 2], [0, cell(0) | red, cell(1), cell(0)])
    # "the C" fits both targets of key 1; "the red C in cell 0" only target 0; key 2 is alone.
    assert count_matches(targets, cands).tolist() == [2, 1, 1, 1]


def test_relations_are_part_of_the_predicate():
    targets = table([1, 1], [0, 0], relations=[[True, False], [True, True]])
    cands = candidates([0, 1, 1], [0, 0, 0], relation=[0, 1, 0])
    assert count_matches(targets, cands).tolist() == [2, 1, 2]


def test_a_candidate_its_own_target_does_not_fit_is_an_error():
    targets = table([1], [int(slot_bits("cell", [0])[0])])
    with pytest.raises(ValueError, match="does not fit its own target"):
        count_matches(targets, candidates([0], [slot_bits("cell", [3])[0]]))
    # A relation its own target does not have (key 0 too), with or without fitting bits.
    related = table([1, 1], [0, 0], relations=[[False, True], [True, True]])
    with pytest.raises(ValueError, match="candidate 1 does not fit its own target 0"):
        count_matches(related, candidates([0, 0], [0, 0], relation=[1, 0]))
    with pytest.raises(ValueError, match="candidate 0 does not fit its own target 0"):
        count_matches(related, candidates([0], [slot_bits("cell", [3])[0]], relation=[1]))
    assert count_matches(related, candidates([], [])).dtype == np.int64


@pytest.mark.parametrize("block_elements", [None, 100, 1])
def test_vectorised_counts_equal_a_brute_force_loop(block_elements, monkeypatch):
    if block_elements is not None:  # the per-key blocks of very large patches, made small
        monkeypatch.setattr(uniqueness, "_BLOCK_ELEMENTS", block_elements)
    rng = np.random.default_rng(0)
    n, m, r = 40, 3000, 12
    keys = rng.integers(0, 4, n)
    bits = rng.integers(0, 1 << 25, n).astype(np.uint64)
    rel = rng.random((n, r)) < 0.3
    target = rng.integers(0, n, m)
    # Required bits and relations drawn from the target's own values, so each fits itself.
    required = bits[target] & rng.integers(0, 1 << 25, m).astype(np.uint64)
    relation = np.array(
        [
            rng.choice(np.flatnonzero(rel[t])) if rel[t].any() and rng.random() < 0.5 else -1
            for t in target
        ]
    )
    counts = count_matches(TargetTable(keys, bits, rel), CandidateTable(target, required, relation))
    expected = [
        sum(keys[u] == keys[t] and (bits[u] & q) == q and (c < 0 or rel[u, c]) for u in range(n))
        for t, q, c in zip(target, required, relation)
    ]
    assert counts.tolist() == expected and counts.dtype == np.int64


# -- expression-level regressions ----------------------------------------------------------------


def test_colour_free_expressions_of_a_coloured_object_survive():
    # Regression (bug 2): templates 1-7 were emitted twice for objects with a definite colour,
    # so "the topmost small vehicle" cancelled itself.
    _, texts, _ = describe(
        [
            box(1, "small_vehicle", 20, 20, 44, 32, "white"),
            box(2, "small_vehicle", 300, 300, 324, 312, "black"),
        ]
    )
    assert {
        "the topmost small vehicle",
        "the light small vehicle",
        "the leftmost small vehicle",
    } <= set(texts["1"])
    assert "the dark small vehicle" in texts["2"]
    assert "the small vehicle" not in texts["1"] + texts["2"]


def test_grid_borderline_objects_get_no_position_and_block_their_neighbours():
    # Regression (bug 5): cars 4 px apart across a grid line each got a contradicting "unique"
    # position; now neither is placed, while a clear car keeps its cell.
    _, texts, _ = describe(
        [
            box(1, "small_vehicle", 146, 74, 170, 86),  # centre x = 158
            box(2, "small_vehicle", 150, 124, 174, 136),  # centre x = 162
            box(3, "small_vehicle", 400, 400, 424, 412),
        ]
    )
    placed = [t for t in texts.get("1", []) + texts.get("2", []) if " in the " in t]
    assert placed == []
    assert "the small vehicle in the bottom right" in texts["3"]


def test_borderline_relations_only_block():
    # Regression (bug 4): a relation 20 degrees off axis (within 15 degrees of the sector edge at
    # 22.5) is never written, but it blocks the neighbouring direction for other targets.
    ship_1 = box(1, "ship", 240, 222, 260, 242, "red")  # centre (250, 232)
    harbor_1 = box(3, "harbor", 334, 188, 354, 208)  # centre (344, 198): theta = 19.9 degrees
    ship_2 = box(2, "ship", 50, 70, 70, 90, "red")  # centre (60, 80)
    harbor_2 = box(4, "harbor", 120, 0, 140, 20)  # centre (130, 10): theta = 45 degrees
    _, texts, _ = describe([ship_1, ship_2, harbor_1, harbor_2])
    assert not any("harbor" in t for t in texts.get("1", []))
    assert "the ship that is to the bottom left of a harbor" not in texts["2"]
    assert "the ship in the top left that is to the bottom left of a harbor" in texts["2"]
    # The same scene with ship 1's harbor straight to its right: a definite relation.
    harbor_1 = box(3, "harbor", 334, 222, 354, 242)
    _, texts, _ = describe([ship_1, ship_2, harbor_1, harbor_2])
    assert "the ship that is to the left of a harbor" in texts["1"]


def test_relation_uniqueness_checks_every_target_not_only_emitted_strings():
    # Regression (bug 7): ship B is 180 px left of a harbor, just past the 167.5 px gate, so the
    # original never emitted "... to the left of a harbor" for B and kept it for A.
    ship_a, harbor_a = box(1, "ship", 50, 55, 70, 65), box(3, "harbor", 150, 50, 170, 70)
    ship_b = box(2, "ship", 50, 395, 70, 405)
    near, far = box(4, "harbor", 230, 390, 250, 410), box(4, "harbor", 310, 390, 330, 410)
    _, texts, _ = describe([ship_a, ship_b, harbor_a, near])
    assert "the ship that is to the left of a harbor" not in texts["1"]
    assert "the ship in the top left that is to the left of a harbor" in texts["1"]
    _, texts, _ = describe([ship_a, ship_b, harbor_a, far])  # 260 px: out of reach
    assert "the ship that is to the left of a harbor" in texts["1"]


def test_cutoff_objects_block_but_keep_nothing():
    _, texts, _ = describe(
        [
            box(1, "small_vehicle", 380, 250, 404, 262, "red"),
            box(2, "small_vehicle", 0, 400, 10, 412, "red", cutoff=True, ratio=0.4),
            box(3, "small_vehicle", 300, 40, 324, 52, "black"),
        ]
    )
    assert "2" not in texts
    assert "the red small vehicle" not in texts["1"]
    assert "the red small vehicle in the center right" in texts["1"]
    assert "the dark small vehicle" in texts["3"]


def test_expression_cap_is_seeded_and_deterministic():
    patch, image = make_scene(
        [
            box(k, "small_vehicle", 20 + 60 * k, 20 + 50 * k, 44 + 60 * k, 32 + 50 * k, c)
            for k, c in enumerate(["white", "black", "red", "blue"])
        ]
    )
    rules = derive_rules(patch, image, RulesConfig())
    full = describe_patch(rules, None, 0)
    capped = describe_patch(rules, 2, 0)
    assert capped == describe_patch(rules, 2, 0)
    for whole, cut in zip(full["targets"], capped["targets"]):
        texts = [e["text"] for e in cut["expressions"]]
        assert len(texts) == min(2, len(whole["expressions"]))
        assert set(texts) <= {e["text"] for e in whole["expressions"]}
        assert [e["id"] for e in cut["expressions"]] == [str(i) for i in range(len(texts))]


def test_the_stage_writes_each_patch_as_describe_patch_does(make_config):
    # LoveDA tiles only (about a second); the stage reads the rules files and writes, per
    # patch, exactly the record describe_patch gives with the configured cap and seed.
    cfg = make_config(
        synthetic={"isaid_images": {}}, isaid={"enabled": False}, seed=7,
        expressions={"max_per_target": 2},
    )  # fmt: skip
    reports = run_pipeline(cfg, until="expressions")
    rules_files = sorted((cfg.work_path / "stages" / "rules").glob("*/*.json"))
    written = sorted((cfg.work_path / "stages" / "expressions").glob("*/*.json"))
    assert [p.relative_to(cfg.work_path / "stages" / "expressions") for p in written] == [
        p.relative_to(cfg.work_path / "stages" / "rules") for p in rules_files
    ]
    records = []
    for rules_file, record_file in zip(rules_files, written):
        rules = PatchRules.from_dict(read_json(rules_file))
        records.append(read_json(record_file))
        assert records[-1] == describe_patch(rules, 2, 7)
    counts = reports["expressions"]["counts"]
    assert counts["patches"] == len(written) == reports["expressions"]["units"]
    assert counts["targets"] == sum(len(r["targets"]) for r in records)
    assert counts["written"] == sum(r["counts"]["written"] for r in records) > 0
    assert counts["patches_with_expressions"] == sum(bool(r["targets"]) for r in records)
