"""In-memory patch records passed between stages, and their JSON form on disk.

A :class:`Patch` is what the source stages produce: one 480x480 image window with its instances
(COCO RLE masks at patch size) and, for LoveDA, class-wide land-cover regions. The rules stage adds
a :class:`PatchRules` (attributes, groups, relations), the expressions stage a list of targets with
kept expressions. Category fields hold keys of :mod:`datagen.classes`. The RLE helpers live in
:mod:`aerialformats.rle` (re-exported here for the stages).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from aerialformats.rle import (
    decode_rle,
    encode_mask,
    merge_rles,
    rle_area_bbox,
    rle_pixels,
    rle_runs,
)

__all__ = [
    "CountBlocker",
    "Group",
    "Instance",
    "Patch",
    "PatchRules",
    "Region",
    "RelationTable",
    "decode_rle",
    "encode_mask",
    "merge_rles",
    "rle_area_bbox",
    "rle_pixels",
    "rle_runs",
]


def shallow_dict(record) -> dict:
    """A dataclass's fields as a dict, values shared, not copied.

    For JSON writing only: ``dataclasses.asdict`` deep-copies every list and mask dict, which
    was a fifth of the CPU time of the isaid -> rules -> expressions chain.
    """
    return {f.name: getattr(record, f.name) for f in fields(record)}


@dataclass
class Instance:
    """One object in a patch. ``bbox`` is ``(xmin, ymin, xmax, ymax)``, max exclusive.

    ``visible_ratio`` is the share of the whole object (in the source image) inside the window,
    both measured on the raster; ``is_cutoff`` marks objects too truncated to be referred to.
    """

    id: str
    category: str
    bbox: tuple[int, int, int, int]
    area: int
    rle: dict
    visible_ratio: float = 1.0
    is_cutoff: bool = False


@dataclass
class Region:
    """All pixels of one land-cover class in a patch (LoveDA)."""

    category: str
    area: int
    rle: dict


@dataclass
class Patch:
    """One patch: ``window`` is ``(x, y, w, h)`` in source pixels, scaled by ``scale`` to the
    ``width`` x ``height`` patch."""

    name: str
    split: str
    source: str
    source_image: str
    window: tuple[int, int, int, int]
    scale: float
    width: int
    height: int
    instances: list[Instance] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The JSON form (nested records as dicts)."""
        data = shallow_dict(self)
        data["instances"] = [shallow_dict(i) for i in self.instances]
        data["regions"] = [shallow_dict(r) for r in self.regions]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Patch:
        data = dict(data)
        data["window"] = tuple(data["window"])
        data["instances"] = [
            Instance(**{**i, "bbox": tuple(i["bbox"])}) for i in data.get("instances", [])
        ]
        data["regions"] = [Region(**r) for r in data.get("regions", [])]
        return cls(**data)


@dataclass
class Group:
    """A group target. ``kind``: ``cluster`` (DBSCAN), ``class`` (all instances of a category),
    ``region`` (LoveDA land cover), ``vehicle_pair`` (all small and large vehicles)."""

    id: int
    kind: str
    category: str
    member_ids: list[str]
    rle: dict
    bbox: tuple[int, int, int, int]
    area: int
    centroid: tuple[float, float]
    cell: int
    cells: list[int]
    # Clusters only: a visibly present cut-off instance would join it (or merge it with another
    # cluster) in the reader's eyes, so its member count is not what the picture shows.
    ambiguous_count: bool = False

    @property
    def size(self) -> int:
        return len(self.member_ids)

    @property
    def target_type(self) -> str:
        return "semantic" if self.kind in ("class", "region") else "group"


RELATION_COLUMNS = (
    "source_kind",
    "source",
    "reference_kind",
    "reference",
    "direction",
    "adjacent",
    "distance",
    "definite",
)
INSTANCE, GROUP = 0, 1


@dataclass
class RelationTable:
    """Spatial relations, one row per (source, reference) pair, as parallel arrays (M,).

    ``source_kind``/``reference_kind`` are :data:`INSTANCE` (index into ``patch.instances``) or
    :data:`GROUP` (index into ``groups``). Row m says: the source lies in sector
    ``direction[m]`` (0..7, see :data:`datagen.rules.DIRECTION_PHRASES`) of the reference;
    ``adjacent[m]`` is the neighbouring sector a reader might also name (-1 when the angle is
    well inside its sector). ``definite`` rows are close, unambiguous and refer to a fully
    visible object, so they may be written as expressions; the other rows only block.
    """

    source_kind: np.ndarray
    source: np.ndarray
    reference_kind: np.ndarray
    reference: np.ndarray
    direction: np.ndarray
    adjacent: np.ndarray
    distance: np.ndarray
    definite: np.ndarray

    @classmethod
    def empty(cls) -> RelationTable:
        return cls(*(np.zeros(0, dtype=_RELATION_DTYPES[c]) for c in RELATION_COLUMNS))

    @classmethod
    def concat(cls, tables: list[RelationTable]) -> RelationTable:
        if not tables:
            return cls.empty()
        return cls(*(np.concatenate([getattr(t, c) for t in tables]) for c in RELATION_COLUMNS))

    def __len__(self) -> int:
        return int(self.source.shape[0])

    def to_dict(self) -> dict:
        return {
            c: (np.round(getattr(self, c), 2) if c == "distance" else getattr(self, c)).tolist()
            for c in RELATION_COLUMNS
        }

    @classmethod
    def from_dict(cls, data: dict) -> RelationTable:
        return cls(*(np.asarray(data[c], dtype=_RELATION_DTYPES[c]) for c in RELATION_COLUMNS))


_RELATION_DTYPES = {
    "source_kind": np.int8,
    "source": np.int32,
    "reference_kind": np.int8,
    "reference": np.int32,
    "direction": np.int8,
    "adjacent": np.int8,
    "distance": np.float32,
    "definite": bool,
}


@dataclass
class InstanceAttributes:
    """Rule attributes of one instance.

    ``cell`` is the 3x3 grid cell (row-major 0..8) of the centroid, or -1 when the centroid is
    near a grid line; ``cells`` are all cells a reader might name. ``color`` is the definite
    colour name or None; ``colors`` all names a reader might use.
    """

    centroid: tuple[float, float]
    cell: int
    cells: list[int]
    extremes: list[str]
    sizes: list[str]
    color: str | None
    colors: list[str]


@dataclass
class CountBlocker:
    """A cluster as a reader sees it, counting visibly present cut-off instances: never a target
    of its own, it blocks "the group of ``size`` <category>" expressions in ``cells``."""

    category: str
    size: int
    cells: list[int]


@dataclass
class PatchRules:
    patch: Patch
    attributes: list[InstanceAttributes]
    groups: list[Group]
    relations: RelationTable
    count_blockers: list[CountBlocker] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "patch": self.patch.to_dict(),
            "attributes": [shallow_dict(a) for a in self.attributes],
            "groups": [shallow_dict(g) for g in self.groups],
            "relations": self.relations.to_dict(),
            "count_blockers": [shallow_dict(b) for b in self.count_blockers],
        }

    @classmethod
    def from_dict(cls, data: dict) -> PatchRules:
        return cls(
            patch=Patch.from_dict(data["patch"]),
            attributes=[
                InstanceAttributes(**{**a, "centroid": tuple(a["centroid"])})
                for a in data["attributes"]
            ],
            groups=[
                Group(**{**g, "bbox": tuple(g["bbox"]), "centroid": tuple(g["centroid"])})
                for g in data["groups"]
            ],
            relations=RelationTable.from_dict(data["relations"]),
            count_blockers=[CountBlocker(**b) for b in data.get("count_blockers", ())],
        )
