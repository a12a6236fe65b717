"""ReferringMetric against mmdet's ``RefSegMetric`` on the same predictions.

mmdet computes ``cIoU`` (summed intersections over summed unions: our oIoU) and ``mIoU`` (mean
per-sample IoU, an empty union counting 0). Its per-sample IoUs also referee our Pr@X. Samples
have different sizes, some are empty predictions, some empty targets, and one has both empty.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mmdet.evaluation.metrics import RefSegMetric
from mmdet.structures.mask import BitmapMasks

from aerialseg.evaluation.metrics import ReferringMetric

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def _samples(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(24):
        height, width = int(rng.integers(5, 40)), int(rng.integers(5, 40))
        gt = np.zeros((height, width), dtype=np.uint8)
        y, x = int(rng.integers(0, height - 2)), int(rng.integers(0, width - 2))
        gt[
            y : y + int(rng.integers(2, height - y + 1)),
            x : x + int(rng.integers(2, width - x + 1)),
        ] = 1
        # Predictions from a perfect copy to pure noise, so IoUs spread over the thresholds.
        noise = rng.random((height, width)) < index / 24
        pred = np.where(noise, rng.integers(0, 2, (height, width)), gt).astype(np.uint8)
        pairs.append((pred, gt))
    pairs[3] = (np.zeros_like(pairs[3][1]), pairs[3][1])  # missed target
    pairs[5] = (pairs[5][0], np.zeros_like(pairs[5][1]))  # target-less expression, false alarm
    half = np.zeros((6, 8), dtype=np.uint8)
    half[1:3, 1:5] = 1
    pairs[7] = (half * (np.arange(8) < 3), half)  # IoU exactly 0.5: the >= threshold counts it
    return pairs


def _ours(pairs, **kwargs) -> dict[str, float]:
    metric = ReferringMetric(iou_thrs=THRESHOLDS, **kwargs)
    metric.dataset_meta = {}
    metric.process(
        {},
        [
            dict(
                pred_sem_seg=dict(data=torch.from_numpy(pred)[None]),
                gt_sem_seg=dict(data=torch.from_numpy(gt)[None]),
                dataset_name="referee",
            )
            for pred, gt in pairs
        ],
    )
    return metric.compute_metrics(metric.results)


def _mmdet(pairs) -> tuple[dict, list[float]]:
    metric = RefSegMetric(metric=("cIoU", "mIoU"))
    samples = []
    for pred, gt in pairs:
        samples.append(
            dict(
                pred_instances=dict(masks=torch.from_numpy(pred)[None]),
                gt_masks=BitmapMasks(gt[None], *gt.shape),
            )
        )
    metric.process({}, samples)
    scores = metric.compute_metrics(metric.results)
    per_sample = [float(result[2]) for result in metric.results]  # each sample is a batch of 1
    return {k: float(v) for k, v in scores.items()}, per_sample


def _pr(ious: list[float], threshold: float) -> float:
    return 100.0 * sum(iou >= threshold for iou in ious) / len(ious)


def test_scores_equal_mmdet_refsegmetric():
    pairs = _samples()
    expected, ious = _mmdet(pairs)
    assert 0.5 in ious and max(ious) == 1.0
    assert len({_pr(ious, threshold) for threshold in THRESHOLDS}) >= 4  # spread over the range
    for kwargs in ({}, {"empty_union": "zero"}):  # no sample has an empty union here
        ours = _ours(pairs, **kwargs)
        assert ours["oIoU"] == pytest.approx(expected["cIoU"], rel=1e-6)
        assert ours["mIoU"] == pytest.approx(expected["mIoU"], rel=1e-6)
        for threshold in THRESHOLDS:
            assert ours[f"Pr@{threshold:g}"] == pytest.approx(_pr(ious, threshold), rel=1e-6)
        assert ours["N"] == len(pairs)
        assert ours["referee/mIoU"] == pytest.approx(expected["mIoU"], rel=1e-6)


def test_an_empty_union_scores_as_in_mmdet_under_the_zero_rule():
    pairs = _samples(seed=1)
    empty = np.zeros((7, 9), dtype=np.uint8)
    pairs.append((empty, empty))  # nothing to find, nothing predicted
    expected, ious = _mmdet(pairs)
    assert ious[-1] == 0.0  # mmdet: 0/0 -> NaN -> 0
    zero_rule = _ours(pairs, empty_union="zero")
    assert zero_rule["mIoU"] == pytest.approx(expected["mIoU"], rel=1e-6)
    assert zero_rule["oIoU"] == pytest.approx(expected["cIoU"], rel=1e-6)
    # Our default counts a correctly empty prediction as a perfect one (IoU 1).
    default = _ours(pairs)
    n = len(pairs)
    assert default["mIoU"] == pytest.approx(expected["mIoU"] + 100.0 / n, rel=1e-6)
    assert default["oIoU"] == pytest.approx(expected["cIoU"], rel=1e-6)
