"""Throughput of ReferringMetric and indexing time of a synthetic Aerial-D XML tree.

    python benchmarks/metric_bench.py [--samples 10000] [--expressions 50000]

1. ``ReferringMetric.process`` + ``evaluate`` on N random 480x480 prediction/target pairs (random
   rectangles, batches of 32), at the original resolution and with ``eval_size=(480, 480)``; then
   on N 800x800 pairs (RRSIS-D's size) at the original resolution and under the ``rmsin_480``
   protocol (both masks resized to 480x480 with PIL's nearest rule), side by side; plus the
   vectorised summary alone on 1,000,000 samples.
2. Writes an Aerial-D tree with M expressions (480x480 patches, 10 targets x 4 expressions each,
   through ``write_patch_xml``) to a temporary folder and times ``AerialDDataset`` indexing it.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from aerialseg.datasets import AerialDDataset
from aerialseg.datasets.aerial_d_format import (
    AerialGroup,
    AerialObject,
    Expression,
    PatchAnnotation,
    RLEMask,
    write_patch_xml,
)
from aerialseg.evaluation import ReferringMetric, summarize_ious

SIZE = 480
BATCH = 32


def random_box_masks(rng: np.random.Generator, count: int, size: int = SIZE) -> torch.Tensor:
    """(count, size, size) uint8 masks, each one random rectangle (some empty)."""
    masks = torch.zeros((count, size, size), dtype=torch.uint8)
    for mask in masks:
        y0, x0 = rng.integers(0, size, 2)
        h, w = rng.integers(0, size // 2, 2)
        mask[y0 : y0 + h, x0 : x0 + w] = 1
    return masks


def make_batches(samples: int, seed: int = 0, size: int = SIZE) -> list[list[dict]]:
    """Batches of SegDataSample dicts over a pool of 256 distinct mask pairs (memory stays low)."""
    rng = np.random.default_rng(seed)
    preds, gts = random_box_masks(rng, 256, size), random_box_masks(rng, 256, size)
    batches, batch = [], []
    for index in range(samples):
        sample = SegDataSample()
        sample.pred_sem_seg = PixelData(data=preds[index % 256][None])
        sample.gt_sem_seg = PixelData(data=gts[(index * 7) % 256][None])
        sample.set_metainfo(
            dict(
                dataset_name="bench",
                img_id=str(index),
                target_id="0",
                expr_id="0",
                expr_type="original",
                target_type="instance",
                subset="",
                category="car",
            )
        )
        batch.append(sample.to_dict())
        if len(batch) == BATCH:
            batches.append(batch)
            batch = []
    if batch:
        batches.append(batch)
    return batches


def bench_metric(samples: int) -> None:
    batches = {SIZE: make_batches(samples), 800: make_batches(samples, size=800)}
    seconds = {}
    for label, kwargs, size in (
        ("original resolution", {}, SIZE),
        ("eval_size=(480, 480)", {"eval_size": (480, 480)}, SIZE),
        # RRSIS-D's 800x800: the rmsin_480 protocol resizes both masks (PIL's nearest rule).
        ("original resolution, 800x800", {}, 800),
        ("rmsin_480 protocol, 800x800 -> 480x480", {"protocol": "rmsin_480"}, 800),
    ):
        metric = ReferringMetric(**kwargs)
        start = time.perf_counter()
        for batch in batches[size]:
            metric.process({}, batch)
        processed = time.perf_counter()
        seconds[label] = processed - start
        scores = metric.evaluate(samples)
        done = time.perf_counter()
        print(
            f"metric [{label}]: {samples} masks of {size}x{size}: "
            f"process {processed - start:.2f} s "
            f"({samples / (processed - start):,.0f} masks/s), evaluate {done - processed:.3f} s; "
            f"mIoU {scores['mIoU']:.2f} oIoU {scores['oIoU']:.2f}"
        )
    ratio = (
        seconds["rmsin_480 protocol, 800x800 -> 480x480"] / seconds["original resolution, 800x800"]
    )
    print(f"rmsin_480 / original resolution process time on 800x800 masks: {ratio:.2f}x")
    rng = np.random.default_rng(1)
    unions = rng.integers(0, 10_000, 1_000_000)
    intersections = (unions * rng.random(unions.size)).astype(np.int64)
    start = time.perf_counter()
    summarize_ious(intersections, unions)
    print(f"summarize_ious on 1,000,000 samples: {time.perf_counter() - start:.3f} s")


def synthetic_patch(index: int, rng: np.random.Generator, targets: int, per_target: int):
    def mask():
        m = np.zeros((SIZE, SIZE), np.uint8)
        y0, x0 = rng.integers(0, SIZE - 40, 2)
        h, w = rng.integers(4, 40, 2)
        m[y0 : y0 + h, x0 : x0 + w] = 1
        return m, (int(x0), int(y0), int(x0 + w), int(y0 + h))

    def expressions(name):
        rule = [Expression(f"the {name} number {k}", id=str(k)) for k in range(per_target - 2)]
        return [
            *rule,
            Expression(f"the {name} again", type="enhanced"),
            Expression(f"the {name} by the road", type="unique"),
        ]

    objects, groups = [], []
    for t in range(targets - 1):
        m, bbox = mask()
        objects.append(
            AerialObject(
                id=str(t),
                category="small vehicle",
                bbox=bbox,
                mask=RLEMask.from_mask(m),
                area=int(m.sum()),
                expressions=expressions(f"vehicle {t}"),
            )
        )
    union = np.zeros((SIZE, SIZE), np.uint8)
    for obj in objects:
        union |= obj.mask.decode()
    groups.append(
        AerialGroup(
            id="1000000",
            category="small_vehicle",
            size=len(objects),
            mask=RLEMask.from_mask(union),
            expressions=expressions("all vehicles"),
        )
    )
    return PatchAnnotation(f"P{index:04d}_patch_{index:06d}.png", SIZE, SIZE, objects, groups)


def bench_indexing(expressions: int) -> None:
    targets, per_target = 10, 4
    patches = -(-expressions // (targets * per_target))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        ann_dir = os.path.join(root, "train", "annotations")
        os.makedirs(os.path.join(root, "train", "images"))
        start = time.perf_counter()
        for index in range(patches):
            patch = synthetic_patch(index, rng, targets, per_target)
            write_patch_xml(patch, os.path.join(ann_dir, f"P{index:04d}_patch_{index:06d}.xml"))
        written = time.perf_counter()
        dataset = AerialDDataset(data_root=root, split="train", serialize_data=True)
        indexed = time.perf_counter()
        print(
            f"Aerial-D tree: {patches} XML files, {len(dataset)} expressions written in "
            f"{written - start:.2f} s; AerialDDataset indexing {indexed - written:.2f} s "
            f"({len(dataset) / (indexed - written):,.0f} expressions/s, "
            f"{patches / (indexed - written):,.0f} files/s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--expressions", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} threads {torch.get_num_threads()}"
    )
    bench_metric(args.samples)
    bench_indexing(args.expressions)


if __name__ == "__main__":
    main()
