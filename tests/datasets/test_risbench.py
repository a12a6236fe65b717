"""RISBenchDataset on a tiny copy of the release layout, against RSRefSeg 2's JSONL conversion.

The referee for the masks is what RSRefSeg 2 trains and scores on: its converter reads each mask
with OpenCV as grayscale and stores pycocotools' RLE of it in ``datainfo/risbench_<split>.jsonl``;
the decoded RLE must equal the mask the loader gives, pixel for pixel, in both layouts.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS
from PIL import Image
from pycocotools import mask as mask_utils

from aerialseg.datasets import DatasetFormatError, RISBenchDataset

REPO = Path(__file__).resolve().parents[2]
PIPELINE = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadReferringMask"),
    dict(type="PackReferringInputs"),
]
SIZE = 24

# image id -> (mask box y0, x0, y1, x1, stored as): foreground pixels = box area.
MASKS = {
    "train_0_0.png": ((0, 0, 6, 4), "0/255"),  # 24 px
    "train_0_1.png": ((10, 10, 20, 13), "0/1"),  # 30 px, a mask stored as 0/1
    "train_3_0.png": ((4, 0, 5, 24), "rgb"),  # 24 px, three equal channels of grey 100
    "val_1_0.png": ((0, 12, 24, 24), "0/255"),  # 288 px
    "test_2_0.png": ((2, 2, 9, 9), "0/255"),  # 49 px
    "test_2_1.png": ((20, 0, 24, 5), "0/255"),  # 20 px
}
PHRASES = {
    "train": [
        "train_0_0.png The small vehicle at the top left.",
        "",
        "train_0_1.png The  ship near the centre of the image .",
        "train_3_0.png a road",
        "train_0_0.png The white car in the corner.",
    ],
    "val": ["val_1_0.png The harbor on the right half."],
    "test": [
        "  test_2_0.png The tank located at the top-left corner of the image.  ",
        "test_2_1.png The vehicle on the bottom-left side of the image.",
    ],
}
# split -> [(img_id, expr_id, text, foreground pixels)], fixed by hand from the two tables above.
EXPECTED = {
    "train": [
        ("train_0_0", "0", "The small vehicle at the top left.", 24),
        ("train_0_1", "1", "The  ship near the centre of the image .", 30),
        ("train_3_0", "2", "a road", 24),
        ("train_0_0", "3", "The white car in the corner.", 24),
    ],
    "val": [("val_1_0", "0", "The harbor on the right half.", 288)],
    "test": [
        ("test_2_0", "0", "The tank located at the top-left corner of the image.", 49),
        ("test_2_1", "1", "The vehicle on the bottom-left side of the image.", 20),
    ],
}


@pytest.fixture(autouse=True)
def mmseg_scope():
    init_default_scope("mmseg")


def write_risbench(root: Path) -> Path:
    """The release layout: ``img_rgb/``, ``mask/``, ``output_phrase_<split>.txt``."""
    rng = np.random.default_rng(0)
    (root / "img_rgb").mkdir(parents=True)
    (root / "mask").mkdir()
    for file_name, ((y0, x0, y1, x1), stored) in MASKS.items():
        pixels = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "img_rgb" / file_name)
        mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
        mask[y0:y1, x0:x1] = {"0/1": 1, "0/255": 255, "rgb": 100}[stored]
        if stored == "rgb":
            mask = np.repeat(mask[:, :, None], 3, axis=2)
        Image.fromarray(mask).save(root / "mask" / file_name)
    for split, lines in PHRASES.items():
        (root / f"output_phrase_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def rsrefseg2_jsonl(root: Path, split: str) -> Path:
    """``datainfo/risbench_<split>.jsonl`` as RSRefSeg 2's converter writes it."""
    records = []
    for line in (root / f"output_phrase_{split}.txt").read_text().splitlines():
        if not line.strip():
            continue
        image_id, _, sent = line.strip().partition(" ")
        gray = cv2.imread(str(root / "mask" / image_id), cv2.IMREAD_GRAYSCALE)
        rle = mask_utils.encode(np.asfortranarray(gray))
        segmentation = {"size": list(rle["size"]), "counts": rle["counts"].decode()}
        records.append(
            dict(
                split=split,
                image_id=image_id,
                sent=sent,
                file_name=image_id,
                segmentation=segmentation,
            )
        )
    path = root / "datainfo" / f"risbench_{split}.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def rows(dataset) -> list[tuple]:
    found = []
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        sample = dataset[index]["data_samples"]
        found.append(
            (info["img_id"], info["expr_id"], info["text"], int(sample.gt_sem_seg.data.sum()))
        )
    return found


def referee_masks(root: Path, split: str) -> list[np.ndarray]:
    """RSRefSeg 2's masks for the split: its JSONL RLEs decoded by pycocotools."""
    lines = rsrefseg2_jsonl(root, split).read_text().splitlines()
    return [mask_utils.decode(json.loads(line)["segmentation"]) for line in lines]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_release_layout_triplets_and_masks(tmp_path, split):
    root = write_risbench(tmp_path)
    dataset = RISBenchDataset(data_root=str(root), split=split, pipeline=PIPELINE)
    assert rows(dataset) == EXPECTED[split]
    for index, referee in enumerate(referee_masks(root, split)):
        sample = dataset[index]["data_samples"]
        np.testing.assert_array_equal(sample.gt_sem_seg.data[0].numpy(), referee)
        info = dataset.get_data_info(index)
        assert Path(info["img_path"]).parent == root / "img_rgb"
        assert (info["dataset_name"], info["expr_type"], info["target_type"]) == (
            "risbench",
            "original",
            "instance",
        )


@pytest.mark.parametrize("split", ["train", "test"])
def test_rsrefseg2_jsonl_gives_the_same_samples(tmp_path, split):
    root = write_risbench(tmp_path)
    rsrefseg2_jsonl(root, split)
    release = RISBenchDataset(data_root=str(root), split=split, pipeline=PIPELINE)
    release_masks = [release[i]["data_samples"].gt_sem_seg.data for i in range(len(release))]
    (root / "mask").rename(root / "mask_moved")  # the JSONL carries the masks itself
    jsonl = RISBenchDataset(
        data_root=str(root),
        split=split,
        ann_file=f"datainfo/risbench_{split}.jsonl",
        pipeline=PIPELINE,
    )
    assert rows(jsonl) == EXPECTED[split]
    for index, release_mask in enumerate(release_masks):
        assert "mask_rle" in jsonl.get_data_info(index)
        assert jsonl[index]["data_samples"].gt_sem_seg.data.equal(release_mask)


def test_base_config_builds_val_and_test_splits(tmp_path):
    root = write_risbench(tmp_path)
    cfg = Config.fromfile(REPO / "configs" / "_base_" / "datasets" / "risbench.py")
    assert cfg.train_dataloader.dataset.split == "train"
    for loader, split in (("val_dataloader", "val"), ("test_dataloader", "test")):
        dataset_cfg = cfg[loader].dataset
        assert dataset_cfg.split == split
        dataset_cfg.data_root = str(root)
        dataset = DATASETS.build(dataset_cfg)
        assert isinstance(dataset, RISBenchDataset)
        assert [info[0] for info in rows(dataset)] == [row[0] for row in EXPECTED[split]]
    assert cfg.test_evaluator.type == "ReferringMetric"


def test_release_layout_errors(tmp_path):
    root = write_risbench(tmp_path)
    with pytest.raises(ValueError, match="RISBench has splits"):
        RISBenchDataset(data_root=str(root), split="testA")
    (root / "output_phrase_val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="RISBench split file not found"):
        RISBenchDataset(data_root=str(root), split="val")
    # An id without an expression is skipped, counted and named, as in every other loader.
    (root / "output_phrase_val.txt").write_text("val_1_0.png the harbor\nval_1_0.png   \n")
    dataset = RISBenchDataset(data_root=str(root), split="val")
    assert len(dataset) == 1 and dataset.get_data_info(0)["text"] == "the harbor"
    assert dataset.empty_expressions == ["val_1_0/val_1_0/1"]

    (root / "img_rgb" / "test_2_1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image file\(s\) missing .*img_rgb': test_2_1"):
        RISBenchDataset(data_root=str(root), split="test")
    (root / "mask" / "train_0_1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 mask file\(s\) missing .*: train_0_1.png"):
        RISBenchDataset(data_root=str(root), split="train")


def test_corrupt_mask_fails_naming_the_sample(tmp_path):
    root = write_risbench(tmp_path)
    (root / "mask" / "test_2_1.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    dataset = RISBenchDataset(data_root=str(root), split="test", pipeline=PIPELINE)
    assert int(dataset[0]["data_samples"].gt_sem_seg.data.sum()) == 49
    with pytest.raises(ValueError, match="risbench test_2_1/test_2_1/1: cannot load the target"):
        dataset[1]


def test_rsrefseg2_jsonl_errors(tmp_path):
    root = write_risbench(tmp_path)
    path = rsrefseg2_jsonl(root, "test")
    records = [json.loads(line) for line in path.read_text().splitlines()]

    def load(edited: list):
        lines = [item if isinstance(item, str) else json.dumps(item) for item in edited]
        path.write_text("".join(line + "\n" for line in lines))
        return RISBenchDataset(data_root=str(root), split="test", ann_file=str(path))

    with pytest.raises(FileNotFoundError, match="RISBench annotation file not found"):
        RISBenchDataset(data_root=str(root), split="test", ann_file="datainfo/nothing.jsonl")
    skipped = load([records[0], {**records[1], "sent": " "}])
    assert len(skipped) == 1 and skipped.empty_expressions == ["test_2_1/test_2_1/1"]
    with pytest.raises(DatasetFormatError, match=r"'sent' must be a string"):
        load([records[0], {**records[1], "sent": None}])
    with pytest.raises(DatasetFormatError, match="belongs to split 'train', not 'test'"):
        load([{**records[0], "split": "train"}])
    with pytest.raises(DatasetFormatError, match=r"line 1 lacks fields \['segmentation'\]"):
        load([{key: value for key, value in records[0].items() if key != "segmentation"}])
    broken = {**records[1]["segmentation"], "size": [SIZE, SIZE + 1]}
    with pytest.raises(DatasetFormatError, match="test_2_1.png'\\): segmentation: RLE counts"):
        load([records[0], {**records[1], "segmentation": broken}])
    with pytest.raises(DatasetFormatError, match="line 3 is not JSON"):
        load([*records, "{not json"])
