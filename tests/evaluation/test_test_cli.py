"""tools/test.py end to end on a real Runner: clean + historic sets, tables in the work dir.

The model is a stand-in segmentor defined here (it predicts a fixed box), so these tests check the
evaluation plumbing independently of ClipSAM.
"""

from __future__ import annotations

import csv
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from mmengine.structures import PixelData
from mmseg.models.segmentors import BaseSegmentor
from mmseg.registry import MODELS

from aerialseg.evaluation import test_main
from tests.datasets.fixtures import write_rrsisd

REPO = Path(__file__).resolve().parents[2]


@MODELS.register_module(force=True)
class FixedBoxSegmentor(BaseSegmentor):
    """Predicts rows 0-7, columns 20-39 of every image (at its original size)."""

    def __init__(self, data_preprocessor=None, init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def predict(self, inputs, data_samples=None):
        for sample in data_samples:
            height, width = sample.metainfo["ori_shape"]
            logits = torch.full((1, height, width), -1.0) * self.scale
            logits[:, 0:8, 20:40] = 1.0
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


def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "fixed_box.pth"
    torch.save({"state_dict": {"scale": torch.ones(1)}, "meta": {}}, path)
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
    assert "checkpoint_sha256:" in markdown
    rows = list(csv.DictReader((work / "benchmark.csv").open()))
    assert {r["test_set"] for r in rows} == {"rrsisd_test", "rrsisd_test_historic"}
    payload = json.loads((work / "benchmark.json").read_text())
    assert payload["meta"]["checkpoint"].endswith("fixed_box.pth")
    records = (tmp_path / "out" / "rrsisd_test_historic" / "per_sample.jsonl").read_text()
    assert json.loads(records)["historic"] is True


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    args = cli_args(tmp_path)
    args[1] = str(tmp_path / "absent.pth")
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        test_main(args)


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
