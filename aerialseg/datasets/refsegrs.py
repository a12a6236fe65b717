"""RefSegRS: ``.tif`` images and masks with one ``output_phrase_<split>.txt`` per split."""

from __future__ import annotations

import logging
import os.path as osp

import mmcv
from mmengine.logging import print_log
from mmseg.registry import DATASETS

from aerialseg.datasets.base import BaseReferringDataset, DatasetFormatError, require_path

__all__ = ["RefSegRSDataset"]


@DATASETS.register_module()
class RefSegRSDataset(BaseReferringDataset):
    """RefSegRS (Yuan et al., TGRS 2024): 4,420 triplets at 512x512, 2,172 / 431 / 1,817.

    Layout (``RefSegRS.zip`` from the ``JessicaYuan/RefSegRS`` dataset repository)::

        data_root/images/<image_id>.tif
        data_root/masks/<image_id>.tif                 binary 0/255 (1 or 3 channels)
        data_root/output_phrase_{train,val,test}.txt   "<image_id> <expression>" per line

    One sample per line (an image may appear on several lines, all sharing its mask); ``expr_id``
    is the 0-based line number within the split file. The mask is foreground where its first
    channel exceeds ``mask_threshold``. Masks stored as 0/1 instead of 0/255 are detected (a
    warning when the split is loaded, judged on its first mask) and read with foreground 1. A
    line with an image id but no expression is skipped, counted and named in the log.
    """

    DATASET_NAME = "refsegrs"
    SPLITS = ("train", "val", "test")

    def __init__(
        self,
        data_root: str = "data/refsegrs",
        split: str = "train",
        img_suffix: str = ".tif",
        mask_suffix: str = ".tif",
        mask_threshold: int = 127,
        **kwargs,
    ) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"RefSegRS has splits {self.SPLITS}, got {split!r}")
        self.img_suffix = img_suffix
        self.mask_suffix = mask_suffix
        self.mask_threshold = mask_threshold
        super().__init__(data_root=data_root, split=split, **kwargs)

    def load_samples(self) -> list[dict]:
        phrase_file = require_path(self.join(f"output_phrase_{self.split}.txt"), "RefSegRS split")
        img_dir = require_path(self.join("images"), "RefSegRS image", directory=True)
        mask_dir = require_path(self.join("masks"), "RefSegRS mask", directory=True)
        samples = []
        with open(phrase_file, encoding="utf-8") as stream:
            for line_number, line in enumerate(stream):
                line = line.strip()
                if not line:
                    continue
                image_id, _, text = line.partition(" ")
                samples.append(
                    dict(
                        img_path=osp.join(img_dir, image_id + self.img_suffix),
                        text=text.strip(),
                        img_id=image_id,
                        target_id=image_id,
                        expr_id=str(line_number),
                        expr_type="original",
                        target_type="instance",
                        dataset_name=self.DATASET_NAME,
                        category="",
                        subset="",
                        seg_map_path=osp.join(mask_dir, image_id + self.mask_suffix),
                        mask_threshold=self.mask_threshold,
                    )
                )
        if samples:
            self._warn_if_zero_one_masks(samples[0]["seg_map_path"])
        return samples

    def _warn_if_zero_one_masks(self, mask_path: str) -> None:
        """Say once, at load time, that this copy stores 0/1 masks (each mask is still checked
        when it is read: see :func:`~aerialseg.datasets.masks.mask_from_label_image`)."""
        require_path(mask_path, "RefSegRS mask")
        try:
            label = mmcv.imread(mask_path, flag="unchanged", backend="pillow")
        except (OSError, SyntaxError, ValueError) as exc:
            raise DatasetFormatError(f"{mask_path}: mask cannot be read ({exc})") from None
        if label is not None and label.size and int(label.max()) == 1:
            print_log(
                f"RefSegRS {self.split}: masks are stored as 0/1, not 0/255 (e.g. {mask_path}); "
                "reading foreground as value 1",
                logger="current",
                level=logging.WARNING,
            )

    def annotation_sources(self) -> list[str]:
        return [self.join(f"output_phrase_{self.split}.txt")]
