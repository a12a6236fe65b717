"""The five dataset loaders on tiny fixtures in their published layouts."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import shutil

import numpy as np
import pytest
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS
from PIL import Image

from aerialseg.datasets import (
    AerialDDataset,
    BaseReferringDataset,
    DatasetFormatError,
    NWPUReferDataset,
    RefSegRSDataset,
    RRSISDDataset,
    Urban1960Dataset,
    read_patch_xml,
    samples_from_patch,
)
from aerialseg.datasets.aerial_d_format import AerialDFormatError
from aerialseg.datasets.masks import BinaryMaskEncodingWarning
from tests.datasets.fixtures import (
    box_mask,
    make_aerial_d_patches,
    write_aerial_d_parquet,
    write_aerial_d_xml,
    write_nwpu_refer,
    write_refsegrs,
    write_release_style_xml,
    write_rrsisd,
    write_urban1960,
)

PIPELINE = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadReferringMask"),
    dict(type="PackReferringInputs"),
]


@pytest.fixture(autouse=True)
def mmseg_scope():
    init_default_scope("mmseg")


def mask_pixels(dataset, index) -> int:
    sample = dataset[index]["data_samples"]
    assert sample.gt_sem_seg.data.shape[1:] == sample.metainfo["ori_shape"]
    return int(sample.gt_sem_seg.data.sum())


# -- Aerial-D --------------------------------------------------------------------------------------

AERIAL_D_TRAIN = [
    # (img_id, target_id, expr_id, expr_type, target_type, category, subset, text, mask pixels)
    ("P0001_patch_000000", "object:1", "0", "original", "instance", "small vehicle", "isaid",
     "the small vehicle in the top left", 35),
    ("P0001_patch_000000", "object:1", "1", "original", "instance", "small vehicle", "isaid",
     "the light small vehicle in the top left", 35),
    ("P0001_patch_000000", "object:1", "2", "enhanced", "instance", "small vehicle", "isaid",
     "the little car at the upper left", 35),
    ("P0001_patch_000000", "object:1", "3", "unique", "instance", "small vehicle", "isaid",
     "the small vehicle near the grey roof in the top left", 35),
    ("P0001_patch_000000", "object:2", "0", "original", "instance", "plane", "isaid",
     "the plane in the center", 100),
    ("P0001_patch_000000", "group:1000001", "0", "original", "semantic", "Small_Vehicle", "isaid",
     "all small vehicles in the image", 59),
    ("P0001_patch_000000", "group:1000001", "1", "enhanced", "semantic", "Small_Vehicle", "isaid",
     "every small car in the picture", 59),
    ("P0001_patch_000000", "group:3001", "0", "original", "group", "Small_Vehicle", "isaid",
     "the group of 2 small vehicles in the top left", 96),
    ("L1234_patch_0", "group:1000000", "0", "original", "semantic", "building", "loveda",
     "all buildings in the image", 1152),
    ("L1234_patch_0", "group:1000000", "1", "unique", "semantic", "building", "loveda",
     "the buildings with grey roofs across the top half", 1152),
]  # fmt: skip
TRIPLET_KEYS = ("img_id", "target_id", "expr_id", "expr_type", "target_type", "category", "subset")


def aerial_triplets(dataset):
    rows = []
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        rows.append((*(info[k] for k in TRIPLET_KEYS), info["text"], mask_pixels(dataset, index)))
    return rows


@pytest.mark.parametrize("ann_format", ["xml", "parquet"])
def test_aerial_d_reads_exact_triplets(tmp_path, ann_format):
    writer = write_aerial_d_xml if ann_format == "xml" else write_aerial_d_parquet
    writer(tmp_path)
    train = AerialDDataset(
        data_root=str(tmp_path), split="train", ann_format=ann_format, pipeline=PIPELINE
    )
    assert sorted(aerial_triplets(train)) == sorted(AERIAL_D_TRAIN)
    val = AerialDDataset(data_root=str(tmp_path), split="val", ann_format=ann_format)
    assert len(val) == 1 and val.get_data_info(0)["text"] == "the ship in the bottom left"
    index = [train.get_data_info(i)["text"] for i in range(len(train))].index(AERIAL_D_TRAIN[2][7])
    meta = train[index]["data_samples"].metainfo
    assert meta["text"] == "the little car at the upper left"
    assert (meta["target_id"], meta["expr_type"], meta["img_shape"]) == (
        "object:1",
        "enhanced",
        (48, 48),
    )
    assert meta["dataset_name"] == "aerial_d" and meta["historic"] is False


def test_aerial_d_parquet_extracts_each_image_once(tmp_path):
    write_aerial_d_parquet(tmp_path)
    dataset = AerialDDataset(data_root=str(tmp_path), split="train", ann_format="parquet")
    extracted = sorted(p.name for p in (tmp_path / "images_from_parquet" / "train").iterdir())
    assert extracted == ["L1234_patch_0.png", "P0001_patch_000000.png"]
    assert {dataset.get_data_info(i)["img_path"] for i in range(len(dataset))} == {
        str(tmp_path / "images_from_parquet" / "train" / name) for name in extracted
    }


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (dict(expr_types=["original"]), 6),
        (dict(expr_types=["enhanced"]), 2),
        (dict(expr_types=["unique"]), 2),
        (dict(target_types=["instance"]), 5),
        (dict(target_types=["semantic"]), 4),
        (dict(target_types=["group"]), 1),
        (dict(expr_types=["unique"], target_types=["semantic"]), 1),
        (dict(domains=["loveda"]), 2),
    ],
)
def test_aerial_d_filters(tmp_path, filters, expected):
    write_aerial_d_xml(tmp_path)
    dataset = AerialDDataset(data_root=str(tmp_path), split="train", **filters)
    assert len(dataset) == expected


def test_aerial_d_reads_release_style_xml(tmp_path):
    patches = make_aerial_d_patches()
    write_aerial_d_xml(tmp_path, patches)
    write_release_style_xml(
        tmp_path / "train" / "annotations" / "P0001_patch_000000.xml", patches["train"][0]
    )
    dataset = AerialDDataset(data_root=str(tmp_path), split="train", pipeline=PIPELINE)
    assert sorted(aerial_triplets(dataset)) == sorted(AERIAL_D_TRAIN)


def test_aerial_d_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Aerial-D annotation folder not found"):
        AerialDDataset(data_root=str(tmp_path), split="train")
    write_aerial_d_xml(tmp_path)
    bad = tmp_path / "train" / "annotations" / "L1234_patch_0.xml"
    bad.write_text(bad.read_text().replace("<category>building</category>", ""))
    with pytest.raises(AerialDFormatError, match=r"L1234_patch_0.xml: group #0 .*<category>"):
        AerialDDataset(data_root=str(tmp_path), split="train")
    with pytest.raises(DatasetFormatError, match="no samples with expr_types"):
        AerialDDataset(data_root=str(tmp_path), split="val", expr_types=["unique"])
    with pytest.raises(ValueError, match="splits"):
        AerialDDataset(data_root=str(tmp_path), split="test")
    with pytest.raises(ValueError, match="expr_types"):
        AerialDDataset(data_root=str(tmp_path), split="val", expr_types=["paraphrase"])


def test_aerial_d_missing_image_fails_at_load(tmp_path):
    write_aerial_d_xml(tmp_path)
    (tmp_path / "val" / "images" / "P0002_patch_000001.png").unlink()
    dataset = AerialDDataset(
        data_root=str(tmp_path), split="val", pipeline=PIPELINE, test_mode=True
    )
    with pytest.raises(FileNotFoundError, match="P0002_patch_000001.png"):
        dataset[0]


def test_samples_from_patch_matches_the_dataset(tmp_path):
    patches = write_aerial_d_xml(tmp_path)
    path = tmp_path / "val" / "annotations" / "P0002_patch_000001.xml"
    samples = samples_from_patch(read_patch_xml(path), "img.png")
    assert samples == [
        dict(
            img_path="img.png",
            text="the ship in the bottom left",
            img_id="P0002_patch_000001",
            target_id="object:7",
            expr_id="0",
            expr_type="original",
            target_type="instance",
            dataset_name="aerial_d",
            category="ship",
            subset="isaid",
            mask_rle=patches["val"][0].objects[0].mask.to_dict(),
        )
    ]


# -- RRSIS-D ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_rrsisd_triplets_per_split(tmp_path, split):
    expected = write_rrsisd(tmp_path)
    dataset = RRSISDDataset(data_root=str(tmp_path), split=split, pipeline=PIPELINE)
    found = []
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        found.append(
            (
                info["img_id"],
                info["target_id"],
                info["expr_id"],
                info["text"],
                mask_pixels(dataset, index),
                info["category"],
            )
        )
    assert found == expected[split]


def test_rrsisd_errors(tmp_path):
    write_rrsisd(tmp_path)
    (tmp_path / "refs(unc).p").rename(tmp_path / "refs.p")
    with pytest.raises(FileNotFoundError, match=r"refs pickle file not found: .*refs\(unc\).p"):
        RRSISDDataset(data_root=str(tmp_path))
    (tmp_path / "refs(unc).p").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(DatasetFormatError, match="not a readable refs pickle"):
        RRSISDDataset(data_root=str(tmp_path))
    refs = pickle.loads((tmp_path / "refs.p").read_bytes())
    refs[0]["ann_id"] = 99
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs))
    with pytest.raises(DatasetFormatError, match="ref 0 names ann_id 99"):
        RRSISDDataset(data_root=str(tmp_path))
    (tmp_path / "instances.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="instances.json: not valid JSON"):
        RRSISDDataset(data_root=str(tmp_path))


def test_refs_pickle_with_code_is_refused(tmp_path):
    write_rrsisd(tmp_path)

    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps([Payload()]))
    with pytest.raises(DatasetFormatError, match=r"refuses to load builtins.print"):
        RRSISDDataset(data_root=str(tmp_path))


# -- RefSegRS --------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_refsegrs_triplets_per_split(tmp_path, split):
    expected = write_refsegrs(tmp_path)
    dataset = RefSegRSDataset(data_root=str(tmp_path), split=split, pipeline=PIPELINE)
    found = [
        (info["img_id"], info["expr_id"], info["text"], mask_pixels(dataset, i))
        for i, info in ((i, dataset.get_data_info(i)) for i in range(len(dataset)))
    ]
    assert found == expected[split]


def test_refsegrs_errors(tmp_path):
    write_refsegrs(tmp_path)
    (tmp_path / "output_phrase_val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="RefSegRS split file not found"):
        RefSegRSDataset(data_root=str(tmp_path), split="val")
    (tmp_path / "output_phrase_val.txt").write_text("12\n")
    with pytest.raises(DatasetFormatError, match="has no samples"):
        RefSegRSDataset(data_root=str(tmp_path), split="val")
    (tmp_path / "output_phrase_val.txt").write_text("12 the building\n")
    (tmp_path / "masks" / "12.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(DatasetFormatError, match=r"masks/12.tif: mask cannot be read"):
        RefSegRSDataset(data_root=str(tmp_path), split="val")
    # Masks are checked again when read (only the first one is opened when the split loads).
    (tmp_path / "output_phrase_val.txt").write_text("11 the road\n12 the building\n")
    dataset = RefSegRSDataset(data_root=str(tmp_path), split="val", pipeline=PIPELINE)
    with pytest.raises(ValueError, match="refsegrs 12/12/1: cannot load the target mask"):
        dataset[1]


# -- NWPU-Refer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val"])
def test_nwpu_refer_merges_multi_target_and_keeps_no_target(tmp_path, split):
    expected = write_nwpu_refer(tmp_path)
    dataset = NWPUReferDataset(data_root=str(tmp_path), split=split, pipeline=PIPELINE)
    found = []
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        found.append(
            (
                info["img_id"],
                info["target_id"],
                info["text"],
                mask_pixels(dataset, index),
                info["subset"],
                info["target_type"],
            )
        )
    assert found == expected[split]


def test_nwpu_refer_language_choice(tmp_path):
    write_nwpu_refer(tmp_path)
    chinese = NWPUReferDataset(data_root=str(tmp_path), split="train", languages=["zh"])
    assert [chinese.get_data_info(i)["text"] for i in range(len(chinese))] == ["顶部的两辆车"]
    assert chinese.get_data_info(0)["target_id"] == "11"


def test_nwpu_refer_errors(tmp_path):
    write_nwpu_refer(tmp_path)
    instances = json.loads((tmp_path / "new_instances.json").read_text())
    instances["annotations"][0]["segmentation"] = {"size": [40, 60], "counts": "0"}
    (tmp_path / "new_instances.json").write_text(json.dumps(instances))
    with pytest.raises(DatasetFormatError, match="annotation 11 segmentation must be polygons"):
        NWPUReferDataset(data_root=str(tmp_path), split="train")
    del instances["images"]
    (tmp_path / "new_instances.json").write_text(json.dumps(instances))
    with pytest.raises(DatasetFormatError, match="missing list 'images'"):
        NWPUReferDataset(data_root=str(tmp_path), split="train")


# -- Urban1960SatBench -----------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_urban1960_templates_per_present_class(tmp_path, split):
    expected = write_urban1960(tmp_path)
    dataset = Urban1960Dataset(data_root=str(tmp_path), split=split, pipeline=PIPELINE)
    found = []
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        assert info["expr_type"] == "template" and info["target_type"] == "semantic"
        found.append((info["img_id"], info["target_id"], info["text"], mask_pixels(dataset, index)))
    assert found == expected[split]


def test_urban1960_custom_templates_and_subsets(tmp_path):
    write_urban1960(tmp_path)
    dataset = Urban1960Dataset(
        data_root=str(tmp_path),
        split="train",
        subsets=["ss"],
        templates={"ss": {5: ("farmland", "all farmland in the image")}},
    )
    assert [dataset.get_data_info(0)[k] for k in ("img_id", "category", "text")] == [
        "ss/c",
        "farmland",
        "all farmland in the image",
    ]
    assert len(dataset) == 1


def test_urban1960_missing_mask(tmp_path):
    write_urban1960(tmp_path)
    (tmp_path / "Urban1960SatSS" / "mask_gt" / "c.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"mask file not found: .*mask_gt/c.png"):
        Urban1960Dataset(data_root=str(tmp_path), split="train")


# -- the generic contract --------------------------------------------------------------------------


def test_base_dataset_reads_contract_jsonl_and_validates(tmp_path):
    write_refsegrs(tmp_path)
    sample = dict(
        img_path="images/10.tif",
        text="the vehicle",
        img_id="10",
        target_id="10",
        expr_id="0",
        expr_type="original",
        target_type="instance",
        dataset_name="refsegrs",
        category="vehicle",
        seg_map_path="masks/10.tif",
    )
    (tmp_path / "samples.jsonl").write_text(json.dumps(sample) + "\n")
    dataset = DATASETS.build(
        dict(
            type="BaseReferringDataset",
            data_root=str(tmp_path),
            ann_file="samples.jsonl",
            pipeline=PIPELINE,
        )
    )
    assert isinstance(dataset, BaseReferringDataset)
    assert mask_pixels(dataset, 0) == 64
    (tmp_path / "samples.jsonl").write_text(json.dumps({**sample, "text": None}) + "\n")
    with pytest.raises(DatasetFormatError, match="has no text"):
        BaseReferringDataset(data_root=str(tmp_path), ann_file="samples.jsonl")


# -- text field, strictness, provenance (issue 12) -------------------------------------------------


@pytest.fixture
def logged(monkeypatch):
    """Messages the loaders log (base.py and refer_io.py), as (text, level) pairs."""
    messages = []

    def record(message, logger=None, level=logging.INFO):
        messages.append((message, level))

    monkeypatch.setattr("aerialseg.datasets.base.print_log", record)
    monkeypatch.setattr("aerialseg.datasets.refer_io.print_log", record)
    monkeypatch.setattr("aerialseg.datasets.refsegrs.print_log", record)
    return messages


def test_rrsisd_reads_raw_by_default_and_sent_on_request(tmp_path):
    expected = write_rrsisd(tmp_path)
    raw = RRSISDDataset(data_root=str(tmp_path), split="train")
    assert [raw.get_data_info(i)["text"] for i in range(len(raw))] == [
        row[3] for row in expected["train"]
    ]
    sent = RRSISDDataset(data_root=str(tmp_path), split="train", text_field="sent")
    assert [sent.get_data_info(i)["text"] for i in range(len(sent))] == [
        "the vehicle in the top left",
        "a small car",
        "the vehicle in the middle",
    ]
    assert raw.describe()["samples_sha256"] != sent.describe()["samples_sha256"]
    assert raw.describe()["annotation_sha256"] == sent.describe()["annotation_sha256"]
    with pytest.raises(ValueError, match="text_field must be one of"):
        RRSISDDataset(data_root=str(tmp_path), text_field="tokens")


def test_rrsisd_missing_text_field_names_the_ref(tmp_path):
    write_rrsisd(tmp_path)
    refs = pickle.loads((tmp_path / "refs(unc).p").read_bytes())
    del refs[2]["sentences"][0]["raw"]
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs))
    with pytest.raises(
        DatasetFormatError, match=r"ref 2: sentence 4 has no 'raw' field .*text_field='sent'"
    ):
        RRSISDDataset(data_root=str(tmp_path), split="val")
    assert len(RRSISDDataset(data_root=str(tmp_path), split="val", text_field="sent")) == 1


def test_empty_sentences_are_counted_and_named_by_every_loader(tmp_path, logged):
    write_rrsisd(tmp_path / "rrsisd")
    dataset = RRSISDDataset(data_root=str(tmp_path / "rrsisd"), split="train")
    assert dataset.empty_expressions == ["ref 1 sentence 3"]
    assert any(
        "skipped 1 empty expressions: ref 1 sentence 3" in m and level == logging.WARNING
        for m, level in logged
    )
    assert dataset.describe()["empty_expressions_skipped"] == 1

    write_nwpu_refer(tmp_path / "nwpu")
    nwpu = NWPUReferDataset(data_root=str(tmp_path / "nwpu"), split="train")
    assert nwpu.empty_expressions == ["ref 3 sentence 1"]

    write_refsegrs(tmp_path / "refsegrs")
    refsegrs = RefSegRSDataset(data_root=str(tmp_path / "refsegrs"), split="train")
    (tmp_path / "refsegrs" / "output_phrase_train.txt").write_text("10 a car\n11\n")
    refsegrs = RefSegRSDataset(data_root=str(tmp_path / "refsegrs"), split="train")
    assert len(refsegrs) == 1 and refsegrs.empty_expressions == ["11/11/1"]


def test_refs_with_foreign_splits_are_reported(tmp_path, logged):
    write_rrsisd(tmp_path)
    RRSISDDataset(data_root=str(tmp_path), split="test")
    assert any("'testA': 1 refs (ids 4)" in m for m, _ in logged)


def test_empty_refs_pickle_says_it_is_empty(tmp_path):
    write_rrsisd(tmp_path)
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps([]))
    with pytest.raises(DatasetFormatError, match=r"refs\(unc\).p: the refs pickle is empty"):
        RRSISDDataset(data_root=str(tmp_path))
    (tmp_path / "refs(unc).p").write_bytes(b"")
    with pytest.raises(DatasetFormatError, match=r"the refs pickle is empty \(0 bytes\)"):
        RRSISDDataset(data_root=str(tmp_path))


def test_nwpu_refer_sent_field(tmp_path):
    write_nwpu_refer(tmp_path)
    dataset = NWPUReferDataset(data_root=str(tmp_path), split="train", text_field="sent")
    texts = [dataset.get_data_info(i)["text"] for i in range(len(dataset))]
    assert "the pond on the right" in texts and "The pond on the right." not in texts


def test_refsegrs_zero_one_masks_are_read_correctly_with_a_warning(tmp_path, logged):
    expected = write_refsegrs(tmp_path)
    for image_id in ("10", "11", "12"):
        path = tmp_path / "masks" / f"{image_id}.tif"
        mask = np.asarray(Image.open(path))
        Image.fromarray((mask > 127).astype(np.uint8)).save(path)  # 0/1 instead of 0/255
    dataset = RefSegRSDataset(data_root=str(tmp_path), split="train", pipeline=PIPELINE)
    assert any("masks are stored as 0/1" in m and "10.tif" in m for m, _ in logged)
    with pytest.warns(BinaryMaskEncodingWarning, match="0/1 instead of 0/255"):
        pixels = [mask_pixels(dataset, i) for i in range(len(dataset))]
    assert pixels == [row[3] for row in expected["train"]]


def test_refsegrs_mask_below_threshold_is_an_error_not_empty(tmp_path):
    write_refsegrs(tmp_path)
    Image.fromarray(box_mask(32, 32, 0, 0, 8, 8) * 100).save(tmp_path / "masks" / "12.tif")
    dataset = RefSegRSDataset(data_root=str(tmp_path), split="val", pipeline=PIPELINE)
    with pytest.raises(ValueError, match=r"values up to 100, none above the foreground threshold"):
        dataset[0]


def test_urban1960_truncated_mask_names_its_file(tmp_path):
    write_urban1960(tmp_path)
    path = tmp_path / "Urban1960SatISP" / "mask_gt_ISP" / "a.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut inside the image data
    with pytest.raises(DatasetFormatError, match=r"mask_gt_ISP/a.png: mask cannot be read"):
        Urban1960Dataset(data_root=str(tmp_path), split="train")


def test_describe_checksums_change_with_one_byte(tmp_path):
    write_refsegrs(tmp_path)
    dataset = RefSegRSDataset(data_root=str(tmp_path), split="test")
    before = dataset.describe()
    # The split file and the one mask it names, hashed independently here.
    lines = sorted(
        f"{name}\t{hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()}"
        for name in ("output_phrase_test.txt", "masks/11.tif")
    )
    assert before["annotation_sha256"] == hashlib.sha256("\n".join(lines).encode()).hexdigest()
    assert (before["annotation_files"], before["samples"], before["split"]) == (2, 1, "test")
    # Moving the dataset folder keeps its digests (paths are taken relative to data_root).
    moved = shutil.copytree(tmp_path, tmp_path.parent / f"{tmp_path.name}_moved")
    described = RefSegRSDataset(data_root=str(moved), split="test").describe()
    assert described["annotation_sha256"] == before["annotation_sha256"]
    assert described["samples_sha256"] == before["samples_sha256"]
    mask = tmp_path / "masks" / "11.tif"
    pixels = np.asarray(Image.open(mask)).copy()
    pixels[0, 0, 0] = 255
    Image.fromarray(pixels).save(mask)
    after = RefSegRSDataset(data_root=str(tmp_path), split="test").describe()
    assert after["annotation_sha256"] != before["annotation_sha256"]
    assert after["samples_sha256"] == before["samples_sha256"]
