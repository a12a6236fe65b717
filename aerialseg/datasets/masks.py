"""Target-mask specs of the sample contract and their decoding to (H, W) uint8 {0, 1} arrays.

A data_info names its target mask in one of three ways:

- ``mask_rle``: a COCO RLE ``{'size': [h, w], 'counts': str}`` (or a list of them, merged);
- ``mask_polygons``: a list of flat ``[x0, y0, x1, y1, ...]`` polygons with ``mask_size`` ``[h, w]``
  (an empty list is an empty mask, e.g. an NWPU-Refer no-target expression);
- ``seg_map_path``: an image file, either a class-id map (``seg_class_id`` selects the class) or a
  binary 0/255 mask (foreground where the value is above ``mask_threshold``, default 127; a 0/1
  mask is detected and read with foreground 1, with a warning).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from aerialseg.datasets.aerial_d_format import RLEMask, parse_rle_text, rle_run_lengths

__all__ = [
    "BinaryMaskEncodingWarning",
    "coco_segmentation_to_spec",
    "decode_mask_spec",
    "decode_polygons",
    "decode_rle",
    "mask_from_label_image",
]


def _as_rle_mask(rle: dict | str | RLEMask) -> RLEMask:
    if isinstance(rle, RLEMask):
        return rle
    if isinstance(rle, str):
        return parse_rle_text(rle)
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"RLE must be a dict with 'size' and 'counts', got {type(rle).__name__}")
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        if sum(counts) != height * width:
            raise ValueError(
                f"uncompressed RLE runs sum to {sum(counts)}, expected {height * width}"
            )
        encoded = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        return RLEMask(size=(height, width), counts=encoded["counts"].decode())
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = rle_run_lengths(counts)
    if (runs < 0).any() or int(runs.sum()) != height * width:
        raise ValueError(f"RLE counts cover {int(runs.sum())} pixels, size [{height}, {width}]")
    return RLEMask(size=(height, width), counts=counts)


def decode_rle(rle: dict | str | RLEMask | Sequence) -> np.ndarray:
    """Decode one RLE (or a list of RLEs of one size, merged by union) to (H, W) uint8 {0, 1}.

    The counts are validated before pycocotools sees them (its decoder has no bounds checks).
    """
    if isinstance(rle, (list, tuple)):
        if not rle:
            raise ValueError("empty RLE list: the mask size is unknown")
        masks = [_as_rle_mask(item) for item in rle]
        sizes = {m.size for m in masks}
        if len(sizes) != 1:
            raise ValueError(f"RLEs to merge have different sizes: {sorted(sizes)}")
        merged = mask_utils.merge([m.to_coco() for m in masks], intersect=False)
        return mask_utils.decode(merged)
    return _as_rle_mask(rle).decode()


def decode_polygons(polygons: Sequence[Sequence[float]], size: Sequence[int]) -> np.ndarray:
    """Rasterise flat polygons (COCO convention, union) to (H, W) uint8 {0, 1}."""
    height, width = int(size[0]), int(size[1])
    polygons = [list(map(float, poly)) for poly in polygons]
    for index, poly in enumerate(polygons):
        if len(poly) < 6 or len(poly) % 2:
            raise ValueError(
                f"polygon #{index} needs an even number (>= 6) of coordinates, got {len(poly)}"
            )
    if not polygons:
        return np.zeros((height, width), dtype=np.uint8)
    rles = mask_utils.frPyObjects(polygons, height, width)
    return mask_utils.decode(mask_utils.merge(rles, intersect=False))


def mask_from_label_image(
    label: np.ndarray, class_id: int | None = None, threshold: int = 127
) -> np.ndarray:
    """Binary target from a label image.

    Args:
        label: (H, W) or (H, W, C) integer array; for several channels the first one is used
            (class-id PNGs saved as RGB repeat the id in every channel).
        class_id: the class whose pixels form the target; ``None`` for a binary mask, where
            foreground is ``value > threshold``.
        threshold: see ``class_id``. A binary mask stored as 0/1 instead of 0/255 (its maximum is
            1, below the threshold) would come out empty: it is detected, read with foreground
            = 1, and a warning says so. Any other mask whose non-zero values all lie at or below
            the threshold is an error rather than an empty target.
    """
    if label.ndim == 3:
        label = label[:, :, 0]
    if label.ndim != 2:
        raise ValueError(f"label image must be (H, W) or (H, W, C), got shape {label.shape}")
    if class_id is not None:
        return (label == class_id).astype(np.uint8)
    if label.dtype == np.bool_:
        return label.astype(np.uint8)
    if label.dtype not in (np.uint8, np.bool_):
        raise ValueError(
            f"binary masks must be 8-bit (0/255), got dtype {label.dtype}; convert the mask"
        )
    peak = int(label.max()) if label.size else 0
    if 0 < peak <= threshold:
        if peak == 1:
            warnings.warn(
                "binary mask stored as 0/1 instead of 0/255: read with foreground = 1",
                BinaryMaskEncodingWarning,
                stacklevel=2,
            )
            return (label == 1).astype(np.uint8)
        raise ValueError(
            f"binary mask has values up to {peak}, none above the foreground threshold "
            f"{threshold}: it would be empty; expected 0/255 (or 0/1), or set mask_threshold"
        )
    return (label > threshold).astype(np.uint8)


class BinaryMaskEncodingWarning(UserWarning):
    """A binary mask was stored as 0/1 instead of 0/255 (read correctly, with foreground = 1)."""


def coco_segmentation_to_spec(segmentation, height: int, width: int) -> dict:
    """Turn a COCO ``segmentation`` field into a mask spec of the sample contract.

    Accepts a polygon list, an RLE dict (compressed or uncompressed), or a list of RLE dicts (the
    RRSIS-D ``instances.json`` form).
    """
    if isinstance(segmentation, dict):
        return {"mask_rle": _as_rle_mask(segmentation).to_dict()}
    if isinstance(segmentation, list):
        if segmentation and all(isinstance(item, dict) for item in segmentation):
            rles = [_as_rle_mask(item) for item in segmentation]
            if len(rles) == 1:
                return {"mask_rle": rles[0].to_dict()}
            merged = mask_utils.merge([r.to_coco() for r in rles], intersect=False)
            return {"mask_rle": {"size": list(merged["size"]), "counts": merged["counts"].decode()}}
        if all(isinstance(item, (list, tuple)) for item in segmentation):
            return {
                "mask_polygons": [list(map(float, poly)) for poly in segmentation],
                "mask_size": [int(height), int(width)],
            }
    raise ValueError(f"unsupported COCO segmentation of type {type(segmentation).__name__}")


def decode_mask_spec(info: dict) -> np.ndarray | None:
    """Decode ``mask_rle`` or ``mask_polygons`` of a data_info; ``None`` if it has neither."""
    if info.get("mask_rle") is not None:
        return decode_rle(info["mask_rle"])
    if info.get("mask_polygons") is not None:
        if info.get("mask_size") is None:
            raise ValueError("mask_polygons needs mask_size [h, w]")
        return decode_polygons(info["mask_polygons"], info["mask_size"])
    return None
