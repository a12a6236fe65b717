"""Target-mask decoding against pycocotools (RLE, polygons, COCO segmentations) and plain numpy
(label images), with the exact refusals for malformed inputs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from aerialseg.datasets.masks import (
    BinaryMaskEncodingWarning,
    coco_segmentation_to_spec,
    decode_mask_spec,
    decode_polygons,
    decode_rle,
    mask_from_label_image,
)

HEIGHT, WIDTH = 13, 17  # not square: rows and columns cannot be swapped unnoticed


def _random_mask(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((HEIGHT, WIDTH)) < 0.4).astype(np.uint8)


def _coco_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def _uncompressed(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F")
    runs, value, count = [], 0, 0
    for pixel in flat:
        if pixel == value:
            count += 1
        else:
            runs.append(count)
            value, count = pixel, 1
    runs.append(count)
    return {"size": [HEIGHT, WIDTH], "counts": runs}


POLYGONS = [[1.0, 1.0, 9.5, 2.0, 8.0, 10.0, 2.0, 9.0], [12.0, 3.0, 16.0, 3.0, 14.0, 12.0]]


def test_rle_forms_decode_like_pycocotools():
    mask = _random_mask(0)
    assert np.array_equal(decode_rle(_coco_rle(mask)), mask)
    assert np.array_equal(decode_rle(_uncompressed(mask)), mask)
    bytes_counts = mask_utils.encode(np.asfortranarray(mask))
    assert np.array_equal(
        decode_rle({"size": [HEIGHT, WIDTH], "counts": bytes_counts["counts"]}), mask
    )
    other = _random_mask(1)
    union = decode_rle([_coco_rle(mask), _coco_rle(other)])
    assert np.array_equal(union, mask | other)
    assert decode_rle(_coco_rle(mask)).dtype == np.uint8


def test_rle_text_decodes_like_pycocotools():
    """An RLE given as text, as Aerial-D's XML stores it: JSON, or the release's Python repr with
    bytes counts."""
    mask = _random_mask(4)
    rle = _coco_rle(mask)
    as_json = json.dumps(rle)
    as_repr = str({"size": rle["size"], "counts": rle["counts"].encode()})
    for text in (as_json, as_repr):
        assert np.array_equal(decode_rle(text), mask)
        assert np.array_equal(decode_mask_spec({"mask_rle": text}), mask)


def test_polygons_rasterise_like_pycocotools():
    expected = mask_utils.decode(
        mask_utils.merge(mask_utils.frPyObjects(POLYGONS, HEIGHT, WIDTH), intersect=False)
    )
    assert np.array_equal(decode_polygons(POLYGONS, (HEIGHT, WIDTH)), expected)
    assert expected.sum() > 20
    assert np.array_equal(decode_polygons([], (HEIGHT, WIDTH)), np.zeros((HEIGHT, WIDTH)))
    assert decode_polygons([], (HEIGHT, WIDTH)).shape == (HEIGHT, WIDTH)


def test_coco_segmentations_become_specs_that_decode_to_the_same_mask():
    mask, other = _random_mask(2), _random_mask(3)
    polygon_spec = coco_segmentation_to_spec(POLYGONS, HEIGHT, WIDTH)
    assert polygon_spec == {"mask_polygons": POLYGONS, "mask_size": [HEIGHT, WIDTH]}
    for segmentation, expected in [
        (_coco_rle(mask), mask),
        (_uncompressed(mask), mask),
        ([_coco_rle(mask)], mask),
        ([_coco_rle(mask), _coco_rle(other)], mask | other),
    ]:
        spec = coco_segmentation_to_spec(segmentation, HEIGHT, WIDTH)
        assert set(spec) == {"mask_rle"}
        assert np.array_equal(decode_mask_spec(spec), expected)
    assert np.array_equal(
        decode_mask_spec(polygon_spec), decode_polygons(POLYGONS, (HEIGHT, WIDTH))
    )
    assert decode_mask_spec({"seg_map_path": "x.png"}) is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: decode_rle([]), "empty RLE list: the mask size is unknown"),
        (
            lambda: decode_rle({"counts": "x"}),
            "RLE must be a dict with 'size' and 'counts', got dict",
        ),
        (
            lambda: decode_rle({"size": [2, 2], "counts": [1, 2]}),
            "uncompressed RLE runs sum to 3, expected 4",
        ),
        (
            lambda: decode_rle([_coco_rle(_random_mask(0)), {"size": [2, 2], "counts": [4]}]),
            r"RLEs to merge have different sizes: [(2, 2), (13, 17)]",
        ),
        (
            lambda: decode_polygons([[0, 0, 1, 1]], (4, 4)),
            "polygon #0 needs an even number (>= 6) of coordinates, got 4",
        ),
        (
            lambda: decode_polygons([[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2, 3]], (4, 4)),
            "polygon #1 needs an even number (>= 6) of coordinates, got 7",
        ),
        (
            lambda: decode_mask_spec({"mask_polygons": POLYGONS}),
            "mask_polygons needs mask_size [h, w]",
        ),
        (
            lambda: coco_segmentation_to_spec("1 2", HEIGHT, WIDTH),
            "unsupported COCO segmentation of type str",
        ),
        (
            lambda: mask_from_label_image(np.zeros((2, 2, 2, 2), dtype=np.uint8)),
            "label image must be (H, W) or (H, W, C), got shape (2, 2, 2, 2)",
        ),
        (
            lambda: mask_from_label_image(np.zeros((2, 2), dtype=np.uint16)),
            "binary masks must be 8-bit (0/255), got dtype uint16; convert the mask",
        ),
        (
            lambda: mask_from_label_image(np.array([[0, 100]], dtype=np.uint8)),
            "binary mask has values up to 100, none above the foreground threshold 127: it would "
            "be empty; expected 0/255 (or 0/1), or set mask_threshold",
        ),
    ],
)
def test_malformed_masks_are_refused_by_name(call, message):
    with pytest.raises(ValueError) as caught:
        call()
    assert str(caught.value) == message


def test_label_images_give_the_target_pixels():
    labels = np.array([[0, 3, 3], [7, 3, 0]], dtype=np.uint8)
    assert np.array_equal(mask_from_label_image(labels, class_id=3), labels == 3)
    rgb = np.repeat(labels[:, :, None], 3, axis=2)
    assert np.array_equal(mask_from_label_image(rgb, class_id=7), labels == 7)
    binary = np.array([[0, 255], [128, 127]], dtype=np.uint8)
    assert mask_from_label_image(binary).tolist() == [[0, 1], [1, 0]]
    assert mask_from_label_image(binary, threshold=200).tolist() == [[0, 1], [0, 0]]
    assert mask_from_label_image(np.array([[True, False]])).tolist() == [[1, 0]]
    assert mask_from_label_image(np.zeros((2, 2), dtype=np.uint8)).sum() == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ones = mask_from_label_image(np.array([[0, 1], [1, 0]], dtype=np.uint8))
    assert ones.tolist() == [[0, 1], [1, 0]] and ones.dtype == np.uint8
    assert [w.category for w in caught] == [BinaryMaskEncodingWarning]
    assert str(caught[0].message) == (
        "binary mask stored as 0/1 instead of 0/255: read with foreground = 1"
    )


def test_rle_sizes_must_match_their_runs():
    rle = _coco_rle(np.ones((2, 2), dtype=np.uint8))
    with pytest.raises(ValueError) as caught:
        decode_rle({"size": [3, 3], "counts": rle["counts"]})
    assert str(caught.value) == "RLE counts cover 4 pixels, size [3, 3]"


def test_outputs_are_uint8_and_edge_labels_are_handled():
    assert decode_polygons([], (2, 3)).dtype == np.uint8
    labels = np.array([[0, 3], [3, 0]], dtype=np.uint8)
    assert mask_from_label_image(labels, class_id=3).dtype == np.uint8
    assert mask_from_label_image(np.array([[True, False]])).dtype == np.uint8
    assert mask_from_label_image(np.array([[0, 255]], dtype=np.uint8)).dtype == np.uint8
    # Only the first channel carries the class id.
    rgb = np.stack([labels, np.full_like(labels, 3), np.zeros_like(labels)], axis=-1)
    assert mask_from_label_image(rgb, class_id=3).tolist() == [[0, 1], [1, 0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty label is no 0/1 mask: no warning
        assert mask_from_label_image(np.zeros((0, 0), dtype=np.uint8)).shape == (0, 0)
    with pytest.raises(ValueError, match="values up to 127, none above the foreground threshold"):
        mask_from_label_image(np.array([[0, 127]], dtype=np.uint8))
