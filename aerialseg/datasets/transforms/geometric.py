"""Resizing that can leave the target mask at its original size for evaluation."""

from __future__ import annotations

from mmseg.datasets.transforms import Resize
from mmseg.registry import TRANSFORMS

__all__ = ["ReferringResize"]


@TRANSFORMS.register_module()
class ReferringResize(Resize):
    """mmseg ``Resize`` with ``resize_mask``: when False only the image is resized.

    Test pipelines use ``resize_mask=False`` so ``gt_seg_map`` stays at ``ori_shape`` and the
    metric compares it with predictions at the original resolution.
    """

    def __init__(self, *args, resize_mask: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.resize_mask = resize_mask

    def _resize_seg(self, results: dict) -> None:
        if self.resize_mask:
            super()._resize_seg(results)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", resize_mask={self.resize_mask})"
