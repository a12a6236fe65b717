"""The one canonical class table of Aerial-D: id, key, source names, display name, phrases.

Every stage names categories by ``key``; exports write ``name`` (the release's natural names,
"small vehicle", "agriculture") for objects and groups alike, and expressions use ``noun``,
``plural`` and ``region_phrase`` ("all agricultural land in the image"), so one table decides
every spelling (the original pipeline mixed raw iSAID names, natural names and LoveDA names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "CLASSES",
    "LOVEDA_INSTANCE_CLASSES",
    "LOVEDA_REGION_CLASSES",
    "LOVEDA_VALUES",
    "VEHICLE_PAIR",
    "ClassInfo",
    "class_by_key",
    "isaid_class",
    "loveda_class",
]


@dataclass(frozen=True)
class ClassInfo:
    """One category.

    Attributes:
        id: stable category id (1-15 iSAID's own ids, 16-21 LoveDA classes, 22 the vehicle pair).
        key: identifier used inside the pipeline (``small_vehicle``).
        name: display name written to exports (``small vehicle``).
        noun: singular used in expressions (``the small vehicle ...``, ``a water body``).
        plural: plural used in expressions (``the group of 3 small vehicles``).
        region_phrase: the words of "all <region_phrase> in the image".
        source: ``isaid``, ``loveda`` or ``derived``.
        raw: the name (iSAID ``category_name``) or pixel value (LoveDA mask) in the source data.
    """

    id: int
    key: str
    name: str
    noun: str
    plural: str
    region_phrase: str
    source: str
    raw: str | int


def _isaid(id_: int, raw: str, noun: str, plural: str) -> ClassInfo:
    key = noun.replace(" ", "_")
    return ClassInfo(id_, key, noun, noun, plural, plural, "isaid", raw)


CLASSES: tuple[ClassInfo, ...] = (
    _isaid(1, "storage_tank", "storage tank", "storage tanks"),
    _isaid(2, "Large_Vehicle", "large vehicle", "large vehicles"),
    _isaid(3, "Small_Vehicle", "small vehicle", "small vehicles"),
    _isaid(4, "plane", "plane", "planes"),
    _isaid(5, "ship", "ship", "ships"),
    _isaid(6, "Swimming_pool", "swimming pool", "swimming pools"),
    _isaid(7, "Harbor", "harbor", "harbors"),
    _isaid(8, "tennis_court", "tennis court", "tennis courts"),
    _isaid(9, "Ground_Track_Field", "ground track field", "ground track fields"),
    _isaid(10, "Soccer_ball_field", "soccer ball field", "soccer ball fields"),
    _isaid(11, "baseball_diamond", "baseball diamond", "baseball diamonds"),
    _isaid(12, "Bridge", "bridge", "bridges"),
    _isaid(13, "basketball_court", "basketball court", "basketball courts"),
    _isaid(14, "Roundabout", "roundabout", "roundabouts"),
    _isaid(15, "Helicopter", "helicopter", "helicopters"),
    ClassInfo(16, "building", "building", "building", "buildings", "buildings", "loveda", 2),
    ClassInfo(17, "road", "road", "road", "roads", "roads", "loveda", 3),
    ClassInfo(18, "water", "water", "water body", "water bodies", "water", "loveda", 4),
    ClassInfo(19, "barren", "barren", "barren area", "barren areas", "barren land", "loveda", 5),
    ClassInfo(20, "forest", "forest", "forest area", "forest areas", "forest areas", "loveda", 6),
    ClassInfo(
        21,
        "agriculture",
        "agriculture",
        "agricultural field",
        "agricultural fields",
        "agricultural land",
        "loveda",
        7,
    ),
    ClassInfo(
        22,
        "vehicle_pair",
        "vehicle pair",
        "vehicle",
        "vehicles",
        "small and large vehicles",
        "derived",
        "",
    ),
)

VEHICLE_PAIR = ("small_vehicle", "large_vehicle")
# LoveDA mask values: 0 no-data and 1 background are not classes of Aerial-D.
LOVEDA_VALUES = {c.raw: c for c in CLASSES if c.source == "loveda"}
LOVEDA_INSTANCE_CLASSES = ("building", "water")
LOVEDA_REGION_CLASSES = ("building", "road", "water", "barren", "forest", "agriculture")

_BY_KEY = {c.key: c for c in CLASSES}
_ISAID_BY_NAME = {
    re.sub(r"[\s_]+", " ", str(c.raw)).lower(): c for c in CLASSES if c.source == "isaid"
}
_ISAID_BY_ID = {c.id: c for c in CLASSES if c.source == "isaid"}


def class_by_key(key: str) -> ClassInfo:
    """The class of a pipeline key; ``KeyError`` names the unknown key."""
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"unknown category key {key!r}") from None


def isaid_class(category_name: str | None, category_id: int | None = None) -> ClassInfo | None:
    """The class of an iSAID annotation by ``category_name`` (any case, ``_`` or space), falling
    back to ``category_id`` when the name is absent; ``None`` when neither is known."""
    if category_name:
        return _ISAID_BY_NAME.get(re.sub(r"[\s_]+", " ", category_name.strip()).lower())
    if category_id is not None:
        return _ISAID_BY_ID.get(int(category_id))
    return None


def loveda_class(value: int) -> ClassInfo | None:
    """The class of a LoveDA mask value (``None`` for no-data 0 and background 1)."""
    return LOVEDA_VALUES.get(int(value))
