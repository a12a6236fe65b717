"""COCO RLE helpers against pycocotools (the referee) on random masks."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from aerialformats.rle import (
    RLEMask,
    decode_rle,
    encode_mask,
    merge_rles,
    rle_area_bbox,
    rle_pixels,
    rle_run_lengths,
    rle_runs,
)


def runs_of(mask: np.ndarray) -> list[int]:
    """Run lengths of a column-major mask, background first (what COCO RLE stores)."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] == 1 else runs


def random_masks(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = []
    for k in range(count):
        height, width = rng.integers(1, 70, 2)
        mask = rng.random((height, width)) < rng.uniform(0.05, 0.95)
        if k % 3 == 0:  # large uniform runs too (multi-chunk values, deltas)
            mask[: height // 2] = k % 2 == 0
        masks.append(mask)
    return masks


def test_run_lengths_match_the_masks():
    masks = random_masks(60)
    rles = [encode_mask(m) for m in masks]
    for mask, rle in zip(masks, rles):
        assert rle_run_lengths(rle["counts"]).tolist() == runs_of(mask)
        assert np.array_equal(decode_rle(rle), mask.astype(np.uint8))
    runs, owner = rle_runs([r["counts"] for r in rles])
    for index, mask in enumerate(masks):
        assert runs[owner == index].tolist() == runs_of(mask)


def test_pixels_area_box_and_merge_agree_with_pycocotools():
    shape = (31, 47)
    rng = np.random.default_rng(2)
    masks = [rng.random(shape) < p for p in (0.1, 0.5, 0.0, 0.9)]
    rles = [encode_mask(m) for m in masks]
    owner, ys, xs = rle_pixels(rles)
    for index, mask in enumerate(masks):
        got = np.zeros(shape, bool)
        got[ys[owner == index], xs[owner == index]] = True
        assert np.array_equal(got, mask)
        coco = {"size": list(shape), "counts": rles[index]["counts"].encode()}
        x, y, w, h = (int(v) for v in mask_utils.toBbox(coco))
        assert rle_area_bbox(rles[index]) == (int(mask.sum()), (x, y, x + w, y + h))
    assert np.array_equal(decode_rle(merge_rles(rles)), np.logical_or.reduce(masks))
    assert RLEMask.from_mask(masks[1]).to_dict() == rles[1]


@pytest.mark.parametrize(
    ("counts", "message"),
    [("0a ", "alphabet"), ("0a0" + chr(48 + 32), "truncated"), ("0" + "o" * 13 + "0", "long")],
)
def test_corrupt_counts_are_refused(counts, message):
    with pytest.raises(ValueError, match=message):
        rle_run_lengths(counts)
