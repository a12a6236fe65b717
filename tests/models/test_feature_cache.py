"""Frozen-tower feature cache: reuse across epochs, invalidation, refusal of foreign caches."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from aerialseg.models.feature_cache import MARKER, FeatureCacheError
from tests.models.conftest import BLUE_BOX, RED_BOX, build_model, square_batch

BATCH = [("the red square", RED_BOX), ("the blue square", BLUE_BOX)]


def _cached_model(cfg, cache_dir, towers=("sam", "vlm")):
    cfg = copy.deepcopy(cfg)
    # Only the text tower adapts; both image towers are frozen without LoRA.
    cfg.model.lora.pop("sam_image_encoder")
    cfg.model.lora.pop("vlm_vision")
    cfg.model.feature_cache = dict(dir=str(cache_dir), towers=list(towers))
    return build_model(cfg).train()


def _two_images() -> dict:
    """Two samples with different images (square_batch repeats one image per call)."""
    first, second = square_batch(BATCH[:1], seed=0), square_batch(BATCH[1:], seed=1)
    return {key: first[key] + second[key] for key in first}


def _inputs(model, batch=None):
    return model.data_preprocessor(copy.deepcopy(batch or _two_images()), True)["inputs"]


def _direct(model, inputs):
    with torch.no_grad():
        return dict(
            sam=model.sam.embed_image(inputs["sam_pixels"]),
            vlm=model.vlm.encode_image(inputs["vlm_pixels"]),
        )


def _count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counted(pixels):
        calls.append(len(pixels))
        return original(pixels)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_second_epoch_reads_the_cache_and_gives_the_same_features(tiny_cfg, tmp_path, monkeypatch):
    model = _cached_model(tiny_cfg, tmp_path / "cache")
    inputs = _inputs(model)
    expected = _direct(model, inputs)
    sam_calls = _count_calls(monkeypatch, model.sam, "embed_image")
    vlm_calls = _count_calls(monkeypatch, model.vlm, "encode_image")

    first = model.extract_feat(inputs)
    assert (sam_calls, vlm_calls) == ([2], [2])  # both samples computed once, together
    assert (model.feature_cache.hits, model.feature_cache.misses) == (0, 4)
    second = model.extract_feat(inputs)
    assert (sam_calls, vlm_calls) == ([2], [2])  # nothing recomputed
    assert (model.feature_cache.hits, model.feature_cache.misses) == (4, 4)
    for name in ("sam", "vlm"):
        torch.testing.assert_close(first[name], expected[name], rtol=0, atol=0)
        torch.testing.assert_close(second[name], expected[name], rtol=0, atol=0)

    # Per-sample keys: a batch with only the second image (another batch composition) hits.
    single = {key: value[1:] for key, value in inputs.items()}
    torch.testing.assert_close(model.extract_feat(single)["sam"], expected["sam"][1:])
    assert sam_calls == [2]

    # A second run (a new model on the same weights) shares the cache, and the training loss
    # with the cache equals the one without it.
    other = _cached_model(tiny_cfg, tmp_path / "cache")
    data = other.data_preprocessor(_two_images(), True)
    cached_losses = other.loss(**data)
    assert other.feature_cache.misses == 0
    other.feature_cache = None
    torch.testing.assert_close(other.loss(**data), cached_losses)

    # Not in eval mode: predictions never depend on the cache.
    model.eval()
    model.extract_feat(inputs)
    assert sam_calls == [2, 2]


def test_new_weights_or_new_preprocessing_recompute(tiny_cfg, tmp_path):
    model = _cached_model(tiny_cfg, tmp_path / "cache")
    inputs = _inputs(model)
    model.extract_feat(inputs)
    assert model.feature_cache.misses == 4

    state = model.sam.image_encoder.state_dict()
    state["neck.0.weight"] = state["neck.0.weight"] * 2
    model.sam.image_encoder.load_state_dict(state)
    features = model.extract_feat(inputs)
    assert (model.feature_cache.hits, model.feature_cache.misses) == (2, 6)  # SigLIP still hits
    torch.testing.assert_close(features["sam"], _direct(model, inputs)["sam"])
    assert len(list((tmp_path / "cache").glob("sam-*"))) == 2  # one folder per weights

    # Another SAM normalisation: other input pixels, so other keys.
    model.data_preprocessor.sam_mean += 1.0
    model.extract_feat(_inputs(model))
    assert model.feature_cache.misses == 8


def test_refuses_foreign_or_stale_caches(tiny_cfg, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my files")
    with pytest.raises(FeatureCacheError, match="not an AerialSeg feature cache"):
        _cached_model(tiny_cfg, foreign)
    assert (foreign / "notes.txt").read_text() == "my files"

    other_version = tmp_path / "v0"
    other_version.mkdir()
    (other_version / MARKER).write_text(
        json.dumps(dict(format="aerialseg-feature-cache", version=0))
    )
    with pytest.raises(FeatureCacheError, match="another format or version"):
        _cached_model(tiny_cfg, other_version)

    # An entry copied under another key's name (a cache pieced together from other runs).
    cache = tmp_path / "cache"
    model = _cached_model(tiny_cfg, cache, towers=("sam",))
    inputs = _inputs(model)
    model.extract_feat(inputs)
    first, second = sorted(cache.glob("sam-*/*/*.safetensors"))
    shutil.copyfile(first, second)
    with pytest.raises(FeatureCacheError, match="does not belong to its key"):
        model.extract_feat(inputs)


def test_towers_that_train_cannot_be_cached(tiny_cfg, tmp_path):
    cfg = copy.deepcopy(tiny_cfg)  # LoRA on the SAM image encoder
    cfg.model.feature_cache = dict(dir=str(tmp_path / "cache"), towers=["sam"])
    with pytest.raises(ValueError, match="tower 'sam' has parameters that train"):
        build_model(cfg)
    cfg.model.feature_cache = dict(dir=str(tmp_path / "cache"), towers=["text"])
    with pytest.raises(ValueError, match="unknown"):
        build_model(cfg)
