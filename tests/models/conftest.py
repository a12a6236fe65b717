"""Shared fixtures: tiny checkpoints and data written once per session, and the tiny config."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "clipsam" / "clipsam-tiny_aerial-d.py"

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@functools.cache
def _tiny_assets_of_this_process() -> dict:
    """Written once per process, removed when it exits. ``make mutation`` runs one pytest session
    per mutant in processes forked from one that already wrote them; the tests only read them."""
    from aerialseg.models.tiny import write_tiny_aerial_d, write_tiny_checkpoints

    root = Path(tempfile.mkdtemp(prefix="aerialseg-tiny-"))
    atexit.register(shutil.rmtree, root, True)
    paths = write_tiny_checkpoints(root / "checkpoints")
    write_tiny_aerial_d(root / "aerial_d")
    return dict(vlm=paths.vlm_path, sam=paths.sam_path, data=str(root / "aerial_d"))


@pytest.fixture(scope="session")
def tiny_assets() -> dict:
    """The tiny SigLIP folder, SAM .pth and Aerial-D set, written through the real writers."""
    return dict(_tiny_assets_of_this_process())


def tiny_config(assets: dict, work_dir: str | None = None) -> Config:
    """The tiny config on the session's assets; sets mmseg as default scope like the runner."""
    from mmengine.registry import init_default_scope

    init_default_scope("mmseg")
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.model.vlm.pretrained = assets["vlm"]
    cfg.model.sam.checkpoint = assets["sam"]
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[loader].dataset.data_root = assets["data"]
    if work_dir is not None:
        cfg.work_dir = work_dir
    return cfg


@pytest.fixture
def tiny_cfg(tiny_assets) -> Config:
    return tiny_config(tiny_assets)


def build_model(cfg: Config):
    from mmseg.registry import MODELS

    torch.manual_seed(0)
    return MODELS.build(cfg.model)


def square_batch(
    texts_and_boxes: list[tuple[str, tuple[int, int, int, int]]],
    image_hw: tuple[int, int] = (96, 128),
    seed: int = 0,
) -> dict:
    """A collated batch of (BGR image, expression, box mask) samples at training size.

    Each image is grey noise with a red and a blue square at fixed places; ``texts_and_boxes`` gives
    each sample's expression and target box (y0, x0, y1, x1).
    """
    rng = np.random.default_rng(seed)
    height, width = image_hw
    image = rng.integers(80, 120, size=(height, width, 3), dtype=np.uint8)
    image[10:50, 10:50] = (0, 0, 230)  # red square (BGR)
    image[40:80, 70:110] = (230, 0, 0)  # blue square
    inputs, samples = [], []
    for text, (y0, x0, y1, x1) in texts_and_boxes:
        mask = np.zeros((1, height, width), dtype=np.uint8)
        mask[0, y0:y1, x0:x1] = 1
        sample = SegDataSample(
            metainfo=dict(text=text, ori_shape=image_hw, img_shape=image_hw, img_path=f"{text}.png")
        )
        sample.gt_sem_seg = PixelData(data=torch.from_numpy(mask))
        samples.append(sample)
        inputs.append(torch.from_numpy(image.transpose(2, 0, 1).copy()))
    return dict(inputs=inputs, data_samples=samples)


RED_BOX = (10, 10, 50, 50)
BLUE_BOX = (40, 70, 80, 110)
