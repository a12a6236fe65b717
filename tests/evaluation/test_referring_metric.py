"""ReferringMetric on hand-computed cases: empty masks, >= vs >, resolution, breakdowns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from aerialseg.evaluation import ReferringMetric, summarize_ious


def make_sample(pred: np.ndarray, gt: np.ndarray, **meta) -> dict:
    sample = SegDataSample()
    sample.pred_sem_seg = PixelData(data=torch.from_numpy(pred.astype(np.uint8))[None])
    sample.gt_sem_seg = PixelData(data=torch.from_numpy(gt.astype(np.int64))[None])
    defaults = dict(
        dataset_name="rrsisd",
        img_id="1",
        target_id="1",
        expr_id="0",
        expr_type="original",
        target_type="instance",
        subset="",
        category="car",
    )
    sample.set_metainfo({**defaults, **meta})
    return sample.to_dict()


def block(h, w, y0, x0, y1, x1):
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def four_samples():
    return [
        # I=4, U=6 -> 2/3
        make_sample(block(6, 6, 0, 0, 2, 2), block(6, 6, 0, 0, 2, 3), img_id="a"),
        # empty prediction, empty target -> IoU 1
        make_sample(block(6, 6, 0, 0, 0, 0), block(6, 6, 0, 0, 0, 0), img_id="b"),
        # prediction on a no-target sample -> I=0, U=3 -> 0
        make_sample(
            block(5, 5, 0, 0, 1, 3),
            block(5, 5, 0, 0, 0, 0),
            img_id="c",
            dataset_name="nwpu_refer",
            subset="no_target",
        ),
        # I=2, U=4 -> exactly 0.5
        make_sample(
            block(4, 4, 0, 0, 2, 2),
            block(4, 4, 0, 0, 1, 2),
            img_id="d",
            dataset_name="nwpu_refer",
            subset="single",
            category="pond",
        ),
    ]


def evaluate(metric, samples):
    metric.process({}, samples)
    return metric.evaluate(len(samples))


def test_hand_computed_scores_with_greater_or_equal():
    scores = evaluate(ReferringMetric(), four_samples())
    assert scores["mIoU"] == pytest.approx(100 * (2 / 3 + 1 + 0 + 0.5) / 4)
    assert scores["oIoU"] == pytest.approx(100 * 6 / 13)
    assert scores["Pr@0.5"] == pytest.approx(75.0)
    assert scores["Pr@0.6"] == pytest.approx(50.0)
    assert scores["Pr@0.7"] == scores["Pr@0.8"] == scores["Pr@0.9"] == pytest.approx(25.0)
    assert scores["N"] == 4


def test_strict_comparison_excludes_iou_equal_to_the_threshold():
    scores = evaluate(ReferringMetric(threshold_comparison=">"), four_samples())
    assert scores["Pr@0.5"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="threshold_comparison"):
        ReferringMetric(threshold_comparison="=>")


def test_breakdowns_per_dataset_subset_and_category():
    scores = evaluate(ReferringMetric(), four_samples())
    assert scores["rrsisd/mIoU"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert scores["rrsisd/oIoU"] == pytest.approx(100 * 4 / 6)
    assert scores["nwpu_refer/mIoU"] == pytest.approx(25.0)
    assert scores["nwpu_refer/oIoU"] == pytest.approx(100 * 2 / 7)
    assert scores["nwpu_refer/subset=no_target/mIoU"] == 0.0
    assert scores["nwpu_refer/subset=single/Pr@0.5"] == 100.0
    assert scores["nwpu_refer/category=pond/N"] == 1
    assert scores["rrsisd/category=car/N"] == 2
    assert "rrsisd/subset=/mIoU" not in scores  # empty subsets are not reported


def test_all_empty_is_perfect_and_oiou_defined():
    empty = block(3, 3, 0, 0, 0, 0)
    scores = evaluate(ReferringMetric(), [make_sample(empty, empty), make_sample(empty, empty)])
    assert scores["mIoU"] == scores["oIoU"] == scores["Pr@0.9"] == 100.0


def test_original_resolution_requires_matching_sizes():
    metric = ReferringMetric()
    with pytest.raises(ValueError, match=r"prediction \(2, 2\) and target \(4, 4\) differ"):
        metric.process({}, [make_sample(block(2, 2, 0, 0, 1, 1), block(4, 4, 0, 0, 2, 2))])


def test_original_resolution_weights_large_images_and_eval_size_does_not():
    samples = [
        make_sample(block(8, 8, 0, 0, 4, 8), block(8, 8, 0, 0, 8, 8)),  # I=32, U=64 -> 0.5
        make_sample(block(4, 4, 0, 0, 4, 4), block(4, 4, 0, 0, 4, 4)),  # I=U=16 -> 1
    ]
    original = evaluate(ReferringMetric(), samples)
    assert original["oIoU"] == pytest.approx(100 * 48 / 80)
    resized = evaluate(ReferringMetric(eval_size=(4, 4)), samples)
    assert resized["oIoU"] == pytest.approx(100 * 24 / 32)
    assert original["mIoU"] == resized["mIoU"] == pytest.approx(75.0)


def test_eval_size_resizes_mismatched_masks_nearest():
    # gt 4x4 block in the top-left 2x2 and prediction 8x8 block in the top-left 4x4 are the same
    # region; at 2x2 both become [[1, 0], [0, 0]].
    sample = make_sample(block(8, 8, 0, 0, 4, 4), block(4, 4, 0, 0, 2, 2))
    scores = evaluate(ReferringMetric(eval_size=(2, 2)), [sample])
    assert scores["mIoU"] == 100.0


def test_summarize_ious_is_vectorised_over_many_samples():
    rng = np.random.default_rng(0)
    unions = rng.integers(1, 1000, 10_000)
    intersections = (unions * rng.random(10_000)).astype(int)
    scores = summarize_ious(intersections, unions)
    ious = intersections / unions
    assert scores["mIoU"] == pytest.approx(100 * ious.mean())
    assert scores["Pr@0.7"] == pytest.approx(100 * (ious >= 0.7).mean())


def test_output_dir_writes_per_sample_records(tmp_path):
    metric = ReferringMetric(output_dir=str(tmp_path))
    metric.provenance = {"checkpoint": {"sha256": "abc"}}
    evaluate(metric, four_samples())
    lines = [json.loads(line) for line in (tmp_path / "per_sample.jsonl").read_text().splitlines()]
    header, records = lines[0], lines[1:]
    assert header["provenance"]["checkpoint"] == {"sha256": "abc"}
    assert header["provenance"]["protocol"]["name"] == "original_resolution"
    assert header["provenance"]["protocol"]["threshold_comparison"] == ">="
    assert [r["img_id"] for r in records] == ["a", "b", "c", "d"]
    assert [r["iou"] for r in records] == pytest.approx([2 / 3, 1.0, 0.0, 0.5])
    assert records[0]["pred_rle"]["size"] == [6, 6]


def test_no_samples_is_an_error():
    with pytest.raises(ValueError, match="no samples"):
        ReferringMetric().compute_metrics([])
