"""RRSIS-D: REFER-style ``refs(unc).p`` + ``instances.json`` with DIOR images."""

from __future__ import annotations

import os.path as osp

from mmseg.registry import DATASETS

from aerialseg.datasets.base import BaseReferringDataset, DatasetFormatError, require_path
from aerialseg.datasets.masks import coco_segmentation_to_spec
from aerialseg.datasets.refer_io import (
    TEXT_FIELDS,
    load_refer,
    report_foreign_splits,
    sentence_text,
)

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
    Sentences that are empty are skipped, counted and named by ref id in the log; no default text
    is ever used. Refs whose split is not train/val/test are reported in the log.

    Args:
        text_field: the sentence field read: ``'raw'`` (default; the annotator's text, which
            LAVT/RMSIN and mmdet's ``RefCocoDataset`` read) or ``'sent'`` (the REFER toolkit's
            lower-cased, re-tokenised copy, which RSRefSeg's JSONL converter keeps).
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
        text_field: str = "raw",
        **kwargs,
    ) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"RRSIS-D has splits {self.SPLITS}, got {split!r}")
        if text_field not in TEXT_FIELDS:
            raise ValueError(f"text_field must be one of {TEXT_FIELDS}, got {text_field!r}")
        self.text_field = text_field
        self.refs_file = refs_file
        self.instances_file = instances_file
        self.img_dir = img_dir
        super().__init__(data_root=data_root, split=split, **kwargs)

    def load_samples(self) -> list[dict]:
        refer = load_refer(self.join(self.refs_file), self.join(self.instances_file), "RRSIS-D")
        img_dir = require_path(self.join(self.img_dir), "RRSIS-D image", directory=True)
        report_foreign_splits(refer.refs, self.SPLITS, refer.refs_path)
        samples = []
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
                sent_id = sentence.get("sent_id") if isinstance(sentence, dict) else None
                try:
                    text = sentence_text(sentence, self.text_field)
                except DatasetFormatError as exc:
                    raise DatasetFormatError(f"{refer.refs_path}: ref {ref_id}: {exc}") from None
                if not text:
                    where = sent_id if sent_id is not None else index
                    self.note_empty_expression(f"ref {ref_id} sentence {where}")
                    continue
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
        return samples

    def annotation_sources(self) -> list[str]:
        return [self.join(self.refs_file), self.join(self.instances_file)]
