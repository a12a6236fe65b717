"""Stage ``isaid``: iSAID images (COCO polygons, up to ~13k px) -> 480x480 patches.

Per source image (one work unit): windows of ``patch_size`` every ``stride`` px plus a final
window flush with the right/bottom border (the original never covered that strip), images smaller
than a patch are padded; windows that are mostly black (no-data) are dropped. Annotations are
indexed once per image in an STR-tree over their boxes, and each polygon is rasterised directly
at patch size, translated into the window (pycocotools clips to the canvas), so no mask is ever
larger than a patch.

An object is *cut off* (kept, but never described) when less than ``min_visible_ratio`` of it is
visible, or when it is truncated by the window and fewer than ``min_visible_pixels`` remain.
Both counts are raster areas (the original divided a raster count by a polygon area).

Patch names come from the source image and the window origin (``P0707_x00384_y00768``), never
from completion order.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import shapely
from pycocotools import mask as mask_utils

from datagen.classes import isaid_class
from datagen.config import ISAIDConfig, PipelineConfig, fingerprint
from datagen.records import Instance, Patch
from datagen.stage_state import INPUTS_KEY, StageState, complete_stage, run_units, unit_inputs
from datagen.storage import (
    SourceError,
    atomic_write_json,
    atomic_write_png,
    read_json,
    read_rgb,
    stable_seed,
)
from datagen.synthetic import isaid_image_path, isaid_json_path

__all__ = [
    "SourceAnnotation",
    "extract_isaid_patches",
    "extract_patches",
    "parse_annotations",
    "patch_dir",
    "window_origins",
]


@dataclass
class SourceAnnotation:
    """One validated iSAID annotation: flat polygons (x0, y0, x1, y1, ...) in image pixels."""

    id: str
    category: str
    polygons: list[np.ndarray]
    bbox: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax


def patch_dir(work_dir: Path, source: str, split: str) -> Path:
    return Path(work_dir) / "stages" / source / split


def write_patch(
    work_dir: Path,
    out: Path,
    patch: Patch,
    pixels: np.ndarray,
    compression: int,
    order: str = "rgb",
) -> list[str]:
    """Write a patch's PNG and annotation JSON under ``out``; return both paths relative to
    ``work_dir`` (the unit's outputs, checked on resume). Files that already hold the same bytes
    are left untouched, so a redone source image does not redo its unchanged patches later."""
    image_path = out / "images" / f"{patch.name}.png"
    ann_path = out / "annotations" / f"{patch.name}.json"
    atomic_write_png(image_path, pixels, compression, keep_identical=True, order=order)
    atomic_write_json(ann_path, patch.to_dict(), keep_identical=True)
    return [str(image_path.relative_to(work_dir)), str(ann_path.relative_to(work_dir))]


def window_origins(length: int, patch: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride`` px, plus one flush with the far border."""
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def parse_annotations(
    raw: list[dict], width: int, height: int
) -> tuple[list[SourceAnnotation], Counter, list[str]]:
    """Validate raw COCO annotations of one image.

    Returns the usable annotations, skip counts by reason and messages naming the annotation.
    """
    kept: list[SourceAnnotation] = []
    skips: Counter = Counter()
    messages: list[str] = []

    def skip(reason: str, ann: dict, detail: str) -> None:
        skips[reason] += 1
        if len(messages) < 10:
            messages.append(f"annotation {ann.get('id')}: {detail}")

    for ann in raw:
        info = isaid_class(ann.get("category_name"), ann.get("category_id"))
        if info is None:
            skip("unknown_category", ann, f"unknown category {ann.get('category_name')!r}")
            continue
        segmentation = ann.get("segmentation")
        if not isinstance(segmentation, list) or not segmentation:
            skip("bad_polygon", ann, "segmentation is not a list of polygons")
            continue
        polygons = []
        for poly in segmentation:
            try:
                array = np.asarray(poly, dtype=np.float64)
            except (TypeError, ValueError):
                array = np.zeros(0)
            if array.ndim != 1 or array.size < 6 or array.size % 2 or not np.isfinite(array).all():
                polygons = None
                break
            polygons.append(array)
        if polygons is None:
            skip("bad_polygon", ann, "a polygon needs an even number (>= 6) of finite coordinates")
            continue
        xs = np.concatenate([p[0::2] for p in polygons])
        ys = np.concatenate([p[1::2] for p in polygons])
        bbox = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
        if bbox[2] <= 0 or bbox[3] <= 0 or bbox[0] >= width or bbox[1] >= height:
            skip("polygon_outside_image", ann, f"polygon box {bbox} lies outside {width}x{height}")
            continue
        if bbox[0] < 0 or bbox[1] < 0 or bbox[2] > width or bbox[3] > height:
            skips["polygon_clipped"] += 1  # usable: the part outside the image is never shown
        kept.append(SourceAnnotation(str(ann.get("id")), info.key, polygons, bbox))
    return kept, skips, messages


def _rasterise(polygons: list[np.ndarray], x0: float, y0: float, height: int, width: int) -> dict:
    """COCO RLE (bytes counts) of polygons translated by (-x0, -y0) on a height x width canvas."""
    shifted = []
    for poly in polygons:
        moved = poly.copy()
        moved[0::2] -= x0
        moved[1::2] -= y0
        shifted.append(moved.tolist())
    rles = mask_utils.frPyObjects(shifted, height, width)
    return rles[0] if len(rles) == 1 else mask_utils.merge(rles)


def _full_area(ann: SourceAnnotation) -> int:
    """Raster area of the whole object, on a canvas just covering its box."""
    x0, y0 = math.floor(ann.bbox[0]), math.floor(ann.bbox[1])
    width = math.ceil(ann.bbox[2]) - x0 + 2
    height = math.ceil(ann.bbox[3]) - y0 + 2
    return int(mask_utils.area(_rasterise(ann.polygons, x0, y0, height, width)))


def extract_patches(
    image: np.ndarray,
    annotations: list[SourceAnnotation],
    cfg: ISAIDConfig,
    stem: str,
    split: str,
    source_image: str,
    order: str = "rgb",
) -> tuple[list[tuple[Patch, np.ndarray]], Counter]:
    """Cut one source image into patches.

    Args:
        image: (H, W, 3) uint8 in ``order`` ('rgb', or OpenCV's 'bgr').
        annotations: validated annotations of this image.

    Returns:
        ``(patch, pixels)`` pairs in row-major window order (``pixels`` is a view into
        ``image``, same channel order), and counts.
    """
    size = cfg.patch_size
    height, width = image.shape[:2]
    if height < size or width < size:
        padded = np.zeros((max(height, size), max(width, size), 3), dtype=np.uint8)
        padded[:height, :width] = image
    else:
        padded = image
    # 1 where grey < black_value, in the grey image's own buffer (no bool copy of the image).
    black = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if order == "bgr" else cv2.COLOR_RGB2GRAY)
    cv2.threshold(black, cfg.black_value - 1, 1, cv2.THRESH_BINARY_INV, dst=black)
    xs = window_origins(width, size, cfg.stride)
    ys = window_origins(height, size, cfg.stride)
    origins = [(x, y) for y in ys for x in xs]
    counts: Counter = Counter(windows=len(origins))

    candidates: dict[int, list[int]] = defaultdict(list)
    if annotations:
        tree = shapely.STRtree(shapely.box(*np.array([a.bbox for a in annotations]).T))
        windows = shapely.box(*np.array([(x, y, x + size, y + size) for x, y in origins]).T)
        window_idx, ann_idx = tree.query(windows, predicate="intersects")
        for w, a in zip(window_idx.tolist(), ann_idx.tolist()):
            candidates[w].append(a)
    full_areas: dict[int, int] = {}
    results = []
    for w, (x, y) in enumerate(origins):
        valid = black[y : y + size, x : x + size]  # real pixels only (not the padding)
        if valid.size and cv2.countNonZero(valid) > cfg.max_black_fraction * valid.size:
            counts["windows_black"] += 1
            continue
        instances = []
        for a in sorted(candidates.get(w, ())):
            ann = annotations[a]
            rle = _rasterise(ann.polygons, x, y, size, size)
            area = int(mask_utils.area(rle))
            if area == 0:
                continue
            inside = (
                ann.bbox[0] >= x and ann.bbox[1] >= y
                and ann.bbox[2] <= x + size and ann.bbox[3] <= y + size
            )  # fmt: skip
            if inside:
                ratio = 1.0
            else:
                if a not in full_areas:
                    full_areas[a] = _full_area(ann)
                ratio = min(1.0, area / max(full_areas[a], 1))
            truncated = ratio < cfg.complete_ratio
            cutoff = ratio < cfg.min_visible_ratio or (truncated and area < cfg.min_visible_pixels)
            bx, by, bw, bh = (int(v) for v in mask_utils.toBbox(rle))
            instances.append(
                Instance(
                    id=ann.id,
                    category=ann.category,
                    bbox=(bx, by, bx + bw, by + bh),
                    area=area,
                    rle={"size": [size, size], "counts": rle["counts"].decode()},
                    visible_ratio=round(ratio, 4),
                    is_cutoff=bool(cutoff),
                )
            )
        if not instances:
            counts["windows_empty"] += 1
            continue
        patch = Patch(
            name=f"{stem}_x{x:05d}_y{y:05d}",
            split=split,
            source="isaid",
            source_image=source_image,
            window=(x, y, size, size),
            scale=1.0,
            width=size,
            height=size,
            instances=instances,
        )
        counts["patches"] += 1
        counts["instances"] += len(instances)
        counts["cutoff_instances"] += sum(i.is_cutoff for i in instances)
        results.append((patch, padded[y : y + size, x : x + size]))
    return results, counts


def _image_unit(payload: dict) -> dict:
    cfg: ISAIDConfig = payload["cfg"]
    work = Path(payload["work_dir"])
    # OpenCV's BGR order throughout: the pixels are only sliced and written back.
    image = read_rgb(payload["image_path"], order="bgr")
    height, width = image.shape[:2]
    skips: Counter = Counter()
    messages = []
    if (width, height) != (payload["width"], payload["height"]):
        skips["size_mismatch"] += 1
        messages.append(
            f"{payload['image_path']}: JSON says {payload['width']}x{payload['height']}, "
            f"file is {width}x{height}; using the file's size"
        )
    annotations, ann_skips, ann_messages = parse_annotations(payload["annotations"], width, height)
    skips.update(ann_skips)
    messages += [f"{payload['file_name']}: {m}" for m in ann_messages]
    patches, counts = extract_patches(
        image, annotations, cfg, payload["stem"], payload["split"], payload["file_name"], "bgr"
    )
    out = patch_dir(work, "isaid", payload["split"])
    outputs, names = [], []
    for patch, pixels in patches:
        outputs += write_patch(work, out, patch, pixels, cfg.png_compression, "bgr")
        names.append(patch.name)
    counts["images"] += 1
    return {
        "outputs": outputs,
        "patches": names,
        "counts": dict(counts),
        "skips": dict(skips),
        "messages": messages,
    }


def _load_split(root: Path, split: str) -> dict:
    path = isaid_json_path(root, split)
    if not path.is_file():
        raise FileNotFoundError(f"iSAID annotation file not found: '{path}'")
    try:
        data = read_json(path)
    except ValueError as exc:
        raise SourceError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a COCO mapping with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise SourceError(f"{path}: missing list '{key}'")
    for index, image in enumerate(data["images"]):
        missing = [k for k in ("id", "file_name", "width", "height") if k not in image]
        if missing:
            raise SourceError(f"{path}: images[{index}] lacks fields {missing}")
    return data


def _select_images(images: list[dict], cfg: ISAIDConfig, seed: int, split: str) -> list[dict]:
    images = sorted(images, key=lambda im: str(im["file_name"]))
    if cfg.image_id_range is not None:
        low, high = cfg.image_id_range
        images = [im for im in images if low <= _numeric_id(im) <= high]
    if cfg.num_images is not None and cfg.num_images < len(images):
        rng = np.random.default_rng(stable_seed(seed, "isaid-sample", split))
        chosen = sorted(rng.choice(len(images), size=cfg.num_images, replace=False).tolist())
        images = [images[i] for i in chosen]
    return images


def _numeric_id(image: dict) -> int:
    digits = "".join(ch for ch in Path(str(image["file_name"])).stem if ch.isdigit())
    return int(digits) if digits else int(image["id"])


def extract_isaid_patches(cfg: PipelineConfig, overwrite: bool = False) -> dict:
    """Run the stage over every configured split; returns the stage report.

    Outputs: ``<work_dir>/stages/isaid/{split}/{images/*.png, annotations/*.json}`` and
    ``index.json`` (sorted patch names) per split.
    """
    work = cfg.work_path
    root = cfg.isaid_root()
    units = []
    split_skips: Counter = Counter()
    for split in cfg.isaid.splits:
        data = _load_split(root, split)
        by_image: dict = defaultdict(list)
        image_ids = {im["id"] for im in data["images"]}
        for ann in data["annotations"]:
            if ann.get("image_id") not in image_ids:
                split_skips["annotation_without_image"] += 1
                continue
            by_image[ann["image_id"]].append(ann)
        for image in _select_images(data["images"], cfg.isaid, cfg.seed, split):
            file_name = str(image["file_name"])
            image_path = str(isaid_image_path(root, split, file_name))
            payload = dict(
                cfg=cfg.isaid,
                work_dir=str(work),
                split=split,
                file_name=file_name,
                stem=Path(file_name).stem,
                image_path=image_path,
                width=int(image["width"]),
                height=int(image["height"]),
                annotations=by_image.get(image["id"], []),
            )
            # Resume redoes an image whose annotation records or pixels changed.
            payload[INPUTS_KEY] = unit_inputs(
                sources=[image_path], records=[image, payload["annotations"]]
            )
            units.append((f"{split}/{file_name}", payload))
    state = StageState(
        work,
        "isaid",
        fingerprint("isaid", cfg.seed, cfg.isaid, str(root.resolve())),
        [work / "stages" / "isaid"],
    )
    results = run_units(
        state, cfg, units, _image_unit, desc="isaid patches", unit="image", overwrite=overwrite
    )
    write_index(work, "isaid", cfg.isaid.splits, results)
    return complete_stage(state, results, {"split_skips": dict(split_skips)})


def write_index(work: Path, source: str, splits: list[str], results: dict[str, dict]) -> None:
    """``stages/<source>/<split>/index.json``: the sorted patch names the stage produced."""
    for split in splits:
        names = sorted(
            name
            for key, result in results.items()
            if key.startswith(f"{split}/")
            for name in result.get("patches", ())
        )
        atomic_write_json(patch_dir(work, source, split) / "index.json", names)
