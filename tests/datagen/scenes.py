"""Hand-built patches with known answers: boxes or polygons painted in chosen colours."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from datagen.config import RulesConfig
from datagen.expressions import describe_patch
from datagen.records import Instance, Patch, Region, encode_mask
from datagen.rules import derive_rules

SIZE = 480
GREY = (128, 118, 100)  # ground: saturated enough to be "chromatic", so never light or dark
COLORS = {
    "white": (235, 235, 235),
    "black": (25, 25, 28),
    "red": (200, 30, 30),
    "blue": (30, 60, 200),
    "green": (40, 160, 60),
}


def box(id_, category, x0, y0, x1, y1, color="white", cutoff=False, ratio=1.0):
    """An object spec: a filled box [x0, x1) x [y0, y1)."""
    return dict(
        id=str(id_),
        category=category,
        box=(x0, y0, x1, y1),
        color=color,
        cutoff=cutoff,
        ratio=ratio,
    )


def polygon(id_, category, points, color="white", cutoff=False, ratio=1.0):
    """An object spec: a filled polygon (list of (x, y))."""
    return dict(
        id=str(id_), category=category, points=points, color=color, cutoff=cutoff, ratio=ratio
    )


def make_scene(objects, regions=(), size=SIZE, name="P0001_x00000_y00000", source="isaid"):
    """(Patch, RGB image) with each object painted in its colour on a neutral ground."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[:] = GREY
    instances = []
    for spec in objects:
        if "box" in spec:
            x0, y0, x1, y1 = spec["box"]
            mask = np.zeros((size, size), dtype=np.uint8)
            mask[y0:y1, x0:x1] = 1
        else:
            flat = [float(v) for point in spec["points"] for v in point]
            mask = mask_utils.decode(mask_utils.frPyObjects([flat], size, size))[:, :, 0]
        image[mask.astype(bool)] = COLORS[spec["color"]]
        ys, xs = np.nonzero(mask)
        instances.append(
            Instance(
                id=spec["id"],
                category=spec["category"],
                bbox=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                area=int(mask.sum()),
                rle=encode_mask(mask),
                visible_ratio=spec["ratio"],
                is_cutoff=spec["cutoff"],
            )
        )
    region_records = [
        Region(category=category, area=int(mask.sum()), rle=encode_mask(mask))
        for category, mask in regions
    ]
    patch = Patch(
        name=name, split="train", source=source, source_image="P0001.png",
        window=(0, 0, size, size), scale=1.0, width=size, height=size, instances=instances,
        regions=region_records,
    )  # fmt: skip
    return patch, image


def describe(objects, regions=(), cfg: RulesConfig | None = None, **kwargs):
    """Rules and kept expressions of a scene: (rules, {target id: [texts]}) for all targets."""
    patch, image = make_scene(objects, regions, **kwargs)
    rules = derive_rules(patch, image, cfg or RulesConfig())
    record = describe_patch(rules, None, 0)
    texts = {t["id"]: [e["text"] for e in t["expressions"]] for t in record["targets"]}
    return rules, texts, record
