"""tools/test.py end to end on a real Runner: clean + historic sets, tables in the work dir.

The model is a stand-in segmentor defined here (it predicts a fixed box), so these tests check the
evaluation plumbing independently of ClipSAM.
"""

from __future__ import annotations

import csv
import hashlib
import json
import runpy
import statistics
import subprocess
import sys
from pathlib import Path

import mmengine
import mmseg
import pytest
import torch
from mmengine.structures import PixelData
from mmseg.models.segmentors import BaseSegmentor
from mmseg.registry import MODELS

from aerialseg.evaluation import compare_provenance, test_main
from tests.datasets.fixtures import write_rrsisd

REPO = Path(__file__).resolve().parents[2]


@MODELS.register_module(force=True)
class FixedBoxSegmentor(BaseSegmentor):
    """Predicts rows 0 to 8 * scale - 1, columns 20-39 of every image (at its original size):
    checkpoints with other ``scale`` values score differently."""

    def __init__(self, data_preprocessor=None, init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def predict(self, inputs, data_samples=None):
        for sample in data_samples:
            height, width = sample.metainfo["ori_shape"]
            logits = torch.full((1, height, width), -1.0)
            logits[:, 0 : int(round(8 * float(self.scale))), 20:40] = 1.0
            sample.seg_logits = PixelData(data=logits)
            sample.pred_sem_seg = PixelData(data=(logits > 0).to(torch.uint8))
        return data_samples

    def loss(self, inputs, data_samples):
        return {"loss": self.scale.sum()}

    def _forward(self, inputs, data_samples=None):
        return inputs

    def extract_feat(self, inputs):
        return inputs

    def encode_decode(self, inputs, batch_data_samples):
        return inputs


def write_config(tmp_path: Path) -> Path:
    datasets = REPO / "configs" / "_base_" / "datasets"
    config = tmp_path / "fixed_box_rrsisd.py"
    config.write_text(
        "_base_ = [\n"
        f"    {str(REPO / 'configs' / '_base_' / 'default_runtime.py')!r},\n"
        f"    {str(datasets / 'rrsisd.py')!r},\n"
        f"    {str(datasets / 'historic_test.py')!r},\n"
        "]\n"
        "model = dict(type='FixedBoxSegmentor', data_preprocessor=dict(\n"
        "    type='SegDataPreProcessor', mean=[0, 0, 0], std=[1, 1, 1], bgr_to_rgb=True))\n"
        "test_cfg = dict(type='TestLoop')\n"
    )
    return config


def checkpoint(tmp_path: Path, scale: float = 1.0, name: str = "fixed_box.pth") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"scale": torch.full((1,), scale)}, "meta": {}}, path)
    return path


def cli_args(tmp_path: Path) -> list[str]:
    data = tmp_path / "rrsisd"
    return [
        str(write_config(tmp_path)),
        str(checkpoint(tmp_path)),
        "--work-dir", str(tmp_path / "work"),
        "--out", str(tmp_path / "out"),
        "--cfg-options",
        f"test_dataloader.dataset.data_root={data}",
        "test_dataloader.num_workers=0",
        "test_dataloader.persistent_workers=False",
    ]  # fmt: skip


def test_test_main_writes_clean_and_historic_tables(tmp_path):
    write_rrsisd(tmp_path / "rrsisd")
    results = test_main(cli_args(tmp_path))
    # The test split holds one target (rows 0-7, cols 30-39: 80 px); the box covers 160 px.
    assert [r["name"] for r in results] == ["rrsisd_test", "rrsisd_test_historic"]
    for result in results:
        assert result["metrics"]["mIoU"] == pytest.approx(50.0)
        assert result["metrics"]["Pr@0.5"] == 100.0 and result["metrics"]["Pr@0.6"] == 0.0
    work = tmp_path / "work"
    markdown = (work / "benchmark.md").read_text()
    assert "| rrsisd_test_historic | all | 1 | 50.00 | 50.00 | 100.00 | 0.00 |" in markdown
    checkpoint_digest = hashlib.sha256((tmp_path / "fixed_box.pth").read_bytes()).hexdigest()
    assert f"- checkpoint.sha256: {checkpoint_digest}" in markdown
    rows = list(csv.DictReader((work / "benchmark.csv").open()))
    assert {r["test_set"] for r in rows} == {"rrsisd_test", "rrsisd_test_historic"}
    assert {r["checkpoint.sha256"] for r in rows} == {checkpoint_digest}
    payload = json.loads((work / "benchmark.json").read_text())
    assert payload["meta"]["checkpoints"][0].endswith("fixed_box.pth")
    records = (tmp_path / "out" / "rrsisd_test_historic" / "per_sample.jsonl").read_text()
    header, record = (json.loads(line) for line in records.splitlines())
    assert record["historic"] is True
    assert header["provenance"]["historic_filter"]["seed"] == 0
    assert header["provenance"]["checkpoint"]["sha256"] == checkpoint_digest


def test_provenance_names_everything_that_moves_a_number(tmp_path):
    write_rrsisd(tmp_path / "rrsisd")
    clean, historic = (r["provenance"] for r in test_main(cli_args(tmp_path)))
    assert clean["packages"]["mmsegmentation"] == mmseg.__version__
    assert clean["packages"]["mmengine"] == mmengine.__version__
    assert clean["packages"]["torch"] == torch.__version__.split("+")[0]
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    status = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True
    ).stdout
    assert clean["git"] == {"commit": head, "dirty": bool(status.strip())}
    assert (clean["seed"], clean["device"], clean["dtype"]) == (0, "cpu", "float32")
    protocol = clean["protocol"]
    assert (protocol["name"], protocol["eval_size"], protocol["threshold_comparison"]) == (
        "original_resolution",
        "original",
        ">=",
    )
    assert protocol["empty_union_iou"] == 1.0 and protocol["resize_rule"] == "pil_nearest"
    (dataset,) = clean["datasets"]
    assert (dataset["dataset"], dataset["split"], dataset["samples"]) == ("rrsisd", "test", 1)
    assert dataset["text_field"] == "raw"
    # The annotation checksum, recomputed here from the two files the loader reads.
    root = tmp_path / "rrsisd"
    lines = sorted(
        f"{name}\t{hashlib.sha256((root / name).read_bytes()).hexdigest()}"
        for name in ("instances.json", "refs(unc).p")
    )
    assert dataset["annotation_sha256"] == hashlib.sha256("\n".join(lines).encode()).hexdigest()
    assert clean["historic_filter"] is None and historic["historic_filter"]["seed"] == 0


def test_a_rerun_from_the_recorded_provenance_gives_identical_tables(tmp_path):
    write_rrsisd(tmp_path / "rrsisd")
    first = test_main(cli_args(tmp_path))
    recorded = json.loads((tmp_path / "work" / "benchmark.json").read_text())
    # Only what the JSON records: the resolved config and the checkpoint.
    second = test_main(
        [
            recorded["meta"]["resolved_config"],
            *recorded["meta"]["checkpoints"],
            "--work-dir", str(tmp_path / "again"),
        ]
    )  # fmt: skip
    replayed = json.loads((tmp_path / "again" / "benchmark.json").read_text())
    assert replayed["rows"] == recorded["rows"]
    for before, after in zip(first, second):
        assert compare_provenance(before["provenance"], after["provenance"]) == []
    # A changed annotation file is caught even when the numbers do not move.
    instances = tmp_path / "rrsisd" / "instances.json"
    instances.write_text(instances.read_text() + " ")
    third = test_main([recorded["meta"]["resolved_config"], *recorded["meta"]["checkpoints"]])
    assert third[0]["metrics"] == first[0]["metrics"]
    differences = compare_provenance(first[0]["provenance"], third[0]["provenance"])
    assert len(differences) == 1 and "annotation_sha256" in differences[0]
    # Any change of the config changes its digest (here one that cannot move a number).
    fourth = test_main(
        [
            recorded["meta"]["resolved_config"],
            *recorded["meta"]["checkpoints"],
            "--cfg-options", "test_dataloader.batch_size=2",
        ]
    )  # fmt: skip
    changed = compare_provenance(third[0]["provenance"], fourth[0]["provenance"])
    assert len(changed) == 1 and changed[0].startswith("config.sha256")


def test_three_checkpoints_give_runs_and_mean_std(tmp_path, capsys):
    write_rrsisd(tmp_path / "rrsisd")
    # Boxes of 8, 4 and 12 rows against the 80-pixel target: IoU 1/2, 1/3, 1/3.
    for seed, scale in enumerate((1.0, 0.5, 1.5)):
        checkpoint(tmp_path / "runs", scale, f"seed{seed}/iter_1.pth")
    args = cli_args(tmp_path)
    args[1] = str(tmp_path / "runs" / "seed*" / "iter_1.pth")
    results = test_main([*args, "--no-historic"])
    assert [r["run"] for r in results] == ["seed0/iter_1", "seed1/iter_1", "seed2/iter_1"]
    ious = [100 / 2, 100 / 3, 100 / 3]
    assert [r["metrics"]["mIoU"] for r in results] == pytest.approx(ious)
    markdown = (tmp_path / "work" / "benchmark.md").read_text()
    expected = f"{statistics.mean(ious):.2f} ± {statistics.stdev(ious):.2f}"
    assert f"| rrsisd_test | mean ± std (3 runs) | all | 1 | {expected} |" in markdown
    assert (tmp_path / "out" / "seed2" / "iter_1" / "rrsisd_test" / "per_sample.jsonl").is_file()
    args[1] = str(tmp_path / "runs" / "nothing*.pth")
    assert "no checkpoint file matches" in exits_with(args, capsys)


def test_protocol_flag_rescoring(tmp_path):
    write_rrsisd(tmp_path / "rrsisd")
    results = test_main([*cli_args(tmp_path), "--no-historic", "--protocol", "rsrefseg_strict"])
    assert results[0]["provenance"]["protocol"]["name"] == "rsrefseg_strict"
    assert results[0]["metrics"]["Pr@0.5"] == 0.0  # IoU exactly 0.5 is not > 0.5


def test_test_as_val_is_refused_unless_allowed(tmp_path, capsys):
    write_rrsisd(tmp_path / "rrsisd")
    args = cli_args(tmp_path)
    data = tmp_path / "rrsisd"
    same = [
        f"val_dataloader.dataset.data_root={data}",
        "val_dataloader.dataset.split=test",
    ]
    error = exits_with([*args, *same, "--no-historic"], capsys)
    assert "the validation set and the test set read the same files: rrsisd split 'test'" in error
    allowed = test_main([*args, *same, "allow_val_test_overlap.rrsisd=checked", "--no-historic"])
    assert allowed[0]["provenance"]["val_test_overlap_allowed"] == {"rrsisd": "checked"}


def exits_with(argv: list[str], capsys) -> str:
    """The one-line error ``tools/test.py`` exits with (status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        test_main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    args = cli_args(tmp_path)
    write_rrsisd(tmp_path / "rrsisd")
    args[1] = str(tmp_path / "absent.pth")
    assert "error: checkpoint file not found: " in exits_with(args, capsys)


def test_tools_test_py_script(tmp_path, monkeypatch, capsys):
    """The thin CLI shell, run as ``__main__`` the way users call it."""
    write_rrsisd(tmp_path / "rrsisd")
    monkeypatch.setattr(sys, "argv", ["tools/test.py", *cli_args(tmp_path), "--no-historic"])
    runpy.run_path(str(REPO / "tools" / "test.py"), run_name="__main__")
    assert "| rrsisd_test | all | 1 | 50.00 |" in capsys.readouterr().out
    assert not (tmp_path / "out" / "rrsisd_test_historic").exists()
    assert (tmp_path / "out" / "rrsisd_test" / "per_sample.jsonl").is_file()


@pytest.mark.slow
def test_tools_test_on_the_tiny_clipsam_config(tmp_path):
    """A 1-iteration tiny ClipSAM run through tools/train.py's function, then tools/test.py on its
    checkpoint: clean + historic tables for the first 4 Aerial-D val expressions."""
    from aerialseg.engine import train_main
    from aerialseg.models.tiny import write_tiny_aerial_d, write_tiny_checkpoints

    config = REPO / "configs" / "clipsam" / "clipsam-tiny_aerial-d.py"
    paths = write_tiny_checkpoints(tmp_path / "ckpt")
    write_tiny_aerial_d(tmp_path / "data", num_train=2, num_val=2)
    options = [
        f"model.vlm.pretrained={paths.vlm_path}",
        f"model.sam.checkpoint={paths.sam_path}",
        f"train_dataloader.dataset.data_root={tmp_path / 'data'}",
        "train_dataloader.batch_size=1",
        f"val_dataloader.dataset.data_root={tmp_path / 'data'}",
        f"test_dataloader.dataset.data_root={tmp_path / 'data'}",
        "test_dataloader.dataset.indices=4",
        "train_cfg.max_iters=1",
        "train_cfg.val_interval=100",
        "default_hooks.checkpoint.interval=1",
    ]
    train_main([str(config), "--work-dir", str(tmp_path / "train"), "--cfg-options", *options])
    checkpoint_path = tmp_path / "train" / "iter_1.pth"
    assert checkpoint_path.is_file()

    results = test_main(
        [str(config), str(checkpoint_path), "--work-dir", str(tmp_path / "test"), "--historic",
         "--cfg-options", *options]
    )  # fmt: skip
    assert [r["name"] for r in results] == ["aerial_d_val", "aerial_d_val_historic"]
    for result in results:
        metrics = result["metrics"]
        assert metrics["N"] == 4 and metrics["aerial_d/N"] == 4
        assert 0.0 <= metrics["mIoU"] <= 100.0 and 0.0 <= metrics["oIoU"] <= 100.0
    table = (tmp_path / "test" / "benchmark.md").read_text()
    assert "| aerial_d_val | all | 4 |" in table and "| aerial_d_val_historic | all | 4 |" in table
    # The pretrained files the frozen towers came from are named by digest.
    sam_digest = hashlib.sha256(Path(paths.sam_path).read_bytes()).hexdigest()
    assert sam_digest in results[0]["provenance"]["pretrained_files"].values()
    assert results[0]["provenance"]["val_test_overlap_allowed"] == {
        "aerial_d": "Aerial-D has no test split; its val split is reported"
    }
