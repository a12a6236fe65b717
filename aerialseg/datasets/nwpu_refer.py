"""NWPU-Refer: polygon instances JSON + REFER refs pickle; multi- and no-target expressions."""

from __future__ import annotations

import os.path as osp
import re
from collections.abc import Sequence

from mmengine.logging import print_log
from mmseg.registry import DATASETS

from aerialseg.datasets.base import BaseReferringDataset, DatasetFormatError, require_path
from aerialseg.datasets.refer_io import (
    TEXT_FIELDS,
    load_refer,
    report_foreign_splits,
    sentence_text,
)

__all__ = ["NWPUReferDataset", "sentence_language"]

_CJK = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
LANGUAGES = ("en", "zh")


def sentence_language(sentence, text_field: str = "raw") -> str:
    """``sentence['lang']`` when the file states it, else ``'zh'`` for CJK script, else ``'en'``."""
    if isinstance(sentence, dict):
        stated = sentence.get("lang") or sentence.get("language")
        if stated:
            return str(stated).lower()
    return "zh" if _CJK.search(sentence_text(sentence, text_field)) else "en"


def _ann_ids(ref: dict) -> list:
    """A ref's target annotations: one id, a list of ids, or none (-1 / None / [])."""
    value = ref["ann_id"]
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in values if v is not None and v != -1]


@DATASETS.register_module()
class NWPUReferDataset(BaseReferringDataset):
    """NWPU-Refer (Yang et al., 2025): 15,003 images, 49,745 targets, 32 classes, train/val/test.

    Layout::

        data_root/image/<file_name>          .jpg, 1024-2048 px
        data_root/new_instances.json         COCO: images{id, file_name, width, height},
                                             annotations{id, image_id, category_id, segmentation
                                             (flat polygons)}, categories
        data_root/new_refs(unc).p            REFER pickle: ref_id, ann_id, image_id, split,
                                             sentences[{sent, ...}]

    Refs that share (image, sentence text, split) are one expression with several targets: their
    polygons are merged into one mask (``target_type='group'``, subset ``multi``). A ref without
    a target (``ann_id`` -1, None or []) is kept with an empty mask (subset ``no_target``); the
    metric scores an empty prediction on it as IoU 1. Sentences are chosen by ``languages``: the
    ``lang`` field when present, else the script of the text. Empty sentences are skipped, counted
    and named by ref id in the log; refs whose split is not train/val/test are reported.

    Args:
        text_field: the sentence field read: ``'raw'`` (default, as LAVT/RMSIN read REFER files)
            or ``'sent'`` (the REFER toolkit's lower-cased, re-tokenised copy).
        languages: the sentence languages kept.
    """

    DATASET_NAME = "nwpu_refer"
    SPLITS = ("train", "val", "test")

    def __init__(
        self,
        data_root: str = "data/nwpu_refer",
        split: str = "train",
        languages: Sequence[str] = ("en",),
        refs_file: str = "new_refs(unc).p",
        instances_file: str = "new_instances.json",
        img_dir: str = "image",
        text_field: str = "raw",
        **kwargs,
    ) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"NWPU-Refer has splits {self.SPLITS}, got {split!r}")
        if text_field not in TEXT_FIELDS:
            raise ValueError(f"text_field must be one of {TEXT_FIELDS}, got {text_field!r}")
        self.text_field = text_field
        self.languages = tuple(languages)
        self.refs_file = refs_file
        self.instances_file = instances_file
        self.img_dir = img_dir
        super().__init__(data_root=data_root, split=split, **kwargs)

    def load_samples(self) -> list[dict]:
        refer = load_refer(self.join(self.refs_file), self.join(self.instances_file), "NWPU-Refer")
        img_dir = require_path(self.join(self.img_dir), "NWPU-Refer image", directory=True)

        report_foreign_splits(refer.refs, self.SPLITS, refer.refs_path)
        # (image_id, text) -> ordered unique ann ids, in first-seen order.
        expressions: dict[tuple, list] = {}
        skipped = 0
        for ref in refer.refs:
            if ref["split"] != self.split:
                continue
            refer.image(ref)
            ann_ids = _ann_ids(ref)
            for ann_id in ann_ids:
                refer.annotation(ref, ann_id)
            ref_id = ref.get("ref_id", "?")
            texts = []
            for index, sentence in enumerate(ref["sentences"]):
                try:
                    text = sentence_text(sentence, self.text_field)
                    language = sentence_language(sentence, self.text_field)
                except DatasetFormatError as exc:
                    raise DatasetFormatError(f"{refer.refs_path}: ref {ref_id}: {exc}") from None
                if not text:
                    self.note_empty_expression(f"ref {ref_id} sentence {index}")
                elif language in self.languages:
                    texts.append(text)
            if not texts:
                skipped += 1
                continue
            for text in dict.fromkeys(texts):
                targets = expressions.setdefault((ref["image_id"], text), [])
                targets.extend(a for a in ann_ids if a not in targets)
        if skipped:
            print_log(
                f"NWPU-Refer {self.split}: {skipped} refs have no sentence in {self.languages}",
                logger="current",
            )

        samples = []
        expr_counter: dict = {}
        for (image_id, text), ann_ids in expressions.items():
            image = refer.images[image_id]
            polygons, names = [], []
            for ann_id in ann_ids:
                ann = refer.annotations[ann_id]
                segmentation = ann.get("segmentation")
                if not isinstance(segmentation, list) or not all(
                    isinstance(p, (list, tuple)) for p in segmentation
                ):
                    raise DatasetFormatError(
                        f"{refer.instances_path}: annotation {ann_id} segmentation must be polygons"
                    )
                polygons.extend(list(map(float, p)) for p in segmentation)
                names.append(refer.category_name(ann.get("category_id")))
            target_id = "+".join(str(a) for a in sorted(ann_ids, key=str)) or "none"
            key = (image_id, target_id)
            expr_counter[key] = expr_counter.get(key, -1) + 1
            subset = {0: "no_target", 1: "single"}.get(len(ann_ids), "multi")
            samples.append(
                dict(
                    img_path=osp.join(img_dir, image["file_name"]),
                    text=text,
                    img_id=str(image_id),
                    target_id=target_id,
                    expr_id=str(expr_counter[key]),
                    expr_type="original",
                    target_type="group" if len(ann_ids) > 1 else "instance",
                    dataset_name=self.DATASET_NAME,
                    category=",".join(sorted(set(names))) if names else "none",
                    subset=subset,
                    mask_polygons=polygons,
                    mask_size=[int(image["height"]), int(image["width"])],
                )
            )
        return samples

    def annotation_sources(self) -> list[str]:
        return [self.join(self.refs_file), self.join(self.instances_file)]

    def filters(self) -> dict:
        return {**super().filters(), "languages": self.languages}
