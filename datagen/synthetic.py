"""Synthetic sources: procedurally drawn aerial-like scenes in the real iSAID and LoveDA layouts.

iSAID layout (``<work_dir>/sources/isaid``)::

    {split}/Annotations/instances_{split}.json    COCO: images, annotations (flat polygons,
                                                  category_name), categories
    {split}/images/images/P####.png               RGB (note the doubled images/ folder)

LoveDA layout (``<work_dir>/sources/LoveDA``)::

    {Train,Val}/{Urban,Rural}/images_png/<id>.png   RGB
    {Train,Val}/{Urban,Rural}/masks_png/<id>.png    class ids: 0 no-data, 1 background,
                                                     2 building, 3 road, 4 water, 5 barren,
                                                     6 forest, 7 agriculture

iSAID-like scenes have roads, parking lots with rows of cars and trucks of several colours, water
with ships, harbors and bridges, and scattered planes, tanks, pools, courts and fields. Each
image is drawn from its own seed (``seed``, split, index), so the sources do not depend on the
worker count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from datagen.classes import CLASSES
from datagen.config import PipelineConfig, fingerprint
from datagen.stage_state import StageState, complete_stage, run_units
from datagen.storage import atomic_write_json, atomic_write_png, read_json, stable_seed

__all__ = [
    "LOVEDA_SPLIT_FOLDERS",
    "draw_isaid_scene",
    "draw_loveda_tile",
    "generate_sources",
    "isaid_image_path",
    "isaid_json_path",
    "loveda_paths",
]

LOVEDA_SPLIT_FOLDERS = {"train": "Train", "val": "Val"}
ISAID_RAW = {c.key: str(c.raw) for c in CLASSES if c.source == "isaid"}
ISAID_IDS = {c.key: c.id for c in CLASSES if c.source == "isaid"}

VEHICLE_COLORS = (
    ((236, 236, 234), 0.28),  # white
    ((28, 28, 32), 0.2),  # black
    ((120, 121, 124), 0.14),  # grey
    ((182, 185, 190), 0.1),  # silver
    ((178, 32, 30), 0.1),  # red
    ((34, 62, 172), 0.09),  # blue
    ((222, 188, 36), 0.05),  # yellow
    ((38, 122, 52), 0.04),  # green
)
SCATTER_WEIGHTS = {
    "small_vehicle": 0.26,
    "large_vehicle": 0.08,
    "plane": 0.06,
    "ship": 0.12,
    "harbor": 0.05,
    "storage_tank": 0.09,
    "swimming_pool": 0.07,
    "tennis_court": 0.05,
    "basketball_court": 0.03,
    "soccer_ball_field": 0.02,
    "ground_track_field": 0.01,
    "baseball_diamond": 0.02,
    "roundabout": 0.02,
    "helicopter": 0.02,
}


def isaid_json_path(root: Path, split: str) -> Path:
    return Path(root) / split / "Annotations" / f"instances_{split}.json"


def isaid_image_path(root: Path, split: str, file_name: str) -> Path:
    return Path(root) / split / "images" / "images" / file_name


def loveda_paths(root: Path, split: str, domain: str, image_id: str) -> tuple[Path, Path]:
    base = Path(root) / LOVEDA_SPLIT_FOLDERS[split] / domain
    return base / "images_png" / f"{image_id}.png", base / "masks_png" / f"{image_id}.png"


# --------------------------------------------------------------------------------------------------
# Drawing helpers


def _textured(
    height: int, width: int, base: tuple, rng: np.random.Generator, amp: float
) -> np.ndarray:
    """(H, W, 3) uint8: ``base`` colour with smooth large-scale variation and fine grain."""
    cells = 96
    coarse = rng.normal(0.0, amp, size=(height // cells + 2, width // cells + 2)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    grain_tile = rng.integers(-6, 7, size=(128, 128), dtype=np.int16)
    reps = (height // 128 + 1, width // 128 + 1)
    field += np.tile(grain_tile, reps)[:height, :width]
    image = np.empty((height, width, 3), dtype=np.uint8)
    for channel in range(3):
        image[:, :, channel] = np.clip(field + int(base[channel]), 0, 255)
    return image


def _rotated(points: np.ndarray, cx: float, cy: float, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return points @ rot.T + np.array([cx, cy])


def _rect(length: float, width: float) -> np.ndarray:
    hl, hw = length / 2, width / 2
    return np.array([[-hl, -hw], [hl, -hw], [hl, hw], [-hl, hw]])


def _ellipse(rx: float, ry: float, n: int = 20) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)


def _plane(length: float) -> np.ndarray:
    shape = [
        (0.5, 0), (0.1, 0.06), (0.05, 0.46), (-0.05, 0.46), (-0.1, 0.06), (-0.4, 0.05),
        (-0.45, 0.2), (-0.5, 0.2), (-0.5, -0.2), (-0.45, -0.2), (-0.4, -0.05), (-0.1, -0.06),
        (-0.05, -0.46), (0.05, -0.46), (0.1, -0.06),
    ]  # fmt: skip
    return np.array(shape) * length


def _ship(length: float, width: float) -> np.ndarray:
    return np.array(
        [[0.5, 0], [0.3, 0.5 * width / length], [-0.5, 0.5 * width / length],
         [-0.5, -0.5 * width / length], [0.3, -0.5 * width / length]]
    ) * length  # fmt: skip


def _stadium(length: float, width: float, n: int = 10) -> np.ndarray:
    r = width / 2
    half = length / 2 - r
    t1 = np.linspace(-np.pi / 2, np.pi / 2, n)
    t2 = np.linspace(np.pi / 2, 3 * np.pi / 2, n)
    right = np.stack([half + r * np.cos(t1), r * np.sin(t1)], axis=1)
    left = np.stack([-half + r * np.cos(t2), r * np.sin(t2)], axis=1)
    return np.concatenate([right, left])


def _fan(radius: float, n: int = 10) -> np.ndarray:
    t = np.linspace(-np.pi / 4, np.pi / 4, n)
    arc = np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)
    return np.concatenate([[[0.0, 0.0]], arc]) - np.array([radius / 2, 0])


def _fill(
    image: np.ndarray,
    polygon: np.ndarray,
    color: tuple,
    mask: np.ndarray | None = None,
    value: int = 0,
) -> None:
    pts = np.round(polygon * 4).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(image, [pts], tuple(int(c) for c in color), lineType=cv2.LINE_8, shift=2)
    if mask is not None:
        cv2.fillPoly(mask, [pts], int(value), lineType=cv2.LINE_8, shift=2)


def _jitter(color: tuple, rng: np.random.Generator, amount: int = 10) -> tuple:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)


class _Occupancy:
    """Coarse grid of used ground, so objects do not overlap."""

    def __init__(self, height: int, width: int, cell: int = 8) -> None:
        self.cell = cell
        self.grid = np.zeros((height // cell + 1, width // cell + 1), dtype=bool)

    def _slice(self, box) -> tuple[slice, slice]:
        x0, y0, x1, y1 = (int(v) // self.cell for v in box)
        return slice(max(y0, 0), y1 + 1), slice(max(x0, 0), x1 + 1)

    def free(self, box) -> bool:
        return not self.grid[self._slice(box)].any()

    def take(self, box) -> None:
        self.grid[self._slice(box)] = True


@dataclass
class _Scene:
    image: np.ndarray
    occupancy: _Occupancy
    water: np.ndarray  # (H, W) bool
    roads: list  # (x0, y0, x1, y1) boxes
    annotations: list


def _inside(polygon: np.ndarray, width: int, height: int, margin: float = 2) -> bool:
    return bool(
        polygon[:, 0].min() >= margin
        and polygon[:, 1].min() >= margin
        and polygon[:, 0].max() <= width - margin
        and polygon[:, 1].max() <= height - margin
    )


def _add(scene: _Scene, key: str, polygon: np.ndarray, color: tuple, reserve: bool = True) -> None:
    height, width = scene.image.shape[:2]
    polygon = np.clip(polygon, 0, [width - 1, height - 1])
    _fill(scene.image, polygon, color)
    x0, y0 = polygon.min(axis=0)
    x1, y1 = polygon.max(axis=0)
    if reserve:
        scene.occupancy.take((x0, y0, x1, y1))
    x, y = polygon[:, 0], polygon[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    scene.annotations.append(
        {
            "category_id": ISAID_IDS[key],
            "category_name": ISAID_RAW[key],
            "segmentation": [np.round(polygon, 1).ravel().tolist()],
            "bbox": [
                round(float(x0), 1),
                round(float(y0), 1),
                round(float(x1 - x0), 1),
                round(float(y1 - y0), 1),
            ],  # fmt: skip
            "area": round(area, 1),
            "iscrowd": 0,
        }
    )


def _vehicle_color(rng: np.random.Generator) -> tuple:
    colors, weights = zip(*VEHICLE_COLORS)
    return _jitter(colors[rng.choice(len(colors), p=np.array(weights) / sum(weights))], rng, 8)


def _draw_roads(scene: _Scene, rng: np.random.Generator) -> None:
    height, width = scene.image.shape[:2]
    road_width = int(rng.integers(34, 56))
    for axis in (0, 1):
        extent = width if axis == 0 else height
        count = max(1, extent // 1400 + int(rng.integers(0, 2)))
        for k in range(count):
            pos = int((k + 0.5 + rng.uniform(-0.25, 0.25)) * extent / count)
            if axis == 0:
                box = (pos - road_width // 2, 0, pos + road_width // 2, height)
            else:
                box = (0, pos - road_width // 2, width, pos + road_width // 2)
            cv2.rectangle(scene.image, box[:2], (box[2], box[3]), _jitter((92, 92, 96), rng, 6), -1)
            scene.roads.append(box)
    for x0, y0, x1, y1 in scene.roads:  # dashed centre lines
        if x1 - x0 < y1 - y0:
            cx = (x0 + x1) // 2
            for y in range(y0, y1, 40):
                cv2.line(scene.image, (cx, y), (cx, y + 18), (220, 220, 210), 2)
        else:
            cy = (y0 + y1) // 2
            for x in range(x0, x1, 40):
                cv2.line(scene.image, (x, cy), (x + 18, cy), (220, 220, 210), 2)


def _draw_water(scene: _Scene, rng: np.random.Generator) -> None:
    height, width = scene.image.shape[:2]
    if rng.random() > 0.65:
        return
    side = int(rng.integers(4))
    depth = rng.uniform(0.18, 0.3)
    t = np.linspace(0, 1, 40)
    wave = depth + 0.03 * np.sin(t * rng.uniform(4, 9) + rng.uniform(0, 6))
    if side in (0, 1):  # left / right band
        xs = wave * width if side == 0 else (1 - wave) * width
        edge = np.stack([xs, t * height], axis=1)
        outer = [[0, height], [0, 0]] if side == 0 else [[width, height], [width, 0]]
    else:  # top / bottom band
        ys = wave * height if side == 2 else (1 - wave) * height
        edge = np.stack([t * width, ys], axis=1)
        outer = [[width, 0], [0, 0]] if side == 2 else [[width, height], [0, height]]
    polygon = np.concatenate([edge, np.array(outer, dtype=float)])
    mask = np.zeros((height, width), dtype=np.uint8)
    _fill(scene.image, polygon, _jitter((38, 72, 96), rng, 8), mask, 1)
    scene.water = mask.astype(bool)


def _parking_lot(scene: _Scene, rng: np.random.Generator, quota: int) -> int:
    """One asphalt lot with rows of parked cars (or trucks); returns how many were placed."""
    height, width = scene.image.shape[:2]
    trucks = rng.random() < 0.25
    length, thick = (rng.uniform(44, 58), rng.uniform(14, 18)) if trucks else (
        rng.uniform(21, 27), rng.uniform(10, 12.5))  # fmt: skip
    gap = rng.uniform(4, 7)
    per_row = int(rng.integers(6, 16))
    rows = int(rng.integers(2, 5))
    vertical = rng.random() < 0.5
    row_len = per_row * (thick + gap) + 10
    row_span = length + 14
    lot_w, lot_h = (rows * row_span + 10, row_len) if vertical else (row_len, rows * row_span + 10)
    for _ in range(30):
        x0 = rng.uniform(5, max(6.0, width - lot_w - 5))
        y0 = rng.uniform(5, max(6.0, height - lot_h - 5))
        box = (x0, y0, x0 + lot_w, y0 + lot_h)
        if box[2] >= width or box[3] >= height or not scene.occupancy.free(box):
            continue
        if scene.water[int(y0) : int(box[3]), int(x0) : int(box[2])].any():
            continue
        break
    else:
        return 0
    cv2.rectangle(scene.image, (int(x0), int(y0)), (int(box[2]), int(box[3])),
                  _jitter((70, 71, 74), rng, 5), -1)  # fmt: skip
    scene.occupancy.take(box)
    key = "large_vehicle" if trucks else "small_vehicle"
    placed = 0
    for r in range(rows):
        for k in range(per_row):
            if placed >= quota or rng.random() < 0.15:
                continue
            along = 5 + (k + 0.5) * (thick + gap)
            across = 5 + r * row_span + row_span / 2
            cx, cy = (x0 + across, y0 + along) if vertical else (x0 + along, y0 + across)
            angle = (0.0 if vertical else math.pi / 2) + rng.uniform(-0.05, 0.05)
            polygon = _rotated(_rect(length, thick), cx, cy, angle)
            _add(scene, key, polygon, _vehicle_color(rng), reserve=False)
            placed += 1
    return placed


def _scatter(scene: _Scene, key: str, rng: np.random.Generator) -> bool:
    """Place one object of ``key`` where it fits (ships in water, cars on roads...)."""
    height, width = scene.image.shape[:2]
    has_water = scene.water.any()
    if key in ("ship", "harbor") and not has_water:
        key = "storage_tank"
    for _ in range(30):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        angle = rng.uniform(0, math.pi)
        color = None
        if key == "small_vehicle":
            if scene.roads and rng.random() < 0.7:
                x0, y0, x1, y1 = scene.roads[int(rng.integers(len(scene.roads)))]
                cx, cy = rng.uniform(x0 + 8, x1 - 8), rng.uniform(y0 + 8, y1 - 8)
                angle = math.pi / 2 if (x1 - x0) < (y1 - y0) else 0.0
            polygon = _rotated(_rect(rng.uniform(21, 27), rng.uniform(10, 12.5)), cx, cy, angle)
            color = _vehicle_color(rng)
        elif key == "large_vehicle":
            polygon = _rotated(_rect(rng.uniform(44, 60), rng.uniform(14, 18)), cx, cy, angle)
            color = _vehicle_color(rng)
        elif key == "plane":
            polygon = _rotated(_plane(rng.uniform(60, 110)), cx, cy, angle * 2)
            color = _jitter((228, 228, 230), rng, 12)
        elif key == "helicopter":
            polygon = _rotated(_plane(rng.uniform(26, 36)), cx, cy, angle * 2)
            color = _jitter((60, 80, 60), rng, 15)
        elif key == "ship":
            polygon = _rotated(_ship(rng.uniform(40, 110), rng.uniform(10, 22)), cx, cy, angle)
            color = _jitter((210, 210, 205), rng, 25)
        elif key == "harbor":
            polygon = _rotated(_rect(rng.uniform(90, 180), rng.uniform(18, 30)), cx, cy, angle)
            color = _jitter((150, 146, 138), rng, 10)
        elif key == "storage_tank":
            polygon = _ellipse(*(rng.uniform(12, 30),) * 2) + np.array([cx, cy])
            color = _jitter((215, 215, 212), rng, 20)
        elif key == "swimming_pool":
            polygon = _rotated(_rect(rng.uniform(24, 50), rng.uniform(12, 24)), cx, cy, angle)
            color = _jitter((60, 170, 215), rng, 15)
        elif key == "tennis_court":
            polygon = _rotated(_rect(70, 36), cx, cy, angle)
            color = _jitter((60, 130, 80), rng, 20)
        elif key == "basketball_court":
            polygon = _rotated(_rect(56, 30), cx, cy, angle)
            color = _jitter((190, 110, 60), rng, 20)
        elif key == "soccer_ball_field":
            polygon = _rotated(_rect(rng.uniform(220, 280), rng.uniform(140, 170)), cx, cy, angle)
            color = _jitter((70, 150, 70), rng, 15)
        elif key == "ground_track_field":
            polygon = _rotated(
                _stadium(rng.uniform(300, 360), rng.uniform(160, 190)), cx, cy, angle
            )
            color = _jitter((170, 80, 60), rng, 15)
        elif key == "baseball_diamond":
            polygon = _rotated(_fan(rng.uniform(80, 130)), cx, cy, angle * 2)
            color = _jitter((190, 150, 100), rng, 15)
        elif key == "roundabout":
            polygon = _ellipse(*(rng.uniform(40, 70),) * 2, n=24) + np.array([cx, cy])
            color = _jitter((100, 100, 104), rng, 6)
        else:
            raise ValueError(f"no drawing rule for {key!r}")
        if not _inside(polygon, width, height):
            continue
        x0, y0 = polygon.min(axis=0)
        x1, y1 = polygon.max(axis=0)
        in_water = scene.water[int(cy), int(cx)]
        if key == "ship" and not in_water:
            continue
        if key != "ship" and key != "harbor" and in_water:
            continue
        if key == "harbor" and not (
            in_water and not scene.water[int(y0) : int(y1), int(x0) : int(x1)].all()
        ):
            continue
        if not scene.occupancy.free((x0, y0, x1, y1)):
            continue
        _add(scene, key, polygon, color)
        if key == "tennis_court":
            _fill(scene.image, _rotated(_rect(60, 2), cx, cy, angle), (235, 235, 235))
        if key == "roundabout":
            inner = _ellipse(*((x1 - x0) / 4,) * 2) + np.array([cx, cy])
            _fill(scene.image, inner, _jitter((80, 140, 70), rng, 10))
        return True
    return False


def _draw_bridge(scene: _Scene, rng: np.random.Generator) -> None:
    height, width = scene.image.shape[:2]
    cols = np.flatnonzero(scene.water.any(axis=0))
    rows = np.flatnonzero(scene.water.any(axis=1))
    if cols.size == 0:
        return
    if cols.size < width * 0.9:  # vertical band: the bridge runs horizontally across it
        y = rng.uniform(0.15, 0.85) * height
        x0, x1 = max(cols.min() - 20, 3), min(cols.max() + 20, width - 3)
        polygon = np.array([[x0, y - 12], [x1, y - 12], [x1, y + 12], [x0, y + 12]], dtype=float)
    else:
        x = rng.uniform(0.15, 0.85) * width
        y0, y1 = max(rows.min() - 20, 3), min(rows.max() + 20, height - 3)
        polygon = np.array([[x - 12, y0], [x + 12, y0], [x + 12, y1], [x - 12, y1]], dtype=float)
    x_min, y_min = polygon.min(axis=0)
    x_max, y_max = polygon.max(axis=0)
    if scene.occupancy.free((x_min, y_min, x_max, y_max)):
        _add(scene, "bridge", polygon, _jitter((160, 158, 150), rng, 8))


def draw_isaid_scene(
    width: int, height: int, instances: int, row_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, list[dict]]:
    """Draw one iSAID-like image.

    Returns:
        (H, W, 3) uint8 RGB image and annotations (COCO fields without ``id``/``image_id``).
    """
    image = _textured(height, width, _jitter((150, 142, 118), rng, 15), rng, 9.0)
    scene = _Scene(image, _Occupancy(height, width), np.zeros((height, width), bool), [], [])
    _draw_water(scene, rng)
    _draw_roads(scene, rng)
    if scene.water.any() and rng.random() < 0.7:
        _draw_bridge(scene, rng)
    in_rows = int(round(instances * row_fraction))
    placed = 0
    for _ in range(200):
        if placed >= in_rows:
            break
        placed += _parking_lot(scene, rng, in_rows - placed)
    keys = list(SCATTER_WEIGHTS)
    weights = np.array([SCATTER_WEIGHTS[k] for k in keys])
    attempts = 0
    while len(scene.annotations) < instances and attempts < instances * 4:
        attempts += 1
        _scatter(scene, keys[rng.choice(len(keys), p=weights / weights.sum())], rng)
    return scene.image, scene.annotations


# --------------------------------------------------------------------------------------------------
# LoveDA

LOVEDA_COLORS = {
    0: (0, 0, 0),
    1: (140, 136, 120),
    3: (105, 105, 108),
    4: (36, 66, 88),
    5: (176, 160, 128),
    6: (44, 84, 46),
    7: (120, 156, 72),
}
ROOF_COLORS = ((205, 205, 200), (70, 70, 75), (150, 68, 52), (110, 118, 150))


def _blobs(size: int, rng: np.random.Generator, coverage: float, cells: int = 10) -> np.ndarray:
    coarse = rng.normal(size=(cells, cells)).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return field > np.quantile(field, 1.0 - coverage)


def draw_loveda_tile(
    size: int, domain: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one LoveDA-like tile: (S, S, 3) uint8 RGB image and (S, S) uint8 class-id mask."""
    mask = np.ones((size, size), dtype=np.uint8)
    rural = domain == "Rural"
    if rural:
        for _ in range(int(rng.integers(4, 10))):
            length, width = rng.uniform(0.15, 0.4, size=2) * size
            polygon = _rotated(_rect(length, width), *rng.uniform(0, size, 2), rng.uniform(0, 0.4))
            _fill(mask, polygon, (7,))
    mask[_blobs(size, rng, rng.uniform(0.05, 0.25))] = 6
    if rng.random() < 0.5:
        mask[_blobs(size, rng, rng.uniform(0.02, 0.06), cells=14)] = 5
    water_roll = rng.random()
    if water_roll < 0.15:  # a lake covering about half the tile
        lake = _ellipse(size * 0.45, size * 0.35) + rng.uniform(0.35, 0.65, 2) * size
        _fill(mask, lake, (4,))
    elif water_roll < 0.6:
        pond = _ellipse(*rng.uniform(0.04, 0.12, 2) * size) + rng.uniform(0.2, 0.8, 2) * size
        _fill(mask, pond, (4,))
    image = _textured(size, size, (0, 0, 0), rng, 4.0)
    road_spacing = int(size * (0.28 if not rural else 0.6))
    road_width = max(4, int(size * (0.012 if not rural else 0.009)))
    offset = int(rng.integers(road_spacing // 4, road_spacing))
    for pos in range(offset, size, road_spacing):
        cv2.rectangle(mask, (pos, 0), (pos + road_width, size), 3, -1)
        if not rural:
            cv2.rectangle(mask, (0, pos), (size, pos + road_width), 3, -1)
    palette = np.array([LOVEDA_COLORS.get(v, (0, 0, 0)) for v in range(8)], dtype=np.int16)
    image = np.clip(image.astype(np.int16) + palette[mask], 0, 255).astype(np.uint8)
    count = int(rng.integers(40, 90)) if not rural else int(rng.integers(6, 24))
    for _ in range(count):
        w, h = rng.uniform(0.015, 0.05, size=2) * size
        polygon = _rotated(_rect(w, h), *rng.uniform(0.03, 0.97, 2) * size, rng.uniform(-0.1, 0.1))
        x0, y0 = np.clip(polygon.min(axis=0).astype(int), 0, size - 1)
        x1, y1 = np.clip(polygon.max(axis=0).astype(int), 0, size - 1)
        if (mask[y0 : y1 + 1, x0 : x1 + 1] == 4).any() or (
            mask[y0 : y1 + 1, x0 : x1 + 1] == 3
        ).any():
            continue
        roof = ROOF_COLORS[int(rng.integers(len(ROOF_COLORS)))]
        _fill(image, polygon, _jitter(roof, rng, 10), mask, 2)
    if rng.random() < 0.1:  # a no-data strip, as at LoveDA scene borders
        strip = int(size * rng.uniform(0.05, 0.15))
        mask[:, :strip] = 0
        image[:, :strip] = 0
    return image, mask


# --------------------------------------------------------------------------------------------------
# Stage


def _isaid_unit(payload: dict) -> dict:
    rng = np.random.default_rng(payload["seed"])
    image, annotations = draw_isaid_scene(
        payload["width"], payload["height"], payload["instances"], payload["row_fraction"], rng
    )
    atomic_write_png(payload["image_path"], image)
    atomic_write_json(payload["part_path"], annotations)
    return {
        "outputs": [payload["image_rel"], payload["part_rel"]],
        "counts": {"isaid_images": 1, "isaid_instances": len(annotations)},
    }


def _loveda_unit(payload: dict) -> dict:
    rng = np.random.default_rng(payload["seed"])
    image, mask = draw_loveda_tile(payload["size"], payload["domain"], rng)
    atomic_write_png(payload["image_path"], image)
    atomic_write_png(payload["mask_path"], mask)
    return {"outputs": [payload["image_rel"], payload["mask_rel"]], "counts": {"loveda_tiles": 1}}


def _dispatch(payload: dict) -> dict:
    return _isaid_unit(payload) if payload["kind"] == "isaid" else _loveda_unit(payload)


def generate_sources(cfg: PipelineConfig, overwrite: bool = False) -> dict:
    """Write the synthetic iSAID and LoveDA sources under ``<work_dir>/sources``; returns the
    stage report."""
    syn = cfg.synthetic
    work = cfg.work_path
    isaid_root, loveda_root = work / "sources" / "isaid", work / "sources" / "LoveDA"
    state = StageState(
        work,
        "synthetic",
        fingerprint("synthetic", cfg.seed, syn),
        [isaid_root, loveda_root, work / ".state" / "synthetic_parts"],
    )
    units = []
    image_ids: dict[str, list[tuple[int, str]]] = {}
    next_id = 0
    for split in ("train", "val"):
        image_ids[split] = []
        for index in range(syn.isaid_images.get(split, 0)):
            file_name = f"P{next_id:04d}.png"
            image_path = isaid_image_path(isaid_root, split, file_name)
            part_path = work / ".state" / "synthetic_parts" / split / f"P{next_id:04d}.json"
            image_ids[split].append((next_id, file_name))
            payload = dict(
                kind="isaid",
                seed=stable_seed(cfg.seed, "synthetic-isaid", split, index),
                width=syn.isaid_width,
                height=syn.isaid_height,
                instances=syn.isaid_instances,
                row_fraction=syn.row_fraction,
                image_path=str(image_path),
                image_rel=str(image_path.relative_to(work)),
                part_path=str(part_path),
                part_rel=str(part_path.relative_to(work)),
            )
            units.append((f"isaid/{split}/{file_name}", payload))
            next_id += 1
    tile_id = 0
    for split in ("train", "val"):
        if syn.loveda_tiles.get(split, 0):
            for domain in ("Urban", "Rural"):  # the layout has both, even if one stays empty
                for path in loveda_paths(loveda_root, split, domain, "0"):
                    path.parent.mkdir(parents=True, exist_ok=True)
        for index in range(syn.loveda_tiles.get(split, 0)):
            domain = ("Urban", "Rural")[index % 2]
            image_path, mask_path = loveda_paths(loveda_root, split, domain, str(tile_id))
            payload = dict(
                kind="loveda",
                seed=stable_seed(cfg.seed, "synthetic-loveda", split, index),
                size=syn.loveda_size,
                domain=domain,
                image_path=str(image_path),
                image_rel=str(image_path.relative_to(work)),
                mask_path=str(mask_path),
                mask_rel=str(mask_path.relative_to(work)),
            )
            units.append((f"loveda/{split}/{domain}/{tile_id}", payload))
            tile_id += 1
    results = run_units(
        state, cfg, units, _dispatch, desc="synthetic sources", unit="image", overwrite=overwrite
    )
    for split, entries in image_ids.items():
        if syn.isaid_images.get(split, 0) == 0:
            continue
        _write_isaid_json(work, isaid_root, split, entries, syn.isaid_width, syn.isaid_height)
    return complete_stage(state, results)


def _write_isaid_json(
    work: Path, root: Path, split: str, entries: list[tuple[int, str]], width: int, height: int
) -> None:
    """Merge the per-image parts into ``instances_<split>.json`` with ids in image order."""
    images, annotations = [], []
    for image_id, file_name in entries:
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        part = work / ".state" / "synthetic_parts" / split / f"{Path(file_name).stem}.json"
        for annotation in read_json(part):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
    categories = [{"id": c.id, "name": str(c.raw)} for c in CLASSES if c.source == "isaid"]
    data = {"images": images, "annotations": annotations, "categories": categories}
    atomic_write_json(isaid_json_path(root, split), data, keep_identical=True)
