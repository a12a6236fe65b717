"""tools/check_dataset.py: passes on every published layout, fails clearly on broken copies."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

from aerialseg.datasets import RRSISDDataset
from aerialseg.datasets.check import check_datasets
from tests.datasets.fixtures import (
    write_aerial_d_parquet,
    write_aerial_d_xml,
    write_nwpu_refer,
    write_refsegrs,
    write_rrsisd,
    write_urban1960,
)

REPO = Path(__file__).resolve().parents[2]
# Samples per split of each fixture, counted from the fixture writers' documented contents.
LAYOUTS = {
    "aerial_d_xml": ("AerialDDataset", "aerial_d", write_aerial_d_xml, {"train": 10, "val": 1}, {}),
    "aerial_d_parquet": (
        "AerialDDataset",
        "aerial_d",
        write_aerial_d_parquet,
        {"train": 10, "val": 1},
        {"ann_format": "parquet"},
    ),
    "rrsisd": ("RRSISDDataset", "rrsisd", write_rrsisd, {"train": 3, "val": 1, "test": 1}, {}),
    "refsegrs": (
        "RefSegRSDataset",
        "refsegrs",
        write_refsegrs,
        {"train": 3, "val": 1, "test": 1},
        {},
    ),
    "nwpu_refer": ("NWPUReferDataset", "nwpu_refer", write_nwpu_refer, {"train": 3, "val": 1}, {}),
    "urban1960": ("Urban1960Dataset", "urban1960", write_urban1960, {"train": 5, "test": 3}, {}),
}


@pytest.fixture(autouse=True)
def mmseg_scope():
    init_default_scope("mmseg")


def config_for(dataset_type: str, root: Path, splits, **extra) -> Config:
    loaders = dict(
        zip(("train", "val", "test"), ("train_dataloader", "val_dataloader", "test_dataloader"))
    )
    cfg = {}
    for split in splits:
        dataset = dict(type=dataset_type, data_root=str(root), split=split, **extra)
        if split in loaders and loaders[split] not in cfg:
            cfg[loaders[split]] = dict(dataset=dataset)
        else:  # Aerial-D/Urban1960: two splits, one of them outside its usual loader
            cfg.setdefault("test_sets", []).append(
                dict(name=split, dataloader=dict(dataset=dataset))
            )
    return Config(cfg)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_passes_on_every_published_layout(tmp_path, layout):
    dataset_type, name, writer, counts, extra = LAYOUTS[layout]
    writer(tmp_path)
    manifest = tmp_path / "manifest.json"
    entries = [{"dataset": name, "split": s, "samples": n} for s, n in counts.items()]
    manifest.write_text(json.dumps({"datasets": entries}))
    report = check_datasets(
        config_for(dataset_type, tmp_path, counts, **extra), manifest_path=str(manifest)
    )
    assert report.ok, report.format()
    assert sorted(c.description["split"] for c in report.checks) == sorted(counts)
    assert sum(sum(c.categories.values()) for c in report.checks) == sum(counts.values())


def test_published_counts_fail_or_warn(tmp_path):
    write_rrsisd(tmp_path / "rrsisd")
    report = check_datasets(config_for("RRSISDDataset", tmp_path / "rrsisd", ["test"]))
    assert not report.ok
    assert report.checks[0].failures == [
        "1 samples, the release has 3481 (RRSIS-D paper (Liu et al., CVPR 2024))"
    ]
    write_refsegrs(tmp_path / "refsegrs")
    # RefSegRS's per-split counts come from secondary sources: a mismatch only warns.
    report = check_datasets(config_for("RefSegRSDataset", tmp_path / "refsegrs", ["test"]))
    assert report.ok and "the release has 1817" in report.checks[0].warnings[0]
    write_nwpu_refer(tmp_path / "nwpu")
    report = check_datasets(config_for("NWPUReferDataset", tmp_path / "nwpu", ["val"]))
    assert report.ok and "not checked" in report.checks[0].notes[0]


def test_broken_copies_fail_with_a_clear_message(tmp_path):
    write_rrsisd(tmp_path)
    cfg = config_for("RRSISDDataset", tmp_path, ["train", "test"])
    (tmp_path / "images" / "rrsisd" / "JPEGImages" / "00003.jpg").unlink()
    report = check_datasets(cfg, use_published=False)
    train, test = report.checks
    assert train.failures == [] and not report.ok
    assert test.failures == [
        f"1 image/mask files are missing: '{tmp_path}/images/rrsisd/JPEGImages/00003.jpg'"
    ]
    (tmp_path / "refs(unc).p").unlink()
    report = check_datasets(cfg, use_published=False)
    assert all("cannot be read: refs pickle file not found" in c.failures[0] for c in report.checks)
    assert "[FAIL] RRSISDDataset split 'train'" in report.format()


def test_cli_manifest_round_trip_and_changed_annotations(tmp_path, monkeypatch, capsys):
    write_rrsisd(tmp_path / "rrsisd")
    config = REPO / "configs" / "_base_" / "datasets" / "rrsisd.py"
    options = [
        f"{loader}.dataset.data_root={tmp_path / 'rrsisd'}"
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader")
    ]

    def run(*extra) -> int:
        argv = ["tools/check_dataset.py", str(config), *extra, "--cfg-options", *options]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(REPO / "tools" / "check_dataset.py"), run_name="__main__")
        return exit_info.value.code

    manifest = tmp_path / "manifest.json"
    assert run("--write-manifest", str(manifest), "--no-published-counts") == 0
    output = capsys.readouterr().out
    assert "| category | train | val | test |" in output
    assert "| vehicle | 3 | 0 | 1 |" in output and "| airplane | 0 | 1 | 0 |" in output
    assert "all checks passed" in output
    assert run("--manifest", str(manifest)) == 0
    instances = tmp_path / "rrsisd" / "instances.json"
    instances.write_text(instances.read_text() + "\n")
    assert run("--manifest", str(manifest), "--splits", "val") == 1
    output = capsys.readouterr().out
    assert "FAIL: annotation_sha256 is" in output and "the manifest says" in output


def test_benchmark_json_serves_as_manifest(tmp_path):
    write_rrsisd(tmp_path)
    described = RRSISDDataset(data_root=str(tmp_path), split="test").describe()
    benchmark = tmp_path / "benchmark.json"
    benchmark.write_text(json.dumps({"results": [{"provenance": {"datasets": [described]}}]}))
    cfg = config_for("RRSISDDataset", tmp_path, ["test"])
    assert check_datasets(cfg, manifest_path=str(benchmark)).ok
    refs = tmp_path / "refs(unc).p"
    refs.write_bytes(refs.read_bytes() + b"\x00")  # trailing byte after the pickle's STOP
    failures = check_datasets(cfg, manifest_path=str(benchmark)).checks[0].failures
    assert len(failures) == 1 and failures[0].startswith("annotation_sha256 is")
