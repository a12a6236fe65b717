"""Benchmark tables from metric dicts, and the test-set plumbing of tools/test.py."""

from __future__ import annotations

import csv
import json

import pytest
from mmengine.config import Config

from aerialseg.evaluation import (
    add_historic_filter,
    collect_test_sets,
    metric_rows,
    write_benchmark_tables,
)

METRICS = {
    "mIoU": 54.16666,
    "oIoU": 46.1538,
    "Pr@0.5": 75.0,
    "N": 4,
    "rrsisd/mIoU": 83.3333,
    "rrsisd/N": 2,
    "rrsisd/subset=no_target/mIoU": float("nan"),
    "loss": 0.3,
}


def test_metric_rows_groups_flat_keys():
    rows = metric_rows("rrsisd_test", METRICS)
    assert [row["group"] for row in rows] == ["all", "rrsisd", "rrsisd/subset=no_target"]
    assert rows[0] == {
        "test_set": "rrsisd_test",
        "group": "all",
        "mIoU": 54.16666,
        "oIoU": 46.1538,
        "Pr@0.5": 75.0,
        "N": 4,
    }


def test_write_benchmark_tables_markdown_csv_json(tmp_path):
    results = [
        {"name": "rrsisd_test", "metrics": METRICS},
        {"name": "rrsisd_test_historic", "metrics": {"mIoU": 40.0, "N": 4}},
    ]
    written = write_benchmark_tables(results, str(tmp_path), meta={"checkpoint": "c.pth"})
    markdown = (tmp_path / "benchmark.md").read_text()
    assert "- checkpoint: c.pth" in markdown
    assert "| rrsisd_test | all | 4 | 54.17 | 46.15 | 75.00 |  |  |  |  |" in markdown
    assert "| rrsisd_test | rrsisd/subset=no_target |  |  |" in markdown
    assert "| rrsisd_test_historic | all | 4 | 40.00 |" in markdown
    with open(written["csv"], newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["test_set"] for r in rows] == ["rrsisd_test"] * 3 + ["rrsisd_test_historic"]
    assert rows[1]["mIoU"] == "83.3333" and rows[1]["N"] == "2"
    payload = json.loads((tmp_path / "benchmark.json").read_text())
    assert payload["meta"] == {"checkpoint": "c.pth"}
    assert payload["rows"][2]["mIoU"] is None  # NaN is written as null, valid JSON
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "benchmark.csv",
        "benchmark.json",
        "benchmark.md",
    ]


def test_write_benchmark_tables_needs_scores(tmp_path):
    with pytest.raises(ValueError, match="no metric rows"):
        write_benchmark_tables([{"name": "x", "metrics": {"loss": 1.0}}], str(tmp_path))


def pipeline():
    return [
        dict(type="LoadImageFromFile"),
        dict(type="ReferringResize", scale=(64, 64), resize_mask=False),
        dict(type="LoadReferringMask"),
        dict(type="PackReferringInputs"),
    ]


def test_collect_test_sets_adds_historic_copies():
    cfg = Config(
        dict(
            test_dataloader=dict(
                batch_size=1,
                dataset=dict(type="RRSISDDataset", split="test", pipeline=pipeline()),
            ),
            test_evaluator=dict(type="ReferringMetric"),
            historic_test=dict(
                enabled=True,
                filter=dict(type="HistoricFilter", prob=1.0, deterministic=True, seed=3),
            ),
        )
    )
    sets = collect_test_sets(cfg)
    assert [s["name"] for s in sets] == ["rrsisd_test", "rrsisd_test_historic"]
    types = [step["type"] for step in sets[1]["dataloader"]["dataset"]["pipeline"]]
    assert types[-2:] == ["HistoricFilter", "PackReferringInputs"]
    assert sets[1]["dataloader"]["dataset"]["pipeline"][-2]["seed"] == 3
    assert len(sets[0]["dataloader"]["dataset"]["pipeline"]) == 4  # the clean set is untouched
    assert [s["name"] for s in collect_test_sets(cfg, historic=False)] == ["rrsisd_test"]


def test_historic_filter_reaches_wrapped_datasets():
    dataloader = dict(
        dataset=dict(
            type="ConcatDataset",
            datasets=[
                dict(type="RRSISDDataset", pipeline=pipeline()),
                dict(type="RefSegRSDataset", pipeline=pipeline()),
            ],
        )
    )
    historic = add_historic_filter(dataloader)
    for dataset in historic["dataset"]["datasets"]:
        assert [s["type"] for s in dataset["pipeline"]].count("HistoricFilter") == 1
    assert "HistoricFilter" not in str(dataloader)


def test_named_test_sets_from_config():
    cfg = Config(
        dict(
            test_sets=[
                dict(name="a", dataloader=dict(dataset=dict(type="RRSISDDataset", pipeline=[]))),
                dict(
                    name="b",
                    dataloader=dict(dataset=dict(type="RefSegRSDataset", pipeline=[])),
                    evaluator=dict(type="ReferringMetric", eval_size=(480, 480)),
                ),
            ],
            test_evaluator=dict(type="ReferringMetric"),
        )
    )
    sets = collect_test_sets(cfg)
    assert [(s["name"], s["evaluator"].get("eval_size")) for s in sets] == [
        ("a", None),
        ("b", (480, 480)),
    ]
