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
from aerialseg.datasets.aerial_d_format import AerialDFormatError, Expression
from aerialseg.datasets.masks import BinaryMaskEncodingWarning
from aerialseg.datasets.nwpu_refer import sentence_language
from aerialseg.datasets.urban1960 import DEFAULT_TEMPLATES
from tests.datasets.fixtures import (
    box_mask,
    coco_rle,
    make_aerial_d_patches,
    write_aerial_d_parquet,
    write_aerial_d_xml,
    write_image,
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


def test_samples_from_patch_expression_ids():
    """The rule ``id`` where there is one, else the position among the target's expressions."""
    patch = make_aerial_d_patches()["val"][0]
    patch.objects[0].expressions = [
        Expression("the ship", id="5"),
        Expression("a boat", type="unique"),
    ]
    samples = samples_from_patch(patch, "img.png")
    assert [(s["expr_id"], s["expr_type"]) for s in samples] == [("5", "original"), ("1", "unique")]


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
    instances["annotations"][0]["segmentation"] = [{"size": [40, 60], "counts": "0"}]  # RLE list
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
    """Messages the loaders log (base.py, refer_io.py, refsegrs.py, nwpu_refer.py), as (text,
    level) pairs."""
    messages = []

    def record(message, logger=None, level=logging.INFO):
        messages.append((message, level))

    monkeypatch.setattr("aerialseg.datasets.base.print_log", record)
    monkeypatch.setattr("aerialseg.datasets.refer_io.print_log", record)
    monkeypatch.setattr("aerialseg.datasets.refsegrs.print_log", record)
    monkeypatch.setattr("aerialseg.datasets.nwpu_refer.print_log", record)
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
    assert (
        f"{tmp_path / 'refs(unc).p'}: refs with a split other than ('train', 'val', 'test') are "
        "not loaded: 'testA': 1 refs (ids 4)",
        logging.WARNING,
    ) in logged


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
    # The language is that of the field read: an English `raw` over a Chinese `sent`.
    rewrite_pickle(
        tmp_path / "new_refs(unc).p",
        lambda refs: refs[3]["sentences"][0].update(sent="图中的飞机"),
    )
    dataset = NWPUReferDataset(data_root=str(tmp_path), split="train", text_field="sent")
    assert "图中的飞机" not in [s["text"] for s in sample_infos(dataset)]


def test_refsegrs_zero_one_masks_are_read_correctly_with_a_warning(tmp_path, logged):
    expected = write_refsegrs(tmp_path)
    for image_id in ("10", "11", "12"):
        path = tmp_path / "masks" / f"{image_id}.tif"
        mask = np.asarray(Image.open(path))
        Image.fromarray((mask > 127).astype(np.uint8)).save(path)  # 0/1 instead of 0/255
    dataset = RefSegRSDataset(data_root=str(tmp_path), split="train", pipeline=PIPELINE)
    assert logged == [
        (
            f"RefSegRS train: masks are stored as 0/1, not 0/255 (e.g. {tmp_path / 'masks'}"
            "/10.tif); reading foreground as value 1",
            logging.WARNING,
        )
    ]
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


# -- exact samples, defaults and optional fields (mutation gate, issue 11) -------------------------


def rewrite_pickle(path, edit) -> None:
    """Apply ``edit`` to the object of a pickle file (a refs file) and write it back."""
    data = pickle.loads(path.read_bytes())
    edit(data)
    path.write_bytes(pickle.dumps(data))


def rewrite_json(path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def sample_infos(dataset) -> list[dict]:
    """data_infos as the loader built them (without mmengine's ``sample_idx``)."""
    infos = [dataset.get_data_info(i) for i in range(len(dataset))]
    return [{k: v for k, v in info.items() if k != "sample_idx"} for info in infos]


def test_rrsisd_sample_is_exactly_the_contract(tmp_path):
    write_rrsisd(tmp_path)
    dataset = RRSISDDataset(data_root=str(tmp_path), split="val")
    assert sample_infos(dataset) == [
        dict(
            img_path=str(tmp_path / "images" / "rrsisd" / "JPEGImages" / "00002.jpg"),
            text="the airplane at the bottom right",
            img_id="2",
            target_id="3",
            expr_id="4",
            expr_type="original",
            target_type="instance",
            dataset_name="rrsisd",
            category="airplane",
            subset="",
            mask_rle=coco_rle(box_mask(40, 40, 20, 20, 40, 40)),
        )
    ]


def test_rrsisd_default_data_root_is_data_rrsisd(tmp_path, monkeypatch):
    write_rrsisd(tmp_path / "data" / "rrsisd")
    monkeypatch.chdir(tmp_path)
    dataset = RRSISDDataset(split="val")
    assert dataset.get_data_info(0)["img_path"] == "data/rrsisd/images/rrsisd/JPEGImages/00002.jpg"
    assert len(RRSISDDataset()) == 3  # the train split by default


def test_rrsisd_errors_name_the_dataset_the_file_and_the_annotation(tmp_path):
    write_rrsisd(tmp_path)
    with pytest.raises(ValueError) as error:
        RRSISDDataset(data_root=str(tmp_path), split="testA")
    assert str(error.value) == "RRSIS-D has splits ('train', 'val', 'test'), got 'testA'"
    instances = tmp_path / "instances.json"

    def drop_segmentation(data):
        del data["annotations"][2]["segmentation"]

    rewrite_json(instances, drop_segmentation)
    with pytest.raises(DatasetFormatError) as error:
        RRSISDDataset(data_root=str(tmp_path), split="val")
    assert str(error.value) == f"{instances}: annotation 3 lacks segmentation"

    def break_segmentation(data):
        data["annotations"][2]["segmentation"] = [{"size": [40, 40], "counts": [5, 3]}]

    rewrite_json(instances, break_segmentation)
    with pytest.raises(DatasetFormatError) as error:
        RRSISDDataset(data_root=str(tmp_path), split="val")
    assert str(error.value) == (
        f"{instances}: annotation 3 segmentation: uncompressed RLE runs sum to 8, expected 1600"
    )
    shutil.rmtree(tmp_path / "images")
    with pytest.raises(FileNotFoundError) as error:
        RRSISDDataset(data_root=str(tmp_path), split="val")
    images = tmp_path / "images" / "rrsisd" / "JPEGImages"
    assert str(error.value) == f"RRSIS-D image folder not found: '{images}'"
    instances.unlink()
    with pytest.raises(FileNotFoundError) as error:
        RRSISDDataset(data_root=str(tmp_path), split="val")
    assert str(error.value) == f"RRSIS-D instances file not found: '{instances}'"


def test_rrsisd_refs_without_optional_fields(tmp_path, logged):
    """REFER files without ``ref_id``/``sent_id``/``category_id`` (or with plain-string sentences):
    ids fall back to the annotation id and the sentence position, the category to the
    annotation's ``category_id`` or the release's ``categories_id``; the ref's own category wins."""
    write_rrsisd(tmp_path)

    def strip_optional_fields(refs):
        for ref in refs:
            del ref["ref_id"]
            ref.pop("category_id")
        refs[0]["sentences"] = ["  ", {"raw": "the vehicle", "sent": "the vehicle"}, "a car"]
        refs[1]["category_id"] = 2  # the annotation says vehicle (1)

    rewrite_pickle(tmp_path / "refs(unc).p", strip_optional_fields)
    rewrite_json(
        tmp_path / "instances.json",
        lambda data: data["annotations"][0].update(category_id=2, categories_id=1),
    )
    dataset = RRSISDDataset(data_root=str(tmp_path), split="train")
    rows = [(s["target_id"], s["expr_id"], s["text"], s["category"]) for s in sample_infos(dataset)]
    assert rows == [
        ("1", "1_1", "the vehicle", "airplane"),  # ann 1: category_id before categories_id
        ("1", "1_2", "a car", "airplane"),
        ("2", "2", "the vehicle in the middle", "airplane"),  # ref 1's own category_id
    ]
    assert dataset.empty_expressions == ["ref 1 sentence 0", "ref 2 sentence 3"]
    dataset = RRSISDDataset(data_root=str(tmp_path), split="val")
    assert dataset.get_data_info(0)["category"] == "airplane"  # categories_id only


def test_rrsisd_polygon_masks_take_the_image_size(tmp_path):
    write_rrsisd(tmp_path)

    def polygon_on_a_wide_image(data):
        data["images"][1].update(height=30, width=50)
        data["annotations"][2]["segmentation"] = [[0, 0, 10, 0, 10, 10, 0, 10]]

    rewrite_json(tmp_path / "instances.json", polygon_on_a_wide_image)
    info = RRSISDDataset(data_root=str(tmp_path), split="val").get_data_info(0)
    assert (info["mask_polygons"], info["mask_size"]) == ([[0, 0, 10, 0, 10, 10, 0, 10]], [30, 50])


def test_refsegrs_sample_is_exactly_the_contract(tmp_path, logged):
    write_refsegrs(tmp_path)
    dataset = RefSegRSDataset(data_root=str(tmp_path), split="val")
    assert sample_infos(dataset) == [
        dict(
            img_path=str(tmp_path / "images" / "12.tif"),
            text="the building on the right",
            img_id="12",
            target_id="12",
            expr_id="0",
            expr_type="original",
            target_type="instance",
            dataset_name="refsegrs",
            category="",
            subset="",
            seg_map_path=str(tmp_path / "masks" / "12.tif"),
            mask_threshold=127,
        )
    ]
    assert logged == []  # 0/255 masks: no warning
    assert dataset.annotation_sources() == [str(tmp_path / "output_phrase_val.txt")]


def test_refsegrs_default_root_suffixes_and_threshold(tmp_path, monkeypatch):
    root = tmp_path / "data" / "refsegrs"
    write_refsegrs(root)
    Image.fromarray(box_mask(32, 32, 0, 0, 8, 8) * 128).save(root / "masks" / "12.png")
    write_image(root / "images" / "12.png", 32, 32)
    monkeypatch.chdir(tmp_path)
    dataset = RefSegRSDataset(split="val", pipeline=PIPELINE)
    assert dataset.get_data_info(0)["img_path"] == "data/refsegrs/images/12.tif"
    assert len(RefSegRSDataset()) == 3  # the train split by default
    dataset = RefSegRSDataset(split="val", img_suffix=".png", mask_suffix=".png", pipeline=PIPELINE)
    info = dataset.get_data_info(0)
    assert (info["img_path"], info["seg_map_path"]) == (
        "data/refsegrs/images/12.png",
        "data/refsegrs/masks/12.png",
    )
    assert mask_pixels(dataset, 0) == 64  # 128 is above the default threshold 127


def test_refsegrs_errors_name_the_folder_or_file(tmp_path):
    write_refsegrs(tmp_path)
    with pytest.raises(ValueError) as error:
        RefSegRSDataset(data_root=str(tmp_path), split="testA")
    assert str(error.value) == "RefSegRS has splits ('train', 'val', 'test'), got 'testA'"
    (tmp_path / "masks" / "12.tif").unlink()
    with pytest.raises(FileNotFoundError) as error:
        RefSegRSDataset(data_root=str(tmp_path), split="val")
    assert str(error.value) == f"RefSegRS mask file not found: '{tmp_path / 'masks' / '12.tif'}'"
    for folder in ("masks", "images"):
        shutil.rmtree(tmp_path / folder)
        with pytest.raises(FileNotFoundError) as error:
            RefSegRSDataset(data_root=str(tmp_path), split="val")
        kind = folder[:-1]
        assert str(error.value) == f"RefSegRS {kind} folder not found: '{tmp_path / folder}'"


def test_urban1960_samples_are_exactly_the_contract(tmp_path):
    write_urban1960(tmp_path)
    dataset = Urban1960Dataset(data_root=str(tmp_path), split="test")
    isp, ss = tmp_path / "Urban1960SatISP", tmp_path / "Urban1960SatSS"

    def sample(subset, folder, mask_folder, stem, class_id, category, text):
        return dict(
            img_path=str(folder / "image" / f"{stem}.png"),
            text=text,
            img_id=f"{subset}/{stem}",
            target_id=str(class_id),
            expr_id="0",
            expr_type="template",
            target_type="semantic",
            dataset_name="urban1960",
            category=category,
            subset=subset,
            seg_map_path=str(folder / mask_folder / f"{stem}.png"),
            seg_class_id=class_id,
        )

    assert sample_infos(dataset) == [
        sample("isp", isp, "mask_gt_ISP", "b", 0, "natural", DEFAULT_TEMPLATES["isp"][0][1]),
        sample("ss", ss, "mask_gt", "c", 1, "building", "all buildings in the image"),
        sample("ss", ss, "mask_gt", "c", 3, "water", "all water in the image"),
    ]
    assert dataset.annotation_sources() == [
        str(isp / "labelled_test.txt"),
        str(ss / "labelled_test.txt"),
    ]
    assert dataset.describe()["filters"] == {"subsets": ["isp", "ss"], "min_pixels": [1]}


def test_urban1960_options_defaults_and_errors(tmp_path, monkeypatch):
    write_urban1960(tmp_path / "data" / "urban1960")
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data" / "urban1960"
    (root / "Urban1960SatSS" / "labelled_train.txt").write_text("c.PNG\n")  # suffix in any case
    dataset = Urban1960Dataset(split="train", subsets=["ss"], min_pixels=48)  # water: 48 pixels
    assert [(s["img_id"], s["category"]) for s in sample_infos(dataset)] == [("ss/c", "water")]
    assert dataset.get_data_info(0)["img_path"] == "data/urban1960/Urban1960SatSS/image/c.png"
    # JSON-style templates: string class ids, list values; class 9 is absent from the mask.
    templates = {"ss": {"5": ["farmland", "all farmland in the image"], "9": ["x", "all x"]}}
    dataset = Urban1960Dataset(split="train", subsets=["ss"], templates=templates)
    assert [(s["target_id"], s["category"]) for s in sample_infos(dataset)] == [("5", "farmland")]
    assert len(Urban1960Dataset()) == 5  # the train split of both subsets by default
    for subsets in ([], ["isp", "hsr"]):
        with pytest.raises(ValueError) as error:
            Urban1960Dataset(split="train", subsets=subsets)
        assert str(error.value) == (
            f"subsets must be a non-empty subset of ('isp', 'ss'), got {subsets}"
        )
    with pytest.raises(ValueError) as error:
        Urban1960Dataset(split="testA")
    assert str(error.value) == "Urban1960SatBench has splits ('train', 'val', 'test'), got 'testA'"
    with pytest.raises(FileNotFoundError) as error:
        Urban1960Dataset(split="val", subsets=["ss"])
    split_file = "data/urban1960/Urban1960SatSS/labelled_val.txt"
    assert str(error.value) == f"Urban1960 ss split file not found: '{split_file}'"


def test_urban1960_multichannel_class_masks_use_the_first_channel(tmp_path):
    """Class ids in the first channel: of an RGB PNG (each pixel counts once towards
    ``min_pixels``, not once per channel) and of a grey+alpha PNG (the alpha is no class)."""
    expected = write_urban1960(tmp_path)
    isp_path = tmp_path / "Urban1960SatISP" / "mask_gt_ISP" / "a.png"
    ids = np.asarray(Image.open(isp_path))
    Image.fromarray(np.stack([ids, ids, ids], axis=2)).save(isp_path)
    ss_path = tmp_path / "Urban1960SatSS" / "mask_gt" / "c.png"
    ids = np.asarray(Image.open(ss_path))
    Image.fromarray(np.stack([ids, np.full_like(ids, 255)], axis=2), mode="LA").save(ss_path)
    dataset = Urban1960Dataset(data_root=str(tmp_path), split="train", pipeline=PIPELINE)
    found = [(s["img_id"], s["target_id"], s["text"]) for s in sample_infos(dataset)]
    assert found == [row[:3] for row in expected["train"]]
    assert [mask_pixels(dataset, i) for i in (0, 1, 3, 4)] == [192, 64, 32, 48]
    dataset = Urban1960Dataset(data_root=str(tmp_path), subsets=["isp"], min_pixels=65)
    assert [s["img_id"] + ":" + s["target_id"] for s in sample_infos(dataset)] == [
        "isp/a:0",  # 192 natural pixels; the 64 impervious ones are too few
        "isp/b:0",
    ]


def test_nwpu_refer_samples_are_exactly_the_contract(tmp_path):
    write_nwpu_refer(tmp_path)
    dataset = NWPUReferDataset(data_root=str(tmp_path), split="train")

    def sample(img_id, target_id, text, target_type, category, subset, polygons):
        return dict(
            img_path=str(tmp_path / "image" / f"img_{img_id}.jpg"),
            text=text,
            img_id=img_id,
            target_id=target_id,
            expr_id="0",
            expr_type="original",
            target_type=target_type,
            dataset_name="nwpu_refer",
            category=category,
            subset=subset,
            mask_polygons=polygons,
            mask_size=[40, 60],
        )

    square = [[0.0, 0.0, 10.0, 0.0, 10.0, 10.0, 0.0, 10.0]]
    assert sample_infos(dataset) == [
        sample("1", "11+12", "the two cars at the top", "group", "car", "multi",
               [*square, [20.0, 0.0, 30.0, 0.0, 30.0, 10.0, 20.0, 10.0]]),
        sample("1", "13", "The pond on the right.", "instance", "pond", "single",
               [[40.0, 20.0, 60.0, 20.0, 60.0, 40.0, 40.0, 40.0]]),
        sample("2", "none", "the airplane in the image", "instance", "none", "no_target", []),
    ]  # fmt: skip
    assert dataset.describe()["filters"] == {"languages": ["en"]}


def test_nwpu_refer_targets_languages_and_expression_ids(tmp_path, logged):
    """ann_id as a list, None or []; the stated ``lang``/``language`` over the script; one
    sentence twice in a ref is one sample; several expressions of one target count up."""
    write_nwpu_refer(tmp_path)

    def edit(refs):
        refs[0]["ann_id"] = [12, 9, 11]  # ids are sorted as text in the target id
        refs[0]["sentences"] = [
            {"raw": "the two cars", "sent": "", "lang": "EN"},
            {"raw": "the two cars", "sent": ""},
            {"raw": "both cars at the top", "sent": "", "language": "en"},
            {"raw": "the cars, in English", "sent": "", "lang": "zh"},
        ]
        del refs[1]["ref_id"]
        refs[1]["sentences"] = [{"raw": "", "sent": ""}, {"raw": "顶部的车", "sent": ""}]
        refs[3]["ann_id"] = None
        refs[4].update(ann_id=[], split="train")
        refs.append({**refs[4], "ref_id": 6, "split": "testA"})

    rewrite_pickle(tmp_path / "new_refs(unc).p", edit)
    rewrite_json(
        tmp_path / "new_instances.json",
        lambda data: data["annotations"].append(
            {"id": 9, "image_id": 1, "category_id": 2, "segmentation": [[0, 20, 4, 20, 4, 24]]}
        ),
    )
    dataset = NWPUReferDataset(data_root=str(tmp_path), split="train")
    rows = [(s["img_id"], s["target_id"], s["expr_id"], s["text"]) for s in sample_infos(dataset)]
    assert rows == [
        ("1", "11+12+9", "0", "the two cars"),
        ("1", "11+12+9", "1", "both cars at the top"),
        ("1", "13", "0", "The pond on the right."),
        ("2", "none", "0", "the airplane in the image"),
        ("2", "none", "1", "the pond in the top left"),
    ]
    assert sample_infos(dataset)[0]["category"] == "car,pond"  # the targets' categories
    assert dataset.empty_expressions == ["ref ? sentence 0", "ref 3 sentence 1"]
    assert ("NWPU-Refer train: 1 refs have no sentence in ('en',)", logging.INFO) in logged
    assert (
        f"{tmp_path / 'new_refs(unc).p'}: refs with a split other than ('train', 'val', 'test') "
        "are not loaded: 'testA': 1 refs (ids 6)",
        logging.WARNING,
    ) in logged
    chinese = NWPUReferDataset(data_root=str(tmp_path), split="train", languages=["zh"])
    assert [s["text"] for s in sample_infos(chinese)] == ["the cars, in English", "顶部的车"]
    assert ("NWPU-Refer train: 3 refs have no sentence in ('zh',)", logging.INFO) in logged


def test_nwpu_sentence_language_prefers_the_stated_language_of_the_read_field():
    assert sentence_language({"raw": "顶部的车", "sent": "the cars"}) == "zh"  # raw by default
    assert sentence_language({"raw": "the cars", "sent": "顶部的车"}, "sent") == "zh"
    assert sentence_language({"raw": "顶部的车", "language": "EN"}) == "en"
    assert sentence_language("the cars") == "en"


def test_nwpu_refer_defaults_and_errors(tmp_path, monkeypatch):
    write_nwpu_refer(tmp_path / "data" / "nwpu_refer")
    monkeypatch.chdir(tmp_path)
    assert NWPUReferDataset(split="val").get_data_info(0)["img_path"] == (
        "data/nwpu_refer/image/img_2.jpg"
    )
    assert len(NWPUReferDataset()) == 3  # the train split, English sentences by default
    with pytest.raises(ValueError) as error:
        NWPUReferDataset(split="testA")
    assert str(error.value) == "NWPU-Refer has splits ('train', 'val', 'test'), got 'testA'"
    with pytest.raises(ValueError, match="text_field must be one of"):
        NWPUReferDataset(split="val", text_field="tokens")
    refs = tmp_path / "data" / "nwpu_refer" / "new_refs(unc).p"
    instances = "data/nwpu_refer/new_instances.json"
    rewrite_pickle(refs, lambda refs: refs[4].update(ann_id=[21, 99]))
    with pytest.raises(DatasetFormatError) as error:
        NWPUReferDataset(split="val")
    assert str(error.value) == (
        f"data/nwpu_refer/new_refs(unc).p: ref 5 names ann_id 99, which is not in {instances}"
    )
    rewrite_pickle(refs, lambda refs: refs[4].update(ann_id=21, image_id=7))
    with pytest.raises(DatasetFormatError, match="ref 5 names image_id 7"):
        NWPUReferDataset(split="val")
    rewrite_pickle(refs, lambda refs: refs[4].update(image_id=2, sentences=[{"sent": "a pond"}]))
    with pytest.raises(DatasetFormatError) as error:
        NWPUReferDataset(split="val")
    assert str(error.value) == (
        "data/nwpu_refer/new_refs(unc).p: ref 5: sentence ? has no 'raw' field (it has ['sent']: "
        "set text_field='sent')"
    )
    shutil.rmtree(tmp_path / "data" / "nwpu_refer" / "image")
    with pytest.raises(FileNotFoundError) as error:
        NWPUReferDataset(split="val")
    assert str(error.value) == "NWPU-Refer image folder not found: 'data/nwpu_refer/image'"
    (tmp_path / instances).unlink()
    with pytest.raises(FileNotFoundError) as error:
        NWPUReferDataset(split="val")
    assert str(error.value) == f"NWPU-Refer instances file not found: '{instances}'"


def rewrite_parquet(path, edit) -> None:
    """Apply ``edit`` to the rows (dicts) of a parquet file and write them back."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    edit(rows)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_aerial_d_argument_errors_are_exact(tmp_path):
    write_aerial_d_xml(tmp_path)
    cases = [
        (dict(ann_format="json"), "ann_format must be 'xml' or 'parquet', got 'json'"),
        (dict(split="test"), "Aerial-D has splits ('train', 'val'), got 'test'"),
        (dict(domains=[]), "domains must be a non-empty subset of ('isaid', 'loveda', "
         "'deepglobe'), got []"),
        (dict(domains=["isaid", "spacenet"]), "domains must be a non-empty subset of ('isaid', "
         "'loveda', 'deepglobe'), got ['isaid', 'spacenet']"),
    ]  # fmt: skip
    for kwargs, message in cases:
        with pytest.raises(ValueError) as error:
            AerialDDataset(data_root=str(tmp_path), **kwargs)
        assert str(error.value) == message


def test_aerial_d_xml_layout(tmp_path, monkeypatch):
    write_aerial_d_xml(tmp_path / "data" / "aerial_d")
    monkeypatch.chdir(tmp_path)
    dataset = AerialDDataset(split="val")
    assert dataset.get_data_info(0)["img_path"] == "data/aerial_d/val/images/P0002_patch_000001.png"
    assert len(AerialDDataset()) == 10  # the train split, XML, every domain by default
    assert dataset.annotation_sources() == ["data/aerial_d/val/annotations/P0002_patch_000001.xml"]
    train = AerialDDataset(split="train", domains=["loveda"])
    assert {s["img_id"] for s in sample_infos(train)} == {"L1234_patch_0"}
    assert train.describe()["filters"] == {"domains": ["loveda"]}
    assert len(AerialDDataset(split="train", domains=["isaid"])) == 8  # after a skipped file
    (tmp_path / "data/aerial_d/val/annotations/P0002_patch_000001.xml").rename(
        tmp_path / "data/aerial_d/val/annotations/P0002_patch_000001.txt"
    )
    with pytest.raises(DatasetFormatError) as error:
        AerialDDataset(split="val")
    assert str(error.value) == "no .xml annotation files in 'data/aerial_d/val/annotations'"
    shutil.rmtree(tmp_path / "data/aerial_d/val/images")
    with pytest.raises(FileNotFoundError) as error:
        AerialDDataset(split="val")
    assert str(error.value) == "Aerial-D image folder not found: 'data/aerial_d/val/images'"


def test_aerial_d_parquet_rows(tmp_path):
    """Released images are used where present; a ``target_type`` column overrides the id rule;
    missing domain names come from the file name; empty texts are skipped like every loader."""
    tmp_path = tmp_path / "aerial-d [copy]"  # glob characters in data_root are literal
    write_aerial_d_parquet(tmp_path)
    released = write_image(tmp_path / "train" / "images" / "L1234_patch_0.png", 48, 48)
    train_file = tmp_path / "data" / "train-00000-of-00001.parquet"

    def edit(rows):
        for row in rows:
            row["target_type"] = "group" if row["group_id"] == "1000000" else None
            if row["image_filename"] == "L1234_patch_0.png":
                row.update(domain_name="", category=None)
        rows[0]["expression_text"] = None

    rewrite_parquet(train_file, edit)
    dataset = AerialDDataset(data_root=str(tmp_path), split="train", ann_format="parquet")
    infos = sample_infos(dataset)
    assert len(infos) == 9 and dataset.empty_expressions == ["P0001_patch_000000/object:1/0"]
    loveda = [info for info in infos if info["img_id"] == "L1234_patch_0"]
    assert [(i["target_type"], i["subset"], i["category"]) for i in loveda] == [
        ("group", "loveda", ""),
        ("group", "loveda", ""),
    ]
    assert {i["img_path"] for i in loveda} == {str(released)}
    extracted = tmp_path / "images_from_parquet" / "train"
    assert sorted(p.name for p in extracted.iterdir()) == ["P0001_patch_000000.png"]
    assert dataset.annotation_sources() == [str(train_file)]
    semantic = [i for i in infos if i["target_id"] == "group:1000001"]
    assert {i["target_type"] for i in semantic} == {"semantic"}  # from the id: no column value
    assert semantic[0]["mask_rle"] == make_aerial_d_patches()["train"][0].groups[0].mask.to_dict()
    isaid = AerialDDataset(
        data_root=str(tmp_path), ann_format="parquet", domains=["isaid"], image_dir=str(tmp_path)
    )
    assert {i["subset"] for i in sample_infos(isaid)} == {"isaid"} and len(isaid) == 7
    assert {i["img_path"] for i in sample_infos(isaid)} == {
        str(tmp_path / "train" / "P0001_patch_000000.png")  # extracted under image_dir
    }


def test_aerial_d_parquet_errors_name_the_file_and_row(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        AerialDDataset(data_root=str(tmp_path / "nowhere"), ann_format="parquet")
    assert str(error.value) == f"Aerial-D data root folder not found: '{tmp_path / 'nowhere'}'"
    write_aerial_d_parquet(tmp_path)
    val_file = tmp_path / "data" / "validation-00000-of-00001.parquet"
    val_file.rename(tmp_path / "data" / "test-00000-of-00001.parquet")
    with pytest.raises(FileNotFoundError) as error:
        AerialDDataset(data_root=str(tmp_path), split="val", ann_format="parquet")
    assert str(error.value) == (
        f"no Aerial-D parquet files for split 'val' under '{tmp_path}' "
        "(expected validation-*.parquet)"
    )
    (tmp_path / "data" / "test-00000-of-00001.parquet").rename(val_file)
    backup = val_file.read_bytes()
    cases = [
        (lambda rows: rows[0].pop("category"), "parquet file lacks columns ['category']"),
        (lambda rows: rows[0].update(image_filename=""), "row 0: empty image_filename"),
        (lambda rows: rows[0].update(rle_mask={"size": [48, 48], "counts": ""}),
         "row 0: rle_mask needs size and counts"),
        (lambda rows: rows[0].update(rle_mask=None), "row 0: rle_mask needs size and counts"),
        (lambda rows: rows[0].update(object_type="region"), "row 0: object_type 'region' is "
         "unknown"),
    ]  # fmt: skip
    for edit, message in cases:
        val_file.write_bytes(backup)
        rewrite_parquet(val_file, edit)
        with pytest.raises(DatasetFormatError) as error:
            AerialDDataset(data_root=str(tmp_path), split="val", ann_format="parquet")
        assert str(error.value) == f"{val_file}: {message}"
    for image in ({"bytes": b"", "path": "x"}, None):
        val_file.write_bytes(backup)
        rewrite_parquet(val_file, lambda rows, image=image: rows[0].update(image=image))
        with pytest.raises(AerialDFormatError) as error:
            AerialDDataset(data_root=str(tmp_path), split="val", ann_format="parquet")
        assert str(error.value) == (
            f"{val_file}: row for 'P0002_patch_000001.png' has no image bytes"
        )
    # A parquet file directly under data_root is found too ("**" matches no folder).
    val_file.write_bytes(backup)
    val_file.rename(tmp_path / val_file.name)
    assert len(AerialDDataset(data_root=str(tmp_path), split="val", ann_format="parquet")) == 1
