"""Stage ``loveda``: LoveDA tiles (class-id PNG masks) -> patches with instances and regions.

Each tile is resized to one 480x480 patch (``tile_mode='resize'``, the paper's setting; image
with area averaging, mask with nearest neighbour) or cut into a 2x2 grid first (``'crop'``).
Per patch:

- pseudo-instances of building and water: morphological opening then closing, small components
  removed, 8-connected components filtered by area, solidity and aspect ratio (water has no area
  cap by default, so large lakes are instances too);
- one land-cover region per class present (building, road, water, barren, forest,
  agriculture; roads are a class like the others, not a later manual step).

A patch is kept when it has any instance or region, so pure land-cover scenes (forest, farmland)
are part of the data.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from datagen.classes import LOVEDA_INSTANCE_CLASSES, LOVEDA_REGION_CLASSES, class_by_key
from datagen.config import InstanceRule, LoveDAConfig, PipelineConfig, fingerprint
from datagen.isaid_patches import patch_dir, write_index, write_patch
from datagen.records import Instance, Patch, Region, encode_mask
from datagen.stage_state import INPUTS_KEY, StageState, complete_stage, run_units, unit_inputs
from datagen.storage import InputError, read_label_png, read_rgb, stable_seed
from datagen.synthetic import LOVEDA_SPLIT_FOLDERS, loveda_paths

__all__ = ["extract_loveda_patches", "find_instances", "find_regions", "tile_patches"]

MAX_LOVEDA_VALUE = 7


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _open(mask: np.ndarray, radius: int) -> np.ndarray:
    return cv2.morphologyEx(mask, cv2.MORPH_OPEN, _disk(radius)) if radius > 0 else mask


def _close(mask: np.ndarray, radius: int) -> np.ndarray:
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _disk(radius)) if radius > 0 else mask


def find_instances(class_mask: np.ndarray, rule: InstanceRule) -> list[tuple[np.ndarray, tuple]]:
    """Pseudo-instances of one class.

    Args:
        class_mask: (H, W) uint8 {0, 1}.

    Returns:
        ``(mask, bbox)`` per kept component in label order; mask is (H, W) uint8 {0, 1}, bbox
        ``(xmin, ymin, xmax, ymax)`` with max exclusive.
    """
    cleaned = _close(_open(class_mask, rule.open_radius), rule.close_radius)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(cleaned, connectivity=8)
    found = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < rule.min_area or (rule.max_area is not None and area > rule.max_area):
            continue
        if rule.aspect_range is not None and not (
            rule.aspect_range[0] <= w / h <= rule.aspect_range[1]
        ):
            continue
        component = np.zeros_like(class_mask)
        component[y : y + h, x : x + w] = labels[y : y + h, x : x + w] == label
        if rule.min_solidity is not None:
            contours, _ = cv2.findContours(
                component[y : y + h, x : x + w], cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
            )
            hull = cv2.contourArea(cv2.convexHull(np.concatenate(contours)))
            if hull <= 0 or area / hull < rule.min_solidity:
                continue
        found.append((component, (x, y, x + w, y + h)))
    return found


def find_regions(label: np.ndarray, min_pixels: int) -> list[Region]:
    """One region per land-cover class with at least ``min_pixels`` after an opening."""
    regions = []
    for key in LOVEDA_REGION_CLASSES:
        class_mask = (label == class_by_key(key).raw).astype(np.uint8)
        if int(class_mask.sum()) < min_pixels:
            continue
        class_mask = _open(class_mask, 1)
        area = int(class_mask.sum())
        if area < min_pixels:
            continue
        regions.append(Region(category=key, area=area, rle=encode_mask(class_mask)))
    return regions


def tile_patches(
    image: np.ndarray, label: np.ndarray, cfg: LoveDAConfig
) -> list[tuple[int, tuple[int, int, int, int], np.ndarray, np.ndarray]]:
    """``(tile, window, rgb, label)`` per patch: the whole tile or a 2x2 grid, resized."""
    height, width = label.shape
    if cfg.tile_mode == "resize":
        windows = [(0, 0, width, height)]
    else:
        hw, hh = width // 2, height // 2
        windows = [(x, y, hw, hh) for y in (0, hh) for x in (0, hw)]
    size = cfg.patch_size
    tiles = []
    for index, (x, y, w, h) in enumerate(windows):
        rgb = cv2.resize(image[y : y + h, x : x + w], (size, size), interpolation=cv2.INTER_AREA)
        lab = cv2.resize(label[y : y + h, x : x + w], (size, size), interpolation=cv2.INTER_NEAREST)
        tiles.append((index, (x, y, w, h), rgb, lab))
    return tiles


def _tile_unit(payload: dict) -> dict:
    cfg: LoveDAConfig = payload["cfg"]
    work = Path(payload["work_dir"])
    image = read_rgb(payload["image_path"])
    label = read_label_png(payload["mask_path"])
    if image.shape[:2] != label.shape:
        raise InputError(
            "size_mismatch",
            f"{payload['mask_path']}: mask is {label.shape[1]}x{label.shape[0]}, image is "
            f"{image.shape[1]}x{image.shape[0]}",
        )
    if cfg.expected_size is not None and label.shape != (cfg.expected_size, cfg.expected_size):
        raise InputError(
            "unexpected_size",
            f"{payload['image_path']}: {label.shape[1]}x{label.shape[0]}, expected "
            f"{cfg.expected_size}x{cfg.expected_size} (set loveda.expected_size to accept it)",
        )
    unknown = np.unique(label[label > MAX_LOVEDA_VALUE])
    if unknown.size:
        raise InputError(
            "unknown_mask_values",
            f"{payload['mask_path']}: values {unknown[:8].tolist()} are not LoveDA classes (0-7)",
        )
    counts: Counter = Counter(tiles=1)
    out = patch_dir(work, "loveda", payload["split"])
    outputs, names = [], []
    for tile, window, rgb, lab in tile_patches(image, label, cfg):
        instances = []
        for key in LOVEDA_INSTANCE_CLASSES:
            rule = cfg.building if key == "building" else cfg.water
            class_mask = (lab == class_by_key(key).raw).astype(np.uint8)
            for component, bbox in find_instances(class_mask, rule):
                instances.append(
                    Instance(
                        id=str(len(instances) + 1),
                        category=key,
                        bbox=bbox,
                        area=int(component.sum()),
                        rle=encode_mask(component),
                    )
                )
        regions = find_regions(lab, cfg.region_min_pixels)
        if not instances and not regions:
            counts["patches_empty"] += 1
            continue
        patch = Patch(
            name=f"L{payload['image_id']}_patch_{tile}",
            split=payload["split"],
            source="loveda",
            source_image=payload["source_image"],
            window=window,
            scale=cfg.patch_size / window[2],
            width=cfg.patch_size,
            height=cfg.patch_size,
            instances=instances,
            regions=regions,
        )
        outputs += write_patch(work, out, patch, rgb, cfg.png_compression)
        names.append(patch.name)
        counts["patches"] += 1
        counts["instances"] += len(instances)
        counts["regions"] += len(regions)
    return {"outputs": outputs, "patches": names, "counts": dict(counts)}


def extract_loveda_patches(cfg: PipelineConfig, overwrite: bool = False) -> dict:
    """Run the stage over every configured split and domain; returns the stage report.

    Outputs: ``<work_dir>/stages/loveda/{split}/{images/*.png, annotations/*.json, index.json}``.
    """
    work = cfg.work_path
    root = cfg.loveda_root()
    units = []
    for split in cfg.loveda.splits:
        tasks = []
        for domain in cfg.loveda.domains:
            image_dir = root / LOVEDA_SPLIT_FOLDERS[split] / domain / "images_png"
            if not image_dir.is_dir():
                raise FileNotFoundError(f"LoveDA image folder not found: '{image_dir}'")
            for path in sorted(image_dir.glob("*.png")):
                tasks.append((domain, path.stem))
        if cfg.loveda.num_images is not None and cfg.loveda.num_images < len(tasks):
            rng = np.random.default_rng(stable_seed(cfg.seed, "loveda-sample", split))
            chosen = sorted(rng.choice(len(tasks), size=cfg.loveda.num_images, replace=False))
            tasks = [tasks[i] for i in chosen]
        for domain, image_id in tasks:
            image_path, mask_path = loveda_paths(root, split, domain, image_id)
            payload = dict(
                cfg=cfg.loveda,
                work_dir=str(work),
                split=split,
                image_id=image_id,
                image_path=str(image_path),
                mask_path=str(mask_path),
                source_image=f"{LOVEDA_SPLIT_FOLDERS[split]}/{domain}/{image_id}.png",
            )
            payload[INPUTS_KEY] = unit_inputs(sources=[image_path, mask_path])
            units.append((f"{split}/{domain}/{image_id}", payload))
    state = StageState(
        work,
        "loveda",
        fingerprint("loveda", cfg.seed, cfg.loveda, str(root.resolve())),
        [work / "stages" / "loveda"],
    )
    results = run_units(
        state, cfg, units, _tile_unit, desc="loveda patches", unit="tile", overwrite=overwrite
    )
    write_index(work, "loveda", cfg.loveda.splits, results)
    return complete_stage(state, results)
