"""The named evaluation protocols against hand-computed values, and PIL's nearest rule against
Pillow itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from PIL import Image

from aerialseg.evaluation import ReferringMetric
from aerialseg.evaluation.protocols import PROTOCOLS, get_protocol, pil_nearest_indices
from tests.evaluation.test_referring_metric import block, evaluate, four_samples, make_sample

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "_base_" / "evaluators"


@pytest.mark.parametrize(
    ("in_size", "out_size"),
    [(960, 480), (720, 480), (800, 480), (7, 480), (1023, 480), (3, 2), (5, 2), (480, 480), (1, 5)],
)
def test_pil_nearest_indices_match_pillow(in_size, out_size):
    rng = np.random.default_rng(in_size * 1000 + out_size)
    # Non-square: the row rule is checked with in_size rows, the column rule with 13 columns.
    image = rng.integers(0, 256, size=(in_size, 13), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((13, out_size), Image.NEAREST))
    np.testing.assert_array_equal(image[pil_nearest_indices(in_size, out_size)], expected)
    columns = rng.integers(0, 256, size=(11, in_size), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(columns).resize((out_size, 11), Image.NEAREST))
    np.testing.assert_array_equal(columns[:, pil_nearest_indices(in_size, out_size)], expected)


def test_pil_nearest_is_not_torch_nearest():
    # 3 -> 2 rows: PIL samples pixel centres 0.75 and 2.25 (rows 0, 2); torch rows 0 and 1.
    assert pil_nearest_indices(3, 2).tolist() == [0, 2]
    column = torch.arange(3, dtype=torch.float32).reshape(1, 1, 3, 1)
    assert F.interpolate(column, size=(2, 1), mode="nearest").flatten().tolist() == [0.0, 1.0]


def test_rmsin_480_hand_computed_and_torch_nearest_differs():
    """960x720 masks (non-square) scored at 480x480.

    Rows halve: PIL keeps the odd source rows 1, 3, ..., torch the even rows 0, 2, .... Columns
    720 -> 480 keep every target column filled for full-width masks. Target = rows 0..100
    (101 rows), prediction = rows 0..99 (100 rows):
    - original resolution: IoU = 100 / 101;
    - PIL rule: target keeps odd rows <= 100 -> 50 rows, prediction odd rows <= 99 -> 50: IoU 1;
    - torch nearest: target even rows <= 100 -> 51 rows, prediction 50: IoU 50 / 51.
    """
    gt = block(960, 720, 0, 0, 101, 720)
    pred = block(960, 720, 0, 0, 100, 720)
    rmsin = evaluate(ReferringMetric(protocol="rmsin_480"), [make_sample(pred, gt)])
    assert rmsin["mIoU"] == pytest.approx(100.0)
    original = evaluate(ReferringMetric(), [make_sample(pred, gt)])
    assert original["mIoU"] == pytest.approx(100 * 100 / 101)
    resized = [
        F.interpolate(torch.from_numpy(m)[None, None].float(), size=(480, 480), mode="nearest")
        for m in (pred, gt)
    ]
    intersection = float((resized[0] * resized[1]).sum())
    union = float(((resized[0] + resized[1]) > 0).sum())
    assert intersection / union == pytest.approx(50 / 51)


def test_rmsin_480_empty_union_scores_zero():
    empty = block(6, 6, 0, 0, 0, 0)
    samples = [
        make_sample(empty, empty),
        make_sample(block(6, 6, 0, 0, 3, 6), block(6, 6, 0, 0, 3, 6)),
    ]
    scores = evaluate(ReferringMetric(protocol="rmsin_480"), samples)
    # IoU 0 for the empty union (LAVT/RMSIN: this_iou = 0 if U == 0), 1 for the other.
    assert scores["mIoU"] == pytest.approx(50.0)
    assert scores["Pr@0.5"] == pytest.approx(50.0)
    assert scores["oIoU"] == pytest.approx(100.0)  # 0/0 adds nothing to the sums


def test_rsrefseg_strict_hand_computed():
    """IoUs of four_samples: 2/3, 0/0 (NaN under RSRefSeg 2), 0 and exactly 0.5."""
    scores = evaluate(ReferringMetric(protocol="rsrefseg_strict"), four_samples())
    assert np.isnan(scores["mIoU"])  # unguarded mean, as RSRefSeg 2's gIoU
    assert scores["oIoU"] == pytest.approx(100 * 6 / 13)
    assert scores["Pr@0.5"] == pytest.approx(25.0)  # 0.5 is not > 0.5; NaN fails
    assert scores["Pr@0.6"] == pytest.approx(25.0)
    assert scores["Pr@0.7"] == pytest.approx(0.0)
    # The per-category table skips NaN: rrsisd/category=car holds 2/3 and NaN.
    assert scores["rrsisd/category=car/mIoU"] == pytest.approx(100 * 2 / 3)
    assert np.isnan(scores["rrsisd/mIoU"])
    default = evaluate(ReferringMetric(), four_samples())
    assert default["mIoU"] == pytest.approx(100 * (2 / 3 + 1 + 0 + 0.5) / 4)
    assert default["Pr@0.5"] == pytest.approx(75.0)


def test_rsrefseg_strict_writes_null_for_nan_iou(tmp_path):
    evaluate(ReferringMetric(protocol="rsrefseg_strict", output_dir=str(tmp_path)), four_samples())
    lines = (tmp_path / "per_sample.jsonl").read_text().splitlines()
    assert [json.loads(line)["iou"] for line in lines[1:]][1] is None


def test_overrides_make_a_custom_protocol():
    metric = ReferringMetric(protocol="rmsin_480", threshold_comparison=">")
    described = metric.describe_protocol()
    assert described["name"] == "custom" and "rmsin_480" in described["used_by"]
    assert (described["threshold_comparison"], described["eval_size"]) == (">", [480, 480])
    same = ReferringMetric(protocol="rmsin_480", threshold_comparison=">=")
    assert same.describe_protocol()["name"] == "rmsin_480"
    with pytest.raises(ValueError, match="unknown evaluation protocol 'rmsin'"):
        ReferringMetric(protocol="rmsin")
    with pytest.raises(ValueError, match="empty_union"):
        ReferringMetric(empty_union="skip")


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_preset_configs_name_their_protocol(name):
    cfg = Config.fromfile(f"{REPO_CONFIGS}/{name}.py")
    for key in ("val_evaluator", "test_evaluator"):
        assert cfg[key] == {"type": "ReferringMetric", "protocol": name}
    assert get_protocol(name).used_by  # documents which papers use it
