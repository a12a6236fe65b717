"""Benchmark tables from metric dicts, and the test-set plumbing of tools/test.py."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest
from mmengine.config import Config

from aerialseg.evaluation import (
    add_historic_filter,
    aggregate_runs,
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
        "run": "",
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


def three_seed_results():
    """mIoU / oIoU of three runs (seeds) on one test set, with a per-dataset group."""
    values = {"seed0": (64.2, 77.79), "seed1": (60.3, 77.73), "seed2": (64.43, 77.24)}
    return [
        {
            "name": "rrsisd_test",
            "run": run,
            "metrics": {"mIoU": m, "oIoU": o, "N": 3481, "rrsisd/mIoU": m - 1, "rrsisd/N": 3481},
            "provenance": {"checkpoint": {"sha256": f"sha-{run}"}, "seed": index},
        }
        for index, (run, (m, o)) in enumerate(values.items())
    ]


def test_mean_and_sample_std_over_runs_match_statistics():
    results = three_seed_results()
    rows = [r for e in results for r in metric_rows(e["name"], e["metrics"], e["run"])]
    aggregated = aggregate_runs(rows)
    mean_all, std_all = aggregated[0], aggregated[1]
    assert (mean_all["run"], std_all["run"], mean_all["group"], mean_all["runs"]) == (
        "mean",
        "std",
        "all",
        3,
    )
    miou = [e["metrics"]["mIoU"] for e in results]
    assert mean_all["mIoU"] == pytest.approx(statistics.mean(miou))
    assert std_all["mIoU"] == pytest.approx(statistics.stdev(miou))  # ddof=1, not pstdev
    assert std_all["mIoU"] != pytest.approx(statistics.pstdev(miou))
    assert mean_all["N"] == 3481 and std_all["N"] == 0.0
    group = [r for r in aggregated if r["group"] == "rrsisd"]
    assert group[0]["mIoU"] == pytest.approx(statistics.mean(m - 1 for m in miou))


def test_a_missing_or_nan_score_makes_the_aggregate_nan():
    results = three_seed_results()
    results[1]["metrics"]["oIoU"] = float("nan")
    del results[2]["metrics"]["rrsisd/mIoU"]
    rows = [r for e in results for r in metric_rows(e["name"], e["metrics"], e["run"])]
    aggregated = {(r["group"], r["run"]): r for r in aggregate_runs(rows)}
    assert math.isnan(aggregated[("all", "mean")]["oIoU"])
    assert math.isnan(aggregated[("rrsisd", "std")]["mIoU"])
    assert aggregate_runs(rows[:2]) == []  # one run: no aggregate


def test_three_runs_tables_show_mean_plus_minus_std(tmp_path):
    results = three_seed_results()
    written = write_benchmark_tables(results, str(tmp_path), meta={"config": "c.py"})
    markdown = (tmp_path / "benchmark.md").read_text()
    miou = [e["metrics"]["mIoU"] for e in results]
    expected = f"{statistics.mean(miou):.2f} ± {statistics.stdev(miou):.2f}"
    assert f"| rrsisd_test | mean ± std (3 runs) | all | 3481 | {expected} |" in markdown
    assert "| rrsisd_test | seed1 | all | 3481 | 60.30 | 77.73 |" in markdown
    assert "- checkpoint.sha256: sha-seed2" in markdown  # per-run provenance block
    with open(written["csv"], newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["run"] for r in rows] == ["seed0"] * 2 + ["seed1"] * 2 + ["seed2"] * 2 + [
        "mean",
        "std",
    ] * 2
    assert rows[0]["checkpoint.sha256"] == "sha-seed0" and rows[0]["seed"] == "0"
    assert float(rows[7]["mIoU"]) == pytest.approx(statistics.stdev(miou))
    payload = json.loads((tmp_path / "benchmark.json").read_text())
    assert payload["std"].startswith("sample standard deviation")
    assert payload["aggregate"][0]["mIoU"] == pytest.approx(statistics.mean(miou))


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
