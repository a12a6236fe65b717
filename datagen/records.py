"""In-memory patch records passed between stages, and their JSON form on disk.

A :class:`Patch` is what the source stages produce: one 480x480 image window with its instances
(COCO RLE masks at patch size) and, for LoveDA, class-wide land-cover regions. The rules stage adds
a :class:`PatchRules` (attributes, groups, relations), the expressions stage a list of targets with
kept expressions. Category fields hold keys of :mod:`datagen.classes`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "Group",
    "Instance",
    "Patch",
    "PatchRules",
    "Region",
    "RelationTable",
    "decode_rle",
    "encode_mask",
    "rle_pixels",
    "rle_runs",
]


def encode_mask(mask: np.ndarray) -> dict:
    """(H, W) bool/uint8 -> ``{'size': [h, w], 'counts': str}``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def _coco(rle: dict) -> dict:
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """``{'size', 'counts': str}`` -> (H, W) uint8 {0, 1}."""
    return mask_utils.decode([_coco(rle)])[:, :, 0]


def merge_rles(rles: list[dict]) -> dict:
    """Union of RLE masks of one size, without decoding."""
    merged = mask_utils.merge([_coco(r) for r in rles], intersect=False)
    return {"size": [int(v) for v in merged["size"]], "counts": merged["counts"].decode()}


def rle_runs(counts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths of COCO compressed RLE strings, decoded together with numpy.

    Each value is stored as 5-bit chunks (0x20: more chunks follow; 0x10 in the last chunk:
    negative); from the fourth value on, a value is the difference to the run two places
    earlier. Strings never share a value, so they are parsed as one buffer. (``aerialseg`` has a
    reader of the same format, but datagen workers must not import ``aerialseg``: it loads torch.)

    Returns:
        ``runs`` (V,) int64 (per string: background, foreground, background, ...) and ``owner``
        (V,) int64, the index of the string each run belongs to.
    """
    lengths = np.array([len(c) for c in counts], dtype=np.int64)
    chunks = np.frombuffer("".join(counts).encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if chunks.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    chunk_owner = np.repeat(np.arange(len(counts)), lengths)
    last = (chunks & 0x20) == 0
    starts = np.flatnonzero(np.concatenate(([True], last[:-1])))
    position = np.arange(chunks.size) - np.repeat(starts, np.diff(np.append(starts, chunks.size)))
    values = np.add.reduceat((chunks & 0x1F) << (5 * position), starts)
    negative = (chunks[last] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (position[last][negative] + 1))
    owner = chunk_owner[starts]
    per_string = np.bincount(owner, minlength=len(counts))
    first = np.cumsum(per_string) - per_string
    index = np.arange(values.size) - first[owner]
    runs = values.copy()
    delta = index >= 3
    if delta.any():
        # runs[i] = runs[i - 2] + values[i]: a cumulative sum per (string, parity) chain,
        # started from the run at index 1 or 2 of the string.
        chain = owner * 2 + (index % 2)
        order = np.lexsort((index, chain))
        contrib = np.where(delta, values, 0)[order]
        total = np.cumsum(contrib)
        chain_sorted = chain[order]
        chain_start = np.flatnonzero(
            np.concatenate(([True], chain_sorted[1:] != chain_sorted[:-1]))
        )
        start_of = np.repeat(chain_start, np.diff(np.append(chain_start, order.size)))
        running = total - total[start_of] + contrib[start_of]
        base = values[first[owner[order]] + np.where(index[order] % 2 == 1, 1, 2)]
        runs[order[delta[order]]] = (base + running)[delta[order]]
    return runs, owner


def rle_pixels(rles: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foreground pixels of several RLE masks, in O(total area) (no full-size decode).

    Returns:
        ``(owner, ys, xs)`` (P,) int64: the mask index and coordinates of every pixel.
    """
    if not rles:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    heights = np.array([int(r["size"][0]) for r in rles], dtype=np.int64)
    runs, owner = rle_runs([r["counts"] for r in rles])
    per_string = np.bincount(owner, minlength=len(rles))
    first = np.cumsum(per_string) - per_string
    index = np.arange(runs.size) - first[owner]
    ends = np.cumsum(runs)
    string_offset = (ends - runs)[first[owner]]
    run_start = ends - runs - string_offset
    foreground = index % 2 == 1
    fg_start, fg_len, fg_owner = run_start[foreground], runs[foreground], owner[foreground]
    total = int(fg_len.sum())
    linear = np.repeat(fg_start - (np.cumsum(fg_len) - fg_len), fg_len) + np.arange(total)
    pixel_owner = np.repeat(fg_owner, fg_len)
    height = heights[pixel_owner]
    return pixel_owner, linear % height, linear // height


def rle_area_bbox(rle: dict) -> tuple[int, tuple[int, int, int, int]]:
    """Pixel count and ``(xmin, ymin, xmax, ymax)`` (max exclusive) of an RLE mask."""
    coco = _coco(rle)
    area = int(mask_utils.area(coco))
    x, y, w, h = (int(v) for v in mask_utils.toBbox(coco))
    return area, (x, y, x + w, y + h)


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
        return asdict(self)

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
class PatchRules:
    patch: Patch
    attributes: list[InstanceAttributes]
    groups: list[Group]
    relations: RelationTable

    def to_dict(self) -> dict:
        return {
            "patch": self.patch.to_dict(),
            "attributes": [asdict(a) for a in self.attributes],
            "groups": [asdict(g) for g in self.groups],
            "relations": self.relations.to_dict(),
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
        )
