"""Packing a referring sample into model inputs and a ``SegDataSample``."""

from __future__ import annotations

from mmseg.datasets.transforms import PackSegInputs
from mmseg.registry import TRANSFORMS

__all__ = ["REFERRING_META_KEYS", "PackReferringInputs"]

REFERRING_META_KEYS = (
    "img_path",
    "seg_map_path",
    "ori_shape",
    "img_shape",
    "pad_shape",
    "scale_factor",
    "flip",
    "flip_direction",
    "historic",
    "historic_mode",
    "text",
    "img_id",
    "target_id",
    "expr_id",
    "expr_type",
    "target_type",
    "dataset_name",
    "category",
    "subset",
)


@TRANSFORMS.register_module()
class PackReferringInputs(PackSegInputs):
    """``PackSegInputs`` that also carries the expression and the sample ids in the metainfo.

    ``gt_sem_seg`` comes from ``gt_seg_map`` (the binary target). ``flip``, ``historic`` and
    ``scale_factor`` get their neutral values when no transform set them, so every sample has the
    same metainfo keys. The model reads the expression from ``metainfo['text']``.
    """

    def __init__(self, meta_keys=REFERRING_META_KEYS) -> None:
        super().__init__(meta_keys=meta_keys)

    def transform(self, results: dict) -> dict:
        text = results.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"sample {results.get('img_path')} has no expression text")
        results.setdefault("flip", False)
        results.setdefault("flip_direction", None)
        results.setdefault("historic", False)
        results.setdefault("historic_mode", None)
        results.setdefault("scale_factor", (1.0, 1.0))
        if "img" in results:
            results.setdefault("img_shape", results["img"].shape[:2])
        return super().transform(results)
