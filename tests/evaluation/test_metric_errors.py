"""ReferringMetric's edge cases and refusals, with the exact outcome: empty inputs, all-empty
unions under each rule, mismatched mask sizes, the 480 x 480 protocol on non-square masks (against
PIL's NEAREST resize), the per-sample file and the metric's own settings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aerialseg.evaluation.metrics import ReferringMetric, summarize_ious


def _sample(pred: np.ndarray, gt: np.ndarray, **meta) -> dict:
    return dict(
        pred_sem_seg=dict(data=torch.from_numpy(pred.astype(np.uint8))[None]),
        gt_sem_seg=dict(data=torch.from_numpy(gt.astype(np.uint8))[None]),
        **meta,
    )


def _run(metric: ReferringMetric, samples: list[dict]) -> dict:
    metric.process({}, samples)
    return metric.compute_metrics(metric.results)


def test_bad_rules_are_refused_by_name():
    with pytest.raises(ValueError) as caught:
        summarize_ious([1], [2], comparison="=>")
    assert str(caught.value) == "comparison must be '>=' or '>', got '=>'"
    with pytest.raises(ValueError) as caught:
        summarize_ious([1], [2], empty_union="half")
    assert str(caught.value) == "empty_union must be one of ('one', 'zero', 'nan'), got 'half'"
    with pytest.raises(ValueError) as caught:
        ReferringMetric().compute_metrics([])
    assert str(caught.value) == "ReferringMetric received no samples"


def test_no_samples_gives_nan_scores_not_an_error():
    scores = summarize_ious([], [], thresholds=(0.5,))
    assert math.isnan(scores["mIoU"]) and math.isnan(scores["Pr@0.5"]) and scores["N"] == 0
    assert scores["oIoU"] == 100.0  # every (no) union empty: the empty-union rule, here "one"


@pytest.mark.parametrize(("rule", "expected"), [("one", 100.0), ("zero", 0.0)])
def test_all_empty_unions_follow_the_rule(rule, expected):
    scores = summarize_ious([0, 0], [0, 0], thresholds=(0.5,), empty_union=rule)
    assert (scores["mIoU"], scores["oIoU"], scores["Pr@0.5"]) == (expected, expected, expected)
    nan_rule = summarize_ious([0, 3], [0, 4], thresholds=(0.5,), empty_union="nan")
    assert math.isnan(nan_rule["mIoU"]) and math.isnan(nan_rule["oIoU"]) is False
    assert nan_rule["Pr@0.5"] == 50.0  # a NaN IoU fails every threshold
    skipped = summarize_ious([0, 3], [0, 4], thresholds=(0.5,), empty_union="nan", skip_nan=True)
    assert skipped["mIoU"] == 75.0


def test_a_single_pixel_union_is_not_an_empty_one():
    scores = summarize_ious([1], [1], thresholds=(0.5,), empty_union="zero")
    assert (scores["mIoU"], scores["oIoU"]) == (100.0, 100.0)


def test_masks_of_different_sizes_are_refused_naming_the_sample():
    metric = ReferringMetric()
    pred, gt = np.zeros((4, 5)), np.zeros((4, 6))
    with pytest.raises(ValueError) as caught:
        metric.process({}, [_sample(pred, gt, img_id="P7", target_id="3", expr_id="2")])
    assert str(caught.value) == (
        "prediction (4, 5) and target (4, 6) differ in size for sample P7/3/2: predictions must "
        "be at ori_shape (or use a protocol with eval_size)"
    )
    with pytest.raises(ValueError, match=r"for sample \?/\?/\?: "):
        metric.process({}, [_sample(pred, gt)])


def _pil_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize(size[::-1], Image.NEAREST)) > 0


def test_the_480_protocol_resizes_non_square_masks_like_pil():
    rng = np.random.default_rng(0)
    samples, intersections, unions = [], [], []
    for height, width in [(37, 91), (120, 50), (480, 480)]:
        pred = rng.random((height, width)) < 0.5
        gt = rng.random((height, width)) < 0.4
        samples.append(_sample(pred, gt, dataset_name="d"))
        p, g = _pil_nearest(pred, (480, 480)), _pil_nearest(gt, (480, 480))
        intersections.append((p & g).sum())
        unions.append((p | g).sum())
    scores = _run(ReferringMetric(protocol="rmsin_480"), samples)
    expected = summarize_ious(intersections, unions, empty_union="zero")
    assert scores["mIoU"] == pytest.approx(expected["mIoU"], rel=1e-12)
    assert scores["oIoU"] == pytest.approx(expected["oIoU"], rel=1e-12)


def test_samples_without_a_dataset_name_are_grouped_as_unknown():
    mask = np.ones((3, 3))
    scores = _run(ReferringMetric(), [_sample(mask, mask)])
    assert scores["unknown/mIoU"] == 100.0 and scores["unknown/N"] == 1


def test_the_per_sample_file_records_each_iou_and_the_protocol(tmp_path: Path):
    metric = ReferringMetric(empty_union="zero", output_dir=str(tmp_path))
    metric.provenance = {"checkpoint": tmp_path / "iter_1.pth"}  # not JSON: written as text
    full, empty = np.ones((2, 2)), np.zeros((2, 2))
    one_pixel = np.zeros((2, 2))
    one_pixel[0, 0] = 1
    _run(
        metric,
        [
            _sample(full, full, img_id="a"),
            _sample(empty, empty, img_id="b"),
            _sample(one_pixel, one_pixel, img_id="c"),
            _sample(one_pixel, full, img_id="d"),
        ],
    )
    header, *records = [
        json.loads(line) for line in (tmp_path / "per_sample.jsonl").read_text().splitlines()
    ]
    assert header["provenance"]["checkpoint"] == str(tmp_path / "iter_1.pth")
    assert header["provenance"]["protocol"]["iou_thresholds"] == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert header["provenance"]["protocol"]["empty_union"] == "zero"
    assert [(r["img_id"], r["intersection"], r["union"], r["iou"]) for r in records] == [
        ("a", 4, 4, 1.0),
        ("b", 0, 0, 0.0),
        ("c", 1, 1, 1.0),
        ("d", 1, 4, 0.25),
    ]
    assert records[0]["category"] == "" and records[0]["pred_rle"]["size"] == [2, 2]
    assert set(records[0]["pred_rle"]) == {"size", "counts"}


@pytest.mark.parametrize(("rule", "empty_iou"), [("one", 1.0), ("nan", None)])
def test_the_per_sample_iou_of_an_empty_union_follows_the_rule(tmp_path: Path, rule, empty_iou):
    metric = ReferringMetric(empty_union=rule, output_dir=str(tmp_path))
    empty, full = np.zeros((3, 3)), np.ones((3, 3))
    _run(metric, [_sample(full, empty), _sample(empty, empty), _sample(full, full)])
    lines = (tmp_path / "per_sample.jsonl").read_text().splitlines()[1:]
    assert [json.loads(line)["iou"] for line in lines] == [0.0, empty_iou, 1.0]


def test_base_metric_settings_are_passed_on():
    metric = ReferringMetric(prefix="val", collect_device="gpu")
    assert (metric.prefix, metric.collect_device) == ("val", "gpu")
