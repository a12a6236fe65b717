"""RRSIS-D: REFER-style ``refs(unc).p`` + ``instances.json`` with DIOR images."""

from __future__ import annotations

import os.path as osp

from mmengine.logging import print_log
from mmseg.registry import DATASETS

from aerialseg.datasets.base import BaseReferringDataset, DatasetFormatError, require_path
from aerialseg.datasets.masks import coco_segmentation_to_spec
from aerialseg.datasets.refer_io import load_refer, sentence_text

__all__ = ["RRSISDDataset"]


@DATASETS.register_module()
class RRSISDDataset(BaseReferringDataset):
    """RRSIS-D (Liu et al., CVPR 2024): 17,402 triplets, 12,181 / 1,740 / 3,481 train/val/test.

    Layout (as downloaded)::

        data_root/refs(unc).p                      REFER pickle: ref_id, ann_id, image_id, split,
                                                   category_id, sentences[{sent, raw, sent_id}]
        data_root/instances.json                   COCO: images, annotations (segmentation = [RLE]),
                                                   categories
        data_root/images/rrsisd/JPEGImages/<file_name>   800x800 images

    One sample per (ref, sentence); the target is the ref's annotation mask. The annotation's
    category key is spelled ``categories_id`` in the release; both spellings are read. The per-image
    ``ann_split/*.xml`` files are not used (they pair sentences to masks only by box).
    Sentences that are empty are skipped and counted in the log; no default text is ever used.
    """

    DATASET_NAME = "rrsisd"
    SPLITS = ("train", "val", "test")

    def __init__(
        self,
        data_root: str = "data/rrsisd",
        split: str = "train",
        refs_file: str = "refs(unc).p",
        instances_file: str = "instances.json",
        img_dir: str = "images/rrsisd/JPEGImages",
        **kwargs,
    ) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"RRSIS-D has splits {self.SPLITS}, got {split!r}")
        self.refs_file = refs_file
        self.instances_file = instances_file
        self.img_dir = img_dir
        super().__init__(data_root=data_root, split=split, **kwargs)

    def load_samples(self) -> list[dict]:
        refer = load_refer(self.join(self.refs_file), self.join(self.instances_file), "RRSIS-D")
        img_dir = require_path(self.join(self.img_dir), "RRSIS-D image", directory=True)
        samples, empty_sentences = [], 0
        for ref in refer.refs:
            if ref["split"] != self.split:
                continue
            ref_id = ref.get("ref_id", ref["ann_id"])
            ann = refer.annotation(ref, ref["ann_id"])
            image = refer.image(ref)
            if "segmentation" not in ann:
                raise DatasetFormatError(
                    f"{refer.instances_path}: annotation {ann['id']} lacks segmentation"
                )
            try:
                mask_spec = coco_segmentation_to_spec(
                    ann["segmentation"], image["height"], image["width"]
                )
            except (ValueError, KeyError) as exc:
                raise DatasetFormatError(
                    f"{refer.instances_path}: annotation {ann['id']} segmentation: {exc}"
                ) from None
            category_id = ref.get("category_id", ann.get("category_id", ann.get("categories_id")))
            for index, sentence in enumerate(ref["sentences"]):
                text = sentence_text(sentence)
                if not text:
                    empty_sentences += 1
                    continue
                sent_id = sentence.get("sent_id") if isinstance(sentence, dict) else None
                samples.append(
                    dict(
                        img_path=osp.join(img_dir, image["file_name"]),
                        text=text,
                        img_id=str(ref["image_id"]),
                        target_id=str(ref["ann_id"]),
                        expr_id=str(sent_id if sent_id is not None else f"{ref_id}_{index}"),
                        expr_type="original",
                        target_type="instance",
                        dataset_name=self.DATASET_NAME,
                        category=refer.category_name(category_id),
                        subset="",
                        **mask_spec,
                    )
                )
        if empty_sentences:
            print_log(
                f"RRSIS-D {self.split}: skipped {empty_sentences} empty sentences", logger="current"
            )
        return samples
