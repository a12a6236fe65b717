"""Urban1960SatBench: class-id PNG masks turned into templated referring samples."""

from __future__ import annotations

import os.path as osp
from collections.abc import Sequence

import mmcv
import numpy as np
from mmseg.registry import DATASETS
from tqdm import tqdm

from aerialseg.datasets.base import BaseReferringDataset, DatasetFormatError, require_path

__all__ = ["DEFAULT_TEMPLATES", "Urban1960Dataset"]

# (sub-dataset folder, mask folder) per subset.
SUBSETS = {
    "isp": ("Urban1960SatISP", "mask_gt_ISP"),
    "ss": ("Urban1960SatSS", "mask_gt"),
}
# class id -> (category, expression). The same wording is used in every split.
DEFAULT_TEMPLATES = {
    "isp": {
        0: ("natural", "all natural areas and vegetation in the image"),
        1: ("impervious", "all building and road areas in the image"),
    },
    "ss": {
        1: ("building", "all buildings in the image"),
        2: ("road", "all roads in the image"),
        3: ("water", "all water in the image"),
    },
}


@DATASETS.register_module()
class Urban1960Dataset(BaseReferringDataset):
    """Urban1960SatBench (Hao et al., 2025): 1960s Keyhole imagery of Xi'an, semantic masks.

    Layout (Harvard Dataverse ``10.7910/DVN/HT2B1S``, nested zips extracted)::

        data_root/Urban1960SatISP/image/<name>.png
        data_root/Urban1960SatISP/mask_gt_ISP/<name>.png   0 natural, 1 impervious
        data_root/Urban1960SatISP/labelled_{train,val,test}.txt
        data_root/Urban1960SatSS/image/<name>.png
        data_root/Urban1960SatSS/mask_gt/<name>.png        1 building, 2 road, 3 water, ...
        data_root/Urban1960SatSS/labelled_{train,val,test}.txt

    Split files list one image name per line, with or without ``.png``. Every class of
    ``templates[subset]`` present in a mask (at least ``min_pixels`` pixels) gives one sample whose
    expression is the class template and whose target is ``mask == class_id``. Indexing reads
    every mask once.

    Args:
        subsets: which sub-datasets to read (``'isp'``, ``'ss'``).
        templates: ``{subset: {class_id: (category, expression)}}``; classes left out are unused.
        min_pixels: smallest number of pixels for a class to count as present.
    """

    DATASET_NAME = "urban1960"
    SPLITS = ("train", "val", "test")

    def __init__(
        self,
        data_root: str = "data/urban1960",
        split: str = "train",
        subsets: Sequence[str] = ("isp", "ss"),
        templates: dict | None = None,
        min_pixels: int = 1,
        **kwargs,
    ) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"Urban1960SatBench has splits {self.SPLITS}, got {split!r}")
        unknown = set(subsets) - set(SUBSETS)
        if unknown or not subsets:
            raise ValueError(
                f"subsets must be a non-empty subset of {tuple(SUBSETS)}, got {subsets}"
            )
        self.subsets = tuple(subsets)
        self.templates = {
            subset: {int(k): tuple(v) for k, v in (templates or DEFAULT_TEMPLATES)[subset].items()}
            for subset in self.subsets
        }
        self.min_pixels = min_pixels
        super().__init__(data_root=data_root, split=split, **kwargs)

    def load_samples(self) -> list[dict]:
        samples = []
        for subset in self.subsets:
            folder, mask_folder = SUBSETS[subset]
            root = self.join(folder)
            split_file = require_path(
                osp.join(root, f"labelled_{self.split}.txt"), f"Urban1960 {subset} split"
            )
            with open(split_file, encoding="utf-8") as stream:
                names = [line.strip() for line in stream if line.strip()]
            for name in tqdm(names, desc=f"Urban1960 {subset} {self.split}", disable=None):
                stem = name[:-4] if name.lower().endswith(".png") else name
                img_path = osp.join(root, "image", stem + ".png")
                mask_path = require_path(osp.join(root, mask_folder, stem + ".png"), "mask")
                try:
                    label = mmcv.imread(mask_path, flag="unchanged", backend="pillow")
                except (OSError, SyntaxError, ValueError) as exc:  # truncated or not an image
                    raise DatasetFormatError(f"{mask_path}: mask cannot be read ({exc})") from None
                if label is None or label.size == 0:
                    raise DatasetFormatError(f"{mask_path}: mask image cannot be read")
                if label.ndim == 3:
                    label = label[:, :, 0]
                counts = np.bincount(label.ravel().astype(np.int64))
                for class_id, (category, text) in sorted(self.templates[subset].items()):
                    if class_id >= counts.size or counts[class_id] < self.min_pixels:
                        continue
                    samples.append(
                        dict(
                            img_path=img_path,
                            text=text,
                            img_id=f"{subset}/{stem}",
                            target_id=str(class_id),
                            expr_id="0",
                            expr_type="template",
                            target_type="semantic",
                            dataset_name=self.DATASET_NAME,
                            category=category,
                            subset=subset,
                            seg_map_path=mask_path,
                            seg_class_id=class_id,
                        )
                    )
        return samples

    def annotation_sources(self) -> list[str]:
        return [
            self.join(SUBSETS[subset][0], f"labelled_{self.split}.txt") for subset in self.subsets
        ]

    def filters(self) -> dict:
        return {**super().filters(), "subsets": self.subsets, "min_pixels": [self.min_pixels]}
