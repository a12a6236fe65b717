"""Fixtures of the product tests (scene writers and the fake predictor live in ``scenes.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.product.scenes import ColourPredictor

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "clipsam" / "clipsam-tiny_aerial-d.py"

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def colour_predictor() -> ColourPredictor:
    return ColourPredictor()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> dict:
    """The real tiny ClipSAM (random init, written through the real checkpoint writers).

    Returns ``segmenter`` (a loaded ``ReferringSegmenter``) and ``checkpoint``: a training-style
    checkpoint (``state_dict`` + ``meta.cfg``) that the CLI loads without ``--config``.
    """
    import torch

    from aerialseg.apis import ReferringSegmenter
    from aerialseg.models.tiny import write_tiny_checkpoints

    root = tmp_path_factory.mktemp("tiny-model")
    paths = write_tiny_checkpoints(root / "pretrained")
    options = {"model.vlm.pretrained": paths.vlm_path, "model.sam.checkpoint": paths.sam_path}
    torch.manual_seed(0)
    segmenter = ReferringSegmenter(str(TINY_CONFIG), cfg_options=options)
    checkpoint = root / "tiny_clipsam.pth"
    state = {"state_dict": segmenter.model.state_dict(), "meta": {"cfg": segmenter.cfg.pretty_text}}
    torch.save(state, checkpoint)
    return {"segmenter": segmenter, "checkpoint": str(checkpoint)}


@pytest.fixture(scope="module")
def web_predictor(tiny_model):
    return tiny_model["segmenter"]
