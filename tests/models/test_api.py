"""ReferringSegmenter: expressions batched over one encoded image, as the mmseg path predicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mmcv.transforms import Compose
from mmengine.dataset import pseudo_collate
from PIL import Image

from aerialseg.apis import ReferringPrediction, ReferringSegmenter

EXPRESSIONS = ["the red building in the top left", "the blue storage tank", "all buildings"]


@pytest.fixture(scope="module")
def segmenter(tiny_assets):
    from tests.models.conftest import tiny_config

    torch.manual_seed(0)
    return ReferringSegmenter(tiny_config(tiny_assets), text_batch_size=2)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, size=(100, 150, 3), dtype=np.uint8)
    pixels[10:40, 10:40] = (220, 30, 30)
    return pixels


def test_predict_batches_expressions_over_one_image(segmenter, image):
    result = segmenter.predict(image, EXPRESSIONS)
    assert isinstance(result, ReferringPrediction)
    assert result.masks.shape == (3, 100, 150) and result.masks.dtype == bool
    assert result.logits.shape == (3, 100, 150) and result.logits.dtype == np.float32
    assert result.scores.shape == (3,) and ((result.scores >= 0) & (result.scores <= 1)).all()
    np.testing.assert_array_equal(result.masks, result.logits > 0)
    for index, text in enumerate(EXPRESSIONS):  # batch of 2 + 1 == one at a time
        single = segmenter.predict(image, [text])
        np.testing.assert_allclose(single.logits[0], result.logits[index], atol=1e-4)


def test_predict_matches_the_test_pipeline_and_model(segmenter, image, tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    steps = [
        step
        for step in segmenter.cfg.test_dataloader.dataset.pipeline
        if step["type"] != "LoadReferringMask"
    ]
    pipeline = Compose(steps)
    batch = pseudo_collate([pipeline(dict(img_path=str(path), text=t)) for t in EXPRESSIONS])
    with torch.no_grad():
        expected = segmenter.model.test_step(batch)
    result = segmenter.predict(image, EXPRESSIONS)
    for index, sample in enumerate(expected):
        np.testing.assert_allclose(
            sample.seg_logits.data[0].numpy(), result.logits[index], atol=1e-4
        )


@pytest.mark.parametrize(
    ("bad_image", "expressions", "message"),
    [
        (None, ["the car"], "image must be a numpy array"),
        (np.zeros((10, 10), np.uint8), ["the car"], r"H x W x 3"),
        (np.zeros((10, 10, 3), np.float32), ["the car"], "uint8"),
        ("ok", [], "no expressions"),
        ("ok", ["the car", " "], "expression 1 is empty"),
    ],
)
def test_bad_inputs_raise_clear_errors(segmenter, image, bad_image, expressions, message):
    bad = image if isinstance(bad_image, str) else bad_image
    with pytest.raises((TypeError, ValueError), match=message):
        segmenter.predict(bad, expressions)


def test_missing_config_or_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        ReferringSegmenter(str(tmp_path / "none.py"))
    with pytest.raises(ValueError, match="give a config, a checkpoint, or both"):
        ReferringSegmenter(None)
