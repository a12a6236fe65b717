"""Readers for the REFER-style files of RRSIS-D and NWPU-Refer (``refs(unc).p`` + instances JSON).

The refs file is a pickle because that is the public format of these datasets (the REFER toolkit
of RefCOCO). It is read with an unpickler that refuses every class and function, so only plain
lists, dicts, strings and numbers can come out of it; nothing in the file is executed.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from dataclasses import dataclass

from mmengine.logging import print_log

from aerialseg.datasets.base import DatasetFormatError, require_path

__all__ = [
    "TEXT_FIELDS",
    "ReferAnnotations",
    "load_coco_json",
    "load_refer",
    "load_refs_pickle",
    "report_foreign_splits",
    "sentence_text",
]


class _LiteralUnpickler(pickle.Unpickler):
    """Unpickles builtin containers and scalars only."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(
            f"refuses to load {module}.{name}: a refs file holds only lists, dicts and strings"
        )


def load_refs_pickle(path: str) -> list[dict]:
    """Read a REFER ``refs(*).p`` file: a list of ``{ref_id, ann_id, image_id, split, sentences}``
    dicts."""
    require_path(path, "refs pickle")
    with open(path, "rb") as stream:
        data = stream.read()
    if not data:
        raise DatasetFormatError(f"{path}: the refs pickle is empty (0 bytes)")
    try:
        try:
            refs = _LiteralUnpickler(io.BytesIO(data)).load()
        except UnicodeDecodeError:
            # Pickles written by Python 2 hold byte strings.
            refs = _LiteralUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as exc:
        raise DatasetFormatError(f"{path}: not a readable refs pickle ({exc})") from None
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise DatasetFormatError(f"{path}: expected a list of ref dicts")
    if not refs:
        raise DatasetFormatError(f"{path}: the refs pickle is empty (an empty list, no refs)")
    for index, ref in enumerate(refs):
        missing = [key for key in ("ann_id", "image_id", "split", "sentences") if key not in ref]
        if missing:
            raise DatasetFormatError(f"{path}: ref #{index} lacks fields {missing}")
    return refs


def load_coco_json(path: str, what: str) -> dict:
    """Read a COCO-style instances JSON and check its top-level lists."""
    require_path(path, what)
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{path}: not valid JSON ({exc})") from None
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise DatasetFormatError(f"{path}: missing list '{key}'")
    return data


TEXT_FIELDS = ("raw", "sent")


def sentence_text(sentence, field: str = "raw") -> str:
    """The text of a REFER sentence entry, stripped.

    REFER sentences hold ``raw`` (the annotator's string, as LAVT/RMSIN and mmdet's
    ``RefCocoDataset`` read it) and ``sent`` (lower-cased and re-tokenised by the REFER toolkit).
    A plain string is its own text.

    Raises:
        DatasetFormatError: the entry is a dict without ``field``.
    """
    if field not in TEXT_FIELDS:
        raise ValueError(f"text_field must be one of {TEXT_FIELDS}, got {field!r}")
    if isinstance(sentence, str):
        return sentence.strip()
    if isinstance(sentence, dict):
        if field not in sentence:
            present = sorted(k for k in TEXT_FIELDS if k in sentence)
            raise DatasetFormatError(
                f"sentence {sentence.get('sent_id', '?')} has no '{field}' field"
                + (f" (it has {present}: set text_field='{present[0]}')" if present else "")
            )
        return str(sentence[field] or "").strip()
    return ""


def report_foreign_splits(refs: list[dict], splits: tuple, refs_path: str) -> None:
    """Log refs whose ``split`` is none of ``splits`` (they belong to no split the loader
    serves, so they would vanish silently): per split value, the count and the first ref ids."""
    foreign: dict[str, list] = {}
    for index, ref in enumerate(refs):
        if ref["split"] not in splits:
            foreign.setdefault(str(ref["split"]), []).append(ref.get("ref_id", f"#{index}"))
    if not foreign:
        return
    parts = [
        f"{split!r}: {len(ids)} refs (ids {', '.join(map(str, ids[:10]))}"
        + (", ..." if len(ids) > 10 else "")
        + ")"
        for split, ids in sorted(foreign.items())
    ]
    print_log(
        f"{refs_path}: refs with a split other than {splits} are not loaded: " + "; ".join(parts),
        logger="current",
        level=logging.WARNING,
    )


@dataclass
class ReferAnnotations:
    """A refs pickle joined with its COCO instances JSON (``images``/``annotations``/``categories``
    keyed by id); lookups raise ``DatasetFormatError`` naming both files."""

    refs_path: str
    instances_path: str
    refs: list[dict]
    images: dict
    annotations: dict
    categories: dict

    def image(self, ref: dict) -> dict:
        """The image entry of ``ref``."""
        image = self.images.get(ref["image_id"])
        if image is None:
            raise self._dangling(ref, "image_id", ref["image_id"])
        return image

    def annotation(self, ref: dict, ann_id) -> dict:
        """The annotation ``ann_id`` that ``ref`` names."""
        ann = self.annotations.get(ann_id)
        if ann is None:
            raise self._dangling(ref, "ann_id", ann_id)
        return ann

    def category_name(self, category_id) -> str:
        return self.categories.get(category_id, str(category_id))

    def _dangling(self, ref: dict, field: str, value) -> DatasetFormatError:
        return DatasetFormatError(
            f"{self.refs_path}: ref {ref.get('ref_id', '?')} names {field} {value}, "
            f"which is not in {self.instances_path}"
        )


def load_refer(refs_path: str, instances_path: str, dataset_label: str) -> ReferAnnotations:
    """Read and index a REFER-style dataset's refs pickle and instances JSON."""
    refs = load_refs_pickle(refs_path)
    instances = load_coco_json(instances_path, f"{dataset_label} instances")
    return ReferAnnotations(
        refs_path=refs_path,
        instances_path=instances_path,
        refs=refs,
        images={img["id"]: img for img in instances["images"]},
        annotations={ann["id"]: ann for ann in instances["annotations"]},
        categories={cat["id"]: cat["name"] for cat in instances.get("categories", [])},
    )
