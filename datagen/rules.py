"""Stage ``rules``: spatial, size, colour and relational attributes, and groups, per patch.

Every rule records two things: the *definite* value (what an expression may state) and the
*possible* values (what a reader might take the object to be), so the uniqueness filter can
treat near-ties as blockers rather than as facts:

- grid cell: 3x3 thirds of the patch; a centroid within ``grid_border_fraction`` of a grid line
  has no definite cell and both neighbouring cells as possible ones;
- extremes (topmost, bottommost, leftmost, rightmost): per category, the leader wins a label when
  it leads every other instance (cut-off ones too) by more than the margin; several labels may
  hold at once; cut-off instances never carry one;
- size (largest, smallest): per category, on mask areas (truncated instances count with their
  estimated full size), leader by a factor ``size_ratio``, cut-off instances never labelled;
- colour: HSV shares of the mask pixels (light/dark/hue names); building and water only
  light/dark;
- relations: eight 45-degree sectors by explicit arithmetic, ``((theta + 22.5) mod 360) // 45``
  (the original lost (157.5, 180] to a duplicate dict key); an angle within
  ``relation_borderline_degrees`` of a sector edge is possible in both sectors and never
  definite; distance gate ``base + (w_s + h_s)/4 + (w_r + h_r)/4``, widened by
  ``relation_possible_slack`` for possible relations;
- groups: DBSCAN clusters per category on the gap between boxes (non-cut-off instances; clusters
  above ``cluster_max_size`` dissolved), class-wide groups, LoveDA land-cover regions (they stand
  in for the class-wide group of their class) and the small+large vehicle pair, in one id space:
  clusters from 1, class-wide groups and regions from 1,000,000, the vehicle pair 2,000,000.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy.sparse.csgraph import connected_components

from datagen.classes import VEHICLE_PAIR, class_by_key
from datagen.config import ColorConfig, PipelineConfig, RulesConfig, fingerprint
from datagen.isaid_patches import patch_dir
from datagen.records import (
    GROUP,
    INSTANCE,
    CountBlocker,
    Group,
    InstanceAttributes,
    Patch,
    PatchRules,
    RelationTable,
    merge_rles,
    rle_area_bbox,
    rle_pixels,
)
from datagen.stage_state import (
    INPUTS_KEY,
    StageState,
    complete_stage,
    require_complete,
    run_units,
    unit_inputs,
)
from datagen.storage import atomic_write_json, read_json, read_rgb

__all__ = [
    "COLORS",
    "DIRECTION_PHRASES",
    "EXTREMES",
    "GRID_PHRASES",
    "SIZES",
    "classify_color",
    "classify_colors",
    "cluster_boxes",
    "count_blockers",
    "derive_rules",
    "direction_sector",
    "extreme_labels",
    "grid_candidates",
    "pairwise_relations",
    "run_rules",
    "size_labels",
    "visibly_present",
]

GRID_PHRASES = (
    "in the top left", "in the top center", "in the top right",
    "in the center left", "in the center", "in the center right",
    "in the bottom left", "in the bottom center", "in the bottom right",
)  # fmt: skip
# Sector k holds angles theta in [45k - 22.5, 45k + 22.5), theta = atan2(y_src - y_ref,
# x_ref - x_src) in image coordinates: theta = 0 means the reference is to the right, so the
# source is "to the left of" it.
DIRECTION_PHRASES = (
    "to the left of",
    "to the bottom left of",
    "below",
    "to the bottom right of",
    "to the right of",
    "to the top right of",
    "above",
    "to the top left of",
)
EXTREMES = ("topmost", "bottommost", "leftmost", "rightmost")
SIZES = ("largest", "smallest")
COLORS = ("light", "dark", "red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta")
ACHROMATIC = ("light", "dark")
HUE_RANGES = (  # OpenCV hue 0..179, inclusive bounds; every hue has exactly one name
    ("red", 0, 10),
    ("orange", 11, 20),
    ("yellow", 21, 34),
    ("green", 35, 85),
    ("cyan", 86, 100),
    ("blue", 101, 130),
    ("purple", 131, 145),
    ("magenta", 146, 169),
    ("red", 170, 179),
)
_HUE_TO_COLOR = np.zeros(180, dtype=np.int64)
for _name, _low, _high in HUE_RANGES:
    _HUE_TO_COLOR[_low : _high + 1] = COLORS.index(_name)
NO_LOCATION_CLASSES = ("building", "water")  # colour of these: light/dark only
CLUSTER_ID_START, SEMANTIC_ID_START, VEHICLE_PAIR_ID = 1, 1_000_000, 2_000_000


# --------------------------------------------------------------------------------------------------
# Grid and directions


def grid_candidates(
    x: float, y: float, width: int, height: int, border_fraction: float
) -> tuple[int, list[int]]:
    """The 3x3 cell of (x, y) and all cells within the borderline band.

    Returns:
        ``(cell, cells)``: ``cell`` is -1 when (x, y) lies less than ``border_fraction`` of the
        patch size from a grid line (then ``cells`` holds the cells on both sides).
    """

    def axis(value: float, length: int) -> list[int]:
        third = length / 3
        own = min(2, max(0, int(value // third)))
        band = border_fraction * length
        near = {own}
        for line_index, line in ((1, third), (2, 2 * third)):
            if abs(value - line) < band:
                near.update((line_index - 1, line_index))
        return sorted(near)

    rows, cols = axis(y, height), axis(x, width)
    cells = [r * 3 + c for r in rows for c in cols]
    return (cells[0] if len(cells) == 1 else -1), cells


def direction_sector(theta: np.ndarray, borderline: float) -> tuple[np.ndarray, np.ndarray]:
    """Sector (0..7) of angles in degrees and the adjacent sector near an edge (-1 if none)."""
    shifted = np.mod(np.asarray(theta, dtype=np.float64) + 22.5, 360.0)
    sector = (shifted // 45).astype(np.int64) % 8
    offset = np.mod(shifted, 45.0)
    adjacent = np.full(sector.shape, -1, dtype=np.int64)
    low, high = offset < borderline, offset > 45.0 - borderline
    adjacent[low] = (sector[low] - 1) % 8
    adjacent[high] = (sector[high] + 1) % 8
    return sector, adjacent


def pairwise_relations(
    src_boxes: np.ndarray,
    src_centres: np.ndarray,
    ref_boxes: np.ndarray,
    ref_centres: np.ndarray,
    cfg: RulesConfig,
) -> dict[str, np.ndarray]:
    """Direction and gates of every (source, reference) pair.

    Args:
        src_boxes, ref_boxes: (N, 4) / (M, 4) ``xmin, ymin, xmax, ymax``.
        src_centres, ref_centres: (N, 2) / (M, 2) ``x, y``.

    Returns:
        (N, M) arrays ``sector``, ``adjacent``, ``distance``, ``near`` (within the gate),
        ``possible`` (within the widened gate), ``contained`` (a centre lies in the other box).
    """
    sx, sy = src_centres[:, 0:1], src_centres[:, 1:2]
    rx, ry = ref_centres[None, :, 0], ref_centres[None, :, 1]
    theta = np.degrees(np.arctan2(sy - ry, rx - sx))
    sector, adjacent = direction_sector(theta, cfg.relation_borderline_degrees)
    distance = np.hypot(rx - sx, ry - sy)
    src_size = (src_boxes[:, 2] - src_boxes[:, 0] + src_boxes[:, 3] - src_boxes[:, 1]) / 4
    ref_size = (ref_boxes[:, 2] - ref_boxes[:, 0] + ref_boxes[:, 3] - ref_boxes[:, 1]) / 4
    gate = cfg.relation_base_distance + src_size[:, None] + ref_size[None, :]

    def inside(px, py, boxes):
        return (px >= boxes[0]) & (px < boxes[2]) & (py >= boxes[1]) & (py < boxes[3])

    src_in_ref = inside(sx, sy, [ref_boxes[None, :, k] for k in range(4)])
    ref_in_src = inside(rx, ry, [src_boxes[:, k : k + 1] for k in range(4)])
    return {
        "sector": sector,
        "adjacent": adjacent,
        "distance": distance,
        "near": distance <= gate,
        "possible": distance <= gate * cfg.relation_possible_slack,
        "contained": src_in_ref | ref_in_src,
    }


def _relation_rows(
    rel: dict, mask: np.ndarray, definite: np.ndarray, src_kind: int, ref_kind: int,
    src_index: np.ndarray, ref_index: np.ndarray,
) -> RelationTable:  # fmt: skip
    keep = mask & rel["possible"] & ~rel["contained"]
    s, r = np.nonzero(keep)
    return RelationTable(
        source_kind=np.full(s.size, src_kind, dtype=np.int8),
        source=src_index[s].astype(np.int32),
        reference_kind=np.full(s.size, ref_kind, dtype=np.int8),
        reference=ref_index[r].astype(np.int32),
        direction=rel["sector"][s, r].astype(np.int8),
        adjacent=rel["adjacent"][s, r].astype(np.int8),
        distance=rel["distance"][s, r].astype(np.float32),
        definite=(definite & rel["near"] & (rel["adjacent"] < 0))[s, r],
    )


# --------------------------------------------------------------------------------------------------
# Extremes, size, colour


def extreme_labels(
    centres: np.ndarray, categories: list[str], cutoff: np.ndarray, width: int, height: int,
    margin_fraction: float,
) -> list[list[str]]:  # fmt: skip
    """Per instance, the extreme labels it holds (see module docstring)."""
    labels: list[list[str]] = [[] for _ in categories]
    cats = np.array(categories)
    for category in sorted(set(categories)):
        members = np.flatnonzero(cats == category)
        if members.size < 2:
            continue
        for label, coord, sign, length in (
            ("topmost", centres[members, 1], 1, height),
            ("bottommost", centres[members, 1], -1, height),
            ("leftmost", centres[members, 0], 1, width),
            ("rightmost", centres[members, 0], -1, width),
        ):
            order = np.argsort(sign * coord, kind="stable")
            lead = members[order[0]]
            gap = abs(coord[order[0]] - coord[order[1]])
            if not cutoff[lead] and gap > margin_fraction * length:
                labels[lead].append(label)
    return labels


def size_labels(
    areas: np.ndarray, visible_ratio: np.ndarray, categories: list[str], cutoff: np.ndarray,
    ratio: float,
) -> list[list[str]]:  # fmt: skip
    """Per instance, ``largest``/``smallest`` on mask areas (truncated ones by estimated size)."""
    labels: list[list[str]] = [[] for _ in categories]
    estimate = areas / np.maximum(visible_ratio, 1e-3)
    cats = np.array(categories)
    for category in sorted(set(categories)):
        members = np.flatnonzero(cats == category)
        if members.size < 2:
            continue
        order = members[np.argsort(-estimate[members], kind="stable")]
        if not cutoff[order[0]] and estimate[order[0]] > ratio * estimate[order[1]]:
            labels[order[0]].append("largest")
        order = members[np.argsort(estimate[members], kind="stable")]
        if not cutoff[order[0]] and estimate[order[0]] * ratio < estimate[order[1]]:
            labels[order[0]].append("smallest")
    return labels


def classify_colors(
    hsv: np.ndarray, owner: np.ndarray, count: int, cfg: ColorConfig, achromatic_only: np.ndarray,
    visible: np.ndarray | None = None,
) -> list[tuple[str | None, list[str]]]:  # fmt: skip
    """Colour names of ``count`` objects from the HSV values of their pixels.

    Args:
        hsv: (P, 3) uint8 OpenCV HSV (H 0..179, S and V 0..255) of all objects' pixels.
        owner: (P,) index of the object each pixel belongs to.
        achromatic_only: (count,) bool, objects named only light/dark (buildings, water).
        visible: (count,) bool, objects a reader sees (default all). Below ``min_pixels`` an
            object never has a definite colour; a visible one still shows its colours, so
            every name with ``possible_share`` of its pixels is possible (a blue sliver blocks
            "the blue car"); an invisible one is only light or dark.

    Returns:
        per object ``(color, possible)``: the definite name or None (ambiguous), and every name
        holding at least ``possible_share`` of the pixels (light and dark when ambiguous).
        Rules, in order, on pixel shares: light >= dominance; dark >= dominance; light+chromatic
        >= dominance with light the largest; the same for dark; chromatic >= dominance and one
        hue name >= hue_dominance of the chromatic pixels; otherwise ambiguous.
    """
    saturation = hsv[:, 1].astype(np.float32) * (100.0 / 255.0)
    value = hsv[:, 2].astype(np.float32) * (100.0 / 255.0)
    achromatic = (saturation < cfg.achromatic_saturation) | (value < cfg.dark_value)
    name = np.where(achromatic, np.where(value >= cfg.light_value, 0, 1), _HUE_TO_COLOR[hsv[:, 0]])
    table = np.bincount(owner * len(COLORS) + name, minlength=count * len(COLORS))
    table = table.reshape(count, len(COLORS)).astype(np.float64)
    pixels = table.sum(axis=1)
    shares = table / np.maximum(pixels, 1)[:, None]
    results = []
    for k in range(count):
        if pixels[k] < cfg.min_pixels:
            possible = set(ACHROMATIC)
            if visible is None or visible[k]:
                possible |= {COLORS[i] for i in np.flatnonzero(shares[k] >= cfg.possible_share)}
                if achromatic_only[k]:
                    possible &= set(ACHROMATIC)
            results.append((None, [c for c in COLORS if c in possible]))
            continue
        light, dark = shares[k, 0], shares[k, 1]
        chroma = 1.0 - light - dark
        color = None
        if light >= cfg.dominance:
            color = "light"
        elif dark >= cfg.dominance:
            color = "dark"
        elif light + chroma >= cfg.dominance and light >= max(dark, chroma):
            color = "light"
        elif dark + chroma >= cfg.dominance and dark >= max(light, chroma):
            color = "dark"
        elif chroma >= cfg.dominance:
            top = int(np.argmax(shares[k, 2:])) + 2
            if shares[k, top] / chroma >= cfg.hue_dominance:
                color = COLORS[top]
        possible = {COLORS[i] for i in np.flatnonzero(shares[k] >= cfg.possible_share)}
        if achromatic_only[k]:
            possible &= set(ACHROMATIC)
            if color not in ACHROMATIC:
                color = None
        if color is None:
            possible |= set(ACHROMATIC)
        else:
            possible.add(color)
        results.append((color, [c for c in COLORS if c in possible]))
    return results


def classify_color(
    hsv: np.ndarray, cfg: ColorConfig, achromatic_only: bool = False
) -> tuple[str | None, list[str]]:
    """:func:`classify_colors` for the (N, 3) HSV pixels of one object."""
    owner = np.zeros(hsv.shape[0], dtype=np.int64)
    return classify_colors(hsv, owner, 1, cfg, np.array([achromatic_only]))[0]


# --------------------------------------------------------------------------------------------------
# Groups


def box_gaps(boxes: np.ndarray) -> np.ndarray:
    """(N, N) smallest distance between boxes (0 when they touch or overlap)."""
    gx = np.maximum(
        0,
        np.maximum(boxes[:, None, 0], boxes[None, :, 0])
        - np.minimum(boxes[:, None, 2], boxes[None, :, 2]),
    )
    gy = np.maximum(
        0,
        np.maximum(boxes[:, None, 1], boxes[None, :, 1])
        - np.minimum(boxes[:, None, 3], boxes[None, :, 3]),
    )
    return np.hypot(gx, gy)


def cluster_boxes(boxes: np.ndarray, eps: float, min_samples: int, max_size: int) -> np.ndarray:
    """DBSCAN on box gaps; labels (N,) with -1 for noise, clusters numbered by first member.

    Core points have ``min_samples`` boxes (themselves included) within ``eps``; clusters are
    connected core points plus the border points next to them (a border point joins its nearest
    core point's cluster). Clusters larger than ``max_size`` are dissolved into noise.
    """
    count = boxes.shape[0]
    labels = np.full(count, -1, dtype=np.int64)
    if count < min_samples:
        return labels
    gaps = box_gaps(boxes.astype(np.float64))
    adjacent = gaps <= eps
    core = adjacent.sum(axis=1) >= min_samples
    core_index = np.flatnonzero(core)
    if core_index.size == 0:
        return labels
    _, components = connected_components(adjacent[np.ix_(core_index, core_index)], directed=False)
    labels[core_index] = components
    for point in np.flatnonzero(~core):
        near_cores = core_index[adjacent[point, core_index]]
        if near_cores.size:
            labels[point] = labels[near_cores[np.argmin(gaps[point, near_cores])]]
    renumbered = np.full(count, -1, dtype=np.int64)
    next_label = 0
    for point in range(count):
        label = labels[point]
        if label < 0:  # noise, or a cluster already numbered or dissolved (-2)
            continue
        members = labels == label
        if members.sum() <= max_size:
            renumbered[members] = next_label
            next_label += 1
        labels[members] = -2  # visited
    return renumbered


def _group(
    group_id: int, kind: str, category: str, member_ids: list[str], rles: list[dict],
    centroid: tuple[float, float], rules: RulesConfig, width: int, height: int,
) -> Group:  # fmt: skip
    rle = rles[0] if len(rles) == 1 else merge_rles(rles)
    area, bbox = rle_area_bbox(rle)
    cell, cells = grid_candidates(*centroid, width, height, rules.grid_border_fraction)
    return Group(
        id=group_id,
        kind=kind,
        category=category,
        member_ids=member_ids,
        rle=rle,
        bbox=bbox,
        area=area,
        centroid=(round(float(centroid[0]), 2), round(float(centroid[1]), 2)),
        cell=cell,
        cells=cells,
    )


def build_groups(
    patch: Patch, centres: np.ndarray, cutoff: np.ndarray, cfg: RulesConfig
) -> list[Group]:
    """Clusters, class-wide groups, regions and the vehicle pair, with ids from one allocator."""
    instances = patch.instances
    categories = [i.category for i in instances]
    order = sorted(set(categories), key=lambda key: class_by_key(key).id)
    groups: list[Group] = []
    next_cluster = CLUSTER_ID_START
    for category in order:
        members = [k for k, c in enumerate(categories) if c == category and not cutoff[k]]
        boxes = np.array([instances[k].bbox for k in members], dtype=np.float64).reshape(-1, 4)
        labels = cluster_boxes(
            boxes, cfg.cluster_eps, cfg.cluster_min_samples, cfg.cluster_max_size
        )
        for label in range(labels.max(initial=-1) + 1):
            chosen = [members[k] for k in np.flatnonzero(labels == label)]
            groups.append(
                _group(
                    next_cluster,
                    "cluster",
                    category,
                    [instances[k].id for k in chosen],
                    [instances[k].rle for k in chosen],
                    tuple(centres[chosen].mean(axis=0)),
                    cfg,
                    patch.width,
                    patch.height,
                )  # fmt: skip
            )
            next_cluster += 1
    region_by_category = {r.category: r for r in patch.regions}
    semantic = sorted(set(order) | set(region_by_category), key=lambda key: class_by_key(key).id)
    next_semantic = SEMANTIC_ID_START
    for category in semantic:
        members = [k for k, c in enumerate(categories) if c == category]
        if category in region_by_category:
            region = region_by_category[category]
            _, (x0, y0, x1, y1) = rle_area_bbox(region.rle)
            group = _group(
                next_semantic, "region", category, [instances[k].id for k in members],
                [region.rle], ((x0 + x1) / 2, (y0 + y1) / 2), cfg, patch.width, patch.height,
            )  # fmt: skip
        elif len(members) >= 2:
            group = _group(
                next_semantic, "class", category, [instances[k].id for k in members],
                [instances[k].rle for k in members], tuple(centres[members].mean(axis=0)),
                cfg, patch.width, patch.height,
            )  # fmt: skip
        else:
            continue
        groups.append(group)
        next_semantic += 1
    vehicles = [k for k, c in enumerate(categories) if c in VEHICLE_PAIR]
    if {categories[k] for k in vehicles} == set(VEHICLE_PAIR):
        groups.append(
            _group(
                VEHICLE_PAIR_ID,
                "vehicle_pair",
                "vehicle_pair",
                [instances[k].id for k in vehicles],
                [instances[k].rle for k in vehicles],
                tuple(centres[vehicles].mean(axis=0)),
                cfg,
                patch.width,
                patch.height,
            )  # fmt: skip
        )
    return groups


def visibly_present(
    areas: np.ndarray, visible_ratio: np.ndarray, cutoff: np.ndarray, cfg: RulesConfig
) -> np.ndarray:
    """(N,) bool: instances a reader sees: every non-cut-off one, and cut-off ones showing at
    least ``visible_cutoff_ratio`` of the object or ``visible_cutoff_pixels`` pixels."""
    return (
        ~cutoff | (visible_ratio >= cfg.visible_cutoff_ratio) | (areas >= cfg.visible_cutoff_pixels)
    )


def count_blockers(
    patch: Patch, groups: list[Group], visible: np.ndarray, cutoff: np.ndarray, cfg: RulesConfig
) -> list[CountBlocker]:
    """Clusters as a reader sees them, with the visibly present cut-off instances.

    The written clusters are built from non-cut-off instances only. Clustering again with the
    visible cut-off ones added, a written cluster whose member set is not among the seen
    clusters gets ``ambiguous_count`` (the picture shows another count: "the group of 2 large
    vehicles" beside a visible third), and every seen cluster holding a cut-off instance becomes
    a :class:`~datagen.records.CountBlocker` of its size. Marks ``groups`` in place.
    """
    instances = patch.instances
    categories = [i.category for i in instances]
    extra = {categories[k] for k in np.flatnonzero(visible & cutoff)}
    blockers: list[CountBlocker] = []
    for category in sorted(extra, key=lambda key: class_by_key(key).id):
        seen = [k for k, c in enumerate(categories) if c == category and visible[k]]
        boxes = np.array([instances[k].bbox for k in seen], dtype=np.float64).reshape(-1, 4)
        labels = cluster_boxes(
            boxes, cfg.cluster_eps, cfg.cluster_min_samples, cfg.cluster_max_size
        )
        seen_sets = []
        for label in range(labels.max(initial=-1) + 1):
            chosen = [seen[k] for k in np.flatnonzero(labels == label)]
            seen_sets.append(frozenset(instances[k].id for k in chosen))
            if cutoff[chosen].any():
                x0, y0, x1, y1 = boxes[labels == label].T
                centre = (((x0 + x1) / 2).mean(), ((y0 + y1) / 2).mean())
                _, cells = grid_candidates(
                    *centre, patch.width, patch.height, cfg.grid_border_fraction
                )
                blockers.append(CountBlocker(category, len(chosen), cells))
        for group in groups:
            if group.kind == "cluster" and group.category == category:
                group.ambiguous_count = frozenset(group.member_ids) not in seen_sets
    return blockers


# --------------------------------------------------------------------------------------------------
# One patch


def derive_rules(patch: Patch, image: np.ndarray, cfg: RulesConfig) -> PatchRules:
    """All rule attributes, groups and relations of one patch.

    Args:
        image: (H, W, 3) uint8 RGB patch (for colours).
    """
    instances = patch.instances
    count = len(instances)
    boxes = np.array([i.bbox for i in instances], dtype=np.float64).reshape(-1, 4)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    cutoff = np.array([i.is_cutoff for i in instances], dtype=bool)
    categories = [i.category for i in instances]
    areas = np.array([i.area for i in instances], dtype=np.float64)
    ratios = np.array([i.visible_ratio for i in instances], dtype=np.float64)
    extremes = extreme_labels(
        centres, categories, cutoff, patch.width, patch.height, cfg.extreme_margin_fraction
    )
    sizes = size_labels(areas, ratios, categories, cutoff, cfg.size_ratio)
    owner, ys, xs = rle_pixels([i.rle for i in instances])
    hsv = np.zeros((0, 3), dtype=np.uint8)
    if ys.size:
        hsv = cv2.cvtColor(image[ys, xs][:, None, :], cv2.COLOR_RGB2HSV)[:, 0, :]
    only_light_dark = np.array([c in NO_LOCATION_CLASSES for c in categories], dtype=bool)
    visible = visibly_present(areas, ratios, cutoff, cfg)
    colors = classify_colors(hsv, owner, count, cfg.color, only_light_dark, visible)
    attributes = []
    for k in range(count):
        color, possible_colors = colors[k]
        cell, cells = grid_candidates(
            *centres[k], patch.width, patch.height, cfg.grid_border_fraction
        )
        attributes.append(
            InstanceAttributes(
                centroid=(float(centres[k, 0]), float(centres[k, 1])),
                cell=cell,
                cells=cells,
                extremes=extremes[k],
                sizes=sizes[k],
                color=color,
                colors=possible_colors,
            )
        )
    groups = build_groups(patch, centres, cutoff, cfg)
    blockers = count_blockers(patch, groups, visible, cutoff, cfg)
    clusters = [g for g in groups if g.kind == "cluster"]
    group_index = {g.id: k for k, g in enumerate(groups)}
    tables = []
    if count:
        rel = pairwise_relations(boxes, centres, boxes, centres, cfg)
        not_self = ~np.eye(count, dtype=bool)
        definite_ref = np.broadcast_to(~cutoff[None, :], (count, count))
        index = np.arange(count)
        tables.append(_relation_rows(rel, not_self, definite_ref, INSTANCE, INSTANCE, index, index))
    if clusters and count:
        c_boxes = np.array([g.bbox for g in clusters], dtype=np.float64)
        c_centres = np.array([g.centroid for g in clusters], dtype=np.float64)
        c_index = np.array([group_index[g.id] for g in clusters])
        ids = [i.id for i in instances]
        member = np.array([[ids[k] in g.member_ids for g in clusters] for k in range(count)])
        rel = pairwise_relations(boxes, centres, c_boxes, c_centres, cfg)
        # "a group of 2 large vehicles" is no reference where the picture shows another count.
        countable = np.array([not g.ambiguous_count for g in clusters])
        definite = np.broadcast_to(countable[None, :], member.shape)
        tables.append(
            _relation_rows(rel, ~member, definite, INSTANCE, GROUP, np.arange(count), c_index)
        )
        rel = pairwise_relations(c_boxes, c_centres, c_boxes, c_centres, cfg)
        not_self = ~np.eye(len(clusters), dtype=bool)
        definite = not_self & countable[None, :]
        tables.append(_relation_rows(rel, not_self, definite, GROUP, GROUP, c_index, c_index))
    return PatchRules(patch, attributes, groups, RelationTable.concat(tables), blockers)


# --------------------------------------------------------------------------------------------------
# Stage


def rules_dir(work_dir: Path, split: str) -> Path:
    return Path(work_dir) / "stages" / "rules" / split


def _patch_unit(payload: dict) -> dict:
    work = Path(payload["work_dir"])
    source_dir = patch_dir(work, payload["source"], payload["split"])
    patch = Patch.from_dict(read_json(source_dir / "annotations" / f"{payload['name']}.json"))
    image = read_rgb(source_dir / "images" / f"{patch.name}.png")
    rules = derive_rules(patch, image, payload["cfg"])
    out = rules_dir(work, payload["split"]) / f"{patch.name}.json"
    atomic_write_json(out, rules.to_dict(), keep_identical=True)
    return {
        "outputs": [str(out.relative_to(work))],
        "counts": {
            "patches": 1,
            "groups": len(rules.groups),
            "relations": len(rules.relations),
            "definite_relations": int(rules.relations.definite.sum()),
        },
    }


def patch_units(cfg: PipelineConfig) -> list[tuple[str, dict]]:
    """``(split/name, payload)`` for every patch the source stages produced, sorted."""
    units = []
    for source, splits in (("isaid", cfg.isaid.splits), ("loveda", cfg.loveda.splits)):
        if not getattr(cfg, source).enabled:
            continue
        require_complete(cfg.work_path, source)
        for split in splits:
            for name in read_json(patch_dir(cfg.work_path, source, split) / "index.json"):
                units.append(
                    (
                        f"{split}/{name}",
                        dict(work_dir=str(cfg.work_path), source=source, split=split, name=name),
                    )
                )
    return sorted(units, key=lambda unit: unit[0])


def upstream_fingerprint(work_dir: Path, stages: list[str]) -> list[str]:
    return [
        (Path(work_dir) / ".state" / s / "fingerprint").read_text().strip()
        for s in stages
        if (Path(work_dir) / ".state" / s / "fingerprint").is_file()
    ]


def run_rules(cfg: PipelineConfig, overwrite: bool = False) -> dict:
    """Derive rules for every patch: ``<work_dir>/stages/rules/{split}/<name>.json``."""
    units = patch_units(cfg)
    for _, payload in units:
        payload["cfg"] = cfg.rules
        source_dir = patch_dir(cfg.work_path, payload["source"], payload["split"])
        payload[INPUTS_KEY] = unit_inputs(
            produced=[
                source_dir / "annotations" / f"{payload['name']}.json",
                source_dir / "images" / f"{payload['name']}.png",
            ]
        )
    state = StageState(
        cfg.work_path,
        "rules",
        fingerprint("rules", cfg.rules, upstream_fingerprint(cfg.work_path, ["isaid", "loveda"])),
        [cfg.work_path / "stages" / "rules"],
    )
    results = run_units(
        state, cfg, units, _patch_unit, desc="rules", unit="patch", overwrite=overwrite
    )
    return complete_stage(state, results)
