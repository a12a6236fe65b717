"""RISBench: 512x512 PNG images and masks with one ``output_phrase_<split>.txt`` per split."""

from __future__ import annotations

import json
import os
import os.path as osp

from mmseg.registry import DATASETS

from aerialseg.datasets.base import BaseReferringDataset, DatasetFormatError, require_path
from aerialseg.datasets.masks import coco_segmentation_to_spec

__all__ = ["RISBenchDataset"]


@DATASETS.register_module()
class RISBenchDataset(BaseReferringDataset):
    """RISBench (Dong et al., CroBIM, 2024): 52,472 triplets at 512x512, 26,300 / 10,013 / 16,158.

    Layout of the release (the ``RISBench_dataset`` folder of the CroBIM download; the names are
    those RSRefSeg 2's converter reads)::

        data_root/img_rgb/<image_id>                    e.g. test_1_0.png (the id keeps its suffix)
        data_root/mask/<image_id>                       grayscale PNG, foreground non-zero
        data_root/output_phrase_{train,val,test}.txt    "<image_id> <expression>" per line

    One sample per non-empty line; ``expr_id`` is the sample's 0-based position in the split (blank
    lines not counted, so both layouts below give the same ids), ``img_id`` and ``target_id`` are
    the image id without its suffix (every image id names one image-target pair). The expression
    is everything after the first space, kept verbatim (inner spacing included), as RSRefSeg 2
    feeds it to its model. The release has no category field (``category`` is empty).

    ``ann_file`` instead names a JSON Lines file of RSRefSeg 2 (``datainfo/risbench_<split>.jsonl``,
    fields ``split``, ``image_id``, ``sent``, ``file_name``, ``segmentation`` as a COCO RLE of the
    mask file, relative paths resolved against ``data_root``); the masks then come from the RLEs and
    ``mask/`` is not read.

    Every image (and, for the text layout, every mask) named by the split is checked to exist when
    the dataset is built; the error lists the missing ids.

    Args:
        data_root: the ``RISBench_dataset`` folder.
        split: ``train``, ``val`` or ``test``.
        img_dir: image folder under ``data_root``.
        mask_dir: mask folder under ``data_root``.
        mask_threshold: a mask pixel is foreground where its value is above this (0: non-zero, as
            RSRefSeg 2's RLE conversion of the binary masks).
        ann_file: optional RSRefSeg 2 JSONL of this split (see above); empty reads the release's
            ``output_phrase_<split>.txt``.
    """

    DATASET_NAME = "risbench"
    SPLITS = ("train", "val", "test")

    def __init__(
        self,
        data_root: str = "data/risbench",
        split: str = "train",
        img_dir: str = "img_rgb",
        mask_dir: str = "mask",
        mask_threshold: int = 0,
        ann_file: str = "",
        **kwargs,
    ) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"RISBench has splits {self.SPLITS}, got {split!r}")
        self.img_dir = img_dir
        self.mask_dir = mask_dir
        self.mask_threshold = mask_threshold
        super().__init__(data_root=data_root, split=split, ann_file=ann_file, **kwargs)

    def load_samples(self) -> list[dict]:
        img_dir = require_path(self.join(self.img_dir), "RISBench image", directory=True)
        if self.ann_file:
            records = self._read_jsonl()
            mask_dir = None
        else:
            records = self._read_phrases()
            mask_dir = require_path(self.join(self.mask_dir), "RISBench mask", directory=True)
        self._require_files(img_dir, [file_name for file_name, *_ in records], "image")
        if mask_dir is not None:
            self._require_files(mask_dir, [file_name for file_name, *_ in records], "mask")
        samples = []
        for file_name, text, expr_id, mask_spec in records:
            image_id = osp.splitext(file_name)[0]
            if mask_spec is None:
                mask_spec = dict(
                    seg_map_path=osp.join(mask_dir, file_name), mask_threshold=self.mask_threshold
                )
            samples.append(
                dict(
                    img_path=osp.join(img_dir, file_name),
                    text=text,
                    img_id=image_id,
                    target_id=image_id,
                    expr_id=expr_id,
                    expr_type="original",
                    target_type="instance",
                    dataset_name=self.DATASET_NAME,
                    category="",
                    subset="",
                    **mask_spec,
                )
            )
        return samples

    def _read_phrases(self) -> list[tuple[str, str, str, None]]:
        """``(file_name, text, expr_id, None)`` per line of the release's split file."""
        phrase_file = require_path(self.join(f"output_phrase_{self.split}.txt"), "RISBench split")
        records = []
        with open(phrase_file, encoding="utf-8") as stream:
            for line in stream:
                line = line.strip()
                if not line:
                    continue
                # An id without text is kept: load_data_list skips, counts and names it like
                # every other loader's empty expressions.
                image_id, _, text = line.partition(" ")
                records.append((image_id, text, str(len(records)), None))
        return records

    def _read_jsonl(self) -> list[tuple[str, str, str, dict]]:
        """``(file_name, text, expr_id, mask_spec)`` per record of an RSRefSeg 2 JSONL."""
        path = require_path(self.ann_file, "RISBench annotation")
        records = []
        with open(path, encoding="utf-8") as stream:
            for line_number, line in enumerate(stream):
                if not line.strip():
                    continue
                where = f"{path}: line {line_number + 1}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetFormatError(f"{where} is not JSON ({exc})") from None
                if not isinstance(record, dict):
                    raise DatasetFormatError(f"{where} is not a JSON object")
                missing = [k for k in ("sent", "file_name", "segmentation") if k not in record]
                if missing:
                    raise DatasetFormatError(f"{where} lacks fields {missing}")
                file_name = str(record["file_name"])
                where = f"{where} (image id {record.get('image_id', file_name)!r})"
                if record.get("split", self.split) != self.split:
                    raise DatasetFormatError(
                        f"{where} belongs to split {record['split']!r}, not {self.split!r}"
                    )
                text = record["sent"]
                if not isinstance(text, str):
                    raise DatasetFormatError(f"{where}: 'sent' must be a string")
                segmentation = record["segmentation"]
                if not isinstance(segmentation, dict):
                    raise DatasetFormatError(f"{where}: segmentation must be one COCO RLE dict")
                try:
                    size = segmentation["size"]
                    mask_spec = coco_segmentation_to_spec(segmentation, size[0], size[1])
                except (ValueError, KeyError, TypeError, IndexError) as exc:
                    raise DatasetFormatError(f"{where}: segmentation: {exc}") from None
                records.append((file_name, text, str(len(records)), mask_spec))
        return records

    def _require_files(self, folder: str, file_names: list[str], what: str) -> None:
        """Raise ``FileNotFoundError`` listing the ids whose file is not in ``folder``."""
        present = set(os.listdir(folder))
        missing = sorted(
            {
                name
                for name in file_names
                if name not in present and not osp.isfile(osp.join(folder, name))
            }
        )
        if missing:
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise FileNotFoundError(
                f"RISBench {self.split}: {len(missing)} {what} file(s) missing from '{folder}': "
                f"{', '.join(missing[:10])}{more}"
            )

    def annotation_sources(self) -> list[str]:
        """The split's index file, for the provenance checksum (masks are added from samples)."""
        return [self.ann_file] if self.ann_file else [self.join(f"output_phrase_{self.split}.txt")]
