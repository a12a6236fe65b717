"""RefSegRS: ``.tif`` images and masks with one ``output_phrase_<split>.txt`` per split."""

from __future__ import annotations

import os.path as osp

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
    channel exceeds ``mask_threshold``.
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
                if not text.strip():
                    raise DatasetFormatError(
                        f"{phrase_file}: line {line_number + 1} has an image id but no expression"
                    )
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
        return samples
