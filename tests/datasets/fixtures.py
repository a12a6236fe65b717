"""Writers of tiny datasets in the real published formats, for tests (importable by other suites).

Each writer puts one dataset under a root folder (``tmp_path``) and returns what a loader must
find there, so tests compare against values fixed here rather than recomputed by the code under
test. Masks are rectangles (or polygons) with known pixel counts; RLE comes from pycocotools, the
refs files are real pickles (the public REFER format), images are real PNG/JPEG/TIFF files.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from aerialseg.datasets.aerial_d_format import (
    AerialGroup,
    AerialObject,
    Expression,
    PatchAnnotation,
    RLEMask,
    write_patch_xml,
)

__all__ = [
    "box_mask",
    "coco_rle",
    "make_aerial_d_patches",
    "write_aerial_d_parquet",
    "write_aerial_d_xml",
    "write_image",
    "write_nwpu_refer",
    "write_refsegrs",
    "write_release_style_xml",
    "write_rrsisd",
    "write_urban1960",
]


def write_image(path: Path, height: int, width: int, seed: int = 0, mode: str = "RGB") -> Path:
    """A random image (format from the suffix)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    Image.fromarray(pixels if channels == 3 else pixels[:, :, 0]).save(path)
    return path


def box_mask(height: int, width: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """uint8 mask with ones in rows y0..y1-1, cols x0..x1-1 ((y1-y0)*(x1-x0) pixels)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def coco_rle(mask: np.ndarray) -> dict:
    """pycocotools RLE with ``counts`` as str (the JSON form)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


# --------------------------------------------------------------------------------------------------
# Aerial-D

PATCH = 48


def make_aerial_d_patches() -> dict[str, list[PatchAnnotation]]:
    """Two train patches (iSAID ``P0001_patch_000000``, LoveDA ``L1234_patch_0``) and one val
    patch (``P0002_patch_000001``), 48x48.

    Train: 10 expressions (6 original, 2 enhanced, 2 unique) on 5 targets: objects 1 (35 px, 4
    expressions) and 2 (100 px, 1); semantic groups 1000001 (59 px, 2) and 1000000 (1152 px, 2,
    LoveDA); cluster group 3001 (96 px, 1). Val: object 7 (64 px, 1 expression).
    """
    vehicle = AerialObject(
        id="1",
        category="small vehicle",
        bbox=(3, 2, 10, 7),
        mask=RLEMask.from_mask(box_mask(PATCH, PATCH, 2, 3, 7, 10)),  # 35 px
        area=35,
        attributes={"possible_colors": "light,dark"},
        expressions=[
            Expression("the small vehicle in the top left", id="0"),
            Expression("the light small vehicle in the top left", id="1"),
            Expression(
                "the little car at the upper left",
                type="enhanced",
                source_id="0",
                model="gemma-aerial-12b",
                prompt_version="v2",
                time="2026-11-24T10:00:00Z",
            ),
            Expression("the small vehicle near the grey roof in the top left", type="unique"),
        ],
    )
    plane = AerialObject(
        id="2",
        category="plane",
        bbox=(20, 20, 30, 30),
        mask=RLEMask.from_mask(box_mask(PATCH, PATCH, 20, 20, 30, 30)),  # 100 px
        area=100,
        expressions=[Expression("the plane in the center", id="0")],
    )
    vehicles = AerialGroup(
        id="1000001",
        category="Small_Vehicle",
        size=2,
        centroid=(10.5, 6.0),
        mask=RLEMask.from_mask(
            box_mask(PATCH, PATCH, 2, 3, 7, 10) | box_mask(PATCH, PATCH, 40, 40, 44, 46)
        ),  # 35 + 24 = 59 px
        expressions=[
            Expression("all small vehicles in the image", id="0"),
            Expression("every small car in the picture", type="enhanced"),
        ],
    )
    cluster = AerialGroup(
        id="3001",
        category="Small_Vehicle",
        size=2,
        instance_ids=["1", "5"],
        mask=RLEMask.from_mask(box_mask(PATCH, PATCH, 0, 0, 8, 12)),  # 96 px
        expressions=[Expression("the group of 2 small vehicles in the top left", id="0")],
    )
    isaid = PatchAnnotation(
        filename="P0001_patch_000000.png",
        width=PATCH,
        height=PATCH,
        objects=[vehicle, plane],
        groups=[vehicles, cluster],
    )
    buildings = AerialGroup(
        id="1000000",
        category="building",
        mask=RLEMask.from_mask(box_mask(PATCH, PATCH, 0, 0, 24, 48)),  # 1152 px
        expressions=[
            Expression("all buildings in the image", id="0"),
            Expression("the buildings with grey roofs across the top half", type="unique"),
        ],
    )
    loveda = PatchAnnotation(
        filename="L1234_patch_0.png", width=PATCH, height=PATCH, groups=[buildings]
    )
    ship = AerialObject(
        id="7",
        category="ship",
        bbox=(0, 40, 8, 48),
        mask=RLEMask.from_mask(box_mask(PATCH, PATCH, 40, 0, 48, 8)),  # 64 px
        expressions=[Expression("the ship in the bottom left", id="0")],
    )
    val = PatchAnnotation(
        filename="P0002_patch_000001.png", width=PATCH, height=PATCH, objects=[ship]
    )
    return {"train": [isaid, loveda], "val": [val]}


def write_aerial_d_xml(root: Path, patches: dict[str, list[PatchAnnotation]] | None = None) -> dict:
    """``root/{split}/{images,annotations}`` with ``write_patch_xml``; returns the patches."""
    patches = patches or make_aerial_d_patches()
    for split, split_patches in patches.items():
        for index, annotation in enumerate(split_patches):
            write_image(root / split / "images" / annotation.filename, PATCH, PATCH, seed=index)
            stem = Path(annotation.filename).stem
            write_patch_xml(annotation, root / split / "annotations" / f"{stem}.xml")
    return patches


def write_release_style_xml(path: Path, annotation: PatchAnnotation) -> Path:
    """Write one patch the way the public release does: Python-repr RLE text with bytes counts,
    rule expressions with ``id`` only, LLM ones with ``type`` only, no ``target_type`` element."""

    def rle_repr(rle: RLEMask) -> str:
        return str({"size": list(rle.size), "counts": rle.counts.encode()})

    def expressions(items) -> str:
        out = []
        for e in items:
            attribute = f'id="{e.id}"' if e.id is not None else f'type="{e.type}"'
            out.append(f"<expression {attribute}>{e.text}</expression>")
        return "<expressions>" + "".join(out) + "</expressions>"

    parts = [
        "<annotation>",
        f"<filename>{annotation.filename}</filename>",
        f"<size><width>{annotation.width}</width><height>{annotation.height}</height></size>",
    ]
    for obj in annotation.objects:
        xmin, ymin, xmax, ymax = obj.bbox
        parts.append(
            f"<object><name>{obj.category}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox><id>{obj.id}</id>"
            f"<segmentation>{rle_repr(obj.mask)}</segmentation><area>{obj.area}</area>"
            f"{expressions(obj.expressions)}</object>"
        )
    if annotation.groups:
        parts.append("<groups>")
        for group in annotation.groups:
            centroid = group.centroid or (0.0, 0.0)
            parts.append(
                f"<group><id>{group.id}</id><size>{group.size}</size>"
                f"<segmentation>{rle_repr(group.mask)}</segmentation>"
                f"<centroid><x>{centroid[0]}</x><y>{centroid[1]}</y></centroid>"
                f"<category>{group.category}</category>{expressions(group.expressions)}</group>"
            )
        parts.append("</groups>")
        # LoveDA files carry a second, unused <groups> element in the release.
        parts.append("<groups><group><id>99</id><category>ignored</category></group></groups>")
    parts.append("</annotation>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts), encoding="utf-8")
    return path


def write_aerial_d_parquet(root: Path, patches: dict[str, list[PatchAnnotation]] | None = None):
    """The Hugging Face layout: ``root/data/{train,validation}-00000-of-00001.parquet``, one row per
    (target, expression), image bytes embedded in every row."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    patches = patches or make_aerial_d_patches()
    for split, split_patches in patches.items():
        rows = []
        for index, annotation in enumerate(split_patches):
            buffer = io.BytesIO()
            rng = np.random.default_rng(index)
            pixels = rng.integers(0, 256, size=(PATCH, PATCH, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(buffer, format="PNG")
            image = {"bytes": buffer.getvalue(), "path": annotation.filename}
            domain = annotation.domain
            for kind, targets in (("individual", annotation.objects), ("group", annotation.groups)):
                for target in targets:
                    for position, expression in enumerate(target.expressions):
                        rows.append(
                            dict(
                                image=image,
                                image_filename=annotation.filename,
                                xml_filename=Path(annotation.filename).stem + ".xml",
                                split=split,
                                domain_name=domain,
                                domain_id=0 if domain == "isaid" else 1,
                                object_type=kind,
                                object_id=target.id if kind == "individual" else "",
                                category=target.category,
                                rle_mask=target.mask.to_dict(),
                                expression_id=expression.id or str(position),
                                expression_text=expression.text,
                                expression_type=expression.kind,
                                group_id=target.id if kind == "group" else "",
                            )
                        )
        out = root / "data" / f"{'validation' if split == 'val' else split}-00000-of-00001.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), out)
    return patches


# --------------------------------------------------------------------------------------------------
# RRSIS-D


def write_rrsisd(root: Path) -> dict:
    """Three 40x40 images; refs: 2 train (one with two sentences), 1 val, 1 test, 1 empty sentence
    (ref 1), 1 ref of a split no loader serves (``testA``, ref 4). Two sentences' ``raw`` and
    ``sent`` differ (case, punctuation).

    Returns ``{split: [(img_id, target_id, expr_id, raw text, mask_pixels, category)]}``.
    """
    size = 40
    images, annotations = [], []
    boxes = {1: (0, 0, 10, 10), 2: (5, 5, 25, 15), 3: (20, 20, 40, 40), 4: (0, 30, 8, 40)}
    for image_id in (1, 2, 3):
        write_image(root / "images" / "rrsisd" / "JPEGImages" / f"{image_id:05d}.jpg", size, size)
        images.append(
            {"id": image_id, "file_name": f"{image_id:05d}.jpg", "width": size, "height": size}
        )
    owners = {1: 1, 2: 1, 3: 2, 4: 3}
    for ann_id, (y0, x0, y1, x1) in boxes.items():
        annotations.append(
            {
                "id": ann_id,
                "image_id": owners[ann_id],
                "categories_id": 1 if ann_id != 3 else 2,  # the release's misspelled key
                "bbox": [x0, y0, x1, y1],
                "segmentation": [coco_rle(box_mask(size, size, y0, x0, y1, x1))],
                "iscrowd": 0,
            }
        )
    instances = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "vehicle"}, {"id": 2, "name": "airplane"}],
    }
    (root / "instances.json").write_text(json.dumps(instances))

    def sentence(sent_id, raw, sent=None):
        # REFER keeps the annotator's string as `raw` and a lower-cased, re-tokenised `sent`.
        sent = raw if sent is None else sent
        return {"sent_id": sent_id, "sent": sent, "raw": raw, "tokens": sent.split()}

    refs = [
        {"ref_id": 0, "ann_id": 1, "image_id": 1, "split": "train", "category_id": 1,
         "sentences": [sentence(0, "The vehicle in the top-left.", "the vehicle in the top left"),
                       sentence(1, "a small car")]},
        {"ref_id": 1, "ann_id": 2, "image_id": 1, "split": "train", "category_id": 1,
         "sentences": [sentence(2, "the vehicle in the middle"), sentence(3, "  ")]},
        {"ref_id": 2, "ann_id": 3, "image_id": 2, "split": "val", "category_id": 2,
         "sentences": [sentence(4, "the airplane at the bottom right")]},
        {"ref_id": 3, "ann_id": 4, "image_id": 3, "split": "test", "category_id": 1,
         "sentences": [sentence(5, "The vehicle on the LEFT edge", "the vehicle on the left edge")]
        },
        # A split no loader serves (RefCOCO's testA): reported in the log, never loaded.
        {"ref_id": 4, "ann_id": 4, "image_id": 3, "split": "testA", "category_id": 1,
         "sentences": [sentence(6, "the vehicle again")]},
    ]  # fmt: skip
    with open(root / "refs(unc).p", "wb") as stream:
        pickle.dump(refs, stream)
    return {
        "train": [
            ("1", "1", "0", "The vehicle in the top-left.", 100, "vehicle"),
            ("1", "1", "1", "a small car", 100, "vehicle"),
            ("1", "2", "2", "the vehicle in the middle", 200, "vehicle"),
        ],
        "val": [("2", "3", "4", "the airplane at the bottom right", 400, "airplane")],
        "test": [("3", "4", "5", "The vehicle on the LEFT edge", 80, "vehicle")],
    }


# --------------------------------------------------------------------------------------------------
# RefSegRS


def write_refsegrs(root: Path) -> dict:
    """32x32 ``.tif`` images and 0/255 masks (one 3-channel), three split files.

    Returns ``{split: [(img_id, expr_id, text, mask_pixels)]}``.
    """
    size = 32
    masks = {"10": (0, 0, 8, 8), "11": (8, 8, 20, 20), "12": (0, 16, 32, 32)}  # 64, 144, 512 px
    for image_id, (y0, x0, y1, x1) in masks.items():
        write_image(root / "images" / f"{image_id}.tif", size, size, seed=int(image_id))
        mask = box_mask(size, size, y0, x0, y1, x1) * 255
        if image_id == "11":
            mask = np.repeat(mask[:, :, None], 3, axis=2)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(root / "masks" / f"{image_id}.tif")
    lines = {
        "train": ["10 the vehicle in the top left", "11 the road in the middle", "", "10 a car"],
        "val": ["12 the building on the right"],
        "test": ["11 the road in the middle"],
    }
    for split, entries in lines.items():
        (root / f"output_phrase_{split}.txt").write_text("\n".join(entries) + "\n")
    return {
        "train": [
            ("10", "0", "the vehicle in the top left", 64),
            ("11", "1", "the road in the middle", 144),
            ("10", "3", "a car", 64),
        ],
        "val": [("12", "0", "the building on the right", 512)],
        "test": [("11", "0", "the road in the middle", 144)],
    }


# --------------------------------------------------------------------------------------------------
# NWPU-Refer


def write_nwpu_refer(root: Path) -> dict:
    """Two images (40x60, HxW); polygon annotations; refs with a multi-target sentence (two refs
    sharing it), a no-target ref, a Chinese sentence, an empty sentence (ref 3) and a sentence
    whose ``raw`` and ``sent`` differ (ref 3; expected texts are ``raw``).

    Returns ``{split: [(img_id, target_id, text, mask_pixels, subset, target_type)]}``.
    """
    height, width = 40, 60
    for image_id in (1, 2):
        write_image(root / "image" / f"img_{image_id}.jpg", height, width, seed=image_id)

    def square(x0, y0, x1, y1):
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    annotations = [
        {"id": 11, "image_id": 1, "category_id": 1, "segmentation": square(0, 0, 10, 10)},
        {"id": 12, "image_id": 1, "category_id": 1, "segmentation": square(20, 0, 30, 10)},
        {"id": 13, "image_id": 1, "category_id": 2, "segmentation": square(40, 20, 60, 40)},
        {"id": 21, "image_id": 2, "category_id": 2, "segmentation": square(0, 0, 20, 20)},
    ]
    instances = {
        "images": [
            {"id": i, "file_name": f"img_{i}.jpg", "width": width, "height": height} for i in (1, 2)
        ],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "pond"}],
    }
    (root / "new_instances.json").write_text(json.dumps(instances))

    def sentences(*texts):
        # (raw, sent) pairs where they differ, plain strings where they do not.
        pairs = [t if isinstance(t, tuple) else (t, t) for t in texts]
        return [{"sent": sent, "raw": raw, "sent_id": i} for i, (raw, sent) in enumerate(pairs)]

    refs = [
        {"ref_id": 1, "ann_id": 11, "image_id": 1, "split": "train",
         "sentences": sentences("the two cars at the top", "顶部的两辆车")},
        {"ref_id": 2, "ann_id": 12, "image_id": 1, "split": "train",
         "sentences": sentences("the two cars at the top")},
        {"ref_id": 3, "ann_id": 13, "image_id": 1, "split": "train",
         "sentences": sentences(("The pond on the right.", "the pond on the right"), "")},
        {"ref_id": 4, "ann_id": -1, "image_id": 2, "split": "train",
         "sentences": sentences("the airplane in the image")},
        {"ref_id": 5, "ann_id": 21, "image_id": 2, "split": "val",
         "sentences": sentences("the pond in the top left")},
    ]  # fmt: skip
    with open(root / "new_refs(unc).p", "wb") as stream:
        pickle.dump(refs, stream)
    # Polygons follow the COCO rasterisation convention: a 10x10 square covers 10*10 pixels.
    return {
        "train": [
            ("1", "11+12", "the two cars at the top", 200, "multi", "group"),
            ("1", "13", "The pond on the right.", 400, "single", "instance"),
            ("2", "none", "the airplane in the image", 0, "no_target", "instance"),
        ],
        "val": [("2", "21", "the pond in the top left", 400, "single", "instance")],
    }


# --------------------------------------------------------------------------------------------------
# Urban1960SatBench


def write_urban1960(root: Path) -> dict:
    """ISP and SS sub-datasets of 16x16 grey images with class-id PNG masks (one palette PNG).

    Returns ``{split: [(img_id, class_id, text, mask_pixels)]}``.
    """
    size = 16
    isp = root / "Urban1960SatISP"
    ss = root / "Urban1960SatSS"
    isp_masks = {"a": np.zeros((size, size), np.uint8), "b": np.zeros((size, size), np.uint8)}
    isp_masks["a"][:4] = 1  # 64 impervious, 192 natural
    ss_mask = np.zeros((size, size), np.uint8)
    ss_mask[:2] = 1  # 32 building
    ss_mask[2:5] = 3  # 48 water
    ss_mask[5:6] = 5  # 16 farmland (no template)
    for name, mask in isp_masks.items():
        write_image(isp / "image" / f"{name}.png", size, size, mode="L")
        (isp / "mask_gt_ISP").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(isp / "mask_gt_ISP" / f"{name}.png")
    write_image(ss / "image" / "c.png", size, size, mode="L")
    (ss / "mask_gt").mkdir(parents=True, exist_ok=True)
    palette_png = Image.new("P", (size, size))
    palette_png.putdata(ss_mask.ravel().tolist())
    palette_png.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9, 7, 7, 7] + [0] * 750)
    palette_png.save(ss / "mask_gt" / "c.png")
    (isp / "labelled_train.txt").write_text("a.png\nb\n")  # both line forms occur in the wild
    (isp / "labelled_test.txt").write_text("b.png\n")
    (ss / "labelled_train.txt").write_text("c\n")
    (ss / "labelled_test.txt").write_text("c.png\n")
    natural, impervious = (
        "all natural areas and vegetation in the image",
        "all building and road areas in the image",
    )
    return {
        "train": [
            ("isp/a", "0", natural, 192),
            ("isp/a", "1", impervious, 64),
            ("isp/b", "0", natural, 256),
            ("ss/c", "1", "all buildings in the image", 32),
            ("ss/c", "3", "all water in the image", 48),
        ],
        "test": [
            ("isp/b", "0", natural, 256),
            ("ss/c", "1", "all buildings in the image", 32),
            ("ss/c", "3", "all water in the image", 48),
        ],
    }
