"""Aerial-D: per-patch XML annotations (the zip release) or the Hugging Face parquet rows."""

from __future__ import annotations

import glob
import os
import os.path as osp
from collections.abc import Sequence

from mmseg.registry import DATASETS
from tqdm import tqdm

from aerialformats.atomic import atomic_write_bytes
from aerialseg.datasets.aerial_d_format import (
    AerialDFormatError,
    PatchAnnotation,
    domain_from_filename,
    group_target_type_from_id,
    read_patch_xml,
)
from aerialseg.datasets.base import BaseReferringDataset, DatasetFormatError, require_path

__all__ = ["AerialDDataset", "samples_from_patch"]

DOMAINS = ("isaid", "loveda", "deepglobe")
PARQUET_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val")}
PARQUET_COLUMNS = (
    "image_filename",
    "object_type",
    "object_id",
    "group_id",
    "category",
    "rle_mask",
    "expression_id",
    "expression_text",
    "expression_type",
    "domain_name",
)


def samples_from_patch(annotation: PatchAnnotation, img_path: str) -> list[dict]:
    """All (target, expression) samples of one patch, in file order (objects, then groups).

    ``target_id`` is ``object:<id>`` or ``group:<id>``; ``expr_id`` is the rule ``id`` or, for LLM
    expressions, the position within the target's expressions (the Hugging Face export's rule).
    """
    img_id = osp.splitext(annotation.filename)[0]
    domain = annotation.domain
    samples = []
    for kind, targets in (("object", annotation.objects), ("group", annotation.groups)):
        for target in targets:
            mask_rle = target.mask.to_dict()
            for position, expression in enumerate(target.expressions):
                samples.append(
                    dict(
                        img_path=img_path,
                        text=expression.text,
                        img_id=img_id,
                        target_id=f"{kind}:{target.id}",
                        expr_id=expression.id if expression.id is not None else str(position),
                        expr_type=expression.kind,
                        target_type=target.target_type,
                        dataset_name=AerialDDataset.DATASET_NAME,
                        category=target.category,
                        subset=domain,
                        mask_rle=mask_rle,
                    )
                )
    return samples


@DATASETS.register_module()
class AerialDDataset(BaseReferringDataset):
    """Aerial-D (Aerial-D paper; 480x480 patches of iSAID and LoveDA; splits ``train``/``val``).

    XML layout (``ann_format='xml'``, the zip release ``aeriald.zip``)::

        data_root/{train,val}/images/<stem>.png
        data_root/{train,val}/annotations/<stem>.xml    (schema in aerial_d_format)

    Parquet layout (``ann_format='parquet'``, the Hugging Face rows, one per target+expression)::

        data_root/**/{train,validation}-*.parquet

    Parquet rows embed the image; each distinct image is written once to
    ``image_dir/<split>/<image_filename>`` (default ``data_root/images_from_parquet``) unless
    ``data_root/<split>/images/<image_filename>`` already exists.

    Args:
        ann_format: ``'xml'`` or ``'parquet'``.
        domains: keep only patches of these source domains (``isaid``, ``loveda``, ``deepglobe``).
        expr_types / target_types: subsets used by the training recipes, e.g.
            ``expr_types=('unique',)`` for the "LLM visual variations" mix and
            ``target_types=('instance',)`` / ``('semantic',)`` for the paper's target filters.
    """

    DATASET_NAME = "aerial_d"

    def __init__(
        self,
        data_root: str = "data/aerial_d",
        split: str = "train",
        ann_format: str = "xml",
        domains: Sequence[str] | None = None,
        image_dir: str | None = None,
        **kwargs,
    ) -> None:
        if ann_format not in ("xml", "parquet"):
            raise ValueError(f"ann_format must be 'xml' or 'parquet', got {ann_format!r}")
        if split not in PARQUET_SPLIT_NAMES:
            raise ValueError(f"Aerial-D has splits {tuple(PARQUET_SPLIT_NAMES)}, got {split!r}")
        if domains is not None and (not domains or set(domains) - set(DOMAINS)):
            raise ValueError(f"domains must be a non-empty subset of {DOMAINS}, got {domains}")
        self.ann_format = ann_format
        self.domains = tuple(domains) if domains is not None else None
        self.image_dir = image_dir
        super().__init__(data_root=data_root, split=split, **kwargs)

    def load_samples(self) -> list[dict]:
        samples = self._load_xml() if self.ann_format == "xml" else self._load_parquet()
        if self.domains is not None:
            samples = [s for s in samples if s["subset"] in self.domains]
        return samples

    def annotation_sources(self) -> list[str]:
        """The split's XML files (``xml``) or its parquet files (``parquet``)."""
        if self.ann_format == "parquet":
            return self._parquet_files()
        ann_dir = self.join(self.split, "annotations")
        return sorted(e.path for e in os.scandir(ann_dir) if e.name.endswith(".xml"))

    def filters(self) -> dict:
        return {**super().filters(), "domains": self.domains}

    # -- XML ---------------------------------------------------------------------------------------

    def _load_xml(self) -> list[dict]:
        ann_dir = require_path(self.join(self.split, "annotations"), "Aerial-D annotation", True)
        img_dir = require_path(self.join(self.split, "images"), "Aerial-D image", True)
        names = sorted(e.name for e in os.scandir(ann_dir) if e.name.endswith(".xml"))
        if not names:
            raise DatasetFormatError(f"no .xml annotation files in '{ann_dir}'")
        samples: list[dict] = []
        for name in tqdm(names, desc=f"Aerial-D {self.split} XML", unit="file", disable=None):
            if self.domains is not None and domain_from_filename(name) not in self.domains:
                continue
            annotation = read_patch_xml(osp.join(ann_dir, name))
            samples.extend(samples_from_patch(annotation, osp.join(img_dir, annotation.filename)))
        return samples

    # -- parquet -----------------------------------------------------------------------------------

    def _parquet_files(self) -> list[str]:
        require_path(self.data_root, "Aerial-D data root", True)
        files = []
        for prefix in PARQUET_SPLIT_NAMES[self.split]:
            pattern = osp.join(glob.escape(self.data_root), "**", f"{prefix}-*.parquet")
            files.extend(glob.glob(pattern, recursive=True))
        if not files:
            raise FileNotFoundError(
                f"no Aerial-D parquet files for split '{self.split}' under '{self.data_root}' "
                f"(expected {PARQUET_SPLIT_NAMES[self.split][0]}-*.parquet)"
            )
        return sorted(set(files))

    def _load_parquet(self) -> list[dict]:
        import pyarrow.parquet as pq

        samples: list[dict] = []
        image_dir = self.image_dir or self.join("images_from_parquet")
        released_dir = self.join(self.split, "images")
        for path in self._parquet_files():
            parquet = pq.ParquetFile(path)
            missing = sorted(set(PARQUET_COLUMNS) - set(parquet.schema_arrow.names))
            if missing:
                raise DatasetFormatError(f"{path}: parquet file lacks columns {missing}")
            columns = list(PARQUET_COLUMNS)
            has_target_type = "target_type" in parquet.schema_arrow.names
            if has_target_type:
                columns.append("target_type")
            table = parquet.read(columns=columns).to_pylist()
            needed = set()
            for index, row in enumerate(table):
                samples.append(self._sample_from_row(row, path, index, image_dir, released_dir))
                if not osp.isfile(samples[-1]["img_path"]):
                    needed.add(row["image_filename"])
            if needed:
                self._extract_images(parquet, path, needed, osp.join(image_dir, self.split))
        return samples

    def _sample_from_row(
        self, row: dict, path: str, index: int, image_dir: str, released_dir: str
    ) -> dict:
        where = f"{path}: row {index}"
        filename = row["image_filename"]
        if not filename:
            raise DatasetFormatError(f"{where}: empty image_filename")
        rle = row["rle_mask"]
        if not rle or not rle.get("size") or not rle.get("counts"):
            raise DatasetFormatError(f"{where}: rle_mask needs size and counts")
        if row["object_type"] == "individual":
            target_id, target_type = f"object:{row['object_id']}", "instance"
        elif row["object_type"] == "group":
            target_id = f"group:{row['group_id']}"
            target_type = row.get("target_type") or group_target_type_from_id(str(row["group_id"]))
        else:
            raise DatasetFormatError(f"{where}: object_type {row['object_type']!r} is unknown")
        released = osp.join(released_dir, filename)
        img_path = released if osp.isfile(released) else osp.join(image_dir, self.split, filename)
        return dict(
            img_path=img_path,
            text=row["expression_text"] or "",
            img_id=osp.splitext(filename)[0],
            target_id=target_id,
            expr_id=str(row["expression_id"]),
            expr_type=row["expression_type"],
            target_type=target_type,
            dataset_name=self.DATASET_NAME,
            category=row["category"] or "",
            subset=row["domain_name"] or domain_from_filename(filename),
            mask_rle={"size": [int(v) for v in rle["size"]], "counts": str(rle["counts"])},
        )

    @staticmethod
    def _extract_images(parquet, path: str, needed: set[str], out_dir: str) -> None:
        """Write each needed embedded image once (atomically), reading the file batch by batch."""
        os.makedirs(out_dir, exist_ok=True)
        remaining = set(needed)
        for batch in parquet.iter_batches(columns=["image_filename", "image"], batch_size=256):
            for filename, image in zip(
                batch.column("image_filename").to_pylist(), batch.column("image").to_pylist()
            ):
                if filename not in remaining:
                    continue
                data = image.get("bytes") if isinstance(image, dict) else None
                if not data:
                    raise AerialDFormatError(f"{path}: row for '{filename}' has no image bytes")
                atomic_write_bytes(osp.join(out_dir, filename), data)
                remaining.discard(filename)
            if not remaining:
                break
        if remaining:
            raise DatasetFormatError(f"{path}: no image data for {sorted(remaining)[:5]}")
