"""The RRSIS-D loader against mmdet's ``RefCocoDataset`` on the same REFER files.

mmdet reads every sentence's ``raw`` field (lower-cased) and the ref's annotation mask, per image.
Our loader must give the same (text, mask) pairs: same sentence field (the fixture's ``raw`` and
``sent`` differ in case and punctuation, so reading ``sent`` fails here), same masks, same split
filtering. Differences by design: we keep the annotator's case (the model's preprocessor lowers it
for SigLIP 2) and skip empty sentences, which mmdet would keep as blank text.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from mmdet.datasets import RefCocoDataset
from pycocotools import mask as mask_utils

from aerialseg.datasets import RRSISDDataset
from aerialseg.datasets.masks import decode_mask_spec
from tests.datasets.fixtures import write_rrsisd


def _coco_mask(segmentation, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, list) and segmentation and isinstance(segmentation[0], dict):
        rles = [
            mask_utils.frPyObjects(rle, height, width) if isinstance(rle["counts"], list) else rle
            for rle in segmentation
        ]
    else:
        rles = mask_utils.frPyObjects(segmentation, height, width)
    return np.asarray(mask_utils.decode(mask_utils.merge(rles)), dtype=np.uint8)


def _mmdet_pairs(root, split: str) -> dict[str, list[tuple[str, bytes]]]:
    dataset = RefCocoDataset(
        data_root=str(root),
        ann_file="instances.json",
        split_file="refs(unc).p",
        data_prefix=dict(img_path="images/rrsisd/JPEGImages/"),
        split=split,
        text_mode="original",
        pipeline=[],
    )
    pairs = defaultdict(list)
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        for text, instance in zip(info["text"], info["instances"]):
            if not text.strip():
                continue
            mask = _coco_mask(instance["mask"], 40, 40)
            pairs[str(info["img_id"])].append((text, mask.tobytes()))
    return {key: sorted(value) for key, value in pairs.items()}


def _our_pairs(root, split: str, **kwargs) -> dict[str, list[tuple[str, bytes]]]:
    dataset = RRSISDDataset(data_root=str(root), split=split, pipeline=[], **kwargs)
    pairs = defaultdict(list)
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        mask = decode_mask_spec(info).astype(np.uint8)
        pairs[info["img_id"]].append((info["text"].lower(), mask.tobytes()))
    return {key: sorted(value) for key, value in pairs.items()}


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_rrsisd_samples_equal_mmdet_refcocodataset(tmp_path, split):
    write_rrsisd(tmp_path)
    expected = _mmdet_pairs(tmp_path, split)
    assert expected  # every split has samples in the fixture
    assert _our_pairs(tmp_path, split) == expected


def test_the_sent_field_is_not_what_mmdet_reads(tmp_path):
    """The fixture's ``sent`` differs from ``raw``: reading it would not match the referee."""
    write_rrsisd(tmp_path)
    assert _our_pairs(tmp_path, "train", text_field="sent") != _mmdet_pairs(tmp_path, "train")
