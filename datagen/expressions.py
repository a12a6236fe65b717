"""Stage ``expressions``: template expressions for every target, kept only when unique.

Instance templates combine the category (C) with optional colour (K), size (S), extreme (E),
grid position (G) and one relation (R, "that is <direction> a <category>" or "... a group of N
<categories>"), written in the order ``the K S E C G R``; cluster templates describe a group of
N members (N), optionally with position and a relation to another cluster; class-wide groups,
land-cover regions and the vehicle pair get "all <phrase> in the image".

A target emits one candidate per distinct combination of its *definite* values, so no target
ever competes with itself (the original emitted colour-free templates twice for objects of a
definite colour, and cancelled them). Candidates are feature tuples, not strings: the filter
(:mod:`datagen.uniqueness`) checks each one against the *possible* values of every target of the
same category, and only kept candidates are turned into text. Cut-off instances are targets
(they block) but never keep expressions. At most ``max_per_target`` kept expressions per target
are written, chosen by a seed derived from the patch and target.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datagen.classes import CLASSES, class_by_key
from datagen.config import PipelineConfig, fingerprint
from datagen.records import GROUP, INSTANCE, PatchRules
from datagen.rules import (
    COLORS,
    DIRECTION_PHRASES,
    EXTREMES,
    GRID_PHRASES,
    SIZES,
    patch_units,
    rules_dir,
    upstream_fingerprint,
)
from datagen.stage_state import (
    INPUTS_KEY,
    StageState,
    complete_stage,
    require_complete,
    run_units,
    unit_inputs,
)
from datagen.storage import atomic_write_json, read_json, stable_seed
from datagen.uniqueness import CandidateTable, TargetTable, slot_bits, unique_candidates

__all__ = [
    "CLUSTER_TEMPLATES",
    "INSTANCE_TEMPLATES",
    "Candidates",
    "describe_patch",
    "filter_candidates",
    "instance_candidates",
    "patch_candidates",
    "run_expressions",
    "write_expressions",
]

INSTANCE_TEMPLATES = (
    "C", "C G", "C R", "C G R",
    "E C", "E C G", "E C G R",
    "S C", "S C G", "S C G R", "S E C G", "S E C G R",
    "K C", "K C G", "K C R", "K C G R", "K E C", "K E C G", "K E C G R",
    "K S C", "K S C G", "K S C G R", "K S E C G", "K S E C G R",
)  # fmt: skip
CLUSTER_TEMPLATES = ("N C", "N C G", "N C R", "N C G R")
FEATURE_NAMES = {
    "C": "category",
    "N": "category",
    "G": "position",
    "R": "relationship",
    "E": "extreme",
    "S": "size",
    "K": "color",
}
_CLUSTER_CODE = 1_000_000  # reference codes: class id (objects), 1e6 + id * 1000 + n (clusters)


@dataclass
class Candidates:
    """Candidate expressions of one family as parallel (M,) arrays (-1 = slot not named)."""

    target: np.ndarray
    template: np.ndarray
    cell: np.ndarray
    color: np.ndarray
    extreme: np.ndarray
    size: np.ndarray
    relation: np.ndarray

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def table(self) -> CandidateTable:
        required = (
            slot_bits("cell", self.cell)
            | slot_bits("color", self.color)
            | slot_bits("extreme", self.extreme)
            | slot_bits("size", self.size)
        )
        return CandidateTable(
            self.target.astype(np.int64), required, self.relation.astype(np.int64)
        )


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


class RelationVocabulary:
    """Reference keys of one patch: ``('instance', category)`` or ``('cluster', category, n)``.

    Built from all relation rows at once, so relation keys (``direction * len(refs) + ref``) are
    the same for instances and clusters. ``row_ref`` holds the reference key of every row.
    """

    def __init__(self, rules: PatchRules) -> None:
        rel = rules.relations
        objects = np.array([class_by_key(i.category).id for i in rules.patch.instances] or [0])
        clusters = np.array(
            [_CLUSTER_CODE + class_by_key(g.category).id * 1000 + g.size for g in rules.groups]
            or [0]
        )
        is_object = rel.reference_kind == INSTANCE
        codes = np.where(
            is_object,
            objects[np.where(is_object, rel.reference, 0)],
            clusters[np.where(is_object, 0, rel.reference)],
        )
        unique, self.row_ref = np.unique(codes, return_inverse=True)
        self.row_ref = self.row_ref.astype(np.int64).reshape(-1)
        by_id = {c.id: c.key for c in CLASSES}
        self.refs = [
            ("instance", by_id[int(code)])
            if code < _CLUSTER_CODE
            else ("cluster", by_id[int(code - _CLUSTER_CODE) // 1000], int(code) % 1000)
            for code in unique.tolist()
        ]
        self.count = max(1, len(self.refs))

    def phrase(self, relation_key: int) -> str:
        direction, ref = divmod(relation_key, self.count)
        key = self.refs[ref]
        info = class_by_key(key[1])
        if key[0] == "instance":
            target = f"{_article(info.noun)} {info.noun}"
        else:
            target = f"a group of {key[2]} {info.plural}"
        return f"that is {DIRECTION_PHRASES[direction]} {target}"

    def relations_of(
        self, rules: PatchRules, kind: int, count: int, position: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Relations whose source is of ``kind``.

        Args:
            count: number of targets of the family.
            position: maps source indices to target positions (clusters among groups).

        Returns:
            possible (count, 8 * len(refs)) bool and definite ``(target, key)`` pairs (P, 2).
        """
        rel = rules.relations
        rows = np.flatnonzero(rel.source_kind == kind)
        sources = rel.source[rows].astype(np.int64)
        if position is not None:
            sources = position[sources]
        refs = self.row_ref[rows]
        direction = rel.direction[rows].astype(np.int64)
        adjacent = rel.adjacent[rows].astype(np.int64)
        possible = np.zeros((count, 8 * self.count), dtype=bool)
        possible[sources, direction * self.count + refs] = True
        near_edge = adjacent >= 0
        possible[sources[near_edge], adjacent[near_edge] * self.count + refs[near_edge]] = True
        definite = rel.definite[rows]
        pairs = np.stack([sources[definite], direction[definite] * self.count + refs[definite]], 1)
        return possible, np.unique(pairs.reshape(-1, 2), axis=0)


def _expand(rows: list[tuple], templates: tuple[str, ...], pairs: np.ndarray) -> Candidates:
    """Candidate arrays from prefix rows ``(target, template, cell, color, extreme, size)``;
    rows whose template has R are repeated once per definite relation of their target."""
    prefix = np.array(rows, dtype=np.int64).reshape(-1, 6)
    needs_relation = np.array(["R" in templates[t] for t in prefix[:, 1]], dtype=bool)
    plain = prefix[~needs_relation]
    relational = prefix[needs_relation]
    relation = np.full(plain.shape[0], -1, dtype=np.int64)
    if relational.size and pairs.size:
        order = np.argsort(pairs[:, 0], kind="stable")
        pairs = pairs[order]
        targets = relational[:, 0]
        first = np.searchsorted(pairs[:, 0], targets, side="left")
        counts = np.searchsorted(pairs[:, 0], targets, side="right") - first
        repeated = np.repeat(relational, counts, axis=0)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        rel_keys = pairs[np.repeat(first, counts) + offsets, 1]
        plain = np.concatenate([plain, repeated])
        relation = np.concatenate([relation, rel_keys])
    return Candidates(
        target=plain[:, 0],
        template=plain[:, 1],
        cell=plain[:, 2],
        color=plain[:, 3],
        extreme=plain[:, 4],
        size=plain[:, 5],
        relation=relation,
    )


def instance_candidates(
    rules: PatchRules, vocab: RelationVocabulary
) -> tuple[TargetTable, Candidates]:
    """Target table and candidates of the instances of one patch."""
    instances = rules.patch.instances
    count = len(instances)
    key = np.array([class_by_key(i.category).id for i in instances], dtype=np.int64)
    bits = np.zeros(count, dtype=np.uint64)
    for t, attr in enumerate(rules.attributes):
        value = 0
        for cell in attr.cells:
            value |= 1 << cell
        for color in attr.colors:
            value |= 1 << (9 + COLORS.index(color))
        for label in attr.extremes:
            value |= 1 << (19 + EXTREMES.index(label))
        for label in attr.sizes:
            value |= 1 << (23 + SIZES.index(label))
        bits[t] = value
    possible, pairs = vocab.relations_of(rules, INSTANCE, count)
    has_relation = np.zeros(count, dtype=bool)
    has_relation[pairs[:, 0]] = True
    prefixes = []
    slots = [set(t.split()) for t in INSTANCE_TEMPLATES]
    for t, (instance, attr) in enumerate(zip(instances, rules.attributes)):
        if instance.is_cutoff:
            continue
        color = COLORS.index(attr.color) if attr.color is not None else -1
        extremes = [EXTREMES.index(e) for e in attr.extremes]
        sizes = [SIZES.index(s) for s in attr.sizes]
        for index, slot in enumerate(slots):
            if ("K" in slot and color < 0) or ("G" in slot and attr.cell < 0):
                continue
            if "R" in slot and not has_relation[t]:
                continue
            for e, s in itertools.product(
                extremes if "E" in slot else [-1], sizes if "S" in slot else [-1]
            ):
                prefixes.append(
                    (t, index, attr.cell if "G" in slot else -1, color if "K" in slot else -1, e, s)
                )
    return TargetTable(key, bits, possible), _expand(prefixes, INSTANCE_TEMPLATES, pairs)


def cluster_candidates(
    rules: PatchRules, vocab: RelationVocabulary
) -> tuple[TargetTable, Candidates, list[int]]:
    """Target table and candidates of the clusters; also the group indices of the clusters.

    The table also holds the patch's count blockers (clusters as a reader sees them, with
    visibly present cut-off instances) after the clusters: they emit nothing, fit every relation
    and block the count they show in their cells. Clusters with an ambiguous count emit nothing.
    """
    cluster_index = [k for k, g in enumerate(rules.groups) if g.kind == "cluster"]
    count = len(cluster_index)
    groups = [rules.groups[k] for k in cluster_index]
    blockers = rules.count_blockers
    key = np.array(
        [class_by_key(g.category).id * 1000 + g.size for g in [*groups, *blockers]],
        dtype=np.int64,
    )
    bits = np.array([sum(1 << c for c in g.cells) for g in [*groups, *blockers]], dtype=np.uint64)
    position = np.full(len(rules.groups), -1, dtype=np.int64)
    position[cluster_index] = np.arange(count)
    possible, pairs = vocab.relations_of(rules, GROUP, count, position)
    possible = np.concatenate([possible, np.ones((len(blockers), possible.shape[1]), dtype=bool)])
    has_relation = np.zeros(count, dtype=bool)
    has_relation[pairs[:, 0]] = True
    prefixes = []
    for t, group in enumerate(groups):
        if group.ambiguous_count:
            continue
        for index, template in enumerate(CLUSTER_TEMPLATES):
            slot = set(template.split())
            if ("G" in slot and group.cell < 0) or ("R" in slot and not has_relation[t]):
                continue
            prefixes.append((t, index, group.cell if "G" in slot else -1, -1, -1, -1))
    return (
        TargetTable(key, bits, possible),
        _expand(prefixes, CLUSTER_TEMPLATES, pairs),
        cluster_index,
    )


def _instance_text(c: int, cands: Candidates, category: str, vocab: RelationVocabulary) -> str:
    words = ["the"]
    if cands.color[c] >= 0:
        words.append(COLORS[cands.color[c]])
    if cands.size[c] >= 0:
        words.append(SIZES[cands.size[c]])
    if cands.extreme[c] >= 0:
        words.append(EXTREMES[cands.extreme[c]])
    words.append(class_by_key(category).noun)
    if cands.cell[c] >= 0:
        words.append(GRID_PHRASES[cands.cell[c]])
    if cands.relation[c] >= 0:
        words.append(vocab.phrase(int(cands.relation[c])))
    return " ".join(words)


def _cluster_text(
    c: int, cands: Candidates, category: str, size: int, vocab: RelationVocabulary
) -> str:
    words = ["the group of", str(size), class_by_key(category).plural]
    if cands.cell[c] >= 0:
        words.append(GRID_PHRASES[cands.cell[c]])
    if cands.relation[c] >= 0:
        words.append(vocab.phrase(int(cands.relation[c])))
    return " ".join(words)


def _cap(kept: list[int], limit: int | None, seed: int) -> list[int]:
    if limit is None or len(kept) <= limit:
        return kept
    rng = np.random.default_rng(seed)
    return sorted(kept[i] for i in rng.choice(len(kept), size=limit, replace=False))


def _features(template: str) -> list[str]:
    return list(dict.fromkeys(FEATURE_NAMES[s] for s in template.split()))


@dataclass
class PatchCandidates:
    """Everything the filter and the writer need for one patch."""

    vocab: RelationVocabulary
    instance_targets: TargetTable
    instances: Candidates
    cluster_targets: TargetTable
    clusters: Candidates
    cluster_index: list[int]
    instance_table: CandidateTable
    cluster_table: CandidateTable

    def __len__(self) -> int:
        return len(self.instances) + len(self.clusters)


def patch_candidates(rules: PatchRules) -> PatchCandidates:
    """Targets and candidate expressions (feature tuples) of one patch."""
    vocab = RelationVocabulary(rules)
    inst_targets, inst_cands = instance_candidates(rules, vocab)
    clus_targets, clus_cands, cluster_index = cluster_candidates(rules, vocab)
    return PatchCandidates(
        vocab, inst_targets, inst_cands, clus_targets, clus_cands, cluster_index,
        inst_cands.table(), clus_cands.table(),
    )  # fmt: skip


def filter_candidates(cands: PatchCandidates) -> tuple[np.ndarray, np.ndarray]:
    """Unique masks of the instance and cluster candidates (see :mod:`datagen.uniqueness`)."""
    return (
        unique_candidates(cands.instance_targets, cands.instance_table),
        unique_candidates(cands.cluster_targets, cands.cluster_table),
    )


def describe_patch(rules: PatchRules, max_per_target: int | None, seed: int) -> dict:
    """Generate, filter and write out the expressions of one patch."""
    cands = patch_candidates(rules)
    return write_expressions(rules, cands, filter_candidates(cands), max_per_target, seed)


def write_expressions(
    rules: PatchRules,
    cands: PatchCandidates,
    kept: tuple[np.ndarray, np.ndarray],
    max_per_target: int | None,
    seed: int,
) -> dict:
    """Turn the kept candidates into text.

    Returns:
        the expression record: patch fields, ``targets`` (only those with expressions, each
        with ``expressions`` ``[{id, text, template, features}]``), ``group_relations`` between
        written clusters and ``counts`` (candidates, unique, written).
    """
    patch = rules.patch
    vocab, inst_cands, clus_cands = cands.vocab, cands.instances, cands.clusters
    cluster_index = cands.cluster_index
    inst_kept, clus_kept = kept
    counts = {"candidates": len(cands), "unique": int(inst_kept.sum() + clus_kept.sum())}
    targets = []
    for t, (instance, attr) in enumerate(zip(patch.instances, rules.attributes)):
        chosen = np.flatnonzero(inst_kept & (inst_cands.target == t)).tolist()
        chosen = _cap(
            chosen, max_per_target, stable_seed(seed, patch.name, "instance", instance.id)
        )
        if not chosen:
            continue
        expressions = [
            {
                "id": str(n),
                "text": _instance_text(c, inst_cands, instance.category, vocab),
                "template": INSTANCE_TEMPLATES[inst_cands.template[c]],
                "features": _features(INSTANCE_TEMPLATES[inst_cands.template[c]]),
            }
            for n, c in enumerate(chosen)
        ]
        targets.append(
            {
                "kind": "instance",
                "id": instance.id,
                "category": instance.category,
                "bbox": list(instance.bbox),
                "area": instance.area,
                "rle": instance.rle,
                "visible_ratio": instance.visible_ratio,
                "cell": attr.cell,
                "color": attr.color,
                "colors": attr.colors,
                "expressions": expressions,
            }
        )
    written_groups = set()
    for k, group in enumerate(rules.groups):
        if group.kind == "cluster":
            t = cluster_index.index(k)
            chosen = np.flatnonzero(clus_kept & (clus_cands.target == t)).tolist()
            chosen = _cap(chosen, max_per_target, stable_seed(seed, patch.name, "group", group.id))
            texts = [
                (
                    _cluster_text(c, clus_cands, group.category, group.size, vocab),
                    CLUSTER_TEMPLATES[clus_cands.template[c]],
                )
                for c in chosen
            ]
        else:  # one class-wide group / region per category, one vehicle pair: unique as built
            phrase = class_by_key(group.category).region_phrase
            texts = [(f"all {phrase} in the image", "C")]
        if not texts:
            continue
        written_groups.add(k)
        targets.append(
            {
                "kind": group.kind,
                "id": str(group.id),
                "category": group.category,
                "member_ids": group.member_ids,
                "bbox": list(group.bbox),
                "area": group.area,
                "rle": group.rle,
                "centroid": list(group.centroid),
                "cell": group.cell,
                "expressions": [
                    {
                        "id": str(n),
                        "text": text,
                        "template": template,
                        "features": _features(template),
                    }
                    for n, (text, template) in enumerate(texts)
                ],
            }
        )
    rel = rules.relations
    group_relations = []
    for m in np.flatnonzero((rel.source_kind == GROUP) & rel.definite).tolist():
        source, reference = int(rel.source[m]), int(rel.reference[m])
        if source in written_groups and reference in written_groups:
            group_relations.append(
                {
                    "source_id": str(rules.groups[source].id),
                    "target_id": str(rules.groups[reference].id),
                    "direction": DIRECTION_PHRASES[rel.direction[m]],
                    "distance": round(float(rel.distance[m]), 2),
                }
            )
    counts["written"] = sum(len(t["expressions"]) for t in targets)
    return {
        "name": patch.name,
        "split": patch.split,
        "source": patch.source,
        "source_image": patch.source_image,
        "width": patch.width,
        "height": patch.height,
        "targets": targets,
        "group_relations": group_relations,
        "counts": counts,
    }


# --------------------------------------------------------------------------------------------------
# Stage


def expressions_dir(work_dir: Path, split: str) -> Path:
    return Path(work_dir) / "stages" / "expressions" / split


def _patch_unit(payload: dict) -> dict:
    work = Path(payload["work_dir"])
    rules = PatchRules.from_dict(
        read_json(rules_dir(work, payload["split"]) / f"{payload['name']}.json")
    )
    record = describe_patch(rules, payload["max_per_target"], payload["seed"])
    out = expressions_dir(work, payload["split"]) / f"{payload['name']}.json"
    atomic_write_json(out, record, keep_identical=True)
    counts = dict(record["counts"])
    counts["patches"] = 1
    counts["patches_with_expressions"] = int(bool(record["targets"]))
    counts["targets"] = len(record["targets"])
    return {"outputs": [str(out.relative_to(work))], "counts": counts}


def run_expressions(cfg: PipelineConfig, overwrite: bool = False) -> dict:
    """Write ``<work_dir>/stages/expressions/{split}/<name>.json`` for every patch."""
    require_complete(cfg.work_path, "rules")
    units = patch_units(cfg)
    for _, payload in units:
        payload.update(max_per_target=cfg.expressions.max_per_target, seed=cfg.seed)
        payload[INPUTS_KEY] = unit_inputs(
            produced=[rules_dir(cfg.work_path, payload["split"]) / f"{payload['name']}.json"]
        )
    state = StageState(
        cfg.work_path,
        "expressions",
        fingerprint(
            "expressions", cfg.seed, cfg.expressions, upstream_fingerprint(cfg.work_path, ["rules"])
        ),
        [cfg.work_path / "stages" / "expressions"],
    )
    results = run_units(
        state, cfg, units, _patch_unit, desc="expressions", unit="patch", overwrite=overwrite
    )
    return complete_stage(state, results)
