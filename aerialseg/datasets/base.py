"""The referring-segmentation sample contract and the dataset base class.

Every sample is one (image, expression, target mask) triplet. Its data_info holds:

- ``img_path``; ``text`` (non-empty expression);
- ``img_id``, ``target_id``, ``expr_id`` (str ids; ``target_id`` is unique within the image and
  ``expr_id`` within the target);
- ``expr_type`` (``original`` | ``enhanced`` | ``unique`` | ``template``), ``target_type``
  (``instance`` | ``group`` | ``semantic``), ``dataset_name``, ``category`` (str), ``subset``
  (str, a dataset-specific slice used in metric breakdowns; may be empty);
- one mask spec (see :mod:`aerialseg.datasets.masks`).
"""

from __future__ import annotations

import json
import logging
import os.path as osp
from collections.abc import Sequence

from mmengine.dataset import BaseDataset
from mmengine.logging import print_log
from mmseg.registry import DATASETS

from aerialseg.datasets.checksums import files_digest, samples_digest

__all__ = [
    "DATASET_NAMES",
    "EXPR_TYPES",
    "SAMPLE_ID_KEYS",
    "TARGET_TYPES",
    "BaseReferringDataset",
    "DatasetFormatError",
    "require_path",
    "validate_sample",
]

EXPR_TYPES = ("original", "enhanced", "unique", "template")
TARGET_TYPES = ("instance", "group", "semantic")
DATASET_NAMES = ("aerial_d", "rrsisd", "refsegrs", "nwpu_refer", "urban1960", "risbench")
SAMPLE_ID_KEYS = ("img_id", "target_id", "expr_id")
SAMPLE_KEYS = (
    "img_path",
    "text",
    *SAMPLE_ID_KEYS,
    "expr_type",
    "target_type",
    "dataset_name",
    "category",
)
MASK_SPEC_KEYS = ("mask_rle", "mask_polygons", "seg_map_path")


class DatasetFormatError(ValueError):
    """A dataset file is missing, unreadable, or lacks a field the loader needs."""


def require_path(path: str, what: str, directory: bool = False) -> str:
    """Return ``path`` if it exists, else raise ``FileNotFoundError`` naming ``what`` it is."""
    exists = osp.isdir(path) if directory else osp.isfile(path)
    if not exists:
        kind = "folder" if directory else "file"
        raise FileNotFoundError(f"{what} {kind} not found: '{path}'")
    return path


def validate_sample(info: dict, where: str = "") -> None:
    """Check one data_info against the sample contract; raise ``DatasetFormatError`` if broken."""
    prefix = f"{where}: " if where else ""
    missing = [key for key in SAMPLE_KEYS if key not in info]
    if missing:
        raise DatasetFormatError(f"{prefix}sample lacks keys {missing}")
    if not isinstance(info["text"], str) or not info["text"].strip():
        raise DatasetFormatError(f"{prefix}sample {info['img_id']}/{info['target_id']} has no text")
    if info["expr_type"] not in EXPR_TYPES:
        raise DatasetFormatError(f"{prefix}expr_type {info['expr_type']!r} not in {EXPR_TYPES}")
    if info["target_type"] not in TARGET_TYPES:
        raise DatasetFormatError(
            f"{prefix}target_type {info['target_type']!r} not in {TARGET_TYPES}"
        )
    if not any(info.get(key) is not None for key in MASK_SPEC_KEYS):
        raise DatasetFormatError(f"{prefix}sample has no mask spec (one of {MASK_SPEC_KEYS})")


def _sample_label(sample: dict) -> str:
    """How the log names a sample: its ref id when the loader keeps one, else its ids."""
    if sample.get("ref_id") is not None:
        return f"ref {sample['ref_id']}"
    return "/".join(str(sample.get(key, "?")) for key in SAMPLE_ID_KEYS)


def _check_choices(name: str, values: Sequence[str] | None, allowed: Sequence[str]) -> tuple | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = (values,)
    unknown = sorted(set(values) - set(allowed))
    if unknown or not values:
        raise ValueError(f"{name} must be a non-empty subset of {tuple(allowed)}, got {values}")
    return tuple(values)


@DATASETS.register_module()
class BaseReferringDataset(BaseDataset):
    """Referring-segmentation dataset: one (image, expression, target mask) triplet per item.

    Used directly, it reads samples that already follow the contract from ``ann_file`` (a JSON list
    or JSON Lines file, one sample per line; relative ``img_path``/``seg_map_path`` are resolved
    against ``data_prefix['img_path']``/``data_prefix['seg_map_path']``). The benchmark datasets
    subclass it and override :meth:`load_samples` to read their published layouts.

    Args:
        data_root: root folder of the dataset; relative paths are resolved against it.
        split: split name (its meaning is dataset-specific).
        expr_types: keep only these expression types (``None`` keeps all).
        target_types: keep only these target types (``None`` keeps all).
        **kwargs: forwarded to :class:`mmengine.dataset.BaseDataset` (``pipeline``, ``test_mode``,
            ``indices``, ``serialize_data``, ``lazy_init``, ...).
    """

    METAINFO = dict(classes=("background", "target"), palette=[[0, 0, 0], [255, 64, 64]])
    DATASET_NAME = ""
    # The sentence field read from the annotation files, for loaders that have a choice.
    text_field: str | None = None

    def __init__(
        self,
        data_root: str = "",
        split: str = "train",
        expr_types: Sequence[str] | None = None,
        target_types: Sequence[str] | None = None,
        ann_file: str = "",
        data_prefix: dict | None = None,
        **kwargs,
    ) -> None:
        self.split = split
        self.expr_types = _check_choices("expr_types", expr_types, EXPR_TYPES)
        self.target_types = _check_choices("target_types", target_types, TARGET_TYPES)
        super().__init__(
            ann_file=ann_file,
            data_root=data_root,
            data_prefix=data_prefix or dict(img_path="", seg_map_path=""),
            **kwargs,
        )

    # -- loading ---------------------------------------------------------------------------------

    def load_samples(self) -> list[dict]:
        """Read every sample of ``self.split`` (before the type filters)."""
        path = require_path(self.ann_file, "annotation")
        with open(path, encoding="utf-8") as stream:
            if path.endswith(".jsonl"):
                samples = [json.loads(line) for line in stream if line.strip()]
            else:
                samples = json.load(stream)
        if not isinstance(samples, list):
            raise DatasetFormatError(f"{path}: expected a JSON list of samples")
        img_prefix = self.data_prefix.get("img_path", "")
        seg_prefix = self.data_prefix.get("seg_map_path", "")
        for sample in samples:
            sample["img_path"] = osp.join(img_prefix, sample["img_path"])
            if sample.get("seg_map_path"):
                sample["seg_map_path"] = osp.join(seg_prefix, sample["seg_map_path"])
            sample.setdefault("dataset_name", self.DATASET_NAME)
        return samples

    def note_empty_expression(self, label: str) -> None:
        """Record a sentence the loader skipped because it is empty (``label`` names it, e.g.
        ``'ref 17'``); :meth:`load_data_list` logs them all, named, in one warning."""
        self.empty_expressions.append(label)

    def load_data_list(self) -> list[dict]:
        self.empty_expressions: list[str] = []
        samples = self.load_samples()
        where = f"{self.__class__.__name__}(split={self.split!r})"
        # Every loader treats an empty expression the same way: the sample is skipped, counted
        # and named in the log. Loaders that drop sentences before they become samples (REFER
        # refs) call note_empty_expression() instead.
        with_text = []
        for sample in samples:
            text = sample.get("text")
            if isinstance(text, str) and not text.strip():
                self.note_empty_expression(_sample_label(sample))
            else:
                with_text.append(sample)
        samples = with_text
        if self.empty_expressions:
            shown = ", ".join(self.empty_expressions[:20])
            more = len(self.empty_expressions) - 20
            print_log(
                f"{where}: skipped {len(self.empty_expressions)} empty expressions: {shown}"
                + (f" and {more} more" if more > 0 else ""),
                logger="current",
                level=logging.WARNING,
            )
        for sample in samples:
            sample.setdefault("subset", "")
            validate_sample(sample, where)
        kept = [
            s
            for s in samples
            if (self.expr_types is None or s["expr_type"] in self.expr_types)
            and (self.target_types is None or s["target_type"] in self.target_types)
        ]
        if not kept:
            raise DatasetFormatError(
                f"{where} under '{self.data_root}' has no samples"
                + (
                    f" with expr_types={self.expr_types}, target_types={self.target_types}"
                    if samples
                    else ""
                )
            )
        if len(kept) < len(samples):
            print_log(
                f"{where}: kept {len(kept)} of {len(samples)} samples "
                f"(expr_types={self.expr_types}, target_types={self.target_types})",
                logger="current",
            )
        return kept

    # -- provenance ------------------------------------------------------------------------------

    def annotation_sources(self) -> list[str]:
        """The index/annotation files this split's samples are read from (mask files named by
        samples are added by :meth:`describe`). Loaders of other layouts override it."""
        return [self.ann_file] if self.ann_file else []

    def describe(self) -> dict:
        """What this split holds and checksums that identify it (for benchmark provenance and
        ``tools/check_dataset.py``).

        ``annotation_sha256`` covers :meth:`annotation_sources` and every ``seg_map_path`` mask
        file (:func:`~aerialseg.datasets.checksums.files_digest`); ``samples_sha256`` covers the
        samples' ids and texts in order (:func:`~aerialseg.datasets.checksums.samples_digest`).
        """
        infos = [self.get_data_info(index) for index in range(len(self))]
        masks = {info["seg_map_path"] for info in infos if info.get("seg_map_path")}
        files = [*self.annotation_sources(), *sorted(masks)]
        return dict(
            dataset=self.DATASET_NAME or type(self).__name__,
            type=type(self).__name__,
            split=self.split,
            data_root=self.data_root,
            samples=len(infos),
            text_field=self.text_field,
            filters={
                key: list(value) for key, value in self.filters().items() if value is not None
            },
            empty_expressions_skipped=len(getattr(self, "empty_expressions", [])),
            annotation_files=len(set(files)),
            annotation_sha256=files_digest(files, self.data_root),
            samples_sha256=samples_digest(infos),
        )

    def filters(self) -> dict:
        """The sample filters in effect (``None``: not filtered)."""
        return dict(
            expr_types=self.expr_types,
            target_types=self.target_types,
            indices=[self._indices] if isinstance(self._indices, int) else self._indices,
        )

    def join(self, *parts: str) -> str:
        """A path under ``data_root``."""
        return osp.join(self.data_root or "", *parts)
