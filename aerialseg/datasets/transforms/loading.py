"""Loading the target mask of a referring sample."""

from __future__ import annotations

import mmcv
import mmengine.fileio as fileio
import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from aerialseg.datasets.masks import decode_mask_spec, mask_from_label_image

__all__ = ["LoadReferringMask"]


@TRANSFORMS.register_module()
class LoadReferringMask(BaseTransform):
    """Decode the sample's mask spec to ``gt_seg_map``: (H, W) uint8 {0, 1} at the image's size.

    Sources, in order: ``mask_rle``, ``mask_polygons`` (+ ``mask_size``), ``seg_map_path`` (with
    ``seg_class_id`` for class-id maps, else foreground above ``mask_threshold``, default 127).
    Mask images are read with Pillow so that palette PNGs give their class ids.

    Required keys: one mask spec; ``ori_shape`` (from ``LoadImageFromFile``) when
    ``check_shape``. Added keys: ``gt_seg_map``; ``'gt_seg_map'`` appended to ``seg_fields``.

    Args:
        check_shape: raise if the mask and the image differ in size.
        backend_args: mmengine file backend arguments for ``seg_map_path``.
    """

    def __init__(self, check_shape: bool = True, backend_args: dict | None = None) -> None:
        self.check_shape = check_shape
        self.backend_args = backend_args.copy() if backend_args else None

    def _describe(self, results: dict) -> str:
        ids = "/".join(str(results.get(key, "?")) for key in ("img_id", "target_id", "expr_id"))
        return f"{results.get('dataset_name', 'sample')} {ids}"

    def _read_label(self, path: str) -> np.ndarray:
        try:
            data = fileio.get(path, backend_args=self.backend_args)
        except FileNotFoundError:
            raise FileNotFoundError(f"mask file not found: '{path}'") from None
        label = mmcv.imfrombytes(data, flag="unchanged", backend="pillow")
        if label is None or label.size == 0:
            raise ValueError(f"mask file cannot be decoded: '{path}'")
        return label

    def transform(self, results: dict) -> dict:
        try:
            mask = decode_mask_spec(results)
            if mask is None:
                path = results.get("seg_map_path")
                if path is None:
                    raise ValueError("no mask spec (mask_rle, mask_polygons or seg_map_path)")
                mask = mask_from_label_image(
                    self._read_label(path),
                    class_id=results.get("seg_class_id"),
                    threshold=results.get("mask_threshold", 127),
                )
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise ValueError(
                f"{self._describe(results)}: cannot load the target mask: {exc}"
            ) from exc
        shape = tuple(results.get("ori_shape", mask.shape))[:2]
        if self.check_shape and tuple(mask.shape[:2]) != shape:
            raise ValueError(
                f"{self._describe(results)}: mask size {mask.shape[:2]} differs from image "
                f"size {shape} ({results.get('img_path')})"
            )
        results["gt_seg_map"] = mask.astype(np.uint8)
        seg_fields = results.setdefault("seg_fields", [])
        if "gt_seg_map" not in seg_fields:
            seg_fields.append("gt_seg_map")
        return results

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(check_shape={self.check_shape})"
