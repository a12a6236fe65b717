"""Helpers of the llm tests: small Aerial-D patches written with the project's XML writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from aerialseg.datasets.aerial_d_format import (
    AerialGroup,
    AerialObject,
    Expression,
    PatchAnnotation,
    RLEMask,
    write_patch_xml,
)
from llm.backend import make_client
from llm.batch import BatchJob
from llm.config import EnhanceConfig
from llm.targets import discover_annotations


def _box_mask(box: tuple[int, int, int, int], size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    xmin, ymin, xmax, ymax = box
    mask[ymin:ymax, xmin:xmax] = 1
    return mask


def write_patch(root: Path, stem: str, seed: int, size: int = 64) -> Path:
    """One ``size``-pixel patch: 2 cars (1 and 2 originals), a group of both, a semantic water
    region, and a car without expressions. Geometry is given for 64 px and scaled.

    Returns the annotation path ``root/train/annotations/<stem>.xml``.
    """
    scale = size // 64
    rng = np.random.default_rng(seed)
    # Noise in 4x4 blocks: textured like a photo, and compressible like one.
    coarse = rng.integers(0, 255, (size // 4, size // 4, 3), dtype=np.uint8)
    image = coarse.repeat(4, axis=0).repeat(4, axis=1)
    images = root / "train" / "images"
    images.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(images / f"{stem}.png")
    car_a, car_b, car_c = (
        tuple(v * scale for v in box) for box in ((4, 6, 14, 12), (40, 44, 52, 50), (30, 2, 34, 6))
    )
    water = np.zeros((size, size), dtype=np.uint8)
    water[20 * scale : 36 * scale, :] = 1
    annotation = PatchAnnotation(
        filename=f"{stem}.png",
        width=size,
        height=size,
        objects=[
            AerialObject(
                id="1",
                category="small_vehicle",
                bbox=car_a,
                mask=RLEMask.from_mask(_box_mask(car_a, size)),
                expressions=[Expression("the small vehicle in the top left", id="0")],
            ),
            AerialObject(
                id="2",
                category="small_vehicle",
                bbox=car_b,
                mask=RLEMask.from_mask(_box_mask(car_b, size)),
                expressions=[
                    Expression("the small vehicle in the bottom right", id="0"),
                    Expression("the lowest small vehicle", id="1"),
                ],
            ),
            AerialObject(
                id="3",
                category="small_vehicle",
                bbox=car_c,
                mask=RLEMask.from_mask(_box_mask(car_c, size)),
            ),
        ],
        groups=[
            AerialGroup(
                id="5",
                category="small_vehicle",
                mask=RLEMask.from_mask(_box_mask(car_a, size) | _box_mask(car_b, size)),
                size=2,
                instance_ids=["1", "2"],
                expressions=[Expression("the pair of small vehicles", id="0")],
            ),
            AerialGroup(
                id="1000001",
                category="water",
                mask=RLEMask.from_mask(water),
                expressions=[Expression("all water in the image", id="0")],
            ),
        ],
    )
    path = root / "train" / "annotations" / f"{stem}.xml"
    write_patch_xml(annotation, path)
    return path


def make_config(base_url: str, **sections) -> EnhanceConfig:
    data = {
        "backend": {"base_url": base_url, "model": "teacher", "api_key_env": "LLM_TEST_KEY"},
        "queue": {"concurrency": 4, "backoff_initial_s": 0.01, "backoff_max_s": 0.05},
        "render": {"image_size": 64},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return EnhanceConfig.model_validate(data)


def submitted_batch_job(base_url: str, dataset: Path):
    """A batch job over ``dataset``'s annotations, prepared in ``dataset / "work"`` and submitted
    to the server at ``base_url``: ``(job, annotation files, client)``."""
    config = make_config(base_url)
    job = BatchJob(config, dataset / "work")
    files = discover_annotations(dataset)
    job.prepare(files)
    client = make_client(config.backend)
    job.submit(client)
    return job, files, client
