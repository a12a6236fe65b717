"""Training: overfitting a handful of samples, the mmengine runner, 2-process DDP, the sampler."""

from __future__ import annotations

import copy
import os
import re
import socket
import subprocess
from unittest import mock

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmseg.registry import DATA_SAMPLERS
from torch.utils.data import ConcatDataset, Dataset

from aerialseg.apis import ReferringSegmenter
from aerialseg.datasets.weighted_sampler import WeightedDatasetSampler, dataset_shares
from aerialseg.engine import safe_torch_load
from tests.models.conftest import BLUE_BOX, RED_BOX, REPO, build_model, square_batch, tiny_config


def _iou(prediction: torch.Tensor, box) -> float:
    target = torch.zeros_like(prediction, dtype=torch.bool)
    y0, x0, y1, x1 = box
    target[y0:y1, x0:x1] = True
    prediction = prediction.bool()
    return ((prediction & target).sum() / (prediction | target).sum()).item()


@pytest.mark.slow
def test_overfits_a_handful_of_samples_and_uses_the_text(tiny_cfg):
    model = build_model(tiny_cfg)
    optimizer = build_optim_wrapper(model, tiny_cfg.optim_wrapper)
    samples = [("the red square", RED_BOX), ("the blue square", BLUE_BOX)]
    batch = dict(
        inputs=[],
        data_samples=[],
    )
    for seed in (0, 1):  # two images, each with both squares: only the words tell them apart
        part = square_batch(samples, seed=seed)
        batch["inputs"] += part["inputs"]
        batch["data_samples"] += part["data_samples"]
    torch.manual_seed(0)
    for _ in range(80):  # the IoUs pass 0.96 by step 70 (0.9 at step 60)
        model.train_step(copy.deepcopy(batch), optimizer)
    model.eval()
    with torch.no_grad():
        results = model.test_step(copy.deepcopy(batch))
        swapped = copy.deepcopy(batch)
        for sample, text in zip(swapped["data_samples"], ["the blue square", "the red square"] * 2):
            sample.set_metainfo(dict(text=text))
        swapped_results = model.test_step(swapped)
    boxes = [RED_BOX, BLUE_BOX] * 2
    ious = [_iou(r.pred_sem_seg.data[0], box) for r, box in zip(results, boxes)]
    assert min(ious) > 0.9, ious
    swapped_ious = [_iou(r.pred_sem_seg.data[0], box) for r, box in zip(swapped_results, boxes)]
    assert max(swapped_ious) < 0.1, swapped_ious


@pytest.mark.slow
def test_runner_trains_tiny_config_and_api_loads_the_checkpoint(tiny_assets, tmp_path):
    from aerialseg.engine import train_main

    work_dir = tmp_path / "work"
    runner = train_main(
        [
            str(REPO / "configs/clipsam/clipsam-tiny_aerial-d.py"),
            "--work-dir",
            str(work_dir),
            "--cfg-options",
            f"model.vlm.pretrained={tiny_assets['vlm']}",
            f"model.sam.checkpoint={tiny_assets['sam']}",
            f"train_dataloader.dataset.data_root={tiny_assets['data']}",
            f"val_dataloader.dataset.data_root={tiny_assets['data']}",
            f"test_dataloader.dataset.data_root={tiny_assets['data']}",
            "train_cfg.max_iters=6",
            "train_cfg.val_interval=6",
            "default_hooks.checkpoint.interval=6",
        ]
    )
    assert runner.iter == 6
    metrics = runner.message_hub.get_scalar("val/mIoU")
    assert 0 <= metrics.current() <= 100
    checkpoint = work_dir / "iter_6.pth"
    # only trained tensors are saved: far below the 268k-parameter tiny model
    state = safe_torch_load(checkpoint)
    assert sum(v.numel() for v in state["state_dict"].values()) < 150_000

    segmenter = ReferringSegmenter(None, checkpoint)  # the config comes from the checkpoint
    image = torch.randint(0, 255, (90, 140, 3), dtype=torch.uint8).numpy()
    prediction = segmenter.predict(image, ["the red building in the top left"])
    assert prediction.masks.shape == (1, 90, 140) and prediction.masks.dtype == bool


@pytest.mark.slow
def test_ddp_gloo_two_processes(tiny_assets, tmp_path):
    work_dir = tmp_path / "ddp"
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        "bash",
        str(REPO / "tools/dist_train.sh"),
        str(REPO / "configs/clipsam/clipsam-tiny_aerial-d.py"),
        "2",
        "--work-dir",
        str(work_dir),
        "--cfg-options",
        f"model.vlm.pretrained={tiny_assets['vlm']}",
        f"model.sam.checkpoint={tiny_assets['sam']}",
        f"train_dataloader.dataset.data_root={tiny_assets['data']}",
        f"val_dataloader.dataset.data_root={tiny_assets['data']}",
        f"test_dataloader.dataset.data_root={tiny_assets['data']}",
        "train_cfg.max_iters=3",
        "train_cfg.val_interval=100",
        "default_hooks.checkpoint.interval=3",
        "default_hooks.logger.interval=1",
    ]
    # tools/dist_train.sh runs torchrun -> tools/train.py --launcher pytorch, which starts a gloo
    # process group itself when no GPU is visible. Neither PYTHON nor a python with torch on the
    # PATH: the script must find the project's own (.venv/bin/python).
    assert ".venv/bin/python" in (REPO / "tools/dist_train.sh").read_text()
    env = {name: value for name, value in os.environ.items() if name != "PYTHON"} | {
        "PATH": "/usr/bin:/bin",
        "PORT": str(port),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert (work_dir / "iter_3.pth").is_file()
    assert "Distributed training: True" in log and "GPU number: 2" in log  # world size 2
    assert re.search(r"Iter\(train\) \[3/3\]", log)


class _Named(Dataset):
    def __init__(self, name: str, size: int):
        self.DATASET_NAME, self.size = name, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.DATASET_NAME, index


def _joint() -> ConcatDataset:
    return ConcatDataset([_Named("aerial_d", 900), _Named("refsegrs", 10), _Named("rrsisd", 90)])


def test_weighted_sampler_draws_configured_shares_deterministically():
    dataset = _joint()
    sampler = DATA_SAMPLERS.build(
        dict(type="WeightedDatasetSampler", weights=dict(aerial_d=2, refsegrs=1, rrsisd=1)),
        default_args=dict(dataset=dataset, seed=3),
    )
    assert sampler.counts == [500, 250, 250]
    stream = list(sampler)
    assert len(stream) == len(sampler) == 1000
    names = [dataset[i][0] for i in stream]
    assert names.count("aerial_d") == 500 and names.count("refsegrs") == 250
    # without replacement inside a dataset until it is exhausted: 900 aerial_d, draw 500 distinct
    aerial = [i for i in stream if i < 900]
    assert len(set(aerial)) == 500
    refsegrs = [i - 900 for i in stream if 900 <= i < 910]
    assert all(refsegrs.count(i) == 25 for i in range(10))
    assert list(sampler) == stream
    sampler.set_epoch(1)
    assert list(sampler) != stream


def test_weighted_sampler_splits_one_stream_across_ranks():
    streams = []
    for rank in (0, 1):
        with mock.patch(
            "aerialseg.datasets.weighted_sampler.get_dist_info", return_value=(rank, 2)
        ):
            sampler = WeightedDatasetSampler(
                _joint(), weights=[1, 1, 1], samples_per_epoch=9, seed=0
            )
        streams.append(list(sampler))
        assert len(streams[-1]) == len(sampler)
    full = WeightedDatasetSampler(_joint(), weights=[1, 1, 1], samples_per_epoch=9, seed=0)
    assert list(full)[0::2] == streams[0] and list(full)[1::2] == streams[1]


def test_dataset_shares_temperature_and_errors():
    names = ["a", "b"]
    assert dataset_shares([900, 100], names) == pytest.approx([0.9, 0.1])
    assert dataset_shares([900, 100], names, temperature=2) == pytest.approx([0.75, 0.25])
    assert dataset_shares([900, 100], names, temperature=float("inf")) == [0.5, 0.5]
    with pytest.raises(ValueError, match=r"unknown: \['c'\], missing: \['b'\]"):
        dataset_shares([1, 1], names, dict(a=1, c=1))
    with pytest.raises(ValueError, match="dataset 'b' has weight 1.0 but no samples"):
        dataset_shares([1, 0], names, [1, 1])
    with pytest.raises(TypeError, match="needs a ConcatDataset"):
        WeightedDatasetSampler(_Named("a", 3), seed=0)


def test_tiny_config_builds_through_the_registry(tiny_assets):
    cfg = tiny_config(tiny_assets)
    model = build_model(cfg)
    assert type(model).__name__ == "ClipSAM" and model.sam.arch_name == "tiny"
    assert cfg.custom_imports.imports == ["aerialseg"] and cfg.default_scope == "mmseg"
