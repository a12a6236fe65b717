"""Shared fixtures: tiny pipeline configs and writers of source files in the real layouts."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from datagen.config import config_from_dict

TINY = {
    "seed": 3,
    "workers": 1,
    "progress": False,
    "synthetic": {
        "enabled": True,
        "isaid_images": {"train": 2, "val": 1},
        "isaid_width": 900,
        "isaid_height": 800,
        "isaid_instances": 90,
        "loveda_tiles": {"train": 2, "val": 1},
        "loveda_size": 512,
    },
    "loveda": {"expected_size": 512},
    "historic": {"fraction": 0.3},
}


def tiny_config(work_dir: Path, **sections):
    """A small synthetic pipeline config (a few seconds end to end) with overrides."""
    data = json.loads(json.dumps(TINY))
    data["work_dir"] = str(work_dir)
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return config_from_dict(data)


@pytest.fixture
def make_config(tmp_path):
    return lambda name="work", **sections: tiny_config(tmp_path / name, **sections)


def write_isaid_split(
    root: Path, split: str, images: list[tuple[str, np.ndarray | bytes | None, list[dict]]]
):
    """Write ``instances_<split>.json`` and the images (array: PNG; bytes: raw file; None: none)."""
    records, annotations = [], []
    for image_id, (file_name, pixels, anns) in enumerate(images, start=1):
        path = root / split / "images" / "images" / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(pixels, np.ndarray):
            cv2.imwrite(str(path), pixels[:, :, ::-1] if pixels.ndim == 3 else pixels)
            height, width = pixels.shape[:2]
        else:
            if pixels is not None:
                path.write_bytes(pixels)
            height, width = 600, 600
        records.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for ann in anns:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0, **ann}
            )
    json_path = root / split / "Annotations" / f"instances_{split}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(
        json.dumps({"images": records, "annotations": annotations, "categories": []})
    )
    return json_path


def polygon_annotation(category_name: str, points: list[float]) -> dict:
    xs, ys = points[0::2], points[1::2]
    return {
        "category_name": category_name,
        "segmentation": [points],
        "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
        "area": 0,
    }
