"""Mask loading, image-only resize for evaluation, and packing into a SegDataSample."""

from __future__ import annotations

import numpy as np
import pytest
from mmcv.transforms import Compose
from mmengine.registry import init_default_scope
from PIL import Image

from aerialseg.datasets import RRSISDDataset
from aerialseg.datasets.transforms import LoadReferringMask
from tests.datasets.fixtures import box_mask, coco_rle, write_image, write_rrsisd


@pytest.fixture(autouse=True)
def mmseg_scope():
    init_default_scope("mmseg")


def rrsisd_sample(tmp_path, pipeline):
    write_rrsisd(tmp_path)
    dataset = RRSISDDataset(data_root=str(tmp_path), split="val", pipeline=pipeline)
    return dataset[0]


@pytest.mark.parametrize("resize_mask", [False, True])
def test_referring_resize_keeps_the_mask_at_original_size(tmp_path, resize_mask):
    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadReferringMask"),
        dict(type="ReferringResize", scale=(20, 20), resize_mask=resize_mask),
        dict(type="PackReferringInputs"),
    ]
    packed = rrsisd_sample(tmp_path, pipeline)
    sample = packed["data_samples"]
    assert tuple(packed["inputs"].shape) == (3, 20, 20)
    assert sample.metainfo["ori_shape"] == (40, 40) and sample.metainfo["img_shape"] == (20, 20)
    assert sample.metainfo["scale_factor"] == (0.5, 0.5)
    if resize_mask:
        assert tuple(sample.gt_sem_seg.data.shape) == (1, 20, 20)
        assert int(sample.gt_sem_seg.data.sum()) == 100  # 400 px at half size
    else:
        assert tuple(sample.gt_sem_seg.data.shape) == (1, 40, 40)
        assert int(sample.gt_sem_seg.data.sum()) == 400


def test_packed_metainfo_carries_the_contract(tmp_path):
    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadReferringMask"),
        dict(type="ReferringResize", scale=(20, 20), resize_mask=False),
        dict(type="HistoricFilter", prob=1.0, deterministic=True),
        dict(type="PackReferringInputs"),
    ]
    meta = rrsisd_sample(tmp_path, pipeline)["data_samples"].metainfo
    assert {
        k: meta[k]
        for k in (
            "text",
            "img_id",
            "target_id",
            "expr_id",
            "expr_type",
            "target_type",
            "dataset_name",
            "category",
        )
    } == dict(
        text="the airplane at the bottom right",
        img_id="2",
        target_id="3",
        expr_id="4",
        expr_type="original",
        target_type="instance",
        dataset_name="rrsisd",
        category="airplane",
    )
    assert meta["historic"] is True and meta["historic_mode"] in ("bw", "bw_grain", "sepia")
    assert meta["flip"] is False


def test_mask_sources_and_errors(tmp_path):
    load = LoadReferringMask()
    ids = dict(dataset_name="rrsisd", img_id="9", target_id="1", expr_id="0")
    rle = coco_rle(box_mask(10, 10, 0, 0, 5, 5))
    assert load({**ids, "mask_rle": rle, "ori_shape": (10, 10)})["gt_seg_map"].sum() == 25
    merged = [rle, coco_rle(box_mask(10, 10, 5, 5, 10, 10))]
    assert load({**ids, "mask_rle": merged})["gt_seg_map"].sum() == 50
    square = [[0, 0, 4, 0, 4, 4, 0, 4]]
    out = load({**ids, "mask_polygons": square, "mask_size": [6, 8]})
    assert out["gt_seg_map"].shape == (6, 8) and out["gt_seg_map"].sum() == 16
    assert out["seg_fields"] == ["gt_seg_map"]
    assert load({**ids, "mask_polygons": [], "mask_size": [3, 3]})["gt_seg_map"].sum() == 0

    with pytest.raises(ValueError, match=r"rrsisd 9/1/0: mask size \(10, 10\) differs from image"):
        load({**ids, "mask_rle": rle, "ori_shape": (12, 12)})
    with pytest.raises(ValueError, match="rrsisd 9/1/0: cannot load the target mask: .*cover"):
        load({**ids, "mask_rle": {"size": [10, 10], "counts": "1"}})
    with pytest.raises(ValueError, match="mask_polygons needs mask_size"):
        load({**ids, "mask_polygons": square})
    with pytest.raises(ValueError, match="even number"):
        load({**ids, "mask_polygons": [[0, 0, 1, 1, 2]], "mask_size": [3, 3]})
    with pytest.raises(ValueError, match="no mask spec"):
        load(dict(ids))
    with pytest.raises(FileNotFoundError, match="mask file not found"):
        load({**ids, "seg_map_path": str(tmp_path / "absent.png")})


def test_binary_mask_files_must_be_8_bit(tmp_path):
    load = LoadReferringMask()
    deep = tmp_path / "deep.png"
    Image.fromarray(box_mask(8, 8, 0, 0, 4, 4).astype(np.uint16) * 65535).save(deep)
    with pytest.raises(ValueError, match="binary masks must be 8-bit"):
        load({"seg_map_path": str(deep)})
    # As a class-id map a 16-bit mask is fine.
    assert load({"seg_map_path": str(deep), "seg_class_id": 65535})["gt_seg_map"].sum() == 16


def test_pack_requires_text(tmp_path):
    image = write_image(tmp_path / "x.png", 8, 8)
    pipeline = Compose([dict(type="LoadImageFromFile"), dict(type="PackReferringInputs")])
    with pytest.raises(ValueError, match="has no expression text"):
        pipeline({"img_path": str(image), "text": ""})
